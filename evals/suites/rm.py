"""``rm``: pairwise accuracy (ties apart), ECE, mean margin and reward mean/std of a reward model.

The model is an RM folder written by ``wandao rm train`` (or any ``num_labels=1`` HF classifier
with ``config.wandao_rm``); the data are preference sets in any form :mod:`align.preference_data`
reads: ``hh-rlhf:<subset>`` (``helpful-base``, ``harmless-base``, ``helpful-rejection-sampled``),
``hhh-evals``, an hh-rlhf ``*.jsonl.gz`` path, or JSONL rows ``{prompt, chosen, rejected}`` /
``{prompt, responses, ranks}``. ``--split test`` keeps the RM module's deterministic held-out 20%
by prompt hash (:func:`align.preference_data.split_by_prompt`), the part ``wandao rm train`` never
trains on.

The metrics are :func:`align.reward.preference_metrics` (the same numbers ``wandao rm eval``
prints): a comparison is correct when the preferred response's reward is strictly higher, a tie
when the two rewards are equal (ties are counted apart and are not correct; ``accuracy_ties_half``
gives each half a point, RewardBench's convention); ``ece`` is the expected calibration error
(Guo et al. 2017) of the Bradley-Terry probability σ(r_chosen − r_rejected);
``mean_margin`` = mean(r_chosen − r_rejected). With several ``--data`` sources each also gets
``accuracy/<source>`` etc.; the top-level numbers pool every comparison.

An RM with objective heads (``model.heads`` in ``wandao rm train``) reads each source through the
head trained on it (``head/<source>`` says which); ``--head`` reads every source through one head
(a source no head was trained on, such as ``hhh-evals``, needs it).

Per-example rows (one per comparison): the source row id, the prompt (the last user turn), both
responses, both rewards, the margin and whether it was correct or a tie.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

HEADLINE = ("accuracy", "accuracy_ties_half", "ece")
WORST = ("margin", True)
WORST_COLUMNS = ("id", "prompt", "chosen", "rejected", "reward_chosen", "reward_rejected", "margin")
EXAMPLE = ("wandao eval rm --model runs/rm/minilm-hh --data hh-rlhf:helpful-base hh-rlhf:harmless-base "
           "--split test --json")

PER_SOURCE = ("accuracy", "ties", "pairs", "ece", "mean_margin")


@dataclass
class Config:
    model: str = field(default="", metadata={"help": "RM folder (wandao rm train --out)"})
    data: tuple[str, ...] = field(default=("hh-rlhf:helpful-base",), metadata={
        "help": "preference sets: hh-rlhf:<subset>, hhh-evals, or JSONL(.gz)/parquet paths"})
    split: str = field(default="test", metadata={
        "help": "test: the held-out part by prompt hash (as wandao rm train splits; --test-fraction of the prompts); "
                "train: the rest; all",
        "choices": ("test", "train", "all")})
    test_fraction: float = field(default=0.2, metadata={"help": "size of the test part (as in wandao rm train)"})
    limit: int | None = field(default=None, metadata={"help": "evaluate at most this many rows per source"})
    batch_size: int = field(default=64, metadata={"help": "sequences per forward pass"})
    ece_bins: int = field(default=10, metadata={"help": "equal-width probability bins of the ECE"})
    device: str = field(default="cpu", metadata={"help": "cpu, cuda, ..."})
    head: str | None = field(default=None, metadata={
        "help": "objective head for every source (an RM with heads); default: each source's own head"})

    def __post_init__(self) -> None:
        if isinstance(self.data, str):
            self.data = (self.data,)
        self.data = tuple(self.data)
        if not self.data:
            raise ValueError("rm needs at least one --data source")
        if self.split not in ("test", "train", "all"):
            raise ValueError(f"--split must be test, train or all, got {self.split!r}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"--test-fraction must be in (0, 1), got {self.test_fraction}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be ≥ 1, got {self.batch_size}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be ≥ 1, got {self.limit}")
        # --model is checked in suite(): a YAML config leaves the model to the command line


def load_rows(cfg: Config) -> dict[str, list]:
    """``{source: rows}``: the ``cfg.split`` part of every source, at most ``cfg.limit`` rows each."""
    from align.preference_data import read_preferences, split_by_prompt

    out = {}
    for src in cfg.data:
        rows = split_by_prompt(read_preferences(src), cfg.split, cfg.test_fraction)
        if cfg.limit:
            rows = rows[:cfg.limit]
        if not rows:
            raise ValueError(f"{src}: the {cfg.split!r} part is empty (test_fraction={cfg.test_fraction})")
        out[src] = rows
    return out


def comparison_rows(source: str, rows: list, rewards: list) -> list[dict]:
    """One per-example row per comparison ``(i, j)`` (response ``i`` preferred) of every preference row."""
    out = []
    for row, rew in zip(rows, rewards):
        for i, j in row.comparisons():
            margin = float(rew[i] - rew[j])
            out.append({"id": row.id if row.k == 2 else f"{row.id}:{i}>{j}", "source": source,
                        "prompt": row.question, "chosen": row.responses[i], "rejected": row.responses[j],
                        "reward_chosen": float(rew[i]), "reward_rejected": float(rew[j]), "margin": margin,
                        "correct": margin > 0, "tie": margin == 0})
    return out


def suite(cfg: Config) -> tuple[dict, list[dict]]:
    from align.reward import load_reward_model, preference_metrics, row_rewards

    if not cfg.model:
        raise ValueError("rm needs --model DIR (an RM folder written by wandao rm train)")
    sets = load_rows(cfg)  # the data first: a bad file should not cost a model load
    rm = load_reward_model(cfg.model, cfg.device, cfg.head)
    readers = {src: rm.reader_for(src) for src in sets}  # each source's own head, unless --head named one
    all_rows, all_rewards, per_example, per_source = [], [], [], {}
    for src, rows in sets.items():
        reader = readers[src]
        logger.info("scoring %d rows of %s (%s part)%s", len(rows), src, cfg.split,
                    f" through head {reader.head_name}" if rm.heads else "")
        rewards = row_rewards(reader, rows, cfg.batch_size, cfg.device)
        per_source[src] = preference_metrics(rewards, rows, cfg.ece_bins)
        per_example += comparison_rows(src, rows, rewards)
        all_rows += rows
        all_rewards += rewards
    metrics: dict = preference_metrics(all_rewards, all_rows, cfg.ece_bins)
    if len(sets) > 1:
        for src, m in per_source.items():
            metrics.update({f"{k}/{src}": m[k] for k in PER_SOURCE})
    if rm.heads:
        metrics.update({f"head/{src}": reader.head_name for src, reader in readers.items()})
        metrics.update({f"reward_offset/{reader.head_name}": reader.offset for reader in readers.values()})
    else:
        metrics["reward_offset"] = rm.offset
    metrics.update({"model": cfg.model, "dataset": ", ".join(cfg.data), "split": cfg.split})
    return metrics, per_example
