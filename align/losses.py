"""Reward-model losses and metrics: Bradley-Terry pairs, InstructGPT K-wise ranking, Llama 2 margins.

All losses take rewards as tensors and return a scalar (``reduction="mean"``) or per-element
values (``reduction="none"``). The K-wise loss works on a padded ``(B, K)`` reward matrix with a
rank per response (lower is better; equal ranks are ties and are not compared; ``-1`` marks
padding), so one batch element holds every comparison of one prompt and each response is
forwarded once.

Example:
    >>> import torch
    >>> r = torch.tensor([[2.0, 1.0, 0.0]])          # rewards of three responses, best first
    >>> ranks = torch.tensor([[0, 1, 2]])
    >>> torch.allclose(kwise_loss(r, ranks), pairwise_loss(r[:, [0, 0, 1]], r[:, [1, 2, 2]]))
    True
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

#: Llama 2's margins by preference strength (Touvron et al. 2023, Table 28, "margin small").
LLAMA2_MARGIN_SMALL = {"significantly better": 1.0, "better": 2.0 / 3.0, "slightly better": 1.0 / 3.0,
                       "negligibly better": 0.0, "unsure": 0.0}
#: Llama 2's larger margins (Table 28, "margin large").
LLAMA2_MARGIN_LARGE = {"significantly better": 3.0, "better": 2.0, "slightly better": 1.0,
                       "negligibly better": 0.0, "unsure": 0.0}


def _reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    if reduction == "none":
        return values
    raise ValueError(f"reduction must be mean, sum or none, got {reduction!r}")


def pairwise_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: torch.Tensor | float | None = None,
                  reduction: str = "mean") -> torch.Tensor:
    """Bradley-Terry loss ``-log σ(r_c - r_r - m)``.

    Bradley & Terry 1952; as an RM loss: Stiennon et al. 2020 ("Learning to summarize from human
    feedback", eq. 1). With a margin ``m`` it is Llama 2's loss (Touvron et al. 2023, eq. 2):
    the chosen reward must beat the rejected one by at least ``m`` before the loss flattens.

    Args:
        r_chosen, r_rejected: rewards of the preferred and the other response, same shape.
        margin: per-pair margin (same shape or broadcastable), or None for 0.
        reduction: ``mean``, ``sum`` or ``none``.
    """
    diff = r_chosen - r_rejected
    if margin is not None:
        diff = diff - margin
    return _reduce(-F.logsigmoid(diff), reduction)


def comparison_mask(ranks: torch.Tensor) -> torch.Tensor:
    """``(B, K, K)`` boolean: ``[b, i, j]`` is True when response ``i`` is ranked above ``j``.

    ``ranks`` is ``(B, K)`` with lower = better; ``-1`` marks padding; equal ranks (ties) are not compared.
    """
    valid = ranks >= 0
    better = ranks[:, :, None] < ranks[:, None, :]  # (B, K, K)
    return better & valid[:, :, None] & valid[:, None, :]


def kwise_loss(rewards: torch.Tensor, ranks: torch.Tensor, margins: torch.Tensor | None = None,
               reduction: str = "mean", targets: torch.Tensor | None = None) -> torch.Tensor:
    """InstructGPT's K-wise ranking loss (Ouyang et al. 2022, eq. 1)::

        loss(θ) = -1/C(K,2) · E_{(x, y_w, y_l)} [ log σ(r(x, y_w) - r(x, y_l)) ]

    Every pair ``(y_w, y_l)`` of the K ranked responses of one prompt is compared inside one
    batch element, and that element's loss is the mean over its comparisons, so each prompt
    weighs the same whatever its K (the paper's fix for the overfitting seen when the C(K,2)
    comparisons are shuffled into separate batch elements). Each response's reward is computed
    once; the comparisons are a vectorised ``(B, K, K)`` difference. With ``margins`` the pair
    term is Llama 2's ``-log σ(r_w - r_l - m)``. At K=2 this is exactly :func:`pairwise_loss`.

    With ``targets`` (soft labels, e.g. Constitutional AI's feedback-model probabilities, Bai et al.
    2022 §4.1) the pair term is the cross-entropy of ``σ(r_w - r_l)`` against the probability ``p``
    that ``y_w`` is preferred: ``-[p log σ(d) + (1 - p) log σ(-d)]``; ``p = 1`` is the hard label.

    Args:
        rewards: ``(B, K)`` rewards (padding positions are ignored).
        ranks: ``(B, K)`` integer ranks, lower is better, ``-1`` for padding; ties are skipped.
        margins: optional ``(B, K, K)``; ``margins[b, i, j]`` applies when ``i`` beats ``j``.
        targets: optional ``(B, K, K)`` probabilities in [0, 1]; ``targets[b, i, j]`` is the soft label
            of ``i`` over ``j`` (read where ``i`` is ranked above ``j``).
        reduction: ``mean`` (over batch elements that have at least one comparison), ``sum`` or ``none``.

    Raises:
        ValueError: when a batch element has no comparison (all tied or fewer than 2 responses).
    """
    mask = comparison_mask(ranks)
    diff = rewards[:, :, None] - rewards[:, None, :]  # (B, K, K): r_i - r_j
    if margins is not None:
        diff = diff - margins
    pair_loss = -F.logsigmoid(diff)
    if targets is not None:
        pair_loss = pair_loss + (1.0 - targets) * diff  # -[p log σ(d) + (1-p) log σ(-d)]; log σ(-d) = log σ(d) - d
    n_pairs = mask.sum(dim=(1, 2))  # (B,)
    if bool((n_pairs == 0).any()):
        raise ValueError("kwise_loss: a batch element has no comparison (fewer than two distinct ranks)")
    per_element = torch.where(mask, pair_loss, torch.zeros_like(pair_loss)).sum(dim=(1, 2)) / n_pairs
    return _reduce(per_element, reduction)


def reward_l2(rewards: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared reward, the small L2 term that keeps rewards near 0.

    Eisenstein et al. 2023 ("Helping or Herding? Reward Model Ensembles Mitigate but do not Eliminate
    Reward Hacking", the auxiliary ``(r_c + r_r)²`` term; TRL's ``center_rewards_coefficient``). Here
    the square of every reward, so it also applies to K-wise rows; multiply by the coefficient.
    """
    if valid is None:
        return (rewards ** 2).mean()
    sq = torch.where(valid, rewards ** 2, torch.zeros_like(rewards))
    return sq.sum() / valid.sum().clamp(min=1)


def strength_to_margin(strength: str | float | int | None, kind: str = "map",
                       table: Mapping[str, float] | None = None, scale: float = 1.0) -> float:
    """Margin for one comparison from its preference strength (Llama 2 style, Touvron et al. 2023 §3.2.2).

    Args:
        strength: a label (``"significantly better"``), a number (e.g. a Likert gap), or None (margin 0).
        kind: ``none`` (always 0), ``map`` (labels through ``table``, numbers times ``scale``)
            or ``linear`` (``scale * float(strength)``).
        table: label → margin; default :data:`LLAMA2_MARGIN_SMALL`. Labels match case-insensitively,
            with ``_``/``-`` read as spaces.

    Raises:
        ValueError: an unknown label (naming the known ones) or a non-numeric strength for ``linear``.
    """
    if strength is None or kind == "none":
        return 0.0
    if isinstance(strength, bool):
        raise ValueError(f"preference strength must be a label or a number, got {strength!r}")
    if isinstance(strength, (int, float)):
        if not math.isfinite(float(strength)):
            raise ValueError(f"preference strength must be finite, got {strength!r}")
        return scale * float(strength)
    if kind == "linear":
        try:
            return scale * float(strength)
        except ValueError:
            raise ValueError(f"linear margins need numeric strengths, got {strength!r}") from None
    table = LLAMA2_MARGIN_SMALL if table is None else table
    norm = {_norm_label(k): float(v) for k, v in table.items()}
    key = _norm_label(str(strength))
    if key not in norm:
        raise ValueError(f"unknown preference strength {strength!r}; known: {', '.join(sorted(table))}")
    return norm[key] * scale


def _norm_label(label: str) -> str:
    return " ".join(label.replace("_", " ").replace("-", " ").lower().split())


# --------------------------------------------------------------------------------------- metrics


def pair_counts(r_chosen: Sequence[float] | torch.Tensor, r_rejected: Sequence[float] | torch.Tensor,
                tie_tol: float = 1e-6) -> dict[str, float]:
    """Accuracy with ties counted separately.

    A pair is *correct* when ``r_c - r_r > tie_tol``, a *tie* when ``|r_c - r_r| <= tie_tol``, and wrong
    otherwise. The default tolerance absorbs float noise: the same text scored in batches of different
    shapes (padding, thread count) can differ in the last bits, and that is still a tie. ``accuracy = correct / pairs`` (ties count as not correct); ``accuracy_ties_half`` gives
    each tie half a point (RewardBench's convention for exact ties).

    Returns:
        ``{"pairs", "correct", "ties", "accuracy", "accuracy_ties_half", "mean_margin"}``.
    """
    rc = torch.as_tensor(r_chosen, dtype=torch.float64).flatten()
    rr = torch.as_tensor(r_rejected, dtype=torch.float64).flatten()
    if rc.shape != rr.shape:
        raise ValueError(f"chosen and rejected rewards differ in length: {rc.numel()} vs {rr.numel()}")
    n = rc.numel()
    diff = rc - rr
    ties = int((diff.abs() <= tie_tol).sum())
    correct = int((diff > tie_tol).sum())
    return {
        "pairs": n,
        "correct": correct,
        "ties": ties,
        "accuracy": correct / n if n else float("nan"),
        "accuracy_ties_half": (correct + 0.5 * ties) / n if n else float("nan"),
        "mean_margin": float(diff.mean()) if n else float("nan"),
    }


def expected_calibration_error(r_chosen: Sequence[float] | torch.Tensor, r_rejected: Sequence[float] | torch.Tensor,
                               n_bins: int = 10) -> float:
    """ECE (Guo et al. 2017, "On Calibration of Modern Neural Networks", eq. 3) of the BT probability.

    The RM's probability that the chosen response wins is ``p = σ(r_c - r_r)``. Each pair is scored in
    both orders, ``(p, 1)`` and ``(1 - p, 0)``, so the outcome is not always 1; the ``2N`` probabilities
    fall in ``n_bins`` equal-width bins over ``[0, 1]`` (the last bin closed), and
    ``ECE = Σ_b |B_b| / 2N · |mean(p in b) - mean(outcome in b)|``.
    """
    rc = torch.as_tensor(r_chosen, dtype=torch.float64).flatten()
    rr = torch.as_tensor(r_rejected, dtype=torch.float64).flatten()
    if rc.numel() == 0:
        return float("nan")
    p = torch.sigmoid(rc - rr)
    probs = torch.cat([p, 1 - p])
    outcome = torch.cat([torch.ones_like(p), torch.zeros_like(p)])
    bins = torch.clamp((probs * n_bins).floor().long(), max=n_bins - 1)
    total = torch.zeros((), dtype=torch.float64)
    for b in range(n_bins):
        sel = bins == b
        k = int(sel.sum())
        if k:
            total += k * (probs[sel].mean() - outcome[sel].mean()).abs()
    return float(total / probs.numel())
