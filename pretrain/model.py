"""wandao's language models: compact modules whose parameters are HF transformers checkpoints.

Four families, each written like nanoGPT's ``model.py`` (one fused call per projection where the HF
layout allows it, ``F.scaled_dot_product_attention``, no hooks, no per-call reshapes beyond the
attention head split), and each named parameter for parameter after one transformers class, so a
checkpoint saves in that class's format and loads back from any folder of that class:

============  ===========================================  ================================
``arch``      architecture                                 transformers class
============  ===========================================  ================================
``gpt``       GPT-2/GPT-3: learned positions, pre-LN,      ``GPT2LMHeadModel`` (its Conv1D
              GELU MLP, fused QKV                          weights are stored transposed)
``llama``     Llama: RoPE, RMSNorm, SwiGLU; multi-query    ``LlamaForCausalLM``
              (``n_kv_head=1``) and grouped-query attention
``neox``      GPT-NeoX/GPT-J/PaLM parallel attention+MLP   ``GPTNeoXForCausalLM``
              (``parallel_block``), partial RoPE, LN
``t5``        encoder-decoder with relative position bias  ``T5ForConditionalGeneration``
              (retrieved evidence goes through the encoder)
============  ===========================================  ================================

Any other causal-LM family is not converted: the trainer falls back to the plain transformers model
for those (``AutoModelForCausalLM``), at transformers' speed.

Example:
    >>> from pretrain.model import ModelConfig, build_model, from_preset
    >>> model = build_model(from_preset("tiny"))
    >>> logits, loss = model(idx, targets)            # doctest: +SKIP
    >>> model.save_pretrained("runs/tiny-hf")         # doctest: +SKIP  (loads with AutoModelForCausalLM)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn as nn
from torch.nn import functional as F

logger = logging.getLogger(__name__)

ARCHS = ("gpt", "llama", "neox", "t5")
HF_CLASS = {
    "gpt": "GPT2LMHeadModel",
    "llama": "LlamaForCausalLM",
    "neox": "GPTNeoXForCausalLM",
    "t5": "T5ForConditionalGeneration",
}
HF_MODEL_TYPE = {"gpt": "gpt2", "llama": "llama", "neox": "gpt_neox", "t5": "t5"}

# What each transformers class can represent; defaults come first.
_ARCH_CHOICES: dict[str, dict[str, tuple]] = {
    "gpt": {
        "norm": ("layernorm",),
        "mlp": ("gelu", "gelu_tanh", "relu"),
        "pos": ("learned",),
        "parallel_block": (False,),
        "bias": (True, False),  # GPT-2 always has biases: bias=False saves zero biases
        "tie_embeddings": (True, False),
    },
    "llama": {
        "norm": ("rmsnorm",),
        "mlp": ("swiglu",),
        "pos": ("rope",),
        "parallel_block": (False,),
        "bias": (False, True),
        "tie_embeddings": (False, True),
    },
    "neox": {
        "norm": ("layernorm",),
        "mlp": ("gelu", "gelu_tanh", "relu"),
        "pos": ("rope",),
        "parallel_block": (True, False),
        "bias": (True, False),  # attention bias; the NeoX MLP always has biases
        "tie_embeddings": (False, True),
    },
    "t5": {
        "norm": ("rmsnorm",),
        "mlp": ("gated-gelu", "relu"),
        "pos": ("relative",),
        "parallel_block": (False,),
        "bias": (False,),
        "tie_embeddings": (True,),  # transformers 5 always ties T5's lm_head to `shared`
    },
}
_DEFAULT_EPS = {"gpt": 1e-5, "llama": 1e-5, "neox": 1e-5, "t5": 1e-6}
_HF_ACT = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "swiglu": "silu"}


@dataclass
class ModelConfig:
    """Shape and architecture of a wandao model. Fields left ``None`` take the arch's default."""

    arch: str = field(default="gpt", metadata={"help": f"architecture family, one of {ARCHS}"})
    vocab_size: int = field(default=50304, metadata={"help": "vocabulary size (tokenizer size, maybe padded)"})
    n_layer: int = field(default=12, metadata={"help": "transformer blocks (the encoder's, for t5)"})
    n_head: int = field(default=12, metadata={"help": "query heads"})
    n_kv_head: int | None = field(
        default=None, metadata={"help": "key/value heads: n_head = multi-head, 1 = multi-query, k = grouped-query"}
    )
    n_embd: int = field(default=768, metadata={"help": "residual stream width"})
    head_dim: int | None = field(default=None, metadata={"help": "per-head width (default n_embd // n_head)"})
    mlp_hidden: int | None = field(
        default=None, metadata={"help": "MLP hidden width (default 4*n_embd; swiglu: 8/3*n_embd rounded up to 64)"}
    )
    block_size: int = field(default=1024, metadata={"help": "maximum context length"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on attention, residual and embeddings"})
    bias: bool | None = field(default=None, metadata={"help": "biases in linear layers and LayerNorms"})
    norm: str | None = field(default=None, metadata={"help": "layernorm | rmsnorm"})
    norm_eps: float | None = field(default=None, metadata={"help": "normalisation epsilon"})
    mlp: str | None = field(default=None, metadata={"help": "gelu | gelu_tanh | relu | swiglu | gated-gelu (t5)"})
    pos: str | None = field(default=None, metadata={"help": "learned | rope | relative (t5)"})
    parallel_block: bool | None = field(
        default=None, metadata={"help": "attention and MLP read the same input and add in parallel (GPT-J/PaLM)"}
    )
    tie_embeddings: bool | None = field(default=None, metadata={"help": "share the input embedding and lm_head"})
    rope_theta: float = field(default=10000.0, metadata={"help": "RoPE base"})
    rotary_pct: float | None = field(
        default=None, metadata={"help": "fraction of each head rotated by RoPE (neox default 0.25, llama 1.0)"}
    )
    n_dec_layer: int | None = field(default=None, metadata={"help": "t5: decoder blocks (default n_layer)"})
    rel_buckets: int = field(default=32, metadata={"help": "t5: relative position buckets"})
    rel_max_distance: int = field(default=128, metadata={"help": "t5: largest distinguished relative distance"})
    init_std: float = field(default=0.02, metadata={"help": "std of the normal initialisation"})

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"ModelConfig.arch={self.arch!r}: allowed values are {', '.join(ARCHS)}")
        choices = _ARCH_CHOICES[self.arch]
        for name, allowed in choices.items():
            value = getattr(self, name)
            if value is None:
                setattr(self, name, allowed[0])
            elif value not in allowed:
                raise ValueError(
                    f"ModelConfig.{name}={value!r} is not available for arch={self.arch!r} "
                    f"({HF_CLASS[self.arch]} supports {name} in {list(allowed)})"
                )
        if self.norm_eps is None:
            self.norm_eps = _DEFAULT_EPS[self.arch]
        if self.rotary_pct is None:
            self.rotary_pct = 0.25 if self.arch == "neox" else 1.0
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.n_dec_layer is None:
            self.n_dec_layer = self.n_layer
        for name in ("vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd", "block_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"ModelConfig.{name}={getattr(self, name)!r} must be a positive integer")
        if self.head_dim is None:
            if self.n_embd % self.n_head:
                raise ValueError(f"ModelConfig.n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
            self.head_dim = self.n_embd // self.n_head
        if self.arch in ("gpt", "neox") and self.head_dim * self.n_head != self.n_embd:
            raise ValueError(
                f"ModelConfig.head_dim={self.head_dim}: {HF_CLASS[self.arch]} needs head_dim = n_embd / n_head"
            )
        if self.n_head % self.n_kv_head:
            raise ValueError(f"ModelConfig.n_kv_head={self.n_kv_head} must divide n_head={self.n_head}")
        if self.arch != "llama" and self.n_kv_head != self.n_head:
            raise ValueError(
                f"ModelConfig.n_kv_head={self.n_kv_head}: multi-query/grouped-query attention needs arch='llama'"
            )
        if self.mlp_hidden is None:
            if self.mlp == "swiglu":  # Llama's 2/3 * 4d, rounded up to a multiple of 64
                self.mlp_hidden = 64 * math.ceil(8 * self.n_embd / 3 / 64)
            else:
                self.mlp_hidden = 4 * self.n_embd
        if self.pos == "rope":
            rot = int(self.head_dim * self.rotary_pct)
            if rot < 2 or rot % 2:
                raise ValueError(
                    f"ModelConfig.rotary_pct={self.rotary_pct}: head_dim*rotary_pct={rot} must be an even number >= 2"
                )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ModelConfig.dropout={self.dropout} must be in [0, 1)")

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.rotary_pct)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "<dict>") -> "ModelConfig":
        """Build from a plain dict (a YAML ``model:`` section); unknown keys are an error naming ``source``."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"{source}: unknown model field(s) {unknown}; known fields: {sorted(names)}")
        try:
            return cls(**d)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{source}: {err}") from None


# ---------------------------------------------------------------------------------------------
# Presets: YAML files under configs/models/ (one per name), the "YAML presets".

PRESET_DIR = Path(__file__).resolve().parents[1] / "configs" / "models"


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def from_preset(name: str, **overrides: Any) -> ModelConfig:
    """A named preset (``configs/models/NAME.yaml``) or a YAML file path, with field overrides.

    Example:
        >>> from_preset("nanogpt-shakespeare-char").n_embd
        128
    """
    import yaml

    path = Path(name)
    if path.suffix not in (".yaml", ".yml"):
        path = PRESET_DIR / f"{name}.yaml"
        if not path.exists():
            raise ValueError(f"unknown model preset {name!r}; presets: {', '.join(list_presets()) or '(none)'}")
    if not path.exists():
        raise FileNotFoundError(f"model preset file {path} does not exist")
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of ModelConfig fields, got {type(data).__name__}")
    data = dict(data.get("model", data))
    data.update(overrides)
    return ModelConfig.from_dict(data, source=str(path))


# ---------------------------------------------------------------------------------------------
# Shared pieces


class RMSNorm(nn.Module):
    """RMSNorm (Zhang & Sennrich 2019), as LlamaRMSNorm / T5LayerNorm: no mean, no bias."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.size(-1),), self.weight, self.eps)


def _norm(cfg: ModelConfig, dim: int | None = None) -> nn.Module:
    dim = dim or cfg.n_embd
    if cfg.norm == "rmsnorm":
        return RMSNorm(dim, cfg.norm_eps)
    return nn.LayerNorm(dim, eps=cfg.norm_eps, bias=cfg.bias or cfg.arch == "neox")


def _act(name: str):
    if name == "gelu":
        return F.gelu
    if name == "gelu_tanh":
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "relu":
        return F.relu
    raise ValueError(f"unknown activation {name!r}")


def _rope_cache(cfg: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables (block_size, rotary_dim) in HF's "rotate half" layout (Su et al. 2021, RoFormer)."""
    dim = cfg.rotary_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    freqs = torch.arange(cfg.block_size, dtype=torch.float32)[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, nh, T, hd); cos/sin: (T, rotary_dim). Rotates the first rotary_dim channels of each head."""
    rd = cos.size(-1)
    if rd == x.size(-1):
        return x * cos + _rotate_half(x) * sin
    x_rot, x_pass = x[..., :rd], x[..., rd:]
    return torch.cat((x_rot * cos + _rotate_half(x_rot) * sin, x_pass), dim=-1)


class _LMBase(nn.Module):
    """Loss, parameter counts, FLOPs, init and the HF save/load shared by all four families."""

    cfg: ModelConfig
    # names of the matrices that write into the residual stream; scaled at init as GPT-2 does
    _RESID_OUT = ("c_proj.weight", "o_proj.weight", "down_proj.weight", "attention.dense.weight", "dense_4h_to_h.weight", ".o.weight", ".wo.weight")

    def _init_weights(self) -> None:
        std = self.cfg.init_std
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                s = std / math.sqrt(2 * self.cfg.n_layer) if name.endswith(self._RESID_OUT) else std
                torch.nn.init.normal_(p, mean=0.0, std=s)
            elif name.endswith("bias"):
                torch.nn.init.zeros_(p)
            else:  # norm gains
                torch.nn.init.ones_(p)

    @staticmethod
    def _loss(logits: torch.Tensor, targets: torch.Tensor, loss_mask: torch.Tensor | None) -> torch.Tensor:
        if loss_mask is not None:
            targets = targets.masked_fill(loss_mask == 0, -100)
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count. ``non_embedding`` drops position embeddings and an untied input embedding
        (lookups cost no FLOPs), keeping the lm_head matrix, as nanoGPT's ``get_num_params`` does."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            for name, p in self.named_parameters():
                if name.endswith(("wpe.weight", "relative_attention_bias.weight")):
                    n -= p.numel()
            if not self.cfg.tie_embeddings:
                n -= self.get_input_embeddings().weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token, 6N + 12·L·H·Q·T (PaLM appendix B; nanoGPT's ``estimate_mfu``)."""
        cfg = self.cfg
        T = seq_len or cfg.block_size
        L = cfg.n_layer + (cfg.n_dec_layer if cfg.arch == "t5" else 0)
        return 6 * self.num_params() + 12 * L * cfg.n_head * cfg.head_dim * T

    def get_input_embeddings(self) -> nn.Embedding:
        raise NotImplementedError

    # -- HF format -------------------------------------------------------------------------------

    def hf_state_dict(self) -> dict[str, torch.Tensor]:
        """The state dict in the transformers class's layout (contiguous, tied lm_head dropped)."""
        return _to_hf_state(self.cfg, self.state_dict())

    def save_pretrained(self, out_dir: str | os.PathLike, force: bool = True,
                        extra_files: dict[str, str | os.PathLike] | None = None, **hf_config: Any) -> Path:
        """Write ``config.json``, ``generation_config.json`` and ``model.safetensors`` for transformers.

        A new folder is built beside ``out_dir`` and renamed into place. Into an existing folder (a
        checkpoint being assembled, or ``force``) each file is written under a temporary name and
        renamed, and other files there are kept. Either way nothing is left half-written.
        ``extra_files`` maps names to files copied in too (e.g. the tokenizer); ``hf_config`` adds
        fields to the transformers config (e.g. ``eos_token_id=0``).
        """
        from safetensors.torch import save_file

        out = Path(out_dir)
        if out.exists() and not force:
            raise FileExistsError(f"{out} already exists")
        if out.exists() and not out.is_dir():
            raise NotADirectoryError(f"{out} exists and is not a folder")
        config = hf_config_dict(self.cfg, **hf_config)
        gen = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if config.get(k) is not None}
        if self.cfg.arch == "t5":
            gen["decoder_start_token_id"] = config["decoder_start_token_id"]

        def write(folder: Path) -> None:
            part = f".part-{os.getpid()}"
            save_file(self.hf_state_dict(), str(folder / f"model.safetensors{part}"), metadata={"format": "pt"})
            (folder / f"config.json{part}").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
            (folder / f"generation_config.json{part}").write_text(json.dumps(gen, indent=2, sort_keys=True) + "\n")
            for name, src in (extra_files or {}).items():
                shutil.copyfile(src, folder / f"{name}{part}")
            for stale in ("pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(folder / stale)  # would shadow or confuse the new weights
            # config.json last: a reader that sees it sees the weights it describes
            for name in ["model.safetensors", "generation_config.json", *(extra_files or {}), "config.json"]:
                os.replace(folder / f"{name}{part}", folder / name)

        if out.exists():
            try:
                write(out)
            except BaseException:
                for leftover in out.glob(f"*.part-{os.getpid()}"):
                    leftover.unlink(missing_ok=True)
                raise
        else:
            with _atomic_dir(out, force=force) as tmp:
                write(tmp)
        logger.info("saved %s (%s) to %s", self.cfg.arch, HF_CLASS[self.cfg.arch], out_dir)
        return Path(out_dir)


# ---------------------------------------------------------------------------------------------
# GPT-2 / GPT-3 style (GPT2LMHeadModel names)


class GPTAttention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_head, self.n_embd, self.dropout = cfg.n_head, cfg.n_embd, cfg.dropout
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)  # fused q, k, v
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hd)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        y = self.c_proj(y)
        return F.dropout(y, p, True) if p else y


class GPTMLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, cfg.mlp_hidden, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.mlp_hidden, cfg.n_embd, bias=cfg.bias)
        self.act = _act(cfg.mlp)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.c_proj(self.act(self.c_fc(x)))
        return F.dropout(x, self.dropout, True) if self.dropout and self.training else x


class GPTBlock(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln_1 = _norm(cfg)
        self.attn = GPTAttention(cfg)
        self.ln_2 = _norm(cfg)
        self.mlp = GPTMLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(_LMBase):
    """GPT-2/GPT-3 style decoder: learned positions, pre-LN, tied embeddings (Radford et al. 2019)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(cfg.vocab_size, cfg.n_embd),
                wpe=nn.Embedding(cfg.block_size, cfg.n_embd),
                h=nn.ModuleList([GPTBlock(cfg) for _ in range(cfg.n_layer)]),
                ln_f=_norm(cfg),
            )
        )
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
        self._init_weights()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.transformer.wte

    def forward(self, idx, targets=None, loss_mask=None):
        T = idx.size(1)
        if T > self.cfg.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.cfg.block_size}")
        pos = torch.arange(0, T, dtype=torch.long, device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)
        if self.cfg.dropout and self.training:
            x = F.dropout(x, self.cfg.dropout, True)
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))
        loss = None if targets is None else self._loss(logits, targets, loss_mask)
        return logits, loss


# ---------------------------------------------------------------------------------------------
# Llama style (LlamaForCausalLM names): RoPE, RMSNorm, SwiGLU, MQA/GQA


class LlamaAttention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv, self.hd, self.dropout = cfg.n_head, cfg.n_kv_head, cfg.head_dim, cfg.dropout
        self.q_proj = nn.Linear(cfg.n_embd, cfg.n_head * cfg.head_dim, bias=cfg.bias)
        self.k_proj = nn.Linear(cfg.n_embd, cfg.n_kv_head * cfg.head_dim, bias=cfg.bias)
        self.v_proj = nn.Linear(cfg.n_embd, cfg.n_kv_head * cfg.head_dim, bias=cfg.bias)
        self.o_proj = nn.Linear(cfg.n_head * cfg.head_dim, cfg.n_embd, bias=cfg.bias)

    def forward(self, x, cos, sin):
        B, T, _ = x.size()
        q = self.q_proj(x).view(B, T, self.n_head, self.hd).transpose(1, 2)  # (B, nh, T, hd)
        k = self.k_proj(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)  # (B, n_kv, T, hd)
        v = self.v_proj(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)
        q, k = _apply_rope(q, cos, sin), _apply_rope(k, cos, sin)
        if self.n_kv != self.n_head:  # MQA/GQA: kv head j serves query heads j*g .. j*g+g-1 (HF repeat_kv)
            k = k.repeat_interleave(self.n_head // self.n_kv, dim=1)
            v = v.repeat_interleave(self.n_head // self.n_kv, dim=1)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        y = self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.hd))
        return F.dropout(y, p, True) if p else y


class LlamaMLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.n_embd, cfg.mlp_hidden, bias=cfg.bias)
        self.up_proj = nn.Linear(cfg.n_embd, cfg.mlp_hidden, bias=cfg.bias)
        self.down_proj = nn.Linear(cfg.mlp_hidden, cfg.n_embd, bias=cfg.bias)
        self.dropout = cfg.dropout

    def forward(self, x):
        x = self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))  # SwiGLU (Shazeer 2020)
        return F.dropout(x, self.dropout, True) if self.dropout and self.training else x


class LlamaBlock(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.input_layernorm = _norm(cfg)
        self.self_attn = LlamaAttention(cfg)
        self.post_attention_layernorm = _norm(cfg)
        self.mlp = LlamaMLP(cfg)

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class Llama(_LMBase):
    """Llama-style decoder (Touvron et al. 2023): RoPE, RMSNorm, SwiGLU; n_kv_head < n_head gives
    multi-query (Shazeer 2019) or grouped-query attention (Ainslie et al. 2023)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.model.layers = nn.ModuleList([LlamaBlock(cfg) for _ in range(cfg.n_layer)])
        self.model.norm = _norm(cfg)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        cos, sin = _rope_cache(cfg)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self._init_weights()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def forward(self, idx, targets=None, loss_mask=None):
        T = idx.size(1)
        if T > self.cfg.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.cfg.block_size}")
        cos, sin = self.rope_cos[:T].to(self.lm_head.weight.dtype), self.rope_sin[:T].to(self.lm_head.weight.dtype)
        x = self.model.embed_tokens(idx)
        if self.cfg.dropout and self.training:
            x = F.dropout(x, self.cfg.dropout, True)
        for block in self.model.layers:
            x = block(x, cos, sin)
        logits = self.lm_head(self.model.norm(x))
        loss = None if targets is None else self._loss(logits, targets, loss_mask)
        return logits, loss


