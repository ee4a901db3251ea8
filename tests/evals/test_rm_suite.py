"""The ``rm`` eval suite on a tiny, locally built reward model (random 2-layer BERT + scalar head)."""

import json
from pathlib import Path

import pytest
import torch

from align.reward import ModelSection, build_reward_model, evaluate, load_reward_model, score
from evals.run import run


@pytest.fixture(scope="module")
def tiny_rm(tmp_path_factory) -> Path:
    """An RM folder as ``wandao rm train`` writes it, untrained: a 2-layer BERT (hidden 32) with MiniLM's
    tokenizer, a fresh head and ``config.wandao_rm`` (sparrow template, offset 0.25)."""
    from transformers import BertConfig, BertModel

    from align.reward import minilm_path

    torch.manual_seed(0)
    backbone = tmp_path_factory.mktemp("tiny-bert")
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(str(backbone))
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(str(backbone))
    rm = build_reward_model(ModelSection(backbone=str(backbone)), seed=0)
    out = tmp_path_factory.mktemp("rm") / "tiny-rm"
    rm.model.config.wandao_rm = {"template": "sparrow@1", "max_length": 64, "min_prompt_tokens": 16,
                                 "pooling": "cls", "reward_offset": 0.25}
    rm.model.save_pretrained(str(out))
    rm.tokenizer.save_pretrained(str(out))
    return out


GOOD, BAD = "Simmer the egg for nine minutes, then cool it in cold water.", "No."


@pytest.fixture
def prefs(tmp_path) -> Path:
    """Three comparisons with one prompt whose outcome does not depend on the weights:
    the same pair both ways round (exactly one of the two is correct, margins ±d) and a response
    against itself (a tie, margin 0)."""
    rows = [{"id": "fwd", "prompt": "How do I boil an egg?", "chosen": GOOD, "rejected": BAD},
            {"id": "rev", "prompt": "How do I boil an egg?", "chosen": BAD, "rejected": GOOD},
            {"id": "same", "prompt": "How do I boil an egg?", "chosen": GOOD, "rejected": GOOD}]
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_rm_suite_counts_ties_apart_and_matches_align_reward(tiny_rm, prefs, tmp_path):
    result = run("rm", out=tmp_path / "run", model=str(tiny_rm), data=[str(prefs)], split="all")
    m = result.metrics
    r_good, r_bad = score(tiny_rm, [("How do I boil an egg?", GOOD), ("How do I boil an egg?", BAD)])
    d = r_good - r_bad
    assert abs(d) > 1e-6  # the two responses get different rewards, so exactly one of fwd/rev is correct
    assert m["pairs"] == 3 and m["ties"] == 1 and m["correct"] == 1  # fwd or rev, never the self-pair
    assert m["accuracy"] == pytest.approx(1 / 3)  # ties count as not correct
    assert m["accuracy_ties_half"] == pytest.approx(0.5)  # (1 + 0.5) / 3
    assert m["mean_margin"] == pytest.approx(0.0, abs=1e-9)  # (d - d + 0) / 3
    # rewards: (good, bad) + (bad, good) + (good, good) responses, offset 0.25 already subtracted
    flat = [r_good, r_bad, r_bad, r_good, r_good, r_good]
    assert m["reward_mean"] == pytest.approx(float(torch.tensor(flat).mean()), abs=1e-6)
    std = float(torch.tensor(flat, dtype=torch.float64).std(unbiased=False))
    assert m["reward_std"] == pytest.approx(std, abs=1e-6)
    assert m["reward_offset"] == 0.25
    # per example: prompt, both rewards and the margin, one row per comparison
    rows = {r["id"]: r for r in result.per_example}
    assert set(rows) == {"fwd", "rev", "same"}
    assert rows["fwd"]["prompt"] == "How do I boil an egg?"
    assert rows["fwd"]["reward_chosen"] == pytest.approx(r_good, abs=1e-6)
    assert rows["fwd"]["margin"] == pytest.approx(d, abs=1e-6) and rows["rev"]["margin"] == pytest.approx(-d, abs=1e-6)
    assert rows["same"]["tie"] and rows["same"]["margin"] == 0.0 and not rows["same"]["correct"]
    # the same numbers as wandao rm eval's library function
    direct = evaluate(load_reward_model(tiny_rm), prefs)
    for k in ("accuracy", "ties", "pairs", "ece", "mean_margin", "reward_mean"):
        assert m[k] == pytest.approx(direct[k], abs=1e-9), k
    # the run folder
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"config.json", "metrics.json", "per_example.jsonl", "report.md", "metrics.png"} <= files
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["ties"] == 1


