"""Retriever, augmenters and contamination check on real (small) indexes built here."""

import json
from pathlib import Path

import numpy as np
import pytest

from rag.contamination import check_contamination
from rag.xquad import load_xquad, xquad_corpus

pytest.importorskip("indexer.bm25", reason="needs the embedded BM25 backend (indexer/bm25.py)")

from indexer import build_index  # noqa: E402
from rag.augment import SFTAugmentConfig, augment_sft  # noqa: E402
from rag.augment_pretrain import PretrainAugmentConfig, augment_pretrain, inspect  # noqa: E402
from rag.retriever import Retriever, same_source  # noqa: E402

# Three documents, each made of two paragraphs that share rare words with each other and with
# little else (one shared word, "music"): the nearest neighbour of every chunk is the other chunk
# of the same document.
DOCS = [
    {"id": d, "title": "", "text": " ".join((f"music {w} " * 4).strip() for _ in range(2)) + "\n\n"
                                    + (f"music {w} {extra} " * 5).strip()}
    for d, w, extra in (("a", "zebra quokka lemur", "tapir"), ("b", "granite basalt quartz", "shale"),
                        ("c", "violin cello oboe", "flute"))
]


@pytest.fixture(scope="module")
def chunk_index(tmp_path_factory):
    out = tmp_path_factory.mktemp("idx") / "chunks"
    build_index(DOCS, out, bm25=True, chunk_tokens=20)  # 20-word passages "a#0", "a#1", ... with doc_id
    return out


