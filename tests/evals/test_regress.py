"""Regression expectations: statuses, the YAML file, and a planted out-of-tolerance value."""

import json

import pytest
import yaml

from evals.regress import DEFAULT_FILE, load_regressions, status
from indexer.data import DataError
from wandao.cli import main


def test_status_boundaries():
    assert status(0.6789, 0.6789, 0.001) == "OK"
    assert status(0.6799, 0.6789, 0.001) == "OK"       # exactly tol away
    assert status(0.6800, 0.6789, 0.001) == "OKish"    # 1.1 x tol
    assert status(0.6809, 0.6789, 0.001) == "OKish"    # exactly 2 x tol
    assert status(0.6810, 0.6789, 0.001) == "FAIL"
    assert status(None, 0.6789, 0.001) == "FAIL"


def test_seeded_file_has_the_anchors():
    regs = {r.name: r for r in load_regressions(DEFAULT_FILE)}
    bm25 = {e.metric: (e.value, e.tol) for e in regs["scifact-bm25-flat"].expected}
    assert bm25 == {"ndcg@10": (0.6789, 0.001), "recall@100": (0.9253, 0.002)}
    assert {e.metric: (e.value, e.tol) for e in regs["scifact-dense-minilm"].expected} == {"ndcg@10": (0.6451, 0.005)}
    from evals.config import build_config
    from evals.suites import get_suite

    for r in regs.values():  # every entry's config loads into its suite's dataclass
        build_config(get_suite(r.suite).Config, r.config)


def test_planted_value_is_flagged(beir_dir, tmp_path, capsys):
    # run-a on the fixture: mrr@10 = 2/3 (see test_run), recall@100 = 2/3
    entries = [
        {"name": "ok", "suite": "retrieval", "config": {"dataset": str(beir_dir), "run": str(beir_dir / "run-a.trec")},
         "expected": {"mrr@10": {"value": 0.6667, "tol": 0.001}}},
        {"name": "okish", "suite": "retrieval", "config": {"dataset": str(beir_dir), "run": str(beir_dir / "run-a.trec")},
         "expected": {"recall@100": {"value": 0.6680, "tol": 0.001}}},   # 1.3 x tol away
        {"name": "planted", "suite": "retrieval", "config": {"dataset": str(beir_dir), "run": str(beir_dir / "run-a.trec")},
         "expected": {"mrr@10": {"value": 0.7000, "tol": 0.001}}},       # 33 x tol away
    ]
    path = tmp_path / "regressions.yaml"
    path.write_text(yaml.safe_dump({"regressions": entries}))
    rc = main(["eval", "regress", "--file", str(path), "--out-root", str(tmp_path / "runs")])
    out = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(out[-1])
    assert rc == 1 and summary["results"] == {"ok": "OK", "okish": "OKish", "planted": "FAIL"}
    assert any("planted" in line and "FAIL" in line for line in out)
    assert main(["eval", "regress", "--file", str(path), "--only", "ok", "--out-root", str(tmp_path / "runs")]) == 0
    capsys.readouterr()
    broken = {"regressions": [dict(entries[0], expected={"mrr@10": {"value": "high", "tol": 0.1}})]}
    path.write_text(yaml.safe_dump(broken))
    with pytest.raises(DataError, match=r"expected.mrr@10"):
        load_regressions(path)
