"""Pretraining benchmark: nanoGPT's CPU Shakespeare run, restated here, against ``wandao pretrain``.

The baseline is a faithful minimal re-statement of nanoGPT (karpathy/nanoGPT ``model.py`` and
``train.py`` with ``config/train_shakespeare_char.py`` and the README's CPU flags:
``--device=cpu --compile=False --eval_iters=20 --log_interval=1 --block_size=64 --batch_size=12
--n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0``), in
our own code: the same GPT (bias-free LayerNorm/Linear, tied embeddings, GPT-2 init), AdamW
(betas 0.9/0.99, weight decay 0.1 on dim>=2 tensors, torch's default kernel on CPU), warmup 100
then cosine to 1e-4, grad clip 1.0, ``get_batch`` re-opening ``np.memmap`` each call, ``loss.item()``
every step. Data: nanoGPT's ``prepare.py`` char split (first 90% of characters train).

``wandao pretrain --config configs/pretrain/nanogpt-shakespeare-char.yaml`` runs in a subprocess
in the same benchmark run. Both sides use ``torch.set_num_threads(--threads)``.

Time per iteration counts everything in a training step (lr, batch, forward/backward, clip, step,
logging) and leaves out evaluation, on both sides. Each run gives the mean and the median; the
ratio uses the median, which a shared machine's load spikes disturb least (the mean ratio is
reported too). ``--order abba`` runs baseline, wandao, wandao, baseline to cancel load drift.

Reference (nanoGPT itself on these 2 cores): 67 s wall, 31-35 ms/iter, final val loss 1.8857.
Target: wandao val loss <= 1.88 at <= 1.0x the baseline's time per iteration.

Run::

    .venv/bin/python bench/bench_pretrain.py                 # the side-by-side (make bench-pretrain)
    .venv/bin/python bench/bench_pretrain.py --variants      # equal-compute table: architectures, optimizers
    .venv/bin/python bench/bench_pretrain.py --seeds 5       # both sides at 5 seeds: the spread of val loss

Writes ``bench/out/pretrain.{md,json}`` (and ``pretrain_variants.{md,json}``). The last line is JSON
with ``ratio_time_per_iter`` (wandao / baseline), ``wandao_val_loss`` and ``baseline_val_loss``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.nn import functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import describe_machine, machine, markdown_table, write_outputs  # noqa: E402

ANCHOR = "configs/pretrain/nanogpt-shakespeare-char.yaml"
REFERENCE = {"nanogpt_wall_s": 67, "nanogpt_ms_per_iter": "31-35", "nanogpt_val_loss": 1.8857}


# ----------------------------------------------------------------------------- the baseline's model


@dataclass
class GPTConfig:
    block_size: int = 64
    vocab_size: int = 65
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = False


class LayerNorm(nn.Module):
    def __init__(self, ndim, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.c_attn = nn.Linear(c.n_embd, 3 * c.n_embd, bias=c.bias)
        self.c_proj = nn.Linear(c.n_embd, c.n_embd, bias=c.bias)
        self.attn_dropout, self.resid_dropout = nn.Dropout(c.dropout), nn.Dropout(c.dropout)
        self.n_head, self.n_embd, self.dropout = c.n_head, c.n_embd, c.dropout

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=None,
                                           dropout_p=self.dropout if self.training else 0, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(c.n_embd, 4 * c.n_embd, bias=c.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * c.n_embd, c.n_embd, bias=c.bias)
        self.dropout = nn.Dropout(c.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.ln_1, self.attn = LayerNorm(c.n_embd, c.bias), CausalSelfAttention(c)
        self.ln_2, self.mlp = LayerNorm(c.n_embd, c.bias), MLP(c)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.config = c
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(c.vocab_size, c.n_embd), wpe=nn.Embedding(c.block_size, c.n_embd),
            drop=nn.Dropout(c.dropout), h=nn.ModuleList([Block(c) for _ in range(c.n_layer)]),
            ln_f=LayerNorm(c.n_embd, c.bias)))
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        for pn, p in self.named_parameters():
            if pn.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * c.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None):
        b, t = idx.size()
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        logits = self.lm_head(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return logits, loss

    def configure_optimizers(self, weight_decay, learning_rate, betas):
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        nodecay = [p for p in params if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": nodecay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas)  # fused only on CUDA in nanoGPT


def run_baseline(data_path: Path, work: Path, threads: int, max_iters: int = 2000, seed: int = 1337) -> dict:
    """nanoGPT's train.py loop with the CPU flags; returns final val loss and per-iteration times.

    Also the loss over the whole validation split (:func:`full_split_loss`), which nanoGPT does not report.
    """
    torch.set_num_threads(threads)
    # -- prepare.py (char level): vocabulary, 90/10 split, uint16 .bin files
    text = data_path.read_text(encoding="utf-8")
    chars = sorted(set(text))
    stoi = {ch: i for i, ch in enumerate(chars)}
    n = len(text)
    np.array([stoi[c] for c in text[:int(n * 0.9)]], dtype=np.uint16).tofile(work / "train.bin")
    np.array([stoi[c] for c in text[int(n * 0.9):]], dtype=np.uint16).tofile(work / "val.bin")
    # -- train.py
    batch_size, block_size, eval_iters, eval_interval = 12, 64, 20, 250
    learning_rate, min_lr, warmup_iters, lr_decay_iters = 1e-3, 1e-4, 100, max_iters
    torch.manual_seed(seed)

    def get_batch(split):
        data = np.memmap(work / f"{split}.bin", dtype=np.uint16, mode="r")
        ix = torch.randint(len(data) - block_size, (batch_size,))
        x = torch.stack([torch.from_numpy((data[i:i + block_size]).astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy((data[i + 1:i + 1 + block_size]).astype(np.int64)) for i in ix])
        return x, y

    model = GPT(GPTConfig(vocab_size=len(chars)))
    optimizer = model.configure_optimizers(0.1, learning_rate, (0.9, 0.99))

    @torch.no_grad()
    def estimate_loss():
        out = {}
        model.eval()
        for split in ("train", "val"):
            losses = torch.zeros(eval_iters)
            for k in range(eval_iters):
                X, Y = get_batch(split)
                _, loss = model(X, Y)
                losses[k] = loss.item()
            out[split] = losses.mean().item()
        model.train()
        return out

    def get_lr(it):
        if it < warmup_iters:
            return learning_rate * (it + 1) / (warmup_iters + 1)
        if it > lr_decay_iters:
            return min_lr
        ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (learning_rate - min_lr)

    X, Y = get_batch("train")
    iter_num, times, val_loss, evals = 0, [], None, []
    t_start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        lr = get_lr(iter_num)
        for g in optimizer.param_groups:
            g["lr"] = lr
        t_eval = time.perf_counter()
        if iter_num % eval_interval == 0 or iter_num == max_iters:  # 2000 is a multiple of 250 in nanoGPT
            losses = estimate_loss()
            val_loss = losses["val"]
            evals.append({"step": iter_num, "train_loss": losses["train"], "val_loss": val_loss})
            print(f"baseline step {iter_num}: train loss {losses['train']:.4f}, val loss {val_loss:.4f}",
                  file=sys.stderr, flush=True)
        if iter_num >= max_iters:  # nanoGPT's last eval is at iter 2000, after 2000 updates
            break
        t_train = time.perf_counter()
        logits, loss = model(X, Y)
        X, Y = get_batch("train")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        lossf = loss.item()  # log_interval=1: a sync and a print every iteration
        if iter_num % 100 == 0:
            print(f"baseline iter {iter_num}: loss {lossf:.4f}", file=sys.stderr, flush=True)
        times.append(time.perf_counter() - t0 - (t_train - t_eval))
        iter_num += 1
    wall = time.perf_counter() - t_start
    model.eval()
    full_val = full_split_loss(lambda x: model(x, x)[0], np.fromfile(work / "val.bin", dtype=np.uint16), block_size)
    return {"final_val_loss": val_loss, "full_val_loss": full_val, "ms_per_iter": 1000 * statistics.fmean(times),
            "ms_per_iter_median": 1000 * statistics.median(times), "wall_s": wall, "steps": max_iters,
            "evals": evals}


@torch.no_grad()
def full_split_loss(logits_of, ids: np.ndarray, block_size: int, batch: int = 256) -> float:
    """Mean next-token loss over every non-overlapping ``block_size`` window of ``ids``.

    nanoGPT's ``estimate_loss`` averages 20 random windows x 12 rows, so its number moves by about
    +-0.01 with the sampling alone; this one is the same expectation with no sampling (each window is
    scored exactly as a training row is: context restarts every ``block_size`` characters).
    """
    starts = np.arange(0, len(ids) - block_size - 1, block_size)
    total, count = 0.0, 0
    for lo in range(0, len(starts), batch):
        rows = np.stack([ids[i:i + block_size + 1].astype(np.int64) for i in starts[lo:lo + batch]])
        x, y = torch.from_numpy(rows[:, :-1].copy()), torch.from_numpy(rows[:, 1:].copy())
        logits = logits_of(x)
        total += F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum").item()
        count += y.numel()
    return total / count


def wandao_full_val_loss(out_dir: Path, data_path: Path, block_size: int = 64) -> float:
    """:func:`full_split_loss` of the last checkpoint ``wandao pretrain`` wrote, loaded with plain transformers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pretrain.checkpoint import latest_checkpoint

    folder = latest_checkpoint(out_dir)
    if folder is None:
        raise RuntimeError(f"{out_dir} holds no checkpoint")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    text = data_path.read_text(encoding="utf-8")
    val_text = text[int(len(text) * 0.9):]
    ids = np.array(tokenizer(val_text, add_special_tokens=False)["input_ids"], dtype=np.int64)
    if len(ids) != len(val_text):
        raise RuntimeError(f"{folder}'s tokenizer gave {len(ids)} ids for {len(val_text)} characters: not char-level")
    return full_split_loss(lambda x: model(input_ids=x).logits, ids, block_size)


