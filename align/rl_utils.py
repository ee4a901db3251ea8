"""Small pure functions of the PPO recipe: GAE, KL estimators and controllers, clipped losses, whitening, EMA.

Every tensor argument is ``(B, T)`` over token positions with a 0/1 ``mask`` marking the positions
that count (the response tokens: actions). Nothing here keeps state except the two KL controllers
and :class:`RunningMoments`, whose state is a plain dict for checkpoints.

Sources:
- GAE: Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized Advantage
  Estimation", eq. 16: ``δ_t = r_t + γ V_{t+1} − V_t``, ``A_t = Σ_l (γλ)^l δ_{t+l}``; returns
  ``R_t = A_t + V_t``. InstructGPT (Ouyang et al. 2022) trains with ``γ = 1`` (no discount).
- KL estimators: Schulman 2020, "Approximating KL Divergence" (joschu.net/blog/kl-approx.html):
  with ``x ~ q`` (the policy) and ``r = p(x)/q(x)`` (``p``: the reference),
  ``k1 = −log r``, ``k2 = ½ (log r)²``, ``k3 = (r − 1) − log r``. k1 and k3 are unbiased for
  ``KL(q‖p)``; k3 is never negative.
- Per-token KL penalty in the reward: Ziegler et al. 2019 / Stiennon et al. 2020 / InstructGPT:
  ``r_t = −β·kl_t``, plus the sequence score at the last response token; InstructGPT's β = 0.02.
- Adaptive KL controller: Ziegler et al. 2019, "Fine-Tuning Language Models from Human
  Preferences", sec. 2.2: ``e = clip(KL/KL_target − 1, −0.2, 0.2)``, ``β ← β (1 + K_β e)`` with
  ``K_β = n_steps / horizon``.
- Clipped surrogate and clipped value loss: Schulman et al. 2017 (PPO), eq. 7; the value clip as
  in OpenAI baselines' ``ppo2`` (``½ max((V − R)², (V_old + clip(V − V_old, ±ε) − R)²)``).
- PPO-ptx: InstructGPT eq. 2: ``objective = RL objective + γ E_pretrain[log π]``; as a loss,
  ``loss = ppo_loss + γ · ptx_nll`` (InstructGPT's γ = 27.8).
- EMA of the actor: DeepSpeed-Chat's ``moving_average`` (β = 0.992): ``θ_ema ← β θ_ema + (1 − β) θ``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterable, Literal

if TYPE_CHECKING:
    import torch

KLEstimator = Literal["k1", "k2", "k3"]
INSTRUCTGPT_KL_BETA = 0.02
INSTRUCTGPT_PTX_COEF = 27.8
EMA_BETA = 0.992


# ------------------------------------------------------------------------------------------ masked stats


def masked_sum(x: "torch.Tensor", mask: "torch.Tensor", dim: int | None = None) -> "torch.Tensor":
    """Sum of ``x`` where ``mask`` is 1."""
    return (x * mask).sum() if dim is None else (x * mask).sum(dim)


def masked_mean(x: "torch.Tensor", mask: "torch.Tensor", dim: int | None = None) -> "torch.Tensor":
    """Mean of ``x`` over the positions where ``mask`` is 1 (0 when none)."""
    if dim is None:
        return masked_sum(x, mask) / mask.sum().clamp(min=1)
    return masked_sum(x, mask, dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: "torch.Tensor", mask: "torch.Tensor", unbiased: bool = True) -> "torch.Tensor":
    """Variance of ``x`` over the masked positions (Bessel-corrected when ``unbiased`` and n > 1)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    n = mask.sum()
    if unbiased and n > 1:
        var = var * n / (n - 1)
    return var


def masked_whiten(x: "torch.Tensor", mask: "torch.Tensor", shift_mean: bool = True,
                  eps: float = 1e-8) -> "torch.Tensor":
    """``(x − mean) / std`` over the masked positions; masked-out positions come back 0.

    ``shift_mean=False`` only rescales (for rewards whose sign matters). Advantage whitening in
    PPO implementations (OpenAI baselines, TRL) uses the mean shift.
    """
    import torch

    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