def test_rm_suite_test_split_and_several_sources_via_cli(tiny_rm, tmp_path, capsys, data_dir):
    """``--split test`` keeps only the held-out prompts of the RM module's 80/20 split; two sources
    get per-source numbers and pooled ones."""
    import gzip

    from align.preference_data import read_preferences, split_by_prompt
    from wandao.cli import main as wandao_main

    src = data_dir / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"
    path = tmp_path / "hh.jsonl.gz"
    with gzip.open(src, "rt") as f, gzip.open(path, "wt") as g:
        for _ in range(30):
            g.write(f.readline())
    expected = split_by_prompt(read_preferences(path), "test")
    assert 0 < len(expected) < 30
    own = tmp_path / "own.jsonl"
    own.write_text(json.dumps({"prompt": "Hi?", "chosen": "Hello!", "rejected": "Go away."}) + "\n")
    code = wandao_main(["eval", "rm", "--model", str(tiny_rm), "--data", str(path), str(own), "--split", "all",
                        "--out", str(tmp_path / "all"), "--json"])
    assert code == 0
    all_m = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert all_m["pairs"] == 31 and all_m["pairs/" + str(own)] == 1 and all_m["pairs/" + str(path)] == 30
    code = wandao_main(["eval", "rm", "--model", str(tiny_rm), "--data", str(path), "--out", str(tmp_path / "test"),
                        "--json"])  # the default split is test
    assert code == 0
    test_m = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert test_m["split"] == "test" and test_m["pairs"] == len(expected)
    ids = [json.loads(x)["id"] for x in (tmp_path / "test" / "per_example.jsonl").read_text().splitlines()]
    assert ids == [r.id for r in expected]


def test_rm_suite_errors_name_the_problem(tiny_rm, tmp_path, capsys):
    from wandao.cli import main as wandao_main

    assert wandao_main(["eval", "rm", "--data", "hh-rlhf:helpful-base", "--out", str(tmp_path / "x")]) == 2
    assert "--model" in capsys.readouterr().err
    assert wandao_main(["eval", "rm", "--model", str(tiny_rm), "--data", str(tmp_path / "nope.jsonl"),
                        "--out", str(tmp_path / "y")]) == 2
    assert "nope.jsonl" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()


def test_rm_suite_reads_each_source_through_the_head_trained_on_it(tmp_path, capsys):
    """A two-head RM folder (untrained, heads a and b; b was trained on prefs.jsonl): the suite reads that
    source through b by default, through a with --head a, and refuses a source no head was trained on."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from align.reward import minilm_path
    from wandao.cli import main as wandao_main

    torch.manual_seed(0)
    backbone = tmp_path / "bert"
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(str(backbone))
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(str(backbone))
    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text(json.dumps({"id": "fwd", "prompt": "How do I boil an egg?", "chosen": GOOD, "rejected": BAD}) + "\n")
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"prompt": "Hi?", "chosen": "Hello!", "rejected": "Go away."}) + "\n")
    rm = build_reward_model(ModelSection(backbone=str(backbone), heads=["a", "b"]), seed=0)
    rm.model.config.wandao_rm = {"template": "sparrow@1", "max_length": 64, "min_prompt_tokens": 16, "pooling": "cls",
                                 "heads": ["a", "b"], "source_heads": {str(prefs): "b"},
                                 "reward_offsets": {"a": 0.25, "b": -0.5}, "reward_offset": 0.25}
    out = tmp_path / "rm"
    rm.model.save_pretrained(str(out))
    rm.tokenizer.save_pretrained(str(out))

    items = [("How do I boil an egg?", GOOD), ("How do I boil an egg?", BAD)]
    own = run("rm", out=tmp_path / "own", model=str(out), data=[str(prefs)], split="all")
    assert own.metrics[f"head/{prefs}"] == "b" and own.metrics["reward_offset/b"] == -0.5
    [row] = own.per_example
    assert [row["reward_chosen"], row["reward_rejected"]] == pytest.approx(list(score(out, items, head="b")), abs=1e-6)
    told = run("rm", out=tmp_path / "told", model=str(out), data=[str(prefs)], split="all", head="a")
    assert told.metrics[f"head/{prefs}"] == "a"
    [row_a] = told.per_example
    assert [row_a["reward_chosen"], row_a["reward_rejected"]] == pytest.approx(list(score(out, items, head="a")),
                                                                               abs=1e-6)
    assert row_a["margin"] != pytest.approx(row["margin"])  # two heads, two readings
    code = wandao_main(["eval", "rm", "--model", str(out), "--data", str(other), "--out", str(tmp_path / "x")])
    assert code == 2 and "no head of" in capsys.readouterr().err and not (tmp_path / "x").exists()
