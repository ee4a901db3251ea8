"""`wandao demo`: stage bookkeeping (resume, --redo, stale inputs, changed settings) on hand-made stages,
and the real `--quick` pipeline end to end, interrupted after SFT and resumed."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from wandao import demo

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def fake_stages(monkeypatch):
    """Every stage replaced by one that records its call; the dependency table stays the real one."""
    calls: list[str] = []

    def make(name):
        def stage(ctx):
            calls.append(name)
            return {"name": name}
        return stage

    monkeypatch.setattr(demo, "STAGES", [(name, make(name)) for name in demo.STAGE_NAMES])
    monkeypatch.setattr(demo, "summarize", lambda out, minutes: {"minutes": minutes})
    return calls


def test_second_run_reuses_and_redo_reruns_the_stage_and_its_readers(tmp_path, fake_stages):
    cfg = demo.DemoConfig(out=str(tmp_path))
    demo.run_demo(cfg, stop_after="sft")
    assert fake_stages == demo.STAGE_NAMES[:demo.STAGE_NAMES.index("sft") + 1]
    fake_stages.clear()
    demo.run_demo(cfg)  # resumes: only what the interrupted run had not done
    assert fake_stages == ["rm", "ppo", "eval", "report", "serve"]
    fake_stages.clear()
    demo.run_demo(cfg)
    assert fake_stages == []
    demo.run_demo(cfg, redo={"rm"})  # rm feeds ppo; ppo feeds eval and serve; all of them feed the report
    assert fake_stages == ["rm", "ppo", "eval", "report", "serve"]
    fake_stages.clear()
    demo.run_demo(cfg, redo={"search"})  # nothing reads the example queries but the report
    assert fake_stages == ["search", "report"]


def test_changed_settings_rerun_exactly_the_stages_they_feed(tmp_path, fake_stages):
    demo.run_demo(demo.DemoConfig(out=str(tmp_path)))
    fake_stages.clear()
    cfg = demo.DemoConfig(out=str(tmp_path))
    cfg.rm.max_steps = 7
    demo.run_demo(cfg)
    assert fake_stages == ["rm", "ppo", "eval", "report", "serve"]
    fake_stages.clear()
    cfg.eval.moderation_limit = 5
    demo.run_demo(cfg)
    assert fake_stages == ["eval", "report"]


def test_unknown_stage_names_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown stage"):
        demo.run_demo(demo.DemoConfig(out=str(tmp_path)), redo={"pretrian"})


def test_presets_load_and_flags_override(tmp_path):
    for mode in ("quick", "default", "full"):
        cfg = demo.load_preset(mode)
        assert cfg.sft.total_tokens + 64 < cfg.pretrain.block_size  # the evidence prompt fits the context
    cfg = demo.load_preset("quick", {"pretrain.max_iters": "7", "out": str(tmp_path)})
    assert cfg.pretrain.max_iters == 7 and cfg.out == str(tmp_path)


def test_headline_verdict_states_the_numbers():
    from wandao.demo_report import headline_verdict

    assert "NOT met" in headline_verdict(2.0, 19.9) and "9.95x" in headline_verdict(2.0, 19.9)
    assert "MET" in headline_verdict(6.0, 21.0) and "3.50x" in headline_verdict(6.0, 21.0)
    assert "NOT met" in headline_verdict(8.0, 21.0)  # 2.6x is under 3x
    assert "closed-book F1 is 0" in headline_verdict(0.0, 0.0)


def _demo(out: Path, *args: str) -> list[str]:
    env = {**os.environ, "WANDAO_NO_PROGRESS": "1"}
    proc = subprocess.run([sys.executable, "-m", "wandao.cli", "demo", "--quick", "--out", str(out), *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory, data_dir):
    """The quick demo, interrupted after SFT and run again: (first run's lines, second run's lines, out)."""
    out = tmp_path_factory.mktemp("demo") / "run"
    first = _demo(out, "--stop-after", "sft")
    second = _demo(out)
    return first, second, out


def test_quick_demo_is_resumable(quick_demo):
    first, second, out = quick_demo
    assert any("stopped after sft" in line for line in first)
    for name in ("indexes", "retrieval", "search", "pretrain", "augment", "sft"):
        assert any(line.startswith(f"[{name}] reused") for line in second), name
    for name in ("rm", "ppo", "eval", "report", "serve"):
        assert any(line.startswith(f"[{name}] running") for line in second), name


def test_quick_demo_summary_line(quick_demo):
    _, second, out = quick_demo
    summary = json.loads(second[-1])
    for key in ("f1_closed_book", "f1_retrieval_sft", "f1_retrieval_ppo", "attribution_rate", "rm_accuracy",
                "moderation_leaks", "contamination_overlaps", "minutes"):
        assert key in summary and summary[key] is not None, key
    assert 0.0 <= summary["f1_retrieval_sft"] <= 100.0 and 0.0 <= summary["rm_accuracy"] <= 1.0
    assert summary["moderation_leaks"] == 0  # the shipped moderation config leaks nothing on its own eval
    assert 0.0 <= summary["attribution_rate"] <= 1.0 and 0.0 <= summary["abstained_ppo"] <= 1.0
    assert summary["bm25_ndcg@10"] == pytest.approx(0.6789, abs=5e-5)  # Anserini's SciFact number
    assert summary["test_paragraphs_in_training"] == 0


def test_quick_demo_artifacts(quick_demo):
    _, _, out = quick_demo
    for path in ("indexes/scifact/manifest.json", "indexes/xquad/manifest.json", "rag/index/manifest.json",
                 "rag/train-index/manifest.json", "pretrain/tokenizer/tokenizer.json", "pretrain/ralm/meta.json",
                 "pretrain/final/config.json", "pretrain/run/loss.png", "rag/xquad-sft-evidence.jsonl",
                 "rag/xquad-sft-closed-book.jsonl", "sft/evidence/model/config.json",
                 "sft/closed-book/model/config.json", "rm/config.json", "ppo/model/config.json", "ppo/curves.png",
                 "eval/qa-closed_book/metrics.json", "eval/qa-retrieval_sft/per_example.jsonl",
                 "eval/attribution-retrieval_ppo/metrics.json", "eval/moderation/metrics.json",
                 "eval/perplexity/metrics.json", "plots/headline_f1.png", "plots/timings.png", "report.md"):
        assert (out / path).exists(), path
    rows = [json.loads(line) for line in (out / "eval" / "qa-retrieval_sft" / "per_example.jsonl").open()]
    # nearly every test question was shown evidence (a passage whose title alone overflows its budget is dropped)
    assert len(rows) == 244 and sum(bool(r["passages"]) for r in rows) >= 240
    closed = [json.loads(line) for line in (out / "rag" / "xquad-sft-closed-book.jsonl").open()]
    assert all(not r["evidence_ids"] and "Search Results" not in r["prompt"] for r in closed)


def test_quick_demo_trains_without_any_test_paragraph(quick_demo):
    from indexer import open_index
    from rag.xquad import test_paragraph_ids

    _, _, out = quick_demo
    test_ids = test_paragraph_ids()
    train_ids = {d["id"] for d in open_index(out / "rag" / "train-index").docstore}
    eval_ids = {d["id"] for d in open_index(out / "rag" / "index").docstore}
    assert len(test_ids) == 50 and train_ids.isdisjoint(test_ids) and test_ids <= eval_ids
    assert eval_ids - train_ids == test_ids
    used = {i for line in (out / "rag" / "xquad-sft-evidence.jsonl").open() for i in json.loads(line)["evidence_ids"]}
    assert used and used.isdisjoint(test_ids)


def test_quick_demo_report_and_server(quick_demo):
    _, second, out = quick_demo
    report = (out / "report.md").read_text()
    assert "| system | EM | F1 | citation recall | citation precision |" in report
    for label in ("| closed-book SFT |", "| retrieval SFT |", "| retrieval SFT + PPO |", "## Stage timings"):
        assert label in report
    serve = json.loads((out / "stages" / "serve.json").read_text())["result"]
    assert serve["moderated_finish_reason"] == "content_filter" and serve["moderation_events"] >= 1
    assert serve["citations"]  # the streamed answer came with its retrieved passages
