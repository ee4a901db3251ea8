"""`wandao serve` command line: --demo says what is missing; shipped configs load; bad flags fail clearly."""

from pathlib import Path

from rag.serve.app import ServeConfig, find_demo, main
from rag.serve.contested import ContestedDetector
from rag.serve.moderation import Moderation

CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "serve"


def test_demo_reports_what_is_missing(tmp_path, capsys):
    assert main(["--demo", "--demo-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no generative model under" in err and "no index under" in err and "--model DIR" in err


def test_find_demo_picks_the_model_and_index(tmp_path):
    (tmp_path / "pretrain" / "final").mkdir(parents=True)
    for name in ("config.json", "tokenizer.json"):
        (tmp_path / "pretrain" / "final" / name).write_text("{}")
    (tmp_path / "rag" / "index").mkdir(parents=True)
    (tmp_path / "rag" / "index" / "manifest.json").write_text("{}")
    found, missing = find_demo(tmp_path)
    assert found == {"model": str(tmp_path / "pretrain" / "final"), "index": str(tmp_path / "rag" / "index")}
    assert missing == []
    (tmp_path / "ppo" / "model").mkdir(parents=True)  # the PPO policy wins once the demo has made it
    for name in ("config.json", "tokenizer_config.json"):
        (tmp_path / "ppo" / "model" / name).write_text("{}")
    assert find_demo(tmp_path)[0]["model"] == str(tmp_path / "ppo" / "model")


def test_shipped_configs_load():
    assert Moderation.from_yaml(CONFIGS / "moderation.yaml").cfg.action == "stop"
    d = ContestedDetector.from_yaml(CONFIGS / "contested.yaml")
    assert d.mode == "two-sided" and d.detect("Should we ban the DEATH  PENALTY?").id == "death-penalty"
    assert d.detect("What is the capital of France?") is None
    assert (CONFIGS / "operator.txt").read_text().startswith("# wandao serve")


def test_bad_settings_fail_with_the_flag_name(capsys):
    assert main(["--model", "x", "--max-concurrency", "0"]) == 2
    assert "--max-concurrency must be >= 1" in capsys.readouterr().err
    assert ServeConfig().host == "127.0.0.1"  # safe default: loopback only
