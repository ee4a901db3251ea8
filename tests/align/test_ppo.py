"""align.ppo: evidence is context (masked out of the losses), timeouts fire, resume equals an
uninterrupted run, retrieval in the loop, and the reference curve (slow)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from align.ppo import (PPOConfig, StepTimeout, _actor_critic_class, build_tiny_policy, call_with_timeout, make_batch,
                       ppo_losses, run)
from pretrain.config import ConfigError

REPO = Path(__file__).resolve().parents[2]
DOCS = [{"id": "sky", "title": "Sky", "text": "The sky is blue on a clear day."},
        {"id": "rose", "title": "Rose", "text": "The rose is red and smells sweet."},
        {"id": "coal", "title": "Coal", "text": "Coal is black and burns hot."}]
QUESTIONS = [{"id": f"q{i}", "question": q, "answer": a} for i, (q, a) in enumerate(
    [("What colour is the sky?", "blue"), ("What colour is the rose?", "red"), ("What colour is coal?", "black"),
     ("Is the sky blue?", "yes"), ("Does coal burn?", "yes"), ("Is a rose sweet?", "yes")])]


def hanging_reward(rows):
    """A reward source that never answers in time (the injected hang)."""
    time.sleep(30)
    return [0.0] * len(rows)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A BM25 index over DOCS, the questions as JSONL, PPO-ptx text, and a tiny policy over their characters."""
    from indexer import build_index

    root = tmp_path_factory.mktemp("ppo")
    build_index(DOCS, root / "index", bm25=True)
    (root / "prompts.jsonl").write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    (root / "ptx.txt").write_text(" ".join(d["text"] for d in DOCS) * 4)
    return root


def _cfg(root: Path, out: str, steps: int, **extra) -> PPOConfig:
    data = {
        "policy": {"init_from": str(root / "init"), "build_tiny": True, "tiny_block_size": 256},
        "data": {"prompts": str(root / "prompts.jsonl"), "template": "sparrow", "index": str(root / "index"), "k": 2},
        "rollout": {"batch_size": 4, "max_new_tokens": 6, "stop": []},
        "ppo": {"epochs": 1, "minibatch_size": 2, "ptx_coef": 27.8, "ptx_data": str(root / "ptx.txt"),
                "ptx_batch_size": 2, "ptx_tokens": 16},
        "rewards": [{"kind": "attribution", "weight": 1.0}, {"kind": "target_token", "token": "e", "weight": 0.5},
                    {"kind": "not_human", "weight": 0.1}],
        "optim": {"lr": 1e-3, "weight_decay": 0.0},
        "train": {"out_dir": str(root / out), "steps": steps, "device": "cpu", "num_threads": 1, "plot": False,
                  "step_timeout_s": 120.0},
    }
    for k, v in extra.items():
        section, key = k.split("__")
        data[section][key] = v
    return PPOConfig.from_dict(data)


