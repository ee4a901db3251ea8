"""Reward-model training throughput: wandao's RM loop against TRL's ``RewardTrainer``, same run.

Same backbone (the shipped all-MiniLM-L6-v2 with a fresh ``num_labels=1`` head), same pairs (hh-rlhf
helpful-base, train part, token ids from :func:`align.reward.encode` given to both), same batch
size, same optimizer (fused AdamW, same lr, weight decay, clipping; no gradient checkpointing), fp32 on CPU. Each trainer makes two
passes over the same ``--batch × --steps`` pairs (so both see exactly the same sequences); the
first warms up and the second is timed, from its first step's start to its last step's end; rounds alternate (ours, TRL, ours, TRL, …) so load
changes on a shared machine hit both, and the best round of each counts. Target ≥ 1.0×.

wandao variants: ``wandao`` (the default loop: length-grouped batches) and ``wandao-plain``
(random batches, as TRL makes them), so the ratio shows where a gain comes from.

Run: ``python bench/bench_rm.py`` (``--quick`` for a smoke run); writes ``bench/out/rm.md`` / ``.json``.
Also merges ``bench/out/rm-quality.json`` (from ``--quality-from RUN_DIR ...``) into the report.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import OUT_DIR, describe_machine, machine, markdown_table, write_outputs  # noqa: E402


def _pairs(n: int, max_length: int):
    from align.preference_data import read_preferences, split_by_prompt
    from align.reward import encode, minilm_path, render_prompts
    from transformers import AutoTokenizer

    rows = split_by_prompt(read_preferences("hh-rlhf:helpful-base"), "train")[:n]
    tok = AutoTokenizer.from_pretrained(minilm_path())
    prompts = render_prompts(rows, "sparrow")
    chosen = encode(tok, prompts, [r.responses[0] for r in rows], max_length, 48)
    rejected = encode(tok, prompts, [r.responses[1] for r in rows], max_length, 48)
    return rows, chosen, rejected


def run_wandao(rows, chosen, rejected, batch: int, lr: float, group: bool, dropout: bool) -> dict:
    import torch

    from align.reward import LossSection, ModelSection, _Batches, batch_loss, build_reward_model
    from pretrain.optim import OptimConfig, build_optimizer, clip_grad_norm

    # dropout off = TRL's RewardConfig default (disable_dropout=True); on = the backbone's own 0.1
    rm = build_reward_model(ModelSection(backbone="minilm", pooling="cls", dropout=None if dropout else 0.0), seed=0)
    model = rm.model.train()
    data = _Batches([[c, r] for c, r in zip(chosen, rejected)], [[0, 1]] * len(rows), [{}] * len(rows),
                    [1] * len(rows))
    opt = build_optimizer(model, OptimConfig(name="adamw", lr=lr, weight_decay=0.0, beta2=0.999))
    rng = random.Random(0)
    loss_cfg = LossSection()
    for epoch in range(2):  # epoch 0 warms up (allocator, kernels); epoch 1 is timed
        batches = data.epoch(batch, rng, group)  # one pass over every pair
        t0 = time.perf_counter()
        for b in batches:
            loss, *_ = batch_loss(model, data, b, loss_cfg, rm.tokenizer.pad_token_id, "cpu")
            loss.backward()
            clip_grad_norm(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        float(loss.detach())
    dt = time.perf_counter() - t0
    return {"seconds": dt, "pairs_per_s": len(rows) / dt, "steps": len(batches)}


def run_trl(rows, chosen, rejected, batch: int, lr: float, dropout: bool) -> dict:
    import datasets
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl import RewardConfig, RewardTrainer

    from align.reward import minilm_path

    tok = AutoTokenizer.from_pretrained(minilm_path())
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=1)
    model.config.pad_token_id = tok.pad_token_id
    ds = datasets.Dataset.from_dict({"chosen_ids": chosen, "rejected_ids": rejected})
    marks: dict[str, float] = {}

    class Clock(TrainerCallback):
        # epoch 0 warms up; epoch 1 is timed, from its first step's start to its last step's end
        def on_epoch_begin(self, args, state, control, **kw):
            if state.epoch is not None and state.epoch >= 1:
                marks.setdefault("t0", time.perf_counter())
                marks["step0"] = state.global_step

        def on_step_end(self, args, state, control, **kw):
            marks["t1"] = time.perf_counter()
            marks["steps"] = state.global_step - marks.get("step0", 0)

    with tempfile.TemporaryDirectory() as tmp:
        args = RewardConfig(output_dir=tmp, per_device_train_batch_size=batch, num_train_epochs=2,
                            learning_rate=lr, weight_decay=0.0, adam_beta2=0.999, max_grad_norm=1.0,
                            lr_scheduler_type="constant", warmup_steps=0, logging_steps=10_000, save_strategy="no",
                            report_to=[], use_cpu=True, dataloader_num_workers=0, max_length=None,
                            disable_tqdm=True, seed=0, bf16=False, fp16=False,
                            # RewardConfig turns gradient checkpointing on by default (a memory setting);
                            # off here, as in wandao's loop, so both do the same work per step
                            gradient_checkpointing=False, optim="adamw_torch_fused",
                            # TRL's default turns dropout off; the same setting as wandao's run either way
                            disable_dropout=not dropout)
        trainer = RewardTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, callbacks=[Clock()])
        trainer.train()
    dt = marks["t1"] - marks["t0"]
    return {"seconds": dt, "pairs_per_s": len(rows) / dt, "steps": marks["steps"]}


ANCHORS = "anchors: OpenAssistant pythia-1.4b helpful 0.618; deberta-v3-large-v2 helpful 0.69-0.71, harmless 0.56-0.59"
TARGETS = {"hh-rlhf:helpful-base": 0.62, "hh-rlhf:harmless-base": 0.62}


def collect_quality(dirs: list[str], note: str = "") -> int:
    """Held-out metrics of trained RM folders (their eval.json) as a table in bench/out/rm-quality.json."""
    import yaml

    rows = []
    for d in dirs:
        d = Path(d)
        ev = json.loads((d / "eval.json").read_text())
        cfg = yaml.safe_load((d / "rm_config.yaml").read_text())
        meta = json.loads((d / "config.json").read_text()).get("wandao_rm", {})
        steps = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines() if '"train"' in x]
        for src, m in ev.items():
            rows.append({"run": d.name, "loss": cfg["loss"]["kind"], "train": "+".join(s.split(":")[-1] for s in cfg["data"]["train"]),
                         "steps": steps[-1]["step"] if steps else 0, "max_len": cfg["data"]["max_length"],
                         "eval": src, "pairs": m["pairs"], "accuracy": m["accuracy"], "ties": m["ties"], "ece": m["ece"],
                         "target": TARGETS.get(src), "offset": meta.get("reward_offset")})
    table = markdown_table(rows, [("run", "run", 0), ("loss", "loss", 0), ("train", "trained on (80% parts)", 0),
                                  ("steps", "last logged step", 0), ("max_len", "max tokens", 0), ("eval", "held-out 20%", 0),
                                  ("pairs", "pairs", 0), ("accuracy", "accuracy", 3), ("ties", "ties", 0),
                                  ("ece", "ECE", 3), ("target", "target", 2)])
    text = table + "\n\n" + ANCHORS + "." + (f"\n\n{note}" if note else "")
    payload = {"rows": rows, "markdown": text, "machine": machine()}
    from indexer.io import atomic_write_text

    atomic_write_text(OUT_DIR / "rm-quality.json", json.dumps(payload, indent=2) + "\n")
    print(table)
    return 0


def kwise_data_table(payload: dict) -> str:
    """How many prompts of each source merge into K >= 3 ranked rows (align.preference_data.group_rankings)."""
    from align.preference_data import group_rankings, read_preferences

    rows = []
    for src in ("hh-rlhf:helpful-base", "hh-rlhf:harmless-base", "hh-rlhf:helpful-rejection-sampled", "hhh-evals"):
        _, st = group_rankings(read_preferences(src))
        rows.append({"source": src, "pairs": st["input_rows"], "prompts": st["prompts"],
                     "merged": st["groups_merged"], "k": ", ".join(f"K={k}: {n}" for k, n in st["k_histogram"].items())})
    payload["kwise_data"] = rows
    return (markdown_table(rows, [("source", "source", 0), ("pairs", "comparisons", 0), ("prompts", "prompts", 0),
                                  ("merged", "prompts merged to K>=3", 0), ("k", "rows by K", 0)])
            + "\n\nhh-rlhf's few repeated prompts carry unrelated pairs (A>B, C>D), so no total order exists; "
              "the K-wise vs pairwise comparison uses the HHH evaluations (configs/rm/minilm-hhh-*.yaml).")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=8, help="pairs per step (both trainers)")
    p.add_argument("--steps", type=int, default=4, help="steps per pass (pairs = batch x steps)")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best of each counts")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    p.add_argument("--dropout", choices=("off", "on"), default="off",
                   help="off: both train without dropout (TRL's default, disable_dropout=True); "
                        "on: both keep the backbone's dropout (0.1)")
    p.add_argument("--quick", action="store_true", help="1 round of 2 steps (smoke)")
    p.add_argument("--note", default="", help="with --quality-from: what was tried, printed under the table")
    p.add_argument("--quality-from", nargs="+", metavar="RM_DIR",
                   help="only collect the held-out accuracies of these trained RM folders into bench/out/rm-quality.json")
    args = p.parse_args()
    if args.quality_from:
        return collect_quality(args.quality_from, args.note)
    if args.quick:
        args.rounds, args.steps = 1, 2
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("WANDAO_NO_TQDM", "1")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine()
    print(describe_machine(info), flush=True)
    n = args.batch * args.steps
    rows, chosen, rejected = _pairs(n, args.max_length)
    lr = 5e-5
    results: dict[str, list[dict]] = {"wandao": [], "wandao-plain": [], "trl": []}
    for r in range(args.rounds):
        for name in ("wandao", "trl", "wandao-plain"):
            if name == "trl":
                res = run_trl(rows, chosen, rejected, args.batch, lr, args.dropout == "on")
            else:
                res = run_wandao(rows, chosen, rejected, args.batch, lr, name == "wandao", args.dropout == "on")
            results[name].append(res)
            print(f"round {r + 1} {name:<13} {res['pairs_per_s']:.2f} pairs/s ({res['seconds']:.1f} s)", flush=True)
    best = {k: max(v, key=lambda x: x["pairs_per_s"]) for k, v in results.items()}
    ratio = best["wandao"]["pairs_per_s"] / best["trl"]["pairs_per_s"]
    ratio_plain = best["wandao-plain"]["pairs_per_s"] / best["trl"]["pairs_per_s"]
    import trl
    import transformers

    table = markdown_table([
        {"trainer": "wandao rm (length-grouped batches)", "pps": best["wandao"]["pairs_per_s"], "ratio": ratio},
        {"trainer": "wandao rm (random batches)", "pps": best["wandao-plain"]["pairs_per_s"], "ratio": ratio_plain},
        {"trainer": f"TRL {trl.__version__} RewardTrainer", "pps": best["trl"]["pairs_per_s"], "ratio": 1.0},
    ], [("trainer", "trainer", 0), ("pps", "pairs/s (best round)", 2), ("ratio", "× TRL", 2)])
    print(table)
    print(f"wandao / TRL = {ratio:.2f}x (target >= 1.0x); random batches {ratio_plain:.2f}x", flush=True)
    payload = {"machine": info, "settings": {k: v for k, v in vars(args).items()},
               "torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
               "rounds": results, "best": best, "ratio": ratio, "ratio_random_batches": ratio_plain}
    quality_path = OUT_DIR / "rm-quality.json"
    quality = json.loads(quality_path.read_text()) if quality_path.exists() else None
    md = [
        "# Reward models (issue 6)", "",
        f"Machine: {describe_machine(info)}; torch {torch.__version__}, transformers {transformers.__version__}.", "",
        "## Training throughput against TRL (same run)", "",
        f"all-MiniLM-L6-v2 + scalar head, fp32 CPU, {args.batch} pairs per step, hh-rlhf helpful-base (train part) "
        f"token ids given to both (max {args.max_length} tokens), dropout {args.dropout} in both "
        f"({'TRL disable_dropout=True, its default; wandao model.dropout 0' if args.dropout == 'off' else 'the backbone 0.1; TRL disable_dropout=False'}), "
        f"AdamW lr {lr}, clip 1.0; one pass over the same "
        f"{n} pairs ({args.steps} steps; a warm-up pass, then the timed pass) per trainer, best of {args.rounds} alternating rounds.", "",
        table, "",
        f"**wandao / TRL = {ratio:.2f}×** (target ≥ 1.0×).", "",
    ]
    md += ["## K-wise rows the data allows", "", kwise_data_table(payload), ""]
    if quality:
        payload["quality"] = quality
        md += ["## Quality (held-out 20% parts by prompt hash)", "", quality.get("markdown", ""), ""]
    write_outputs("rm", "\n".join(md), payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
