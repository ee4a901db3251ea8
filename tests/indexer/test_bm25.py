"""indexer.bm25: Lucene BM25Similarity by hand, golden SciFact numbers, persistence, incremental add."""

import math

import numpy as np
import pytest

from indexer.bm25 import BM25, byte4_to_int, int_to_byte4

# Four documents (flat field, empty titles). Analyzed lengths: d0 3, d1 1, d2 2, d3 41.
FOUR = [
    {"id": "d0", "title": "", "text": "cat cat dog"},
    {"id": "d1", "title": "", "text": "cat"},
    {"id": "d2", "title": "", "text": "dog bird"},
    {"id": "d3", "title": "", "text": "fish" + " bird" * 40},
]


def test_smallfloat_norms():
    # intToByte4: lengths < 24 are exact; 30 = 24 + 6 is still exact (6 < 8); 41 = 24 + 17 keeps
    # 4 significant bits: 17 = 0b10001 -> 0b1000 << 1 = 16, so 41 decodes to 40; 100 -> 24 + 72 = 96;
    # Integer.MAX_VALUE -> byte 255 -> 24 + (0b1111 << 27) = 2013265944.
    lengths = np.array([0, 1, 23, 24, 30, 31, 32, 41, 100, 2**31 - 1])
    assert byte4_to_int(int_to_byte4(lengths)).tolist() == [0, 1, 23, 24, 30, 31, 32, 40, 96, 2_013_265_944]
    assert int_to_byte4(np.array([2**31 - 1])).tolist() == [255]


def test_four_documents_hand_computed():
    bm = BM25().index(FOUR)  # k1 = 0.9, b = 0.4
    # docCount = 4, sumTotalTermFreq = 3 + 1 + 2 + 41 = 47, avgdl = 11.75
    # idf(df=2) = ln(1 + 2.5 / 2.5) = ln 2 = 0.693147; idf(df=1) = ln(1 + 3.5 / 1.5) = 1.203973
    # K(L) = k1 * (0.6 + 0.4 * L / 11.75): K(3) = 0.631915, K(1) = 0.570638, K(2) = 0.601277,
    #   K(40) = 1.765532 (d3's length 41 is stored as the norm byte for 40)
    # score = idf * tf / (tf + K(L))
    r = bm.retrieve(["cat", "bird fish", "cat cat dog"], k=4)
    assert r.ids.tolist() == [["d0", "d1", "", ""], ["d3", "d2", "", ""], ["d0", "d1", "d2", ""]]
    expected = [
        # "cat": d0 0.693147 * 2 / 2.631915 = 0.526725; d1 0.693147 * 1 / 1.570638 = 0.441316
        [0.5267246, 0.4413156],
        # "bird fish": d3 0.693147 * 40 / 41.765532 + 1.203973 * 1 / 2.765532 = 0.663846 + 0.435349
        #              (with the exact length 41 it would be 1.093938); d2 0.693147 / 1.601277 = 0.432872
        [1.0991956, 0.4328716],
        # "cat cat dog": cat is one clause with boost 2: d0 2 * 0.526725 + 0.693147 / 1.631915 = 1.478194;
        #                d1 2 * 0.441316 = 0.882631; d2 0.432872
        [1.4781939, 0.8826312, 0.4328716],
    ]
    for row, exp in zip(r.scores, expected):
        np.testing.assert_allclose(row[:len(exp)], exp, rtol=2e-6)
        assert np.all(np.isneginf(row[len(exp):]))
    assert r.scores.dtype == np.float32


def test_float32_arithmetic_is_lucenes():
    # weight - weight / (1f + freq * normInverse), every step in float32 (BM25Scorer.score)
    bm = BM25().index(FOUR)
    f = bm.fields["contents"]
    f32 = np.float32
    avgdl = f32(47 / 4)
    norm_inv = f32(1) / (f32(0.9) * ((f32(1) - f32(0.4)) + f32(0.4) * f32(40) / avgdl))
    idf = f32(math.log(1 + (4 - 2 + 0.5) / (2 + 0.5)))
    want = idf - idf / (f32(1) + f32(40) * norm_inv)
    bird = bm.vocab["bird"]
    p = f.indptr[bird] + 1  # bird's second posting: d3, tf 40
    assert f.docs[p] == 3 and f.tfs[p] == 40 and f.scores[p] == want  # bit-exact


def test_ties_go_to_smaller_id_string_and_only_matches_return():
    # Anserini breaks equal scores by document id string, ascending: "10" < "9" < "x".
    docs = [{"id": i, "title": "", "text": "same words here"} for i in ("x", "9", "10", "b", "a")]
    r = BM25().index(docs).retrieve(["words", "absent"], k=3)
    assert r.ids[0].tolist() == ["10", "9", "a"] and len(set(r.scores[0].tolist())) == 1
    assert r.ids[1].tolist() == ["", "", ""] and r.count(1) == 0


def test_exclude_and_pretokenized_queries():
    bm = BM25().index(FOUR)
    r = bm.retrieve([["cat"], "cat"], k=2, exclude=[set(), {"d0"}])
    assert r.ids.tolist() == [["d0", "d1"], ["d1", ""]]


