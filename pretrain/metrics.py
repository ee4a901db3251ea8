"""Run metrics: JSONL on disk (TensorBoard optional), a loss-curve PNG, a Markdown summary, MFU.

``metrics.jsonl`` holds one JSON object per log or eval step: ``{"step", "kind": "train"|"eval", ...}``
with the same names as the log lines (``loss``, ``lr``, ``grad_norm``, ``tokens_per_s``, ``mfu``,
``peak_mem_mb``; ``val_loss``, ``val_ppl``, ``train_loss``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class MetricsLogger:
    """Append metrics to ``out_dir/metrics.jsonl`` (line-buffered) and, if asked, to TensorBoard."""

    def __init__(self, out_dir: str | os.PathLike, tensorboard: bool = False, resume_step: int | None = None,
                 enabled: bool = True):
        self.enabled = enabled
        self.path = Path(out_dir) / "metrics.jsonl"
        self._tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            # A resumed run rewrites history from its checkpoint step on, so the file has no duplicates.
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) < resume_step]
            tmp = self.path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            os.replace(tmp, self.path)
        elif self.path.exists():
            self.path.unlink()
        self._f = open(self.path, "a", buffering=1, encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                raise ImportError(f"TensorBoard logging needs the tensorboard package ({err}); "
                                  "pip install tensorboard, or set --train.tensorboard false") from None
            self._tb = SummaryWriter(str(Path(out_dir) / "tensorboard"))

    def log(self, step: int, kind: str, **metrics: Any) -> None:
        if not self.enabled:
            return
        record = {"step": step, "kind": kind, **{k: _clean(v) for k, v in metrics.items()}}
        self._f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and v is not None:
                    self._tb.add_scalar(f"{kind}/{k}", v, step)

    def close(self) -> None:
        if not self.enabled:
            return
        self._f.close()
        if self._tb is not None:
            self._tb.close()


def _clean(v: Any) -> Any:
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    return v


def read_metrics(path: str | os.PathLike) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_loss_curve(metrics_path: str | os.PathLike, png_path: str | os.PathLike, title: str = "") -> Path:
    """Train loss per log step and train/val loss per eval, written to ``png_path`` (via a temp file)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in records if r["kind"] == "train" and r.get("loss") is not None]
    evals = [r for r in records if r["kind"] == "eval"]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    if train:
        ax.plot(*zip(*train), lw=0.8, alpha=0.6, label="train (batch)")
    if evals:
        ax.plot([r["step"] for r in evals], [r.get("train_loss") for r in evals], "o-", ms=3, label="train (eval)")
        ax.plot([r["step"] for r in evals], [r.get("val_loss") for r in evals], "s-", ms=3, label="val")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title or "loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png_path = Path(png_path)
    tmp = png_path.with_name(f".{png_path.stem}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, png_path)
    return png_path


RUN_FILES = "`config.yaml` (the run's config), `metrics.jsonl`, `loss.png`, `step-XXXXXXXX/` checkpoints."


def write_summary(out_dir: str | os.PathLike, summary: dict, title: str = "wandao pretrain run",
                  files: str = RUN_FILES) -> Path:
    """A short ``summary.md`` in the run folder: the final numbers and ``files``, the folder's contents."""
    lines = [f"# {title}", "", "| metric | value |", "| --- | --- |"]
    for k, v in summary.items():
        if isinstance(v, float):
            v = f"{v:.4g}"
        lines.append(f"| {k} | {v} |")
    lines += ["", f"Files: {files}", ""]
    path = Path(out_dir) / "summary.md"
    tmp = path.with_name(".summary.md.tmp")
    tmp.write_text("\n".join(lines), encoding="utf-8")
    os.replace(tmp, path)
    return path


def peak_flops(device: str, dtype: str, num_threads: int) -> float | None:
    """Rough peak FLOP/s for MFU: a table for common GPUs (dense bf16), or cores × clock × FMA width on CPU."""
    if device.startswith("cuda"):
        import torch

        name = torch.cuda.get_device_name()
        table = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12, "4090": 165e12}
        for key, flops in table.items():
            if key in name:
                return flops if dtype == "bfloat16" else flops / 2
        return None
    if not sys.platform.startswith("linux"):
        return None
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    mhz = [float(line.split(":")[1]) for line in info.splitlines() if line.startswith("cpu MHz")]
    flags = next((line for line in info.splitlines() if line.startswith("flags")), "")
    if not mhz:
        return None
    # fp32 FLOPs per cycle per core: 2 FMA units x (16 lanes AVX-512 | 8 lanes AVX2) x 2 (multiply+add).
    per_cycle = 64 if " avx512f" in flags else 32 if " fma" in flags else 8
    return num_threads * max(mhz) * 1e6 * per_cycle


def peak_memory_mb(device: str) -> float:
    """Peak accelerator memory allocated (CUDA) or the process's peak resident set (CPU), in MiB."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