def run_wandao(out_dir: Path, threads: int, extra: list[str] | None = None, config: str = ANCHOR,
               timeout: float = 3600) -> dict:
    """``wandao pretrain`` in a subprocess; returns its final JSON line plus the wall time."""
    cmd = [sys.executable, "-m", "wandao.cli", "pretrain", "--config", config, "--train.out_dir", str(out_dir),
           "--train.num_threads", str(threads), "--train.plot", "true", *(extra or [])]
    env = dict(os.environ, WANDAO_LOG_LEVEL=os.environ.get("WANDAO_LOG_LEVEL", "WARNING"))
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"wandao pretrain failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = wall
    return result


def side_by_side(args) -> dict:
    data_path = Path(os.environ.get("WANDAO_DATA_DIR", REPO.parent / "shared" / "data")) / "tinyshakespeare" / "input.txt"
    if not data_path.exists():
        sys.exit(f"{data_path} not found: set WANDAO_DATA_DIR to the mirrored data")
    out = REPO / "bench" / "out"
    extra = [] if args.max_iters == 2000 else ["--train.max_iters", str(args.max_iters),
                                                "--schedule.decay_iters", str(args.max_iters)]
    order = "ab" if args.order == "ab" else "abba"
    base_runs, ours_runs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i, who in enumerate(order):
            if who == "a":
                print(f"[{i + 1}/{len(order)}] baseline (nanoGPT re-statement) ...", file=sys.stderr, flush=True)
                base_runs.append(run_baseline(data_path, Path(tmp), args.threads, args.max_iters))
            else:
                print(f"[{i + 1}/{len(order)}] wandao pretrain ...", file=sys.stderr, flush=True)
                ours_runs.append(run_wandao(out / f"pretrain-run{len(ours_runs)}", args.threads, extra))

    def agg(runs, key):
        return statistics.fmean(r[key] for r in runs)

    base_med, ours_med = agg(base_runs, "ms_per_iter_median"), agg(ours_runs, "ms_per_iter_median")
    base_mean, ours_mean = agg(base_runs, "ms_per_iter"), agg(ours_runs, "ms_per_iter")
    result = {
        "ratio_time_per_iter": ours_med / base_med,
        "ratio_time_per_iter_mean": ours_mean / base_mean,
        "wandao_val_loss": ours_runs[0]["final_val_loss"],
        "baseline_val_loss": base_runs[0]["final_val_loss"],
        "wandao_ms_per_iter_median": ours_med, "baseline_ms_per_iter_median": base_med,
        "wandao_ms_per_iter_mean": ours_mean, "baseline_ms_per_iter_mean": base_mean,
        "wandao_wall_s": agg(ours_runs, "wall_s"), "baseline_wall_s": agg(base_runs, "wall_s"),
        "steps": args.max_iters, "threads": args.threads, "order": order,
        "target": "wandao val loss <= 1.88 at <= 1.0x the baseline's time per iteration",
        "reference": REFERENCE, "machine": machine(),
        "wandao_out_dir": ours_runs[0]["out_dir"],
    }
    result["meets_target"] = bool(result["wandao_val_loss"] <= 1.88 and result["ratio_time_per_iter"] <= 1.0)
    rows = [
        {"side": "nanoGPT re-statement (baseline)", "val": result["baseline_val_loss"], "med": base_med,
         "mean": base_mean, "wall": result["baseline_wall_s"]},
        {"side": "wandao pretrain", "val": result["wandao_val_loss"], "med": ours_med, "mean": ours_mean,
         "wall": result["wandao_wall_s"]},
    ]
    md = "\n".join([
        "# Pretraining: nanoGPT's CPU Shakespeare run vs `wandao pretrain`", "",
        f"Machine: {describe_machine(result['machine'])}; torch {torch.__version__}, {args.threads} threads; "
        f"{args.max_iters} iterations; run order {order}.", "",
        markdown_table(rows, [("side", "run", 0), ("val", "final val loss", 4), ("med", "ms/iter (median)", 2),
                              ("mean", "ms/iter (mean)", 2), ("wall", "wall s (incl. startup, eval)", 1)]), "",
        f"**Ratio of time per iteration (wandao / baseline, medians): {result['ratio_time_per_iter']:.3f}** "
        f"(means: {result['ratio_time_per_iter_mean']:.3f}). Target: val loss <= 1.88 at <= 1.0x: "
        f"{'met' if result['meets_target'] else 'NOT met'}.", "",
        "Reference, nanoGPT itself on these 2 cores: 67 s wall, 31-35 ms/iter, final val loss 1.8857.",
        "Time per iteration leaves out evaluation on both sides; the machine is shared, so the load average "
        f"at the end ({result['machine'].get('load_avg_1m')}) says how noisy the timings are.", ""])
    write_outputs("pretrain", md, result)
    return result