def test_incremental_add_equals_full_rebuild():
    docs = FOUR + [{"id": "d4", "title": "Birds", "text": "a zebra and a cat"},
                   {"id": "d5", "title": "", "text": "the the the"},  # only stopwords: no postings
                   {"id": "d6", "title": "Dog", "text": "new words: zebra, yak"}]
    for multifield in (False, True):
        full = BM25(multifield=multifield).index(docs)
        inc = BM25(multifield=multifield).index(docs[:3]).add(docs[3:5]).add(docs[5:])
        assert inc.terms == full.terms and inc.ids == full.ids
        for name in full.fields:
            for part in ("indptr", "docs", "tfs", "norms", "scores"):
                np.testing.assert_array_equal(getattr(inc.fields[name], part), getattr(full.fields[name], part))
        queries = ["cat zebra", "bird dog yak", "fish"]
        a, b = full.retrieve(queries, k=7), inc.retrieve(queries, k=7)
        assert a.ids.tolist() == b.ids.tolist() and np.array_equal(a.scores, b.scores)
    with pytest.raises(ValueError, match="duplicate document id 'd1'"):
        BM25().index(FOUR).add([{"id": "d1", "text": "again"}])


def test_save_load_mmap_round_trip(tmp_path):
    bm = BM25(k1=1.2, b=0.75).index(FOUR)
    bm.save(tmp_path / "idx")
    loaded = BM25.load(tmp_path / "idx", mmap=True)
    assert isinstance(loaded.fields["contents"].docs, np.memmap)
    assert (loaded.k1, loaded.b, loaded.analyzer) == (1.2, 0.75, bm.analyzer)
    q = ["cat dog", "bird fish fish"]
    a, b = bm.retrieve(q, k=4), loaded.retrieve(q, k=4)
    assert a.ids.tolist() == b.ids.tolist() and np.array_equal(a.scores, b.scores)
    more = [{"id": "d9", "title": "", "text": "cat"}]
    assert np.array_equal(loaded.add(more).retrieve(q, k=5).scores, bm.add(more).retrieve(q, k=5).scores)
    with pytest.raises(FileNotFoundError, match="not a wandao BM25 index"):
        BM25.load(tmp_path)


def test_bad_input():
    bm = BM25().index(FOUR)
    with pytest.raises(ValueError, match="queries is empty"):
        bm.retrieve([])
    with pytest.raises(ValueError, match="k must be a positive integer, got 0"):
        bm.retrieve(["cat"], k=0)
    with pytest.raises(ValueError, match="not a single string"):
        bm.retrieve("cat")
    with pytest.raises(ValueError, match="exclude has 2 entries for 1 queries"):
        bm.retrieve(["cat"], exclude=[set(), set()])
    with pytest.raises(ValueError, match="missing or empty 'id'"):
        BM25().index([{"title": "t", "text": "x"}])
    with pytest.raises(ValueError, match="b must be in"):
        BM25(b=2)


def _beir_eval(bm, name, multifield=False):
    import pytrec_eval

    from indexer.data import beir_paths, load_qrels, load_queries

    _, queries_path, qrels_path = beir_paths(name, "test")
    queries, qrels = load_queries(queries_path), load_qrels(qrels_path)
    qids = [q for q in queries if q in qrels]
    # Anserini -removeQuery: a query's own id is dropped from its results
    run = bm.retrieve([queries[q] for q in qids], k=1000, exclude=[{q} for q in qids]).to_run(qids)
    per_query = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut_10", "recall_100"}).evaluate(run)
    return (float(np.mean([m["ndcg_cut_10"] for m in per_query.values()])),
            float(np.mean([m["recall_100"] for m in per_query.values()])))


@pytest.fixture(scope="module")
def scifact_docs(data_dir):
    from indexer.data import read_corpus

    return read_corpus("scifact")


def test_scifact_golden_flat(scifact_docs):
    # Anserini regression beir-v1.0.0-scifact.flat (BM25 flat, k1=0.9 b=0.4), as of 2024-2025
    # (docs/regressions/regressions-beir-v1.0.0-scifact.flat.md): nDCG@10 0.6789, R@100 0.9253.
    # Measured here 2026-11-27: 0.6789 / 0.9253.
    ndcg, recall = _beir_eval(BM25().index(scifact_docs), "scifact")
    assert ndcg == pytest.approx(0.6789, abs=0.001)
    assert recall == pytest.approx(0.9253, abs=0.002)


def test_scifact_golden_multifield(scifact_docs):
    # Anserini regression beir-v1.0.0-scifact.multifield (-fields contents=1.0 title=1.0):
    # nDCG@10 0.6647, R@100 0.9076. Measured here 2026-11-27: 0.6647 / 0.9076.
    ndcg, recall = _beir_eval(BM25(multifield=True).index(scifact_docs), "scifact")
    assert ndcg == pytest.approx(0.6647, abs=0.001)
    assert recall == pytest.approx(0.9076, abs=0.002)