# ---------------------------------------------------------------------------------------------
# GPT-NeoX style (GPTNeoXForCausalLM names): parallel attention + MLP, partial RoPE


class NeoXAttention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_head, self.hd, self.dropout = cfg.n_head, cfg.head_dim, cfg.dropout
        # NeoX's fused projection is interleaved per head: rows are (n_head, [q, k, v], head_dim)
        self.query_key_value = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.dense = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)

    def forward(self, x, cos, sin):
        B, T, C = x.size()
        qkv = self.query_key_value(x).view(B, T, self.n_head, 3 * self.hd).transpose(1, 2)  # (B, nh, T, 3hd)
        q, k, v = qkv.chunk(3, dim=-1)
        q, k = _apply_rope(q, cos, sin), _apply_rope(k, cos, sin)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        y = self.dense(y.transpose(1, 2).reshape(B, T, C))
        return F.dropout(y, p, True) if p else y


class NeoXMLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.dense_h_to_4h = nn.Linear(cfg.n_embd, cfg.mlp_hidden)
        self.dense_4h_to_h = nn.Linear(cfg.mlp_hidden, cfg.n_embd)
        self.act = _act(cfg.mlp)
        self.dropout = cfg.dropout

    def forward(self, x):
        x = self.dense_4h_to_h(self.act(self.dense_h_to_4h(x)))
        return F.dropout(x, self.dropout, True) if self.dropout and self.training else x