# ------------------------------------------------------------------------------------------ seeds

def seeds(args) -> dict:
    """Both sides at ``--seeds`` seeds (1337, 1338, ...): how much of the val-loss gap is the seed."""
    data_path = Path(os.environ.get("WANDAO_DATA_DIR", REPO.parent / "shared" / "data")) / "tinyshakespeare" / "input.txt"
    if not data_path.exists():
        sys.exit(f"{data_path} not found: set WANDAO_DATA_DIR to the mirrored data")
    extra = [] if args.max_iters == 2000 else ["--train.max_iters", str(args.max_iters),
                                                "--schedule.decay_iters", str(args.max_iters)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.seeds):
            seed = 1337 + i
            print(f"[seed {seed}] baseline ...", file=sys.stderr, flush=True)
            base = run_baseline(data_path, Path(tmp), args.threads, args.max_iters, seed=seed)
            print(f"[seed {seed}] wandao pretrain ...", file=sys.stderr, flush=True)
            run_dir = Path(tmp) / f"wandao-{seed}"
            ours = run_wandao(run_dir, args.threads, [*extra, "--train.seed", str(seed), "--train.plot", "false"])
            rows.append({"seed": seed, "base_val": base["final_val_loss"], "ours_val": ours["final_val_loss"],
                         "base_full": base["full_val_loss"],
                         "ours_full": wandao_full_val_loss(run_dir, data_path),
                         "base_ms": base["ms_per_iter_median"], "ours_ms": ours["ms_per_iter_median"]})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)

    def mean_sd(key):
        values = [r[key] for r in rows]
        return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)

    summary = {key: dict(zip(("mean", "sd"), mean_sd(key))) for key in rows[0] if key != "seed"}
    summary["seeds_at_or_below_1.88"] = {"baseline": sum(r["base_val"] <= 1.88 for r in rows),
                                         "wandao": sum(r["ours_val"] <= 1.88 for r in rows), "of": len(rows)}
    table_rows = [*rows, {"seed": "mean", **{k: v["mean"] for k, v in summary.items() if "mean" in v}},
                  {"seed": "sd", **{k: v["sd"] for k, v in summary.items() if "sd" in v}}]
    md = "\n".join([
        "# Pretraining anchor across seeds: nanoGPT re-statement vs `wandao pretrain`", "",
        f"Machine: {describe_machine(machine())}; torch {torch.__version__}, {args.threads} threads; "
        f"{args.max_iters} iterations; seeds {rows[0]['seed']}..{rows[-1]['seed']}, each side seeded alike "
        "(the two draw their random numbers in different orders, so a seed is not the same run on both).", "",
        markdown_table(table_rows, [("seed", "seed", 0), ("base_val", "baseline val (20x12 windows)", 4),
                                    ("ours_val", "wandao val (20x12 windows)", 4),
                                    ("base_full", "baseline val (whole split)", 4),
                                    ("ours_full", "wandao val (whole split)", 4),
                                    ("base_ms", "baseline ms/iter", 1), ("ours_ms", "wandao ms/iter", 1)]), "",
        f"Seeds at or below 1.88 (the nanoGPT estimate): baseline {summary['seeds_at_or_below_1.88']['baseline']}, "
        f"wandao {summary['seeds_at_or_below_1.88']['wandao']}, of {len(rows)}. The whole-split column scores all "
        "non-overlapping 64-character windows of the last 10% (no sampling).", ""])
    payload = {"rows": rows, "summary": summary, "max_iters": args.max_iters, "machine": machine()}
    write_outputs("pretrain_seeds", md, payload)
    return payload


