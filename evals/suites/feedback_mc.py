"""``feedback-mc``: multiple-choice accuracy of a (feedback) model on the Constitutional AI evals.

Data: ``$WANDAO_DATA_DIR/constitutional-ai/evals/*.jsonl`` (Bai et al. 2022, arXiv:2212.08073):
lines ``{"prompt", "corrects": [...], "incorrects": [...]}``; the options are continuations such
as ``" (B)"``. An item is correct when the best-scoring correct option has a higher log-probability
than every incorrect one (ties count as wrong). Also reported: the mean normalised probability
mass on the correct options (``p_correct``), as the paper's calibration plots use.

Scorers: ``--model`` (an HF causal LM folder, or an OpenAI-compatible base URL such as
``http://127.0.0.1:8000/v1`` whose ``/completions`` supports echo/logprobs, ``wandao serve``
included), or ``--url`` + ``--api-model``; without ``--api-model`` an endpoint's only served model
is used. See :mod:`align.feedback` (re-exported by :mod:`evals.scorers`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

HEADLINE = ("accuracy",)
WORST = ("margin", True)
WORST_COLUMNS = ("id", "correct", "margin", "p_correct")
EXAMPLE = ("wandao eval feedback-mc --model runs/sft/final --dataset constitutional-ai --limit 100 --json\n"
           "  wandao eval feedback-mc --model http://127.0.0.1:8000/v1 --files HarmfulVsEthical --limit 20 --json")


@dataclass
class Config:
    model: str | None = field(default=None, metadata={
        "help": "HF causal LM folder (or hub id), or an OpenAI-compatible base URL (http://HOST:PORT/v1)"})
    url: str | None = field(default=None, metadata={"help": "OpenAI-compatible base URL (instead of --model)"})
    api_model: str | None = field(default=None, metadata={
        "help": "model name served at the endpoint (default: its only model, from GET /models)"})
    dataset: str = field(default="constitutional-ai",
                         metadata={"help": "registered name, folder of *.jsonl, or one .jsonl file"})
    files: tuple[str, ...] = field(default=(), metadata={"help": "only these eval files (stems), default all"})
    limit: int | None = field(default=None, metadata={"help": "first N items of each file"})
    batch_size: int = field(default=8, metadata={"help": "sequences per forward pass"})
    max_length: int | None = field(default=None, metadata={"help": "context window (default: the model's)"})
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, ... (default: cuda when available)"})
    dtype: str = field(default="float32", metadata={"help": "model dtype", "choices": ("float32", "bfloat16", "float16")})

    def __post_init__(self) -> None:
        if bool(self.model) == bool(self.url):
            raise ValueError("feedback-mc needs --model PATH_OR_BASE_URL (an HF causal LM folder or "
                             "http://HOST:PORT/v1), or --url BASE_URL [--api-model NAME]")
        self.files = tuple(self.files)


def eval_files(dataset: str, only: tuple[str, ...] = ()) -> list[Path]:
    from indexer.data import DataError
    from indexer.datasets import resolve

    path = resolve(dataset)
    if path.is_dir():
        files = sorted((path / "evals").glob("*.jsonl")) if (path / "evals").is_dir() else sorted(path.glob("*.jsonl"))
    else:
        files = [path]
    if only:
        missing = set(only) - {f.stem for f in files}
        if missing:
            raise DataError(path, f"eval file(s) {', '.join(sorted(missing))} not found; "
                                  f"available: {', '.join(f.stem for f in files)}")
        files = [f for f in files if f.stem in only]
    if not files:
        raise DataError(path, "no multiple-choice .jsonl files found")
    return files


def load_items(path: Path, limit: int | None = None) -> list[dict]:
    from indexer.data import DataError, iter_jsonl

    items = []
    for line, obj in iter_jsonl(path):
        if not isinstance(obj.get("prompt"), str):
            raise DataError(path, "missing prompt", line, field="prompt")
        for key in ("corrects", "incorrects"):
            vals = obj.get(key)
            if not isinstance(vals, list) or not vals or not all(isinstance(v, str) and v for v in vals):
                raise DataError(path, f"{key} must be a non-empty list of strings", line, field=key)
        items.append({"file": path.stem, "line": line, "prompt": obj["prompt"],
                      "corrects": obj["corrects"], "incorrects": obj["incorrects"]})
        if limit is not None and len(items) >= limit:
            break
    return items


def make_scorer(cfg: Config):
    from evals.scorers import OpenAICompletions, make_scorer as build

    if cfg.url:
        return OpenAICompletions(cfg.url, cfg.api_model)
    return build(cfg.model, api_model=cfg.api_model, device=cfg.device, dtype=cfg.dtype,
                 batch_size=cfg.batch_size, max_length=cfg.max_length)


def score_items(items: list[dict], scorer) -> list[dict]:
    """Score every option of every item with one batched ``loglikelihood`` call."""
    requests = [(it["prompt"], opt) for it in items for opt in it["corrects"] + it["incorrects"]]
    lps = scorer.loglikelihood(requests)
    rows, pos = [], 0
    for it in items:
        nc, ni = len(it["corrects"]), len(it["incorrects"])
        c, w = lps[pos:pos + nc], lps[pos + nc:pos + nc + ni]
        pos += nc + ni
        mx = max(c + w)
        z = sum(math.exp(x - mx) for x in c + w)
        rows.append({"id": f"{it['file']}:{it['line']}", "file": it["file"], "correct": max(c) > max(w),
                     "margin": max(c) - max(w), "p_correct": sum(math.exp(x - mx) for x in c) / z,
                     "logprobs_correct": c, "logprobs_incorrect": w})
    return rows


def suite(cfg: Config) -> tuple[dict, list[dict]]:
    files = eval_files(cfg.dataset, cfg.files)
    items = [it for f in files for it in load_items(f, cfg.limit)]
    scorer = make_scorer(cfg)
    logger.info("scoring %d items from %d files with %s", len(items), len(files), scorer.name)
    rows = score_items(items, scorer)
    n = len(rows)
    metrics: dict = {"accuracy": sum(r["correct"] for r in rows) / n, "p_correct": sum(r["p_correct"] for r in rows) / n,
                     "count": n, "scorer": scorer.name}
    for f in files:
        sub = [r for r in rows if r["file"] == f.stem]
        if sub:
            metrics[f"accuracy/{f.stem}"] = sum(r["correct"] for r in sub) / len(sub)
            metrics[f"count/{f.stem}"] = len(sub)
    return metrics, rows
