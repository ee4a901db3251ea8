"""Readers and every bad-input case of the indexer: each error names the file, line and field."""

import gzip
import json

import pytest

from indexer.chunking import chunk_documents, chunk_text
from indexer.data import DataError, beir_paths, iter_corpus, load_qrels, load_queries, read_corpus
from indexer.datasets import DATASETS, DatasetNotFoundError, resolve
from indexer.io import OutputExistsError, atomic_directory
from indexer.results import Results


def write(path, lines, gz=False):
    data = "".join(lines).encode("utf-8") if isinstance(lines[0], str) else b"".join(lines)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def test_beir_and_pyserini_layouts(tmp_path):
    beir = write(tmp_path / "c.jsonl.gz", ['{"_id": "d1", "title": "T", "text": "x"}\n', "\n",
                                           '{"_id": 2, "title": "", "text": "y", "metadata": {"a": 1}}\n'], gz=True)
    assert read_corpus(beir) == [{"id": "d1", "title": "T", "text": "x"},
                                 {"id": "2", "title": "", "text": "y", "metadata": {"a": 1}}]
    pyserini = write(tmp_path / "p.jsonl", ['{"id": "a", "contents": "hello"}\n'])
    assert read_corpus(pyserini) == [{"id": "a", "title": "", "text": "hello"}]


def test_hf_dataset_and_parquet(tmp_path):
    from datasets import Dataset

    ds = Dataset.from_list([{"_id": "h1", "title": "t", "text": "one"}, {"_id": "h2", "title": "", "text": "two"}])
    ds.save_to_disk(str(tmp_path / "hf"))
    ds.to_parquet(str(tmp_path / "c.parquet"))
    expected = [{"id": "h1", "title": "t", "text": "one"}, {"id": "h2", "title": "", "text": "two"}]
    assert read_corpus(tmp_path / "hf") == expected
    assert read_corpus(tmp_path / "c.parquet") == expected


def test_malformed_json_names_file_and_line(tmp_path):
    path = write(tmp_path / "bad.jsonl", ['{"_id": "1", "text": "ok"}\n', '{"_id": "2", "text": \n'])
    with pytest.raises(DataError, match=r"bad\.jsonl, line 2: malformed JSON"):
        read_corpus(path)


def test_missing_fields_are_named(tmp_path):
    no_id = write(tmp_path / "a.jsonl", ['{"title": "t", "text": "x"}\n'])
    with pytest.raises(DataError, match=r"line 1 \(field '_id'\): missing document id"):
        read_corpus(no_id)
    no_text = write(tmp_path / "b.jsonl", ['{"_id": "1", "text": "x"}\n', '{"_id": "2", "title": "t"}\n'])
    with pytest.raises(DataError, match=r"line 2 \(field 'text'\): missing document text"):
        read_corpus(no_text)
    bad_type = write(tmp_path / "c.jsonl", ['{"_id": "1", "text": 5}\n'])
    with pytest.raises(DataError, match=r"field 'text'\): text must be a string"):
        read_corpus(bad_type)


def test_duplicate_ids_fail_unless_dedupe(tmp_path):
    path = write(tmp_path / "d.jsonl", ['{"_id": "1", "text": "a"}\n', '{"_id": "1", "text": "b"}\n'])
    with pytest.raises(DataError, match=r"line 2 .*duplicate document id '1'; pass --dedupe"):
        read_corpus(path)
    assert [d["text"] for d in read_corpus(path, dedupe=True)] == ["a"]


def test_empty_corpus_and_non_utf8(tmp_path):
    empty = write(tmp_path / "e.jsonl", ["\n"])
    with pytest.raises(DataError, match="the corpus is empty"):
        read_corpus(empty)
    latin = write(tmp_path / "l.jsonl", [b'{"_id": "1", "text": "ok"}\n', b'{"_id": "2", "text": "caf\xe9"}\n'])
    with pytest.raises(DataError, match=r"l\.jsonl, line 2: not valid UTF-8 \(byte 0xe9"):
        read_corpus(latin)