# ---------------------------------------------------------------------------------------- variants

VARIANTS = [
    # (row name, model preset, optimizer, lr)
    ("GPT-3 style (learned pos, pre-LN, GELU)", "nanogpt-shakespeare-char", "adamw", 1e-3),
    ("RoPE + SwiGLU + RMSNorm (Llama)", "shakespeare-char-llama", "adamw", 1e-3),
    ("multi-query attention (Llama, 1 KV head)", "shakespeare-char-mqa", "adamw", 1e-3),
    ("parallel attention+MLP (GPT-J/PaLM)", "shakespeare-char-parallel", "adamw", 1e-3),
    ("optimizer: AdamW", "nanogpt-shakespeare-char", "adamw", 1e-3),
    ("optimizer: RAdam", "nanogpt-shakespeare-char", "radam", 1e-3),
    ("optimizer: Adafactor", "nanogpt-shakespeare-char", "adafactor", 1e-3),
    ("optimizer: LAMB", "nanogpt-shakespeare-char", "lamb", 1e-2),
]


def variants(args) -> dict:
    out = REPO / "bench" / "out"
    rows = []
    for name, preset, opt, lr in VARIANTS:
        if name.startswith("optimizer: AdamW") and rows and rows[0]["preset"] == preset:
            rows.append({**rows[0], "name": name})  # the same run as the GPT-3 row
            continue
        print(f"variant: {name} ...", file=sys.stderr, flush=True)
        r = run_wandao(out / f"variant-{preset}-{opt}", args.threads,
                       ["--model.preset", preset, "--optim.name", opt, "--optim.lr", str(lr),
                        "--train.max_iters", str(args.max_iters), "--schedule.decay_iters", str(args.max_iters)])
        rows.append({"name": name, "preset": preset, "optimizer": opt, "lr": lr, "val": r["final_val_loss"],
                     "params": r["params_non_embedding"], "ms": r["ms_per_iter_median"], "tokens": r["tokens"]})
    md = "\n".join([
        "# Pretraining variants at equal compute", "",
        f"Char-level tiny Shakespeare, the anchor's shape (4 layers, 4 heads, 128 wide, block 64, batch 12), "
        f"{args.max_iters} iterations each ({rows[0]['tokens']:,} tokens), warmup 100 then cosine to 1e-4; the same "
        f"data order (seed 1337). Presets are sized to ~equal parameters. Machine: {describe_machine(machine())}.", "",
        markdown_table(rows, [("name", "variant", 0), ("preset", "preset", 0), ("optimizer", "optimizer", 0),
                              ("lr", "peak lr", 4), ("params", "params (non-emb.)", 0), ("val", "val loss", 4),
                              ("ms", "ms/iter (median)", 1)]), "",
        "LAMB runs at 10x the rate: its trust ratio makes each step lr x ||w|| per tensor, so at 1e-3 it moves "
        "weights 0.1% per step. Adafactor uses an external learning rate (relative_step=False), no parameter scaling.",
        ""])
    payload = {"rows": rows, "max_iters": args.max_iters, "machine": machine()}
    write_outputs("pretrain_variants", md, payload)
    return payload


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="example: .venv/bin/python bench/bench_pretrain.py --order abba")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", torch.get_num_threads())),
                    help="torch.set_num_threads for both sides (default: torch's default, the core count)")
    ap.add_argument("--max-iters", type=int, default=2000, help="iterations (2000 = the anchor)")
    ap.add_argument("--order", choices=("ab", "abba"), default="ab",
                    help="ab: baseline then wandao; abba: baseline, wandao, wandao, baseline (cancels load drift)")
    ap.add_argument("--variants", action="store_true", help="the equal-compute variants table instead")
    ap.add_argument("--seeds", type=int, default=0,
                    help="run both sides at this many seeds (1337, 1338, ...) and report the spread instead")
    args = ap.parse_args()
    if args.seeds:
        payload = seeds(args)
        print(json.dumps(payload["summary"]))
        return
    if args.variants:
        payload = variants(args)
        print(json.dumps({r["name"]: r["val"] for r in payload["rows"]}))
        return
    result = side_by_side(args)
    print(json.dumps({k: result[k] for k in ("ratio_time_per_iter", "ratio_time_per_iter_mean", "wandao_val_loss",
                                             "baseline_val_loss", "wandao_ms_per_iter_median",
                                             "baseline_ms_per_iter_median", "meets_target")}))


if __name__ == "__main__":
    main()