class RunningMoments:
    """Running mean and standard deviation of scalar rewards (Chan et al.'s parallel update).

    Used for reward normalisation across rollouts: ``(r − mean) / std`` with the moments of every
    batch seen so far (batch included), as TRL's ``RunningMoments``.
    """

    def __init__(self) -> None:
        self.mean, self.var, self.count = 0.0, 1.0, 0

    def update(self, xs: "torch.Tensor") -> tuple[float, float]:
        """Fold ``xs`` in; return the batch's (mean, std)."""
        xs = xs.double().flatten()
        n = int(xs.numel())
        b_mean = float(xs.mean())
        b_var = float(xs.var(unbiased=False)) if n > 1 else 0.0
        total = self.count + n
        delta = b_mean - self.mean
        m2 = self.var * self.count + b_var * n + delta * delta * self.count * n / total
        self.mean += delta * n / total
        self.var = m2 / total
        self.count = total
        return b_mean, math.sqrt(b_var * n / max(n - 1, 1))

    @property
    def std(self) -> float:
        return math.sqrt(self.var * self.count / max(self.count - 1, 1))

    def normalize(self, xs: "torch.Tensor", eps: float = 1e-8) -> "torch.Tensor":
        return (xs - self.mean) / (self.std + eps)

    def state_dict(self) -> dict:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.var, self.count = float(state["mean"]), float(state["var"]), int(state["count"])


# ------------------------------------------------------------------------------------------------ KL


def kl_per_token(logp: "torch.Tensor", ref_logp: "torch.Tensor", kind: KLEstimator = "k1") -> "torch.Tensor":
    """Per-token estimate of ``KL(π‖π_ref)`` from tokens sampled from π (Schulman 2020).

    With ``log r = ref_logp − logp``: ``k1 = −log r``, ``k2 = ½ (log r)²``, ``k3 = (e^{log r} − 1) − log r``.

    Example:
        >>> import torch
        >>> round(float(kl_per_token(torch.tensor(0.0), torch.tensor(math.log(0.5)), "k3")), 4)  # 0.5 - 1 + log 2
        0.1931
    """
    import torch

    log_r = ref_logp - logp
    if kind == "k1":
        return -log_r
    if kind == "k2":
        return 0.5 * log_r ** 2
    if kind == "k3":
        return torch.expm1(log_r) - log_r
    raise ValueError(f"KL estimator must be k1, k2 or k3, got {kind!r}")


def kl_penalized_rewards(scores: "torch.Tensor", logp: "torch.Tensor", ref_logp: "torch.Tensor",
                         mask: "torch.Tensor", beta: float, kind: KLEstimator = "k1") -> tuple["torch.Tensor",
                                                                                               "torch.Tensor"]:
    """Per-token rewards ``−β·kl_t`` with the sequence score added at each row's last action token.

    Args:
        scores: ``(B,)`` sequence rewards.
        logp, ref_logp: ``(B, T)`` log-probabilities of the taken tokens under the policy and the reference.
        mask: ``(B, T)`` action mask (contiguous per row).

    Returns:
        ``(rewards (B, T), kl (B, T))``, both zero outside the mask.
    """
    import torch

    kl = kl_per_token(logp, ref_logp, kind) * mask
    rewards = -beta * kl
    last = _last_index(mask)  # (B,)
    has = mask.sum(-1) > 0
    rows = torch.arange(mask.size(0), device=mask.device)[has]
    rewards[rows, last[has]] += scores[has].to(rewards.dtype)
    return rewards * mask, kl


def _last_index(mask: "torch.Tensor") -> "torch.Tensor":
    """Index of the last 1 per row (0 for an all-zero row)."""
    import torch

    T = mask.size(-1)
    pos = torch.arange(T, device=mask.device).expand_as(mask)
    return torch.where(mask > 0, pos, torch.zeros_like(pos)).max(-1).values


class FixedKLController:
    """A constant β."""

    def __init__(self, beta: float = INSTRUCTGPT_KL_BETA) -> None:
        self.beta = beta

    def update(self, kl: float, n_steps: int) -> float:
        return self.beta

    def state_dict(self) -> dict:
        return {"beta": self.beta}

    def load_state_dict(self, state: dict) -> None:
        self.beta = float(state["beta"])


class AdaptiveKLController:
    """Ziegler et al. 2019's proportional controller: β moves so the observed KL tracks ``target``.

    ``e = clip(kl / target − 1, −0.2, 0.2)``; ``β ← β · (1 + e · n_steps / horizon)``.

    Example:
        >>> c = AdaptiveKLController(0.1, target=6.0, horizon=10000)
        >>> round(c.update(12.0, 256), 6)  # error clipped to 0.2: 0.1 * (1 + 0.2 * 256 / 10000)
        0.100512
    """

    def __init__(self, beta: float, target: float, horizon: float) -> None:
        if target <= 0 or horizon <= 0:
            raise ValueError(f"adaptive KL needs target > 0 and horizon > 0, got {target}, {horizon}")
        self.beta, self.target, self.horizon = beta, target, horizon

    def update(self, kl: float, n_steps: int) -> float:
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.beta *= 1.0 + error * n_steps / self.horizon
        return self.beta

    def state_dict(self) -> dict:
        return {"beta": self.beta}

    def load_state_dict(self, state: dict) -> None:
        self.beta = float(state["beta"])