def test_missing_files_and_qrels(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.jsonl: file or folder not found"):
        list(iter_corpus(tmp_path / "nope.jsonl"))
    folder = tmp_path / "beir"
    folder.mkdir()
    write(folder / "corpus.jsonl", ['{"_id": "1", "text": "a"}\n'])
    write(folder / "queries.jsonl", ['{"_id": "q", "text": "a"}\n'])
    with pytest.raises(DataError, match=r"qrels file for split 'test' not found"):
        beir_paths(folder)
    (folder / "qrels").mkdir()
    write(folder / "qrels" / "test.tsv", ["query-id\tcorpus-id\tscore\n", "q\t1\t1\n"])
    corpus, queries, qrels = beir_paths(folder)
    assert load_queries(queries) == {"q": "a"} and load_qrels(qrels) == {"q": {"1": 1}}
    bad = write(tmp_path / "bad.tsv", ["q\t1\tx\n"])
    with pytest.raises(DataError, match=r"line 1 \(field 'score'\)"):
        load_qrels(bad)


def test_registry_names_sources_and_reports_missing(tmp_path, monkeypatch, data_dir):
    assert resolve("scifact") == data_dir / "scifact"
    for info in DATASETS.values():
        assert info.source.startswith("http") and info.license
    monkeypatch.setenv("WANDAO_DATA_DIR", str(tmp_path))
    with pytest.raises(DatasetNotFoundError, match=r"dataset 'wikitext-2' is missing from .* get it from"):
        resolve("wikitext-2")
    with pytest.raises(DatasetNotFoundError, match="neither an existing path nor a registered dataset"):
        resolve("no-such-set")


def test_scifact_reads_whole(data_dir):
    docs = read_corpus("scifact")
    assert len(docs) == 5183 and set(docs[0]) >= {"id", "title", "text"}
    corpus, queries, qrels = beir_paths("scifact")
    assert len(load_qrels(qrels)) == 300 and len(load_queries(queries)) == 1109


def test_atomic_directory_leaves_nothing_on_failure(tmp_path):
    out = tmp_path / "idx"
    with pytest.raises(RuntimeError):
        with atomic_directory(out) as tmp:
            (tmp / "half").write_text("x")
            raise RuntimeError("interrupted")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with atomic_directory(out) as tmp:
        (tmp / "done").write_text("x")
    with pytest.raises(OutputExistsError, match="--force"):
        with atomic_directory(out):
            pass
    with atomic_directory(out, force=True) as tmp:
        (tmp / "new").write_text("y")
    assert sorted(p.name for p in out.iterdir()) == ["new"]


def test_chunking_keeps_ids_and_offsets():
    text = "one two three four five"
    # windows of 2 words with 1 shared: [one two] [two three] [three four] [four five]
    assert chunk_text(text, 2, 1) == [(0, 7), (4, 13), (8, 18), (14, 23)]
    passages = list(chunk_documents([{"id": "d", "title": "T", "text": text}], max_tokens=3, overlap=0))
    assert [(p["id"], p["doc_id"], p["text"]) for p in passages] == [("d#0", "d", "one two three"),
                                                                     ("d#1", "d", "four five")]
    assert all(text[p["start"]:p["end"]] == p["text"] for p in passages)
    with pytest.raises(ValueError, match="overlap"):
        chunk_text(text, 2, 2)


def test_results_padding_and_trec(tmp_path):
    r = Results.from_lists([["a", "b"], ["c"]], [[2.0, 1.0], [0.5]], k=3)
    assert r.ids.shape == (2, 3) and r.count(1) == 1
    assert r.to_run(["q1", "q2"]) == {"q1": {"a": 2.0, "b": 1.0}, "q2": {"c": 0.5}}
    r.write_trec(tmp_path / "run.trec", ["q1", "q2"])
    assert (tmp_path / "run.trec").read_text().splitlines()[2] == "q2 Q0 c 1 0.500000 wandao"


def test_text_corpora_read_as_documents(tmp_path, data_dir):
    docs = list(iter_corpus("wikitext-2"))  # the validation split, one document per top-level heading
    assert docs[0]["id"] == "wiki.valid.raw:0" and docs[0]["title"] == "Homarus gammarus"
    assert len({d["id"] for d in docs}) == len(docs) and all(d["text"] for d in docs)
    # other text: blank-line paragraphs grouped to >= 2,000 characters, the remainder last
    text = tmp_path / "notes.txt"
    text.write_text("\n\n".join(["a" * 1500, "b" * 600, "c" * 10]) + "\n", encoding="utf-8")
    assert [(d["id"], len(d["text"])) for d in iter_corpus(text)] == [("notes.txt:0", 1500 + 2 + 600),
                                                                      ("notes.txt:1", 10)]
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"caf\xe9\n")
    with pytest.raises(DataError, match=r"latin1.txt.*not UTF-8 text \(byte 3\)"):
        list(iter_corpus(bad))


def test_index_build_takes_a_text_corpus_by_name(tmp_path, data_dir):
    from indexer import build_index

    index = build_index("tinyshakespeare", tmp_path / "idx", bm25=True)
    assert index.manifest["corpus"]["documents"] == len(list(iter_corpus("tinyshakespeare"))) == 492
    assert index.retrieve(["wherefore art thou Romeo"], k=1).ids[0][0].startswith("input.txt:")
