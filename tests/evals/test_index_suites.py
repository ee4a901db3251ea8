"""retrieval and odqa-retrieval through a real index (embedded BM25), and the SciFact anchors (slow)."""

import json

import pytest

pytest.importorskip("indexer.bm25", reason="the embedded BM25 (indexer/bm25.py) has not landed yet")

import evals  # noqa: E402
from indexer.index import build_index  # noqa: E402


def test_retrieval_with_an_index_removes_the_query_id(beir_dir, tmp_path):
    build_index(str(beir_dir), tmp_path / "idx", bm25=True)
    res = evals.run("retrieval", out=tmp_path / "run", index=str(tmp_path / "idx"), dataset=str(beir_dir), k=10,
                    run_out=str(tmp_path / "run.trec"))
    rows = {r["id"]: r for r in res.per_example}
    assert res.metrics["queries"] == 3
    assert "q1" not in rows["q1"]["top"] and rows["q1"]["first_relevant_rank"] == 1
    kept = evals.run("retrieval", out=tmp_path / "keep", index=str(tmp_path / "idx"), dataset=str(beir_dir), k=10,
                     remove_query=False)
    assert {r["id"]: r for r in kept.per_example}["q1"]["top"][0] == "q1"  # the doc sharing the query's id
    assert "q1 Q0 q1 " not in (tmp_path / "run.trec").read_text()


def test_odqa_retrieval_top_k(tmp_path):
    passages = [{"id": "p1", "title": "", "text": "The Denver Broncos won Super Bowl 50."},
                {"id": "p2", "title": "", "text": "Levi's Stadium is in Santa Clara, California."},
                {"id": "p3", "title": "", "text": "Super Bowl 50 was played at Levi's Stadium."}]
    build_index(passages, tmp_path / "idx", bm25=True)
    qa = [{"id": "a", "question": "Who won Super Bowl 50?", "answers": {"text": ["Denver Broncos"]}},
          {"id": "b", "question": "Where is Levi's Stadium?", "answers": {"text": ["Santa Clara"]}},
          {"id": "c", "question": "What colour is the sky?", "answers": {"text": ["blue"]}}]
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(q) + "\n" for q in qa))
    res = evals.run("odqa-retrieval", out=tmp_path / "run", index=str(tmp_path / "idx"), dataset=str(path), ks=[1, 3])
    ranks = {r["id"]: r["first_hit_rank"] for r in res.per_example}
    assert ranks["c"] is None and ranks["a"] in (1, 2) and ranks["b"] in (1, 2)
    assert res.metrics["top@3"] == pytest.approx(200 / 3) and res.metrics["questions"] == 3


@pytest.mark.slow
def test_scifact_bm25_anchor_through_regress(tmp_path, capsys, data_dir):
    """Anserini beir-v1.0.0-scifact.flat: nDCG@10 0.6789 ± 0.001, recall@100 0.9253 ± 0.002."""
    import yaml

    from evals.regress import DEFAULT_FILE
    from wandao.cli import main

    entries = yaml.safe_load(DEFAULT_FILE.read_text())["regressions"]
    entry = next(e for e in entries if e["name"] == "scifact-bm25-flat")
    entry["config"]["index"] = str(tmp_path / "scifact-bm25")
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"regressions": [entry]}))
    rc = main(["eval", "regress", "--file", str(path), "--out-root", str(tmp_path / "runs")])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 0 and summary["results"] == {"scifact-bm25-flat": "OK"}