class NeoXBlock(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.parallel = cfg.parallel_block
        self.input_layernorm = _norm(cfg)
        self.post_attention_layernorm = _norm(cfg)
        self.attention = NeoXAttention(cfg)
        self.mlp = NeoXMLP(cfg)

    def forward(self, x, cos, sin):
        if self.parallel:  # x + attn(ln1(x)) + mlp(ln2(x)): GPT-J / PaLM (Chowdhery et al. 2022, sec. 2)
            return x + self.attention(self.input_layernorm(x), cos, sin) + self.mlp(self.post_attention_layernorm(x))
        x = x + self.attention(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class NeoX(_LMBase):
    """GPT-NeoX-style decoder (Black et al. 2022) with parallel attention+MLP blocks and partial RoPE."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.gpt_neox = nn.Module()
        self.gpt_neox.embed_in = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.gpt_neox.layers = nn.ModuleList([NeoXBlock(cfg) for _ in range(cfg.n_layer)])
        self.gpt_neox.final_layer_norm = _norm(cfg)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.gpt_neox.embed_in.weight
        cos, sin = _rope_cache(cfg)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self._init_weights()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.gpt_neox.embed_in

    def forward(self, idx, targets=None, loss_mask=None):
        T = idx.size(1)
        if T > self.cfg.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.cfg.block_size}")
        cos, sin = self.rope_cos[:T].to(self.lm_head.weight.dtype), self.rope_sin[:T].to(self.lm_head.weight.dtype)
        x = self.gpt_neox.embed_in(idx)
        if self.cfg.dropout and self.training:
            x = F.dropout(x, self.cfg.dropout, True)
        for block in self.gpt_neox.layers:
            x = block(x, cos, sin)
        logits = self.lm_head(self.gpt_neox.final_layer_norm(x))
        loss = None if targets is None else self._loss(logits, targets, loss_mask)
        return logits, loss


# ---------------------------------------------------------------------------------------------
# T5-style encoder-decoder (T5ForConditionalGeneration names)


def _relative_bucket(rel: torch.Tensor, bidirectional: bool, num_buckets: int, max_distance: int) -> torch.Tensor:
    """T5's log-binned relative position buckets (Raffel et al. 2020, sec. 2.1; HF `_relative_position_bucket`)."""
    buckets = torch.zeros_like(rel)
    if bidirectional:
        num_buckets //= 2
        buckets += (rel > 0).long() * num_buckets
        rel = rel.abs()
    else:
        rel = -torch.clamp(rel, max=0)
    max_exact = num_buckets // 2
    is_small = rel < max_exact
    large = max_exact + (
        torch.log(rel.float() / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    ).long()
    large = torch.clamp(large, max=num_buckets - 1)
    return buckets + torch.where(is_small, rel, large)


class T5Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, relative_bias: bool) -> None:
        super().__init__()
        self.n_head, self.hd, self.dropout = cfg.n_head, cfg.head_dim, cfg.dropout
        inner = cfg.n_head * cfg.head_dim
        self.q = nn.Linear(cfg.n_embd, inner, bias=False)
        self.k = nn.Linear(cfg.n_embd, inner, bias=False)
        self.v = nn.Linear(cfg.n_embd, inner, bias=False)
        self.o = nn.Linear(inner, cfg.n_embd, bias=False)
        if relative_bias:
            self.relative_attention_bias = nn.Embedding(cfg.rel_buckets, cfg.n_head)

    def forward(self, x, kv, bias):
        """x: (B, T, C) queries; kv: (B, S, C); bias: additive (1 or B, nh, T, S) incl. masks. T5 does not
        scale q·k by 1/sqrt(hd): the scale is folded into the initialisation."""
        B, T, _ = x.size()
        S = kv.size(1)
        q = self.q(x).view(B, T, self.n_head, self.hd).transpose(1, 2)  # (B, nh, T, hd)
        k = self.k(kv).view(B, S, self.n_head, self.hd).transpose(1, 2)  # (B, nh, S, hd)
        v = self.v(kv).view(B, S, self.n_head, self.hd).transpose(1, 2)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p, scale=1.0)
        return self.o(y.transpose(1, 2).reshape(B, T, self.n_head * self.hd))


class T5FF(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gated = cfg.mlp == "gated-gelu"
        if self.gated:  # T5 v1.1: wo(gelu_tanh(wi_0 x) * wi_1 x)
            self.wi_0 = nn.Linear(cfg.n_embd, cfg.mlp_hidden, bias=False)
            self.wi_1 = nn.Linear(cfg.n_embd, cfg.mlp_hidden, bias=False)
        else:
            self.wi = nn.Linear(cfg.n_embd, cfg.mlp_hidden, bias=False)
        self.wo = nn.Linear(cfg.mlp_hidden, cfg.n_embd, bias=False)
        self.dropout = cfg.dropout

    def forward(self, x):
        h = F.gelu(self.wi_0(x), approximate="tanh") * self.wi_1(x) if self.gated else F.relu(self.wi(x))
        if self.dropout and self.training:
            h = F.dropout(h, self.dropout, True)
        return self.wo(h)


class _T5Sub(nn.Module):
    """One T5 sub-layer: pre-norm, then SelfAttention / EncDecAttention / DenseReluDense."""

    def __init__(self, cfg: ModelConfig, kind: str, relative_bias: bool = False) -> None:
        super().__init__()
        if kind == "SelfAttention":
            self.SelfAttention = T5Attention(cfg, relative_bias)
        elif kind == "EncDecAttention":
            self.EncDecAttention = T5Attention(cfg, False)
        else:
            self.DenseReluDense = T5FF(cfg)
        self.layer_norm = RMSNorm(cfg.n_embd, cfg.norm_eps)


class T5Block(nn.Module):
    def __init__(self, cfg: ModelConfig, decoder: bool, first: bool) -> None:
        super().__init__()
        kinds = ["SelfAttention", "EncDecAttention", "DenseReluDense"] if decoder else ["SelfAttention", "DenseReluDense"]
        self.layer = nn.ModuleList([_T5Sub(cfg, k, relative_bias=first and i == 0) for i, k in enumerate(kinds)])
        self.decoder, self.dropout = decoder, cfg.dropout

    def _drop(self, y):
        return F.dropout(y, self.dropout, True) if self.dropout and self.training else y

    def forward(self, x, self_bias, enc=None, cross_bias=None):
        sa = self.layer[0]
        h = sa.layer_norm(x)
        x = x + self._drop(sa.SelfAttention(h, h, self_bias))
        if self.decoder:
            ca = self.layer[1]
            x = x + self._drop(ca.EncDecAttention(ca.layer_norm(x), enc, cross_bias))
        ff = self.layer[-1]
        return x + self._drop(ff.DenseReluDense(ff.layer_norm(x)))


class T5Stack(nn.Module):
    def __init__(self, cfg: ModelConfig, decoder: bool) -> None:
        super().__init__()
        n = cfg.n_dec_layer if decoder else cfg.n_layer
        self.block = nn.ModuleList([T5Block(cfg, decoder, first=i == 0) for i in range(n)])
        self.final_layer_norm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.decoder, self.cfg = decoder, cfg

    def position_bias(self, T: int, S: int, device) -> torch.Tensor:
        ctx = torch.arange(T, dtype=torch.long, device=device)[:, None]
        mem = torch.arange(S, dtype=torch.long, device=device)[None, :]
        buckets = _relative_bucket(mem - ctx, not self.decoder, self.cfg.rel_buckets, self.cfg.rel_max_distance)
        rab = self.block[0].layer[0].SelfAttention.relative_attention_bias
        return rab(buckets).permute(2, 0, 1).unsqueeze(0)  # (1, nh, T, S)

    def forward(self, x, pad_mask=None, enc=None, enc_pad_mask=None):
        """x: embedded inputs (B, T, C); pad_mask: (B, T) 1 = token, for the encoder's own keys."""
        T = x.size(1)
        bias = self.position_bias(T, T, x.device).to(x.dtype)
        neg = torch.finfo(x.dtype).min
        if self.decoder:  # causal mask folded into the bias, as HF does
            causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            bias = bias.masked_fill(~causal, neg)
        if pad_mask is not None:
            bias = bias + (1.0 - pad_mask[:, None, None, :].to(x.dtype)) * neg
        cross = None
        if enc is not None:
            cross = torch.zeros(1, 1, 1, enc.size(1), dtype=x.dtype, device=x.device)
            if enc_pad_mask is not None:
                cross = (1.0 - enc_pad_mask[:, None, None, :].to(x.dtype)) * neg
        if self.cfg.dropout and self.training:
            x = F.dropout(x, self.cfg.dropout, True)
        for block in self.block:
            x = block(x, bias, enc, cross)
        x = self.final_layer_norm(x)
        return F.dropout(x, self.cfg.dropout, True) if self.cfg.dropout and self.training else x


class T5(_LMBase):
    """T5-style encoder-decoder (Raffel et al. 2020; v1.1 gated-GELU by default). Retrieved evidence
    goes through the encoder (``enc_idx``); the decoder is trained as a language model on ``idx``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.shared = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.encoder = T5Stack(cfg, decoder=False)
        self.decoder = T5Stack(cfg, decoder=True)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.shared.weight
        self._init_weights()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.shared

    def flops_per_example(self, enc_len: float, dec_len: float) -> float:
        """Training FLOPs of one example with ``enc_len`` encoder and ``dec_len`` decoder tokens.

        :meth:`flops_per_token`'s 6N rule, applied to the tokens each weight runs on: the encoder's
        weights and the cross-attention keys/values on the encoder tokens, the rest of the decoder and
        the tied lm_head on the decoder tokens (6N x every token overcounts an evidence example ~5x);
        attention 12·H·Q per query-key pair (encoder, decoder self- and cross-attention)."""
        cfg = self.cfg
        enc = cross_kv = dec = 0
        for name, p in self.named_parameters():
            if name.endswith("relative_attention_bias.weight"):
                continue
            if name.startswith("encoder."):
                enc += p.numel()
            elif ".EncDecAttention.k." in name or ".EncDecAttention.v." in name:
                cross_kv += p.numel()
            else:  # the rest of the decoder, and shared.weight as the lm_head (its input lookup is free)
                dec += p.numel()
        attn = 12 * cfg.n_head * cfg.head_dim
        return (6 * ((enc + cross_kv) * enc_len + dec * dec_len)
                + attn * (cfg.n_layer * enc_len * enc_len + cfg.n_dec_layer * dec_len * (dec_len + enc_len)))

    # Init: the shared normal(0, init_std) of build_model, not T5's embedding std 1.0. With the tied
    # output scaled by d^-0.5, std 1.0 makes the input token's logit start near sqrt(d) (loss ~22 for
    # t5-small); std 0.02 starts every logit near 0 and the loss near log(vocab_size).

    def encode(self, enc_idx: torch.Tensor, enc_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.encoder(self.shared(enc_idx), pad_mask=enc_mask)

    def forward(self, idx, targets=None, loss_mask=None, enc_idx=None, enc_mask=None, enc_out=None):
        """idx: decoder input ids (B, T); enc_idx: encoder input ids (B, S), e.g. retrieved evidence;
        enc_mask: (B, S) 1 for real tokens; enc_out: a cached ``encode()`` result instead of enc_idx."""
        if enc_out is None:
            if enc_idx is None:
                raise ValueError("arch='t5' needs encoder inputs: pass enc_idx (B, S) or enc_out")
            enc_out = self.encode(enc_idx, enc_mask)
        x = self.decoder(self.shared(idx), enc=enc_out, enc_pad_mask=enc_mask)
        logits = self.lm_head(x * self.cfg.n_embd**-0.5)  # tied output scaling (HF scale_decoder_outputs)
        loss = None if targets is None else self._loss(logits, targets, loss_mask)
        return logits, loss


_CLASSES = {"gpt": GPT, "llama": Llama, "neox": NeoX, "t5": T5}


def build_model(cfg: ModelConfig) -> _LMBase:
    """A freshly initialised model of ``cfg.arch`` (GPT-2-style normal(0, 0.02) init, residual
    projections scaled by 1/sqrt(2·n_layer))."""
    return _CLASSES[cfg.arch](cfg)


# ---------------------------------------------------------------------------------------------
# transformers format: config.json and the state-dict layout


def hf_config_dict(cfg: ModelConfig, **extra: Any) -> dict[str, Any]:
    """The transformers ``config.json`` content for ``cfg``."""
    common = dict(vocab_size=cfg.vocab_size, tie_word_embeddings=cfg.tie_embeddings, torch_dtype="float32")
    if cfg.arch == "gpt":
        d = dict(
            model_type="gpt2", n_positions=cfg.block_size, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
            n_head=cfg.n_head, n_inner=cfg.mlp_hidden, activation_function=_HF_ACT[cfg.mlp],
            resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout,
            layer_norm_epsilon=cfg.norm_eps, bos_token_id=None, eos_token_id=None,
        )
    elif cfg.arch == "llama":
        d = dict(
            model_type="llama", hidden_size=cfg.n_embd, intermediate_size=cfg.mlp_hidden,
            num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_kv_head,
            head_dim=cfg.head_dim, hidden_act="silu", max_position_embeddings=cfg.block_size,
            rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta,
            rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
            attention_bias=cfg.bias, mlp_bias=cfg.bias, attention_dropout=cfg.dropout,
            bos_token_id=None, eos_token_id=None,
        )
    elif cfg.arch == "neox":
        d = dict(
            model_type="gpt_neox", hidden_size=cfg.n_embd, intermediate_size=cfg.mlp_hidden,
            num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head, hidden_act=_HF_ACT[cfg.mlp],
            max_position_embeddings=cfg.block_size, layer_norm_eps=cfg.norm_eps,
            rotary_pct=cfg.rotary_pct, rotary_emb_base=cfg.rope_theta,
            rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta,
                             "partial_rotary_factor": cfg.rotary_pct},
            use_parallel_residual=cfg.parallel_block, attention_bias=cfg.bias,
            attention_dropout=cfg.dropout, hidden_dropout=cfg.dropout, bos_token_id=None, eos_token_id=None,
        )
    else:
        d = dict(
            model_type="t5", d_model=cfg.n_embd, d_kv=cfg.head_dim, d_ff=cfg.mlp_hidden, num_layers=cfg.n_layer,
            num_decoder_layers=cfg.n_dec_layer, num_heads=cfg.n_head,
            relative_attention_num_buckets=cfg.rel_buckets, relative_attention_max_distance=cfg.rel_max_distance,
            dropout_rate=cfg.dropout, layer_norm_epsilon=cfg.norm_eps, feed_forward_proj=cfg.mlp,
            is_encoder_decoder=True, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
        )
    d.update(common)
    d["architectures"] = [HF_CLASS[cfg.arch]]
    d["wandao_model_config"] = cfg.to_dict()  # exact round trip (e.g. bias=False, which GPT-2 cannot say)
    d.update(extra)
    return d


def from_hf_config(hf: dict[str, Any], source: str = "config.json") -> ModelConfig:
    """Map a transformers ``config.json`` (GPT-2, Llama, GPT-NeoX, T5) onto a ModelConfig.

    Raises ValueError naming ``source`` and the field for options wandao's modules do not implement
    (the trainer then falls back to the plain transformers model)."""
    mt = hf.get("model_type")
    ours = hf.get("wandao_model_config")
    if isinstance(ours, dict) and HF_MODEL_TYPE.get(ours.get("arch")) == mt:
        return ModelConfig.from_dict(ours, source=source)

    def unsupported(field_: str, value: Any) -> ValueError:
        return ValueError(f"{source}: {field_}={value!r} is not supported by wandao's {mt} module; "
                          "use the plain transformers model instead")

    def rope(default_pct: float) -> tuple[float, float]:
        rp = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
        rtype = rp.get("rope_type", rp.get("type", "default"))
        if rtype != "default":
            raise unsupported("rope_parameters.rope_type", rtype)
        theta = rp.get("rope_theta", hf.get("rope_theta", hf.get("rotary_emb_base", 10000.0)))
        pct = rp.get("partial_rotary_factor", hf.get("rotary_pct", hf.get("partial_rotary_factor", default_pct)))
        return float(theta), float(pct)

    if mt == "gpt2":
        act = {v: k for k, v in _HF_ACT.items() if k != "swiglu"}.get(hf.get("activation_function", "gelu_new"))
        if act is None:
            raise unsupported("activation_function", hf.get("activation_function"))
        for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "add_cross_attention"):
            if hf.get(flag):
                raise unsupported(flag, hf[flag])
        if hf.get("scale_attn_weights", True) is False:
            raise unsupported("scale_attn_weights", False)
        d = dict(arch="gpt", n_embd=hf.get("n_embd", 768), n_layer=hf.get("n_layer", 12), n_head=hf.get("n_head", 12),
                 mlp_hidden=hf.get("n_inner"), block_size=hf.get("n_positions", 1024), mlp=act,
                 dropout=float(hf.get("resid_pdrop", 0.0)), norm_eps=hf.get("layer_norm_epsilon", 1e-5),
                 tie_embeddings=hf.get("tie_word_embeddings", True), bias=True, vocab_size=hf.get("vocab_size", 50257))
    elif mt == "llama":
        if hf.get("hidden_act", "silu") != "silu":
            raise unsupported("hidden_act", hf.get("hidden_act"))
        if bool(hf.get("attention_bias", False)) != bool(hf.get("mlp_bias", False)):
            raise unsupported("mlp_bias", hf.get("mlp_bias"))
        theta, _ = rope(1.0)
        d = dict(arch="llama", n_embd=hf["hidden_size"], n_layer=hf["num_hidden_layers"],
                 n_head=hf["num_attention_heads"], n_kv_head=hf.get("num_key_value_heads"),
                 head_dim=hf.get("head_dim"), mlp_hidden=hf["intermediate_size"],
                 block_size=hf.get("max_position_embeddings", 2048), norm_eps=hf.get("rms_norm_eps", 1e-6),
                 rope_theta=theta, bias=bool(hf.get("attention_bias", False)),
                 dropout=float(hf.get("attention_dropout", 0.0)),
                 tie_embeddings=hf.get("tie_word_embeddings", False), vocab_size=hf["vocab_size"])
    elif mt == "gpt_neox":
        act = {v: k for k, v in _HF_ACT.items() if k != "swiglu"}.get(hf.get("hidden_act", "gelu"))
        if act is None:
            raise unsupported("hidden_act", hf.get("hidden_act"))
        theta, pct = rope(0.25)
        d = dict(arch="neox", n_embd=hf["hidden_size"], n_layer=hf["num_hidden_layers"],
                 n_head=hf["num_attention_heads"], mlp_hidden=hf["intermediate_size"], mlp=act,
                 block_size=hf.get("max_position_embeddings", 2048), norm_eps=hf.get("layer_norm_eps", 1e-5),
                 rope_theta=theta, rotary_pct=pct, parallel_block=hf.get("use_parallel_residual", True),
                 bias=bool(hf.get("attention_bias", True)), dropout=float(hf.get("hidden_dropout", 0.0)),
                 tie_embeddings=hf.get("tie_word_embeddings", False), vocab_size=hf["vocab_size"])
    elif mt == "t5":
        if hf.get("tie_word_embeddings", True) is False:
            raise unsupported("tie_word_embeddings", False)
        d = dict(arch="t5", n_embd=hf["d_model"], head_dim=hf["d_kv"], mlp_hidden=hf["d_ff"], n_layer=hf["num_layers"],
                 n_dec_layer=hf.get("num_decoder_layers"), n_head=hf["num_heads"],
                 rel_buckets=hf.get("relative_attention_num_buckets", 32),
                 rel_max_distance=hf.get("relative_attention_max_distance", 128),
                 dropout=float(hf.get("dropout_rate", 0.0)), norm_eps=hf.get("layer_norm_epsilon", 1e-6),
                 mlp=hf.get("feed_forward_proj", "relu"), vocab_size=hf["vocab_size"], block_size=1024)
    else:
        raise ValueError(f"{source}: model_type={mt!r} has no wandao module (supported: gpt2, llama, gpt_neox, t5); "
                         "use the plain transformers model instead")
    return ModelConfig.from_dict({k: v for k, v in d.items() if v is not None}, source=source)


def _gpt2_conv1d(name: str) -> bool:
    return name.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight"))


def _to_hf_state(cfg: ModelConfig, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for name, t in sd.items():
        if cfg.tie_embeddings and name == "lm_head.weight":
            continue
        if cfg.arch == "gpt" and _gpt2_conv1d(name):
            t = t.t()  # Conv1D stores (in, out)
        if cfg.arch == "neox" and name == "lm_head.weight":
            name = "embed_out.weight"  # the name every transformers version loads
        out[name] = t.detach().contiguous().clone()
    if cfg.arch == "gpt" and not cfg.bias:  # GPT-2 always has biases: write zeros
        for i in range(cfg.n_layer):
            p = f"transformer.h.{i}."
            for mod, n in (("ln_1", cfg.n_embd), ("ln_2", cfg.n_embd), ("attn.c_attn", 3 * cfg.n_embd),
                           ("attn.c_proj", cfg.n_embd), ("mlp.c_fc", cfg.mlp_hidden), ("mlp.c_proj", cfg.n_embd)):
                out[p + mod + ".bias"] = torch.zeros(n, dtype=out[p + "ln_1.weight"].dtype)
        out["transformer.ln_f.bias"] = torch.zeros(cfg.n_embd, dtype=out["transformer.ln_f.weight"].dtype)
    if cfg.arch == "neox" and not cfg.bias:  # NeoX LayerNorms always have biases
        for name in [k for k in out if k.endswith("layernorm.weight") or k.endswith("final_layer_norm.weight")]:
            out.setdefault(name[: -len("weight")] + "bias", torch.zeros_like(out[name]))
    return out


_IGNORED_HF_KEYS = (".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq", ".attention.bias",
                    ".attention.masked_bias", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight")


def _from_hf_state(cfg: ModelConfig, model: _LMBase, hf: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    ours = model.state_dict()
    prefix = {"gpt": "transformer.", "llama": "model.", "neox": "gpt_neox.", "t5": ""}[cfg.arch]
    out: dict[str, torch.Tensor] = {}
    for name, t in hf.items():
        if name.endswith(_IGNORED_HF_KEYS):
            continue
        if name.startswith("embed_out."):
            name = "lm_head." + name[len("embed_out."):]
        if name not in ours and prefix and prefix + name in ours:  # base-model checkpoints (e.g. openai gpt2)
            name = prefix + name
        if name not in ours:
            if cfg.arch in ("gpt", "neox") and not cfg.bias and name.endswith("bias"):
                if t.abs().max() > 0:
                    raise ValueError(f"{source}: {name} is nonzero but the model was built with bias=False")
                continue
            raise ValueError(f"{source}: unexpected tensor {name!r} for {HF_CLASS[cfg.arch]}")
        if cfg.arch == "gpt" and _gpt2_conv1d(name):
            t = t.t()
        if tuple(t.shape) != tuple(ours[name].shape):
            raise ValueError(f"{source}: tensor {name!r} has shape {tuple(t.shape)}, expected {tuple(ours[name].shape)}")
        out[name] = t
    tied = {"lm_head.weight"} if cfg.tie_embeddings else set()
    missing = sorted(set(ours) - set(out) - tied)
    if missing:
        raise ValueError(f"{source}: missing tensor(s) {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    return out


def _read_hf_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if (path / "model.safetensors").exists():
        return load_file(str(path / "model.safetensors"))
    for index_name, loader in (("model.safetensors.index.json", "st"), ("pytorch_model.bin.index.json", "pt")):
        index = path / index_name
        if index.exists():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            sd: dict[str, torch.Tensor] = {}
            for shard in shards:
                sd.update(load_file(str(path / shard)) if loader == "st"
                          else torch.load(path / shard, map_location="cpu", weights_only=True))
            return sd
    if (path / "pytorch_model.bin").exists():
        return torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{path}: no model.safetensors, pytorch_model.bin or shard index found")


def load_pretrained(path: str | os.PathLike, **overrides: Any) -> _LMBase:
    """Load an HF folder of GPT2LMHeadModel / LlamaForCausalLM / GPTNeoXForCausalLM /
    T5ForConditionalGeneration (ours or anyone's) into wandao's module.

    ``overrides`` change ModelConfig fields that do not affect the weights (e.g. ``dropout``).
    Example:
        >>> model = load_pretrained("runs/tiny-hf")  # doctest: +SKIP
    """
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise FileNotFoundError(f"{cfg_file} not found: not a transformers model folder")
    try:
        hf = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{cfg_file}: line {err.lineno}: invalid JSON ({err.msg})") from None
    cfg = from_hf_config(hf, source=str(cfg_file))
    if overrides:
        cfg = ModelConfig.from_dict({**cfg.to_dict(), **overrides}, source=str(cfg_file))
    model = build_model(cfg)
    state = _from_hf_state(cfg, model, _read_hf_weights(path), source=str(path))
    model.load_state_dict(state, strict=False)
    if cfg.tie_embeddings:  # safetensors drops the tied copy; re-tie explicitly
        model.lm_head.weight = model.get_input_embeddings().weight
    return model


from_hf = load_pretrained


@contextlib.contextmanager
def _atomic_dir(out: str | os.PathLike, force: bool = True) -> Iterator[Path]:
    """Build a directory in a temporary sibling and rename it into place (pretrain imports no indexer)."""
    out = Path(out)
    if out.exists() and not force:
        raise FileExistsError(f"{out} already exists")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
