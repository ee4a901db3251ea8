"""Optimizers, weight-decay groups, learning-rate schedules and gradient clipping.

- AdamW (Loshchilov & Hutter 2019) and RAdam (Liu et al. 2020) from ``torch.optim``;
- Adafactor (Shazeer & Stern 2018) from ``transformers``, with an external learning rate;
- LAMB (You et al. 2020, "Large Batch Optimization for Deep Learning", Algorithm 2), written here:
  the PyPI implementations checked (``pytorch_optimizer.Lamb``) drop Algorithm 2's bias correction
  of ``m`` and ``v`` and clamp the weight norm, so they do not follow the paper's update.

Weight decay follows nanoGPT's ``configure_optimizers``: every parameter with ``dim >= 2`` (matmul
weights and embeddings) decays; biases and norm gains do not. ``decay_embeddings=False`` also
exempts embedding tables. Schedules are nanoGPT's linear warmup then cosine (or linear) decay to
``min_lr``; the trainer sets the rate itself before every step, as nanoGPT does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Literal, Optional

from pretrain.config import Config, ConfigError, check_range

if TYPE_CHECKING:
    import torch

OPTIMIZERS = ("adamw", "radam", "adafactor", "lamb")


@dataclass
class OptimConfig(Config):
    name: Literal["adamw", "radam", "adafactor", "lamb"] = field(
        default="adamw", metadata={"help": "optimizer: adamw, radam (torch), adafactor (transformers) or lamb"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate"})
    weight_decay: float = field(default=0.1, metadata={"help": "decoupled weight decay on matmul weights"})
    beta1: float = field(default=0.9, metadata={"help": "first-moment decay (adamw, radam, lamb; adafactor if > 0)"})
    beta2: float = field(default=0.99, metadata={"help": "second-moment decay (adamw, radam, lamb)"})
    eps: float = field(default=1e-8, metadata={"help": "denominator epsilon (adamw, radam; lamb uses it too)"})
    decay_embeddings: bool = field(default=True, metadata={
        "help": "weight-decay embedding tables as nanoGPT does (all dim>=2 tensors); false exempts them"})
    grad_clip: float = field(default=1.0, metadata={"help": "clip the global gradient norm to this (0 disables)"})
    impl: Literal["auto", "fused", "foreach", "loop"] = field(default="auto", metadata={
        "help": "torch kernel for adamw/radam: fused, foreach, a plain loop, or auto (fused adamw, else foreach)"})

    def __post_init__(self) -> None:
        check_range("lr", self.lr, 0.0, low_inclusive=False)
        check_range("weight_decay", self.weight_decay, 0.0)
        check_range("beta1", self.beta1, 0.0, 1.0)
        check_range("beta2", self.beta2, 0.0, 1.0)
        check_range("grad_clip", self.grad_clip, 0.0)


@dataclass
class ScheduleConfig(Config):
    kind: Literal["cosine", "linear", "constant"] = field(default="cosine", metadata={
        "help": "after warmup: cosine or linear decay to min_lr, or constant"})
    warmup_iters: int = field(default=100, metadata={"help": "linear warmup steps"})
    decay_iters: Optional[int] = field(default=None, metadata={
        "help": "step at which the rate reaches min_lr (nanoGPT's lr_decay_iters); default: train.max_iters"})
    min_lr: float = field(default=1e-4, metadata={"help": "final learning rate"})

    def __post_init__(self) -> None:
        check_range("warmup_iters", self.warmup_iters, 0)
        check_range("min_lr", self.min_lr, 0.0)
        if self.decay_iters is not None and self.decay_iters <= self.warmup_iters and self.kind != "constant":
            raise ConfigError(f"got {self.decay_iters}; must be greater than warmup_iters={self.warmup_iters}",
                              "decay_iters")


class LRSchedule:
    """nanoGPT's ``get_lr``: warmup ``lr*(it+1)/(warmup+1)``, then cosine/linear to ``min_lr`` at ``decay_iters``."""

    def __init__(self, lr: float, cfg: ScheduleConfig, max_iters: int):
        self.lr, self.cfg = lr, cfg
        self.warmup = cfg.warmup_iters
        self.decay_iters = cfg.decay_iters if cfg.decay_iters is not None else max_iters
        self.min_lr = min(cfg.min_lr, lr)

    def __call__(self, it: int) -> float:
        if it < self.warmup:
            return self.lr * (it + 1) / (self.warmup + 1)
        if self.cfg.kind == "constant":
            return self.lr
        if it > self.decay_iters:
            return self.min_lr
        ratio = (it - self.warmup) / max(1, self.decay_iters - self.warmup)
        coeff = 0.5 * (1.0 + math.cos(math.pi * ratio)) if self.cfg.kind == "cosine" else 1.0 - ratio
        return self.min_lr + coeff * (self.lr - self.min_lr)

    def state_dict(self) -> dict:
        return {"lr": self.lr, "warmup": self.warmup, "decay_iters": self.decay_iters, "min_lr": self.min_lr,
                "kind": self.cfg.kind}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != self.cfg.kind or state.get("decay_iters") != self.decay_iters:
            import logging

            logging.getLogger(__name__).warning("resuming with a different schedule: checkpoint %s, now %s",
                                                state, self.state_dict())