@pytest.fixture(scope="module")
def xquad_index(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("idx") / "xquad"
    build_index(xquad_corpus(), out, bm25=True)
    return out


def test_same_document_exclusion(chunk_index, tmp_path):
    r = Retriever(chunk_index)
    plain = r.retrieve(["zebra quokka lemur tapir"], k=1)
    assert plain.ids[0, 0].startswith("a#")  # without the rule, the neighbour is the same document
    out = tmp_path / "ralm"
    summary = augment_pretrain(PretrainAugmentConfig(index=str(chunk_index), corpus=_write(tmp_path, DOCS),
                                                     out=str(out), k=2, chunk_tokens=16, seq_len=128,
                                                     max_ngram_overlap=1.0))
    records = list(inspect(out))
    assert summary["chunks"] == len(records) > 3
    for rec in records:
        assert rec["neighbours"], rec
        assert all(not n.startswith(rec["doc_id"] + "#") for n in rec["neighbours"]), rec  # RETRO's rule


def _write(tmp_path, docs):
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return str(path)


def test_loss_mask_and_packing(chunk_index, tmp_path):
    from pretrain.data import open_tokens
    from rag.tokenizer import load_tokenizer

    out = tmp_path / "ralm"
    augment_pretrain(PretrainAugmentConfig(index=str(chunk_index), corpus=_write(tmp_path, DOCS), out=str(out),
                                           k=1, chunk_tokens=16, seq_len=64, max_ngram_overlap=1.0))
    tf = open_tokens(out)
    tok = load_tokenizer()
    eos = tok.token_to_id("[SEP]")
    assert tf.seq_len == 64 and len(tf.tokens) % 64 == 0 and tf.meta["eos_id"] == eos
    covered = np.zeros(len(tf.tokens), bool)
    for rec in inspect(out):
        start = rec["row"] * 64 + rec["offset"]
        ev, ch = rec["evidence_tokens"], rec["chunk_tokens"]
        assert rec["offset"] + ev + ch + 1 <= 64  # an example never crosses a row
        assert tf.loss_mask[start:start + ev].tolist() == [0] * ev  # evidence: read, not trained on
        assert tf.loss_mask[start + ev:start + ev + ch].tolist() == [1] * ch  # the chunk: trained on
        assert int(tf.tokens[start + ev + ch]) == eos and tf.loss_mask[start + ev + ch] == 0
        covered[start:start + ev + ch + 1] = True
    # every token outside an example is EOS padding with mask 0
    assert set(np.asarray(tf.tokens)[~covered].tolist()) <= {eos}
    assert not np.asarray(tf.loss_mask)[~covered].any()
    # the chunk tokens are the document's own tokens: first chunk of "a" = first 16 tokens of its text
    first = next(r for r in inspect(out) if r["doc_id"] == "a" and r["n"] == 0)
    s = first["row"] * 64 + first["offset"] + first["evidence_tokens"]
    assert np.asarray(tf.tokens[s:s + 16]).tolist() == tok.encode(DOCS[0]["text"])[:16]


def test_retriever_cache_and_predicate(xquad_index, tmp_path):
    qs = ["Who won Super Bowl 50?", "Where did the Normans come from?"]
    r = Retriever(xquad_index, cache=tmp_path / "cache")
    first = r.retrieve(qs, k=3)
    assert r.cache.misses == 2 and r.cache.hits == 0
    again = Retriever(xquad_index, cache=tmp_path / "cache")  # a new process would see the same file
    second = again.retrieve(qs, k=3)
    assert again.cache.hits == 2 and (second.ids == first.ids).all()
    assert first.documents[0][0]["title"] == "Super Bowl 50" and first.to_dicts()[0][0]["rank"] == 1
    # predicate: drop every paragraph of the Super Bowl article; over-fetch still returns k
    drop = same_source([{"Super Bowl 50"}, set()], key=lambda d: d["title"])
    res = r.retrieve(qs, k=3, exclude=drop)
    assert res.count(0) == 3 and all(d["title"] != "Super Bowl 50" for d in res.documents[0])
    assert (res.ids[1] == first.ids[1]).all()
    # id exclusion
    top = str(first.ids[0, 0])
    assert top not in r.retrieve(qs, k=3, exclude_ids={top}).ids[0]


def test_sft_cli_fields_determinism_and_exclusion(xquad_index, tmp_path, data_dir):
    from rag.cli import augment_main
    from rag.xquad import test_paragraph_ids

    excl = tmp_path / "test-ids.txt"
    excl.write_text("\n".join(sorted(test_paragraph_ids())))
    args = ["sft", "--index", str(xquad_index), "--data", "xquad-en:train", "--template", "docs", "-k", "3",
            "--exclude-ids", str(excl), "--distractor-fraction", "0.2", "--no-evidence-fraction", "0.1",
            "--limit", "120"]
    assert augment_main(args + ["--out", str(tmp_path / "a.jsonl")]) == 0
    assert augment_main(args + ["--out", str(tmp_path / "b.jsonl")]) == 0
    a = (tmp_path / "a.jsonl").read_text()
    assert a == (tmp_path / "b.jsonl").read_text()  # deterministic
    rows = [json.loads(line) for line in a.splitlines()]
    assert len(rows) == 120
    test_ids = test_paragraph_ids()
    modes = {m: [r for r in rows if r["mode"] == m] for m in ("evidence", "distractor", "none")}
    assert all(modes.values()), {m: len(v) for m, v in modes.items()}
    for r in rows:
        assert {"id", "prompt", "response", "evidence_ids"} <= r.keys()
        assert not set(r["evidence_ids"]) & test_ids
        for j, doc_id in enumerate(r["evidence_ids"], start=1):
            assert f"Doc {j} (Title: " in r["prompt"]
    for r in modes["distractor"]:
        assert r["response"].startswith("I could not find")
        assert r["gold_ids"][0] not in r["evidence_ids"]
    assert sum(r["gold_ids"][0] in r["evidence_ids"] for r in modes["evidence"]) > 0.7 * len(modes["evidence"])
    # another seed mixes differently
    assert augment_main(args + ["--seed", "1", "--out", str(tmp_path / "c.jsonl")]) == 0
    assert [json.loads(x)["mode"] for x in (tmp_path / "c.jsonl").read_text().splitlines()] != [r["mode"] for r in rows]


def test_contamination_check_finds_a_planted_overlap():
    evals = [{"id": "q1", "question": "What year did the Normans first arrive in Italy according to the chronicle?",
              "answers": ["999"]},
             {"id": "q2", "question": "Which river flows through the centre of the old town of Bern?",
              "answers": ["the Aare river valley"]},
             {"id": "q3", "question": "How many moons does the planet Neptune have today?", "answers": ["16"]}]
    train = [("t1", "User: Tell me about pastry.\nAssistant: Croissants are French."),
             # planted: q1's question, reworded only at the end, inside rendered evidence
             ("t2", "Search Results: [1] Page title: x\nWhat year did the Normans first arrive in Italy according "
                    "to the old chronicle? In 999."),
             # planted: q2's long answer inside a response
             ("t3", "The Aare river valley is green.")]
    findings, summary = check_contamination(evals, train, ngram=8, threshold=0.5, min_answer_words=3)
    by_id = {f.id: f for f in findings}
    # q1 normalised (articles dropped) is 11 words -> 4 8-grams; the record says "to old chronicle", so
    # only the last 8-gram ("normans ... according to chronicle") is missing: 3/4
    assert by_id["q1"].flagged_question and by_id["q1"].question_record == "t2"
    assert by_id["q1"].question_overlap == pytest.approx(3 / 4)
    assert by_id["q1"].flagged_answer  # "999" sits in the same record as the flagged question
    assert by_id["q2"].flagged_answer and not by_id["q2"].flagged_question  # long answer on its own
    assert not by_id["q3"].flagged_question and not by_id["q3"].flagged_answer
    assert summary["contaminated"] == 2


def test_passage_check_finds_a_planted_test_paragraph():
    # p1 is 16 words -> 4 13-grams; record t2 carries its first 15 words (3 of the 4 13-grams), t1 none
    p1 = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen"
    words = p1.split()
    train = [("t1", "nothing of the passage here at all"), ("t2", "prefix " + " ".join(words[:15]) + " suffix")]
    _, summary = check_contamination([], train, passages={"p1": p1, "p2": "an unrelated passage " * 5})
    assert summary["passages"] == 2 and summary["passages_flagged"] == 1
    assert summary["passage_overlap_max"] == pytest.approx(3 / 4)
    assert summary["passages_flagged_records"] == {"p1": "t2"}
    _, summary = check_contamination([], train[:1], passages={"p1": p1})
    assert summary["passages_flagged"] == 0 and summary["passage_overlap_max"] == 0.0


def test_xquad_split_is_by_article(data_dir):
    rows = load_xquad()
    train = {r["context"] for r in rows if r["split"] == "train"}
    test = [r for r in rows if r["split"] == "test"]
    assert not train & {r["context"] for r in test}
    assert not {r["title"] for r in rows if r["split"] == "train"} & {r["title"] for r in test}
    # 2026-11 mirrored XQuAD-en: 48 articles -> 10 test articles, 50 paragraphs, 244 questions
    assert (len({r["title"] for r in test}), len({r["context"] for r in test}), len(test)) == (10, 50, 244)
    assert len(xquad_corpus()) == 240 and len(xquad_corpus("test")) == 50


def test_every_rag_config_loads(tmp_path):
    from pretrain.config import load_config
    from rag.cli import CONFIGS
    import importlib

    root = Path(__file__).resolve().parents[2] / "configs" / "rag"
    files = sorted(root.glob("*.yaml"))
    assert files
    for path in files:
        first = path.read_text().splitlines()[0].lstrip("#").split()
        assert first[:2] == ["wandao", "augment"] and first[first.index("--config") + 1] == f"configs/rag/{path.name}"
        module, cls = CONFIGS[f"augment {first[2]}"].split(":")
        load_config(getattr(importlib.import_module(module), cls), path)


def test_batched_sft_records_equal_the_one_question_at_a_time_loop(xquad_index, data_dir):
    """What bench/bench_augment.py times: sft_records (batched retrieval, batched tokenisation) gives the
    same prompts and evidence as retrieve([q]) + render(example) per question, on cold caches each."""
    from rag.augment import sft_records
    from rag.data import iter_items
    from rag.templates import Example, Passage, get_template
    from rag.tokenizer import load_tokenizer

    items = list(iter_items("xquad-en:all"))[::20]  # 60 questions
    cfg = SFTAugmentConfig(index=str(xquad_index), data="-", out="-", k=3, batch_size=32)
    for name in ("sparrow", "lamda"):
        batched = list(sft_records(items, Retriever(xquad_index), get_template(name, load_tokenizer()), cfg))
        retriever, template = Retriever(xquad_index), get_template(name, load_tokenizer())
        for item, rec in zip(items, batched, strict=True):
            res = retriever.retrieve([" ".join(item.question.split())], k=3)
            ps = [Passage(h.doc_id, h.document["title"], h.document["text"], h.score) for h in res.hits(0)]
            r = template.render(Example(question=item.question, answer=item.answer, passages=ps))
            assert (rec["prompt"], rec["response"], rec["evidence_ids"]) == (r.prompt, r.response, r.evidence_ids)
            assert rec["scores"] == [round(p.score, 6) for p in ps][:len(r.evidence_ids)]