# ---------------------------------------------------------------------------------------------- GAE


def gae(rewards: "torch.Tensor", values: "torch.Tensor", mask: "torch.Tensor", gamma: float = 1.0,
        lam: float = 0.95) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Generalized advantage estimation over each row's masked (action) positions.

    ``δ_t = r_t + γ V_{t+1} − V_t`` and ``A_t = δ_t + γλ A_{t+1}``, with ``V`` and ``A`` taken as 0
    past the row's last action (the episode ends there). Positions outside the mask are skipped:
    the next action after ``t`` is the next masked position, so evidence or padding between
    actions does not break the recursion.

    Returns:
        ``(advantages, returns)``, ``(B, T)``, zero outside the mask; ``returns = advantages + values``.

    Example (hand-computed in tests): rewards ``[0, 0, 1]``, values ``[0.5, 0.5, 0.5]``, γ = 1,
    λ = 0.95 → δ = ``[0, 0, 0.5]`` → A = ``[0.45125, 0.475, 0.5]``.
    """
    import torch

    B, T = rewards.shape
    adv = torch.zeros_like(rewards)
    next_value = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    next_adv = torch.zeros_like(next_value)
    m = mask.to(rewards.dtype)
    for t in range(T - 1, -1, -1):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        a = delta + gamma * lam * next_adv
        on = m[:, t]
        adv[:, t] = a * on
        # Carry the last action's value/advantage across non-action positions.
        next_value = on * values[:, t] + (1 - on) * next_value
        next_adv = on * a + (1 - on) * next_adv
    returns = (adv + values) * m
    return adv, returns


# ------------------------------------------------------------------------------------------ losses


def clipped_policy_loss(logp: "torch.Tensor", old_logp: "torch.Tensor", advantages: "torch.Tensor",
                        mask: "torch.Tensor", clip: float = 0.2) -> tuple["torch.Tensor", dict]:
    """PPO's clipped surrogate, as a loss: ``mean(max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε)))`` over the mask.

    Returns:
        ``(loss, stats)``; stats (detached tensors): ``clipfrac`` (fraction of masked tokens where
        the clipped term was the larger), ``approx_kl`` (``mean ½ (log ρ)²``), ``ratio`` (mean ρ).
    """
    import torch

    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {"clipfrac": masked_mean((clipped > unclipped).to(logp.dtype), mask),
                 "approx_kl": masked_mean(0.5 * log_ratio ** 2, mask),
                 "ratio": masked_mean(ratio, mask)}
    return loss, stats


def clipped_value_loss(values: "torch.Tensor", old_values: "torch.Tensor", returns: "torch.Tensor",
                       mask: "torch.Tensor", clip: float = 0.2) -> tuple["torch.Tensor", dict]:
    """``½ · mean(max((V − R)², (V_old + clip(V − V_old, ±ε) − R)²))`` over the mask.

    Returns:
        ``(loss, stats)``; stats: ``vf_clipfrac``, ``value_error`` (``mean (V − R)²``).
    """
    import torch

    v_clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    err = (values - returns) ** 2
    err_clipped = (v_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(err, err_clipped), mask)
    with torch.no_grad():
        stats = {"vf_clipfrac": masked_mean((err_clipped > err).to(values.dtype), mask),
                 "value_error": masked_mean(err, mask)}
    return loss, stats


def ptx_mix(ppo_loss: "torch.Tensor", ptx_nll: "torch.Tensor | None", coef: float) -> "torch.Tensor":
    """InstructGPT's PPO-ptx as a loss: ``ppo_loss + γ · ptx_nll`` (γ = 0 or no batch: PPO alone)."""
    if ptx_nll is None or coef == 0.0:
        return ppo_loss
    return ppo_loss + coef * ptx_nll


def entropy_from_logits(logits: "torch.Tensor") -> "torch.Tensor":
    """Entropy of the softmax over the last dimension: ``logsumexp(z) − Σ softmax(z)·z``."""
    import torch

    p = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (p * logits).sum(-1)


def ema_update(ema_params: Iterable["torch.Tensor"], params: Iterable["torch.Tensor"], beta: float = EMA_BETA) -> None:
    """In place: ``θ_ema ← β θ_ema + (1 − β) θ`` (DeepSpeed-Chat's actor EMA, β = 0.992)."""
    import torch

    with torch.no_grad():
        for e, p in zip(ema_params, params):
            e.mul_(beta).add_(p.detach().to(e.dtype), alpha=1.0 - beta)