def param_groups(model: "torch.nn.Module", weight_decay: float, decay_embeddings: bool = True) -> list[dict]:
    """nanoGPT's split: tensors with ``dim >= 2`` decay, biases and norm gains do not.

    Tied weights appear once (``named_parameters`` de-duplicates). With ``decay_embeddings=False``
    the weights of ``nn.Embedding`` modules join the no-decay group.
    """
    import torch

    embedding_ids = set()
    if not decay_embeddings:
        embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 and id(p) not in embedding_ids else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def _lamb_class():
    import torch

    class Lamb(torch.optim.Optimizer):
        """LAMB, You et al. 2020 (arXiv:1904.00962v5), Algorithm 2, with φ the identity.

        Per parameter tensor (the paper's "layer") at step ``t``::

            m = β1·m + (1-β1)·g            v = β2·v + (1-β2)·g²
            m̂ = m / (1-β1^t)               v̂ = v / (1-β2^t)
            r = m̂ / (√v̂ + ε) + λ·x
            x = x - η · ‖x‖ / ‖r‖ · r      (trust ratio 1 when ‖x‖ or ‖r‖ is 0)
        """

        def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                     weight_decay: float = 0.0):
            if lr <= 0:
                raise ValueError(f"lr must be > 0, got {lr}")
            super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

        @torch.no_grad()
        def step(self, closure=None):
            loss = None
            if closure is not None:
                with torch.enable_grad():
                    loss = closure()
            for group in self.param_groups:
                params = [p for p in group["params"] if p.grad is not None]
                if not params:
                    continue
                beta1, beta2 = group["betas"]
                grads, ms, vs = [], [], []
                for p in params:
                    state = self.state[p]
                    if not state:
                        state["step"] = torch.zeros((), dtype=torch.float32)
                        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["step"] += 1
                    grads.append(p.grad)
                    ms.append(state["exp_avg"])
                    vs.append(state["exp_avg_sq"])
                t = float(self.state[params[0]]["step"])  # every tensor of a group steps together
                torch._foreach_lerp_(ms, grads, 1 - beta1)  # m = β1 m + (1-β1) g
                torch._foreach_mul_(vs, beta2)
                torch._foreach_addcmul_(vs, grads, grads, value=1 - beta2)
                bc1, bc2 = 1 - beta1 ** t, 1 - beta2 ** t
                denom = torch._foreach_div(vs, bc2)
                torch._foreach_sqrt_(denom)
                torch._foreach_add_(denom, group["eps"])  # √v̂ + ε
                r = torch._foreach_div(ms, denom)
                torch._foreach_div_(r, bc1)  # m̂ / (√v̂ + ε)
                if group["weight_decay"]:
                    torch._foreach_add_(r, params, alpha=group["weight_decay"])
                w_norm = torch.stack(torch._foreach_norm(params))
                r_norm = torch.stack(torch._foreach_norm(r))
                trust = torch.where((w_norm > 0) & (r_norm > 0), w_norm / r_norm, torch.ones_like(w_norm))
                scale = (trust * -group["lr"]).unbind()
                torch._foreach_mul_(r, scale)
                torch._foreach_add_(params, r)
            return loss

    return Lamb


def build_optimizer(model: "torch.nn.Module", cfg: OptimConfig, device_type: str = "cpu") -> "torch.optim.Optimizer":
    """The optimizer named by ``cfg.name`` over :func:`param_groups` of ``model``."""
    import torch

    groups = param_groups(model, cfg.weight_decay, cfg.decay_embeddings)
    betas = (cfg.beta1, cfg.beta2)
    if cfg.name in ("adamw", "radam"):
        kwargs: dict[str, Any] = {}
        impl = cfg.impl
        if impl == "auto":
            impl = "fused" if cfg.name == "adamw" else "foreach"
        if impl == "fused":
            if cfg.name == "radam":
                raise ConfigError("fused kernels exist for adamw only; use foreach or loop", "optim.impl")
            kwargs["fused"] = True
        elif impl == "foreach":
            kwargs["foreach"] = True
        else:
            kwargs["foreach"] = False
        if cfg.name == "adamw":
            return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas, eps=cfg.eps, **kwargs)
        return torch.optim.RAdam(groups, lr=cfg.lr, betas=betas, eps=cfg.eps, decoupled_weight_decay=True, **kwargs)
    if cfg.name == "adafactor":
        from transformers.optimization import Adafactor

        # An external learning rate (the trainer's schedule) instead of Adafactor's relative step.
        return Adafactor(groups, lr=cfg.lr, beta1=cfg.beta1 if cfg.beta1 > 0 else None, relative_step=False,
                         scale_parameter=False, warmup_init=False)
    if cfg.name == "lamb":
        return _lamb_class()(groups, lr=cfg.lr, betas=betas, eps=cfg.eps)
    raise ConfigError(f"got {cfg.name!r}; allowed values: {', '.join(OPTIMIZERS)}", "optim.name")


def make_lamb(params: Iterable, **kwargs) -> "torch.optim.Optimizer":
    """A :class:`Lamb` optimizer (the class is built lazily so importing this module needs no torch)."""
    return _lamb_class()(params, **kwargs)


def set_lr(optimizer: "torch.optim.Optimizer", lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def clip_grad_norm(parameters: Iterable["torch.Tensor"], max_norm: float) -> "torch.Tensor":
    """Clip the global L2 norm in place and return the norm before clipping (a tensor: no host sync).

    With ``max_norm == 0`` nothing is clipped, but the norm is still computed for logging.
    """
    import torch

    params = [p for p in parameters if p.grad is not None]
    if max_norm > 0:
        return torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm([p.grad for p in params])))
