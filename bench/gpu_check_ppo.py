"""GPU check (issue 8): a short DeepSpeed ZeRO-2 bf16 PPO run on CUDA, against plain-torch fp32 on the same GPU.

What it runs, on one GPU (one process; gloo is not involved, DeepSpeed uses NCCL):

1. the 'tiny' policy of :func:`align.ppo.build_tiny_policy` (character tokenizer over the prompts);
2. ``wandao ppo`` for ``--steps`` steps with ``train.backend torch`` (fp32) and with
   ``train.backend deepspeed``, ``deepspeed.zero_stage 2``, ``train.dtype bfloat16`` (DeepSpeed's bf16:
   bf16 weights and activations, fp32 master weights in the ZeRO optimizer), the same seed, prompts and
   reward (the fraction of response characters equal to "!", as configs/ppo/reference.yaml);
3. checks: every logged loss and the gradient norm are finite; the first step's rollouts score the same
   reward (the bf16 policy samples from slightly different probabilities, so only ``--reward-atol``),
   its policy entropy agrees within ``--rel-tol`` (bf16 logits carry ~3 significant digits) and its
   KL starts at 0 (reference = policy at step 1, both in bf16 under DeepSpeed); peak GPU memory and
   episodes/s of both are printed.

The last stdout line is JSON with ``ok`` and the numbers; the exit code is 0 when every check passes,
1 when one fails, and 0 with ``"skipped"`` when no CUDA device is visible (this script does nothing
useful on CPU: tests/align/test_ppo.py covers ZeRO-2/3 there).

Run: ``python bench/gpu_check_ppo.py`` (``--zero-stage 3`` to check ZeRO-3's gathered generation on GPU too).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


QUESTIONS = ["When did the Normans conquer England?", "What is the capital of France?", "Who wrote Hamlet?",
             "How many points did the Panthers defense surrender?", "What is photosynthesis?",
             "Which river flows through Cairo?", "What colour is the sky on a clear day?", "Who painted the Mona Lisa?",
             "What is the boiling point of water at sea level?", "Where is the Amazon rainforest?",
             "What does DNA stand for?", "How far is the Moon from the Earth?", "Who discovered penicillin?",
             "What is the largest planet in the solar system?", "When did the Berlin Wall fall?",
             "What language is spoken in Brazil?"]


def _config(root: Path, out: str, steps: int, backend: str, zero_stage: int, dtype: str) -> dict:
    return {
        "policy": {"init_from": str(root / "init"), "build_tiny": True, "tiny_block_size": 128},
        "data": {"prompts": str(root / "prompts.jsonl"), "template": "sparrow"},
        "rollout": {"batch_size": 32, "max_new_tokens": 8, "stop": []},
        "ppo": {"epochs": 2, "minibatch_size": 8, "kl_beta": 0.002},
        "rewards": [{"kind": "target_token", "name": "bang", "token": "!"}],
        "optim": {"lr": 3e-3, "weight_decay": 0.0},
        "train": {"out_dir": str(root / out), "steps": steps, "seed": 1234, "device": "cuda", "dtype": dtype,
                  "backend": backend, "plot": False, "step_timeout_s": 300.0},
        "deepspeed": {"zero_stage": zero_stage},
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--zero-stage", type=int, default=2, choices=(2, 3))
    p.add_argument("--rel-tol", type=float, default=2e-2, help="bf16 vs fp32: relative tolerance on step 1's entropy")
    p.add_argument("--reward-atol", type=float, default=0.05, help="bf16 vs fp32: step 1's mean reward")
    args = p.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("gpu_check_ppo: no CUDA device visible; nothing to check here (the CPU path is tested in "
              "tests/align/test_ppo.py)", file=sys.stderr)
        print(json.dumps({"skipped": "no CUDA device", "ok": None}))
        return 0
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        print("gpu_check_ppo: DeepSpeed is not installed: pip install 'wandao[deepspeed]'", file=sys.stderr)
        print(json.dumps({"skipped": "no deepspeed", "ok": None}))
        return 0
    if not torch.cuda.is_bf16_supported():
        print(json.dumps({"skipped": "this GPU has no bf16", "ok": None}))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from align.ppo import PPOConfig, run
    from pretrain.metrics import read_metrics

    out: dict = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
                 "deepspeed": deepspeed.__version__, "zero_stage": args.zero_stage}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        # self-contained prompts: a lent GPU machine has no $WANDAO_DATA_DIR
        (root / "prompts.jsonl").write_text("".join(json.dumps({"id": f"q{i}", "question": q}) + "\n"
                                                    for i, q in enumerate(QUESTIONS)))
        runs = {}
        for name, backend, dtype in (("torch-fp32", "torch", "float32"), ("deepspeed-bf16", "deepspeed", "bfloat16")):
            torch.cuda.reset_peak_memory_stats()
            summary = run(PPOConfig.from_dict(_config(root, name, args.steps, backend, args.zero_stage, dtype)))
            recs = [r for r in read_metrics(root / name / "metrics.jsonl") if r.get("kind") == "train"]
            runs[name] = {"summary": summary, "records": recs,
                          "peak_mem_mib": round(torch.cuda.max_memory_allocated() / 2 ** 20, 1),
                          "episodes_per_s": sum(r["episodes"] for r in recs[1:]) / max(sum(r["seconds"] for r in recs[1:]), 1e-9)}
    a, b = runs["torch-fp32"]["records"], runs["deepspeed-bf16"]["records"]
    checks = {
        "backend": runs["deepspeed-bf16"]["summary"]["backend"] == f"deepspeed-zero{args.zero_stage}",
        "steps": len(a) == len(b) == args.steps,
        "finite": all(math.isfinite(r[k]) for r in b for k in ("pg_loss", "vf_loss", "entropy", "kl", "grad_norm")),
        "reward_step1": abs(a[0]["reward"] - b[0]["reward"]) <= args.reward_atol,
        "entropy_step1": abs(a[0]["entropy"] - b[0]["entropy"]) <= args.rel_tol * abs(a[0]["entropy"]),
        "kl_step1_zero": abs(b[0]["kl"]) < 1e-3,
    }
    out.update({
        "checks": checks, "ok": all(checks.values()),
        "step1": {k: {"torch-fp32": a[0][k], "deepspeed-bf16": b[0][k]} for k in ("reward", "entropy", "kl", "pg_loss",
                                                                                   "vf_loss", "grad_norm")},
        "reward_end": {k: v["summary"]["reward_end"] for k, v in runs.items()},
        "episodes_per_s": {k: round(v["episodes_per_s"], 2) for k, v in runs.items()},
        "peak_mem_mib": {k: v["peak_mem_mib"] for k, v in runs.items()},
    })
    print(json.dumps(out))
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
