"""Index directories: manifest, atomic builds, refusal to overwrite, incremental add, mismatch errors, CLI."""

import json

import pytest

from indexer.data import DataError
from indexer.index import BuildOptions, IndexMismatchError, add_documents, build_index, open_index
from indexer.io import OutputExistsError
from wandao.cli import main

DOCS = [
    {"id": "d1", "title": "Solar power", "text": "Photovoltaic cells turn sunlight into electricity."},
    {"id": "d2", "title": "Wind power", "text": "Wind turbines turn moving air into electricity."},
    {"id": "d3", "title": "Tides", "text": "The moon's gravity drives the tides of the ocean."},
    {"id": "d4", "title": "Coal", "text": "Burning coal releases carbon dioxide and heat."},
]


def write_corpus(path, docs):
    path.write_text("".join(json.dumps({"_id": d["id"], "title": d["title"], "text": d["text"]}) + "\n"
                            for d in docs))
    return path


def test_build_writes_manifest_and_docstore(tmp_path):
    index = build_index(DOCS, tmp_path / "idx")
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["format"] == "wandao-index" and manifest["corpus"]["documents"] == 4
    assert manifest["backends"]["bm25"]["analyzer"]["name"] == "lucene-english-v1"
    assert len(manifest["corpus"]["fingerprint"]) == 64 and "numpy" in manifest["versions"]
    results = index.retrieve(["electricity from sunlight"], k=2, with_documents=True)
    assert list(results.ids[0]) == ["d1", "d2"]
    assert results.documents[0][0]["title"] == "Solar power"


def test_refuses_overwrite_and_leaves_nothing_on_failure(tmp_path):
    build_index(DOCS, tmp_path / "idx")
    with pytest.raises(OutputExistsError, match="--force"):
        build_index(DOCS, tmp_path / "idx")
    bad = write_corpus(tmp_path / "bad.jsonl", DOCS[:1])
    with open(bad, "a") as f:
        f.write('{"_id": "x", "text": \n')
    with pytest.raises(DataError, match="line 2"):
        build_index(bad, tmp_path / "idx2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "idx"]


def test_add_equals_full_rebuild(tmp_path):
    build_index(DOCS[:2], tmp_path / "inc")
    extra = write_corpus(tmp_path / "extra.jsonl", DOCS[2:])
    added = add_documents(tmp_path / "inc", extra)
    full = build_index(DOCS, tmp_path / "full")
    queries = ["electricity", "the ocean tides and the moon", "carbon heat"]
    a, b = added.retrieve(queries, k=4), full.retrieve(queries, k=4)
    assert (a.ids == b.ids).all() and (a.scores == b.scores).all()
    assert added.fingerprint == full.fingerprint
    with pytest.raises(DataError, match="already in the index"):
        add_documents(tmp_path / "inc", extra)


def test_mismatched_analyzer_or_model_fails_clearly(tmp_path):
    build_index(DOCS, tmp_path / "idx")
    assert open_index(tmp_path / "idx", analyzer="lucene-english-v1").backends == ["bm25"]
    with pytest.raises(IndexMismatchError, match="built with analyzer"):
        open_index(tmp_path / "idx", analyzer="whitespace-v1")
    with pytest.raises(IndexMismatchError, match="no dense backend"):
        open_index(tmp_path / "idx", model="all-MiniLM-L6-v2")
    with pytest.raises(IndexMismatchError, match="rebuild with --dense"):
        open_index(tmp_path / "idx").retrieve(["x"], retriever="dense")
    with pytest.raises(FileNotFoundError, match="not a wandao index"):
        open_index(tmp_path)


def test_cli_build_search_and_bad_input(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "c.jsonl", DOCS)
    assert main(["index", "build", "--corpus", str(corpus), "--out", str(tmp_path / "idx")]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["documents"] == 4
    assert main(["search", "--index", str(tmp_path / "idx"), "-k", "1", "--json", "wind turbines"]) == 0
    line = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert line["query"] == "wind turbines" and line["hits"][0]["id"] == "d2"
    assert main(["index", "build", "--corpus", str(corpus), "--out", str(tmp_path / "idx")]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    dup = write_corpus(tmp_path / "dup.jsonl", DOCS + DOCS[:1])
    assert main(["index", "build", "--corpus", str(dup), "--out", str(tmp_path / "dup")]) == 2
    assert "line 5 (field '_id'): duplicate document id 'd1'; pass --dedupe" in capsys.readouterr().err
    assert main(["index", "build", "--corpus", str(dup), "--out", str(tmp_path / "dup"), "--dedupe"]) == 0
