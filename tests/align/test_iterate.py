"""align.iterate: best-of-n rounds raise the held-out reward on a tiny setup; KL pieces; label selection."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from align.iterate import (DataSection, ImproveSection, IterateConfig, NeedsLabels, SampleSection, SelectSection,
                           bon_kl, evidence_overlap, run, sequence_logprobs)

THINGS = ["sky", "leaf", "rose", "coal", "snow", "ring", "sea", "ash", "milk", "lime", "iron", "sun"]
COLORS = ["red", "blue", "green", "pink", "gray", "gold"]
#: words the warm-started policy answers with: "the" and "is" occur in every evidence passage,
#: the fillers in none, so a policy that says "the"/"is" more often earns more evidence_overlap.
POOL = ["the", "is", "zap", "bop", "fiz", "qux", "mop", "dug", "vex", "jot"]
ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,:;?!'\"()[]-_\n#@"


def _prompt_rows(n: int, seed: int) -> list[dict]:
    """Prompts rendered by the sparrow template with one passage each (the ``wandao augment`` shape)."""
    from rag.templates import Example, Passage, get_template

    rng = random.Random(seed)
    tpl = get_template("sparrow")
    rows = []
    for i in range(n):
        thing, color = rng.choice(THINGS), rng.choice(COLORS)
        r = tpl.render(Example(question=f"{thing}?", passages=[Passage(f"d{i}", thing, f"The {thing} is {color}.")]))
        rows.append({"id": f"p{seed}-{i}", "prompt": r.prompt, "evidence_ids": r.evidence_ids, "template": r.name})
    return rows


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    """A tiny GPT warm-started by SFT to answer with 2-3 words of POOL (a diverse policy to select from)."""
    from align.sft import DataSection as SD, ModelSection, SFTConfig, TrainSection, run as sft_run
    from pretrain.model import build_model, from_preset
    from pretrain.optim import OptimConfig, ScheduleConfig
    from pretrain.tokenizer import build_char_tokenizer

    root = tmp_path_factory.mktemp("iterate")
    tok = build_char_tokenizer(ALPHABET, special_tokens=("<|endoftext|>", "<|pad|>"))
    torch.manual_seed(0)
    model = build_model(from_preset("tiny", vocab_size=len(tok), block_size=160))
    model.save_pretrained(root / "init", eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    tok.save_pretrained(str(root / "init"))
    rng = random.Random(1)
    warm = [{**r, "response": " ".join(rng.choice(POOL) for _ in range(rng.choice((2, 3))))}
            for r in _prompt_rows(200, seed=9)]
    (root / "warm.jsonl").write_text("".join(json.dumps(r) + "\n" for r in warm))
    cfg = SFTConfig(model=ModelSection(init_from=str(root / "init")),
                    data=SD(train=str(root / "warm.jsonl"), val_fraction=0.1),
                    optim=OptimConfig(lr=3e-3, weight_decay=0.0),
                    schedule=ScheduleConfig(kind="cosine", warmup_iters=5, min_lr=3e-4),
                    train=TrainSection(out_dir=str(root / "warm"), max_iters=200, micro_batch_size=16, eval_interval=200,
                                       eval_examples=16, log_interval=20, device="cpu", num_threads=1, plot=False,
                                       save_final=False))
    sft_run(cfg)
    prompts = _prompt_rows(40, seed=2)
    (root / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in prompts))
    return root


def test_evidence_overlap_by_hand():
    ev = [{"title": "sky", "text": "The sky is red."}]
    rows = [{"response": "the sky", "evidence": ev},  # 2 of 2 words in the evidence
            {"response": "zap the", "evidence": ev},  # 1 of 2
            {"response": "Zap, bop!", "evidence": ev},  # 0 of 2
            {"response": "", "evidence": ev}]  # empty: 0
    assert evidence_overlap(rows) == [1.0, 0.5, 0.0, 0.0]


def test_bon_kl_values():
    assert bon_kl(1) == 0.0
    assert bon_kl(2) == pytest.approx(math.log(2) - 0.5)  # 0.1931
    assert bon_kl(16) == pytest.approx(2.7726 - 0.9375, abs=1e-4)


def test_sequence_logprobs_match_a_manual_sum(policy):
    from pretrain.generate import load_model

    model, tok = load_model(policy / "warm" / "model")
    p, r = tok("User: sky?\nAssistant: ")["input_ids"], tok("the is")["input_ids"]
    (got,) = sequence_logprobs(model, [p], [r])
    ids = torch.tensor([p + r])
    with torch.no_grad():
        logp = model(input_ids=ids).logits[0].log_softmax(-1)
    want = sum(float(logp[len(p) - 1 + i, t]) for i, t in enumerate(r))
    assert got == pytest.approx(want, abs=1e-4)
    torch.set_grad_enabled(True)


def _cfg(policy, out, **select):
    return IterateConfig(
        policy=str(policy / "warm" / "model"), rounds=2, out_dir=str(out), seed=5, device="cpu", num_threads=1,
        data=DataSection(prompts=str(policy / "prompts.jsonl"), heldout_fraction=0.25),
        sample=SampleSection(n=4, temperature=0.8, max_new_tokens=14, batch_size=64, kl_samples=2),
        select=SelectSection(**{"by": "rm", "reward": "evidence_overlap", "min_reward": 0.01, **select}),
        improve=ImproveSection(max_iters=30, micro_batch_size=8, lr=2e-3, warmup_iters=2))


def test_two_rounds_raise_the_heldout_reward(policy, tmp_path):
    summary = run(_cfg(policy, tmp_path / "run"))
    records = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [0, 1, 2]
    r0, r1, r2 = records
    # best-of-4 picks above the sampled mean, and the policy follows. Seed 5, measured 2026-11-27:
    # held-out greedy reward 0.10 -> 0.83 -> 0.83; mean sampled reward 0.11 (round 1) -> 0.48 (round 2)
    assert r1["selected_reward"] > r1["sample_reward"]
    assert r2["sample_reward"] > r1["sample_reward"]
    assert r2["heldout_reward"] > r0["heldout_reward"] + 0.1
    assert summary["final_heldout_reward"] == r2["heldout_reward"]
    assert r0["kl_sampled"] == 0.0 and r1["kl_sampled"] > 0 and r2["kl_sampled"] > 0
    assert r1["kl_bon_analytic"] == pytest.approx(bon_kl(4)) and r2["kl_bon_analytic"] is None
    assert r1["train_prompts"] == 30 and r0["heldout_prompts"] == 10
    assert 0 < r1["selected"] == 30 - r1["below_min_reward"]  # ReST's filter drops prompts with no overlap at all
    report = (tmp_path / "run/report.md").read_text()
    assert report.count("\n| ") == 5  # header, separator, 3 rounds
    # a second run reuses every finished round
    again = run(_cfg(policy, tmp_path / "run"))
    assert again["final_heldout_reward"] == summary["final_heldout_reward"]


def test_label_rounds_stop_for_a_sheet_then_use_the_labels(policy, tmp_path):
    from align.labels import import_labels

    cfg = _cfg(policy, tmp_path / "lab", by="both", min_reward=None)
    cfg.rounds = 1
    with pytest.raises(NeedsLabels) as err:
        run(cfg)
    sheet = err.value.sheet
    lines = sheet.read_text().splitlines()
    assert lines[0] == "prompt_id,candidate,question,evidence,response,rm_score,choice,rank"
    samples = [json.loads(x) for x in (tmp_path / "lab/round-01/samples.jsonl").read_text().splitlines()]
    assert len(lines) - 1 == 4 * len(samples) == 120 and "multi-line" not in lines[1]
    # label two prompts: pick the LAST candidate of the first, reject every candidate of the second
    first, second = samples[0]["prompt_id"], samples[1]["prompt_id"]
    labels = tmp_path / "labels-01.jsonl"
    labels.write_text(json.dumps({"prompt_id": first, "best": 3}) + "\n"
                      + "".join(json.dumps({"prompt_id": second, "candidate": j, "choice": 0}) + "\n" for j in range(4)))
    assert import_labels(labels, samples)[first].best == 3
    cfg.select.labels = str(tmp_path / "labels-{round}.jsonl")
    run(cfg)
    selected = [json.loads(x) for x in (tmp_path / "lab/round-01/selected.jsonl").read_text().splitlines()]
    by_id = {s["id"]: s for s in selected}
    assert by_id[first]["candidate"] == 3 and by_id[first]["response"] == samples[0]["responses"][3]
    assert second not in by_id and len(selected) == len(samples) - 1  # the rest: best reward
    rec = json.loads((tmp_path / "lab/round-01/done.json").read_text())
    assert rec["labelled"] == 2 and rec["rejected_by_label"] == 1


def test_rm_folder_scores_through_align_reward(policy, tmp_path):
    """A reward-model folder is scored with align.reward.score (a tiny RM built locally, random head)."""
    from align.iterate import build_reward, reward_rows
    from pretrain.config import ConfigError
    from align.reward import ModelSection as RMModel, build_reward_model, score

    rm = build_reward_model(RMModel(backbone=str(policy / "warm" / "model"), pooling="last"), seed=0)
    rm.model.config.wandao_rm = {"template": "sparrow@1", "max_length": 160, "min_prompt_tokens": 16}
    rm.model.save_pretrained(str(tmp_path / "rm"))
    rm.tokenizer.save_pretrained(str(tmp_path / "rm"))
    reward = build_reward(str(tmp_path / "rm"))
    p = {"question": "sky?", "history": [], "evidence": [{"id": "d", "title": "sky", "text": "The sky is red."}]}
    rows = reward_rows([p, p], ["the is", "zap bop"])
    got = reward(rows)
    want = score(str(tmp_path / "rm"), rows)
    assert got == pytest.approx(list(want)) and got[0] != got[1]
    # an RM with objective heads scores through the head named in select.reward_head, and needs one
    heads = build_reward_model(RMModel(backbone=str(policy / "warm" / "model"), pooling="last",
                                       heads=["helpful", "harmless"]), seed=0)
    heads.model.config.wandao_rm = {"template": "sparrow@1", "max_length": 160, "min_prompt_tokens": 16,
                                    "heads": ["helpful", "harmless"], "reward_offsets": {"helpful": 0.0, "harmless": 1.0}}
    heads.model.save_pretrained(str(tmp_path / "heads"))
    heads.tokenizer.save_pretrained(str(tmp_path / "heads"))
    with pytest.raises(ConfigError, match="select.reward_head.*has heads helpful, harmless; name one"):
        build_reward(str(tmp_path / "heads"))
    with pytest.raises(ConfigError, match="select.reward_head.*unknown head 'honest'"):
        build_reward(str(tmp_path / "heads"), head="honest")
    with pytest.raises(ConfigError, match="select.reward_head.*not an RM folder"):
        build_reward("evidence_overlap", head="helpful")
    harmless = build_reward(str(tmp_path / "heads"), head="harmless")(rows)
    assert harmless == pytest.approx(list(score(str(tmp_path / "heads"), rows, head="harmless")))
    torch.set_grad_enabled(True)