def test_evidence_tokens_are_masked_out_of_the_policy_and_value_loss(tmp_path):
    from rag.templates import Example, Passage, get_template
    from transformers import AutoModelForCausalLM, AutoTokenizer

    r = get_template("sparrow").render(Example(question="What colour is the sky?",
                                               passages=[Passage("sky", "Sky", "The sky is blue.")]))
    build_tiny_policy(tmp_path / "m", [r.prompt], 256, seed=0)
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "m"))
    model = _actor_critic_class()(AutoModelForCausalLM.from_pretrained(str(tmp_path / "m")))
    prompt = tok(r.prompt, add_special_tokens=False)["input_ids"]
    ev_start = r.prompt.index("The sky is blue.")  # char tokenizer: one token per character
    response = tok(" blue", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    short = tok("Hi", add_special_tokens=False)["input_ids"]
    batch = make_batch([prompt, short], [response, response[:2]], tok.pad_token_id)
    mask = batch["action_mask"]
    # row 0: targets 0..len(prompt)-2 are prompt tokens (evidence among them): mask 0; the 6 response targets: 1
    assert mask[0, :len(prompt) - 1].sum() == 0
    assert mask[0, ev_start:ev_start + 16].sum() == 0
    assert mask[0].tolist()[len(prompt) - 1:len(prompt) + 5] == [1.0] * 6
    assert mask[0].sum() == 6 and mask[1].sum() == 2  # padding of the short row is not an action either
    # Garbage in old log-probs / advantages / returns at non-action positions changes nothing, and the
    # gradient reaching the logits of prompt positions is zero.
    torch.manual_seed(0)
    shape = mask.shape
    old_logp, old_v = torch.randn(shape) - 3, torch.randn(shape) * 0.1
    adv, ret = torch.randn(shape), torch.randn(shape)
    loss, _ = ppo_losses(model, batch, old_logp, old_v, adv, ret, 0.2, 0.2, 0.5)
    junk = 1 - mask
    loss2, _ = ppo_losses(model, batch, old_logp + 1e3 * junk, old_v - 1e3 * junk, adv + 1e3 * junk,
                          ret + 1e3 * junk, 0.2, 0.2, 0.5)
    assert float(loss.detach()) == pytest.approx(float(loss2.detach()), rel=1e-6)
    grabbed = {}

    def keep(module, inputs, output):  # returns None: the output is left as it is
        output.retain_grad()
        grabbed["logits"] = output

    hook = model.hf.lm_head.register_forward_hook(keep)
    loss, _ = ppo_losses(model, batch, old_logp, old_v, adv, ret, 0.2, 0.2, 0.5)
    loss.backward()
    hook.remove()
    g = grabbed["logits"].grad  # (B, T, V); logits at t predict token t+1
    assert g[0, :len(prompt) - 1].abs().sum() == 0  # prompt and evidence positions: no gradient
    assert g[0, len(prompt) - 1:len(prompt) + 5].abs().sum() > 0


def test_timeouts_fire():
    t0 = time.perf_counter()
    with pytest.raises(StepTimeout, match="generation did not finish within 0.2s"):
        call_with_timeout(lambda: time.sleep(30), 0.2, "generation")
    assert time.perf_counter() - t0 < 5
    assert call_with_timeout(lambda: 7, 1.0, "x") == 7
    with pytest.raises(KeyError):
        call_with_timeout(lambda: {}["missing"], 1.0, "x")


def test_a_hanging_reward_stops_the_run_in_bounded_time(setup):
    cfg = _cfg(setup, "hang", 2, train__step_timeout_s=3.0)
    cfg.rewards[0].kind, cfg.rewards[0].path = "function", "tests.align.test_ppo:hanging_reward"
    t0 = time.perf_counter()
    with pytest.raises(StepTimeout, match="reward did not finish within 3s"):
        run(cfg)
    assert time.perf_counter() - t0 < 60


def test_resume_equals_uninterrupted_with_retrieval_ptx_and_ema(setup):
    full = run(_cfg(setup, "full", 2))
    run(_cfg(setup, "split", 1))
    resumed = run(_cfg(setup, "split", 2, train__resume="auto"))
    assert resumed["steps"] == full["steps"] == 2
    assert resumed["reward_end"] == pytest.approx(full["reward_end"], abs=1e-6)
    assert resumed["kl_end"] == pytest.approx(full["kl_end"], abs=1e-5)
    from safetensors.torch import load_file

    a, b = load_file(str(setup / "full/model/model.safetensors")), load_file(str(setup / "split/model/model.safetensors"))
    init = load_file(str(setup / "init/model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)
    assert any(not torch.equal(a[k], init[k]) for k in a)  # training moved the policy
    ema = load_file(str(setup / "full/model-ema/model.safetensors"))
    assert any(not torch.equal(ema[k], a[k]) for k in a)  # the EMA lags the policy
    # the evidence was retrieved in the loop and logged per source
    recs = [json.loads(x) for x in (setup / "full/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2]
    assert {"reward/attribution", "reward/target_token", "reward/not_human", "kl", "sqrt_kl", "entropy", "clipfrac",
            "value_error", "response_length", "eos_rate", "ptx_loss"} <= set(recs[0])
    samples = [json.loads(x) for x in (setup / "full/rollouts.jsonl").read_text().splitlines()]
    assert [s["step"] for s in samples] == [1, 1, 2, 2]
    for s in samples:  # the prompt carries the retrieved passages' text, cited by id
        assert s["evidence_ids"] and all(d in {"sky", "rose", "coal"} for d in s["evidence_ids"])
        texts = {d["id"]: d["text"] for d in DOCS}
        assert texts[s["evidence_ids"][0]] in s["prompt"]
    split = [json.loads(x) for x in (setup / "split/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in split] == [1, 2]


def test_cli_last_line_is_json_and_config_errors(setup, capsys):
    from align.ppo import main

    code = main(["--config", str(REPO / "configs/ppo/reference.yaml"), "--out", str(setup / "cli"),
                 "--policy.init_from", str(setup / "init"), "--data.prompts", str(setup / "prompts.jsonl"),
                 "--train.steps", "1", "--rollout.batch_size", "2", "--ppo.minibatch_size", "2",
                 "--ppo.epochs", "1", "--train.plot", "false", "--train.num_threads", "1"])
    assert code == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"reward_start", "reward_end", "kl_end", "steps"} <= set(last) and last["steps"] == 1
    with pytest.raises(ConfigError, match="ppo.minibatch_size"):
        PPOConfig.from_dict({"rollout": {"batch_size": 2}, "ppo": {"minibatch_size": 4}})
    with pytest.raises(ConfigError, match="ppo.ptx_data"):
        PPOConfig.from_dict({"ppo": {"ptx_coef": 27.8}})
    with pytest.raises(ConfigError, match="rewards"):
        PPOConfig.from_dict({"rewards": [{"kind": "magic"}]})


@pytest.mark.slow
def test_reference_curve_meets_its_expected_ranges(tmp_path):
    """configs/ppo/reference.yaml: reward from ~1/vocab to >= 0.8 with KL <= 40 nats (see the config).

    2026-11-27, 2 shared CPU cores: reward 0.008 -> 1.000, KL 34.8 nats per 8-token response, ~2-6 min.
    """
    from pretrain.config import read_yaml

    cfg = PPOConfig.load(REPO / "configs/ppo/reference.yaml",
                         overrides={"train.out_dir": str(tmp_path / "ref"), "train.plot": True,
                                    "policy.init_from": str(tmp_path / "init")})
    s = run(cfg)
    exp = read_yaml(REPO / "configs/ppo/reference.yaml")["expect"]
    assert s["reward_start"] < 0.1
    assert s["reward_end"] >= exp["reward_end_min"]
    assert s["kl_end"] <= exp["kl_end_max"]
    assert s["expect_ok"] is True
    assert (tmp_path / "ref/curves.png").exists()


def test_rollout_keeps_eos_as_the_last_action(setup):
    """EOS is an action (the policy learns to stop) but not part of the response text/ids the reward sees."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from align.ppo import sample
    from pretrain.generate import GenerationConfig

    tok = AutoTokenizer.from_pretrained(str(setup / "init"))
    model = AutoModelForCausalLM.from_pretrained(str(setup / "init")).eval()
    prompts = [tok("What colour is coal?", add_special_tokens=False)["input_ids"], tok("Hi", add_special_tokens=False)["input_ids"]]
    V = model.config.vocab_size
    # every id counts as EOS: each row stops at its first token, which is its only action
    out = sample(model, tok, prompts, GenerationConfig(max_new_tokens=5, seed=0, eos_token_id=list(range(V))))
    assert [(len(r.actions), r.token_ids, r.finish_reason) for r in out] == [(1, [], "stop"), (1, [], "stop")]
    # no id is EOS: rows run to max_new_tokens, the actions are exactly the response ids
    out = sample(model, tok, prompts, GenerationConfig(max_new_tokens=5, seed=0, eos_token_id=[V + 7]))
    assert all(r.finish_reason == "length" and r.actions == r.token_ids and len(r.actions) == 5 for r in out)


# ------------------------------------------------------------------------------------------ DeepSpeed


def lowercase_reward(rows):
    """A reward that varies between rollouts of a random policy (so advantages and losses are not 0)."""
    return [sum(c.islower() for c in r["response"]) / max(len(r["response"]), 1) for r in rows]


DS_COMPARED = ("reward", "kl", "pg_loss", "vf_loss", "ptx_loss", "entropy", "approx_kl", "grad_norm")


def _ds_yaml(root: Path, name: str, steps: int, **extra) -> Path:
    """A PPO config for the subprocess runs: retrieval, PPO-ptx, EMA, a varying reward; ZeRO-3 partitions
    every parameter (stage3_param_persistence_threshold 0: otherwise the tiny model's small tensors stay whole)."""
    import yaml

    from pretrain.config import to_dict

    cfg = to_dict(_cfg(root, name, steps, **extra))
    cfg["rewards"] = [{"kind": "function", "path": "tests.align.test_ppo:lowercase_reward"},
                      {"kind": "attribution", "weight": 0.5}]
    cfg["deepspeed"] = {"extra": {"zero_optimization": {"stage3_param_persistence_threshold": 0}}}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _ppo_subprocess(config: Path, *args: str, port: int, ranks: int = 1, timeout: float = 600):
    """``python -m align.ppo`` (or torchrun with ``ranks`` processes) in a fresh process: deepspeed's
    process group would outlive the test."""
    import os
    import subprocess
    import sys

    launcher = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_port",
                 str(port), "-m", "align.ppo"] if ranks > 1 else [sys.executable, "-m", "align.ppo"])
    env = dict(os.environ, MASTER_PORT=str(port), WANDAO_NO_TQDM="1")
    return subprocess.run([*launcher, "--config", str(config), *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _train_records(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]


def _summary(proc) -> dict:
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_deepspeed_zero2_and_zero3_match_plain_torch(setup):
    """Same seed, same rollouts: ZeRO-2 and ZeRO-3 (one CPU rank, gloo) give plain torch's losses.

    Tolerance: the first step's rollouts are identical and its losses agree to rel 1e-5 (fp32; DeepSpeed
    reduces the flattened gradients in another order); later steps to rel 1e-4. Measured 2026-12-05:
    the largest relative difference over 3 steps was ~2e-7 (grad_norm).
    """
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (pip install 'wandao[deepspeed]')")
    config = _ds_yaml(setup, "ds-plain", 3)
    plain = run(PPOConfig.load(config, overrides={"train.out_dir": str(setup / "ds-torch")}))
    z2 = _summary(_ppo_subprocess(config, "--train.backend", "deepspeed", "--deepspeed.zero_stage", "2",
                                  "--train.out_dir", str(setup / "ds-z2"), port=29611))
    z3 = _summary(_ppo_subprocess(config, "--train.backend", "deepspeed", "--deepspeed.zero_stage", "3",
                                  "--train.out_dir", str(setup / "ds-z3"), port=29612))
    assert (plain["backend"], z2["backend"], z3["backend"]) == ("torch", "deepspeed-zero2", "deepspeed-zero3")
    assert z3["zero3_partitioned_params"] > 0  # ZeRO-3 really sharded the policy, generation had to gather it
    ref = _train_records(setup / "ds-torch")
    assert ref[0]["pg_loss"] != 0 and ref[0]["vf_loss"] > 0  # a varying reward: the losses are not trivially 0
    for name in ("ds-z2", "ds-z3"):
        recs = _train_records(setup / name)
        assert [r["step"] for r in recs] == [1, 2, 3]
        for step, (a, b) in enumerate(zip(ref, recs), start=1):
            tol = 1e-5 if step == 1 else 1e-4
            for key in DS_COMPARED:
                assert b[key] == pytest.approx(a[key], rel=tol, abs=1e-7), (name, step, key)
    from safetensors.torch import load_file

    want = load_file(str(setup / "ds-torch/model/model.safetensors"))
    for name in ("ds-z2", "ds-z3"):
        for sub in ("model", "model-ema"):  # the final policy and its EMA, gathered under ZeRO-3
            got = load_file(str(setup / name / sub / "model.safetensors"))
            ref_sub = want if sub == "model" else load_file(str(setup / "ds-torch/model-ema/model.safetensors"))
            for k in ref_sub:
                torch.testing.assert_close(got[k], ref_sub[k], atol=1e-5, rtol=1e-4)


def test_deepspeed_zero3_resume_equals_uninterrupted(setup):
    """A ZeRO-3 run resumed from its step-2 checkpoint (engine shards, EMA shard, RNG) ends where the
    uninterrupted run ends."""
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (pip install 'wandao[deepspeed]')")
    config = _ds_yaml(setup, "ds-resume", 3, train__save_interval=2)
    ds = ("--train.backend", "deepspeed", "--deepspeed.zero_stage", "3")
    full = _summary(_ppo_subprocess(config, *ds, "--train.out_dir", str(setup / "z3-full"), port=29613))
    ckpt = setup / "z3-full/step-00000002"
    assert (ckpt / "deepspeed/state").is_dir() and (ckpt / "model.safetensors").exists()
    resumed = _summary(_ppo_subprocess(config, *ds, "--train.out_dir", str(setup / "z3-resumed"),
                                       "--train.resume", str(ckpt), port=29614))
    assert resumed["steps"] == full["steps"] == 3
    a, b = _train_records(setup / "z3-full")[-1], _train_records(setup / "z3-resumed")[-1]
    assert b["step"] == 3
    for key in DS_COMPARED:
        assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-8), key
    from safetensors.torch import load_file

    for sub in ("model", "model-ema"):
        x = load_file(str(setup / "z3-full" / sub / "model.safetensors"))
        y = load_file(str(setup / "z3-resumed" / sub / "model.safetensors"))
        for k in x:
            torch.testing.assert_close(y[k], x[k], atol=1e-6, rtol=1e-5)


@pytest.mark.slow
def test_deepspeed_zero3_two_ranks_with_uneven_rollouts_do_not_hang(setup):
    """TRL#1051/#1618: under ZeRO-3 every forward all-gathers, so ranks whose responses stop at different
    lengths wait on each other during decoding. Two CPU ranks, stop strings that end rows early: the run
    finishes (ranks gather once per rollout); with the generation unwrapping disabled it hangs and the
    step timeout names the generation. ~15 s + ~40 s on 2 cores."""
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (pip install 'wandao[deepspeed]')")
    config = _ds_yaml(setup, "ds-ranks", 3, rollout__max_new_tokens=16, rollout__stop=["e", "a", "o"],
                      train__step_timeout_s=30.0)
    ds = ("--train.backend", "deepspeed", "--deepspeed.zero_stage", "3")
    s = _summary(_ppo_subprocess(config, *ds, "--train.out_dir", str(setup / "z3-ranks"), port=29615, ranks=2))
    assert s["steps"] == 3 and s["zero3_partitioned_params"] > 0
    lengths = [r["response_length"] for r in _train_records(setup / "z3-ranks")]
    assert len(set(lengths)) > 1  # the stop strings do end responses at different lengths
    state = setup / "z3-ranks/step-00000003"
    assert sorted(p.name for p in (state / "deepspeed/state").iterdir()) == [
        "zero_pp_rank_0_mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "zero_pp_rank_1_mp_rank_00_model_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    assert (state / "trainer_state_rank1.pt").exists()  # rank 1's EMA shard and RNG
    # the negative control: the same run without unwrapping the model for generation
    hang = (setup / "nounwrap.py")
    hang.write_text("import contextlib, sys\nimport align.ppo as P\n"
                    "P.unwrapped_for_generation = lambda engine, zero3: contextlib.nullcontext()\n"
                    "sys.exit(P.main())\n")
    import os
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           "29616", str(hang), "--config", str(config), *ds, "--train.out_dir", str(setup / "z3-hang")],
                          cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0
    assert "generation did not finish within 30s" in proc.stderr
