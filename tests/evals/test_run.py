"""Run folders: files, report layout, rebuilt reports with training curves, compare with significance."""

import json

import pytest

import evals
from evals.run import write_report

PNG = b"\x89PNG\r\n\x1a\n"


def test_retrieval_run_folder_and_report(beir_dir, tmp_path):
    out = tmp_path / "run-a"
    result = evals.run("retrieval", out=out, dataset=str(beir_dir), run=str(beir_dir / "run-a.trec"))
    for name in ("config.json", "metrics.json", "per_example.jsonl", "report.md", "metrics.png", "distribution.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "metrics.png").read_bytes()[:8] == PNG
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == result.metrics and metrics["queries"] == 3
    # -removeQuery drops "q1" from q1's run: d1 is first -> RR 1. q2: d4 first -> 1. q3: d3 never -> 0.
    assert metrics["mrr@10"] == pytest.approx(2 / 3)
    rows = [json.loads(l) for l in (out / "per_example.jsonl").read_text().splitlines()]
    assert {r["id"]: r["first_relevant_rank"] for r in rows} == {"q1": 1, "q2": 1, "q3": None}
    report = (out / "report.md").read_text()
    # headline table first, then plots, then worst cases (q3, nDCG 0, first)
    assert report.startswith("# retrieval eval\n\n| metric | value |")
    assert report.index("| ndcg@10 |") < report.index("![metrics](metrics.png)") < report.index("## Worst")
    worst = report.split("## Worst", 1)[1]
    assert worst.index("| q3 |") < worst.index("| q1 |")
    config = json.loads((out / "config.json").read_text())
    assert config["suite"] == "retrieval" and config["config"]["remove_query"] is True

    kept = evals.run("retrieval", out=tmp_path / "keep", dataset=str(beir_dir), run=str(beir_dir / "run-a.trec"),
                     remove_query=False)
    assert kept.metrics["mrr@10"] == pytest.approx((0.5 + 1) / 3)  # q1's own id now ranks first

    with pytest.raises(FileExistsError, match="--force"):
        evals.run("retrieval", out=out, dataset=str(beir_dir), run=str(beir_dir / "run-a.trec"))
    evals.run("retrieval", out=out, dataset=str(beir_dir), run=str(beir_dir / "run-a.trec"), force=True)
    # --force replaces run folders only, never e.g. an index that --out points at by mistake
    with pytest.raises(FileExistsError, match="not an eval run folder"):
        evals.run("retrieval", out=beir_dir, dataset=str(beir_dir), run=str(beir_dir / "run-a.trec"), force=True)
    assert (beir_dir / "corpus.jsonl").exists()


def test_report_rebuild_adds_training_curves(beir_dir, tmp_path):
    out = tmp_path / "run"
    evals.run("retrieval", out=out, dataset=str(beir_dir), run=str(beir_dir / "run-a.trec"))
    (out / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 4.0 / (s + 1), "lr": 1e-3}) + "\n"
                                               for s in range(0, 50, 10)))
    (out / "report.md").unlink()
    from wandao.cli import main

    assert main(["eval", "report", str(out)]) == 0
    assert (out / "curve-loss.png").read_bytes()[:8] == PNG
    assert "![loss](curve-loss.png)" in (out / "report.md").read_text()


def test_compare_two_runs(beir_dir, tmp_path, capsys):
    a = evals.run("retrieval", out=tmp_path / "bm25", dataset=str(beir_dir), run=str(beir_dir / "run-a.trec"))
    b = evals.run("retrieval", out=tmp_path / "dense", dataset=str(beir_dir), run=str(beir_dir / "run-b.trec"))
    from wandao.cli import main

    assert main(["eval", "compare", str(a.out), str(b.out), "--out", str(tmp_path / "cmp"), "--seed", "1"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["metrics"]["dense"]["mrr@10"] == pytest.approx(1.0)
    sig = last["significance"]["dense"]["mrr@10"]
    # only q3 differs (0 -> 1): d = (0, 0, 1), delta 1/3. Every sign flip keeps |mean d| = 1/3, so the
    # randomisation p is 1; t = (1/3) / (sd 0.57735 / sqrt 3) = 1.0 with 2 df -> p = 0.42265.
    assert sig["n"] == 3 and sig["delta"] == pytest.approx(1 / 3) and sig["p_randomization"] == 1.0
    assert sig["t"] == pytest.approx(1.0) and sig["p_ttest"] == pytest.approx(0.42265, abs=1e-5)
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| metric | bm25 | dense |" in md and (tmp_path / "cmp" / "compare.png").read_bytes()[:8] == PNG
    assert write_report(a.out).name == "report.md"


def test_training_run_folders_report_and_compare(tmp_path):
    """Training folders hold only metrics.jsonl (pretrain's MetricsLogger: step, kind, metrics)."""
    from evals.run import compare

    runs = []
    for name, scale in (("before", 1.0), ("after", 0.5)):
        d = tmp_path / name
        d.mkdir()
        lines = [{"step": s, "kind": "train", "loss": scale * 4 / (s + 1), "lr": 1e-3} for s in range(0, 40, 10)]
        lines += [{"step": s, "kind": "eval", "val_loss": scale * 5 / (s + 1)} for s in (0, 30)]
        (d / "metrics.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))
        runs.append(d)
    report = write_report(runs[0]).read_text()
    assert "![loss](curve-loss.png)" in report and "![val_loss](curve-val_loss.png)" in report
    assert "| val_loss | 0.1613 |" in report  # the last eval value, 5 / 31
    result = compare(runs, tmp_path / "cmp")
    assert result["metrics"]["after"]["loss"] == pytest.approx(0.5 * 4 / 31)
    assert (tmp_path / "cmp" / "compare-curve-loss.png").read_bytes()[:8] == PNG
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "## Training curves" in md and "| loss | 0.1290 | 0.0645 |" in md
