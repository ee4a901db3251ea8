"""``wandao pretrain``: one training loop for plain torch (CPU/GPU) and DeepSpeed (ZeRO 1/2/3).

Read it top to bottom: the config, then :func:`main` → set up (tokenizer, data, model, optimizer,
backend, resume) → the loop, written out in nanoGPT's order (set lr → evaluate/checkpoint →
forward/backward with gradient accumulation → clip → step → zero grad → log) → save and report.
A t5 model trains on span corruption over token streams (:mod:`pretrain.span_corruption`) or, over
``wandao augment pretrain`` rows, reads the retrieved evidence through its encoder and writes the chunk
(:mod:`pretrain.evidence_seq2seq`): the sampler yields encoder inputs, decoder inputs and targets, and
:func:`batch_loss` is the one place where the two kinds of batch differ. The last line printed is a
JSON object with ``final_val_loss``, ``steps``, ``tokens_per_s``, ``out_dir`` (and more).

DeepSpeed runs under its launcher (``deepspeed --num_gpus N -m pretrain.train --config ...``,
or ``deepspeed $(which wandao) pretrain ...``); ``--train.backend deepspeed`` without a launcher
runs one process (on CPU through gloo, as in the tests).
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Sequence

from pretrain.config import Config, ConfigError, check_range
from pretrain.optim import OptimConfig, ScheduleConfig

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ config


@dataclass
class SourceConfig(Config):
    path: str = field(default="", metadata={
        "help": "a text file, a JSONL file (field text_field) or a token folder (meta.json + tokens.bin); "
                "$VARS expand"})
    weight: float = field(default=1.0, metadata={"help": "mixture weight (normalised over sources)"})
    name: Optional[str] = field(default=None, metadata={"help": "name in reports (default: the file stem)"})
    text_field: str = field(default="text", metadata={"help": "JSONL field holding the document text"})

    def __post_init__(self) -> None:
        if not self.path:
            raise ConfigError("every source needs a path", "path")
        check_range("weight", self.weight, 0.0, low_inclusive=False)


@dataclass
class DataConfig(Config):
    sources: list[SourceConfig] = field(default_factory=list, metadata={
        "help": "data sources, each {path, weight, name, text_field}; on the command line a YAML/JSON list"})
    tokenizer: str = field(default="char", metadata={
        "help": "char (nanoGPT's character vocabulary), bpe (train byte-level BPE on the sources), "
                "the path of a saved HF tokenizer, or minilm (the WordPiece wandao augment uses by default)"})
    vocab_size: int = field(default=4096, metadata={"help": "vocabulary size when tokenizer=bpe"})
    val_fraction: float = field(default=0.1, metadata={
        "help": "the last fraction of each source's characters (or documents, or rows) validates"})
    cache_dir: Optional[str] = field(default=None, metadata={
        "help": "where tokenised sources are kept for reuse (default: <out_dir>/data)"})

    def __post_init__(self) -> None:
        check_range("val_fraction", self.val_fraction, 0.0, 0.5)
        check_range("vocab_size", self.vocab_size, 1)


@dataclass
class ModelSection(Config):
    preset: str = field(default="tiny", metadata={"help": "model preset (configs/models/NAME.yaml) or a YAML path"})
    init_from: Optional[str] = field(default=None, metadata={
        "help": "start from this HF model folder (e.g. a surgery output) instead of a fresh init"})
    arch: Optional[str] = field(default=None, metadata={"help": "override: gpt, llama, neox"})
    n_layer: Optional[int] = field(default=None, metadata={"help": "override: transformer blocks"})
    n_head: Optional[int] = field(default=None, metadata={"help": "override: query heads"})
    n_kv_head: Optional[int] = field(default=None, metadata={"help": "override: key/value heads (llama)"})
    n_embd: Optional[int] = field(default=None, metadata={"help": "override: width"})
    block_size: Optional[int] = field(default=None, metadata={"help": "override: context length"})
    dropout: Optional[float] = field(default=None, metadata={"help": "override: dropout"})
    bias: Optional[bool] = field(default=None, metadata={"help": "override: biases in linears and norms"})
    vocab_size: Optional[int] = field(default=None, metadata={
        "help": "vocabulary size (default: the tokenizer's; may be padded up, e.g. 50304)"})


@dataclass
class TrainConfig(Config):
    out_dir: str = field(default="runs/pretrain", metadata={"help": "run folder: config, metrics, plots, checkpoints"})
    max_iters: int = field(default=2000, metadata={"help": "optimizer steps"})
    micro_batch_size: int = field(default=12, metadata={"help": "sequences per forward pass"})
    grad_accum_steps: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    eval_interval: int = field(default=250, metadata={"help": "evaluate every N steps (and at the last step)"})
    eval_iters: int = field(default=20, metadata={"help": "batches per evaluation split"})
    log_interval: int = field(default=50, metadata={"help": "log every N steps (the only host syncs)"})
    checkpoint_interval: int = field(default=0, metadata={
        "help": "save step-XXXXXXXX/ every N steps (0: only at the end)"})
    keep_checkpoints: int = field(default=2, metadata={"help": "keep the newest N checkpoints (0: all)"})
    save_final: bool = field(default=True, metadata={"help": "save a checkpoint at the last step"})
    resume: Optional[str] = field(default=None, metadata={
        "help": "auto (newest checkpoint in out_dir), a step folder or a run folder; default: fresh start"})
    seed: int = field(default=1337, metadata={"help": "seed for init, data order and dropout"})
    device: Literal["auto", "cpu", "cuda"] = field(default="auto", metadata={"help": "auto picks cuda if present"})
    dtype: Literal["auto", "float32", "bfloat16"] = field(default="auto", metadata={
        "help": "autocast dtype: auto = bfloat16 on GPUs that support it, float32 on CPU"})
    num_threads: Optional[int] = field(default=None, metadata={"help": "torch.set_num_threads (CPU)"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the model"})
    backend: Literal["torch", "deepspeed"] = field(default="torch", metadata={"help": "plain torch or DeepSpeed"})
    tensorboard: bool = field(default=False, metadata={"help": "also write TensorBoard events"})
    plot: bool = field(default=True, metadata={"help": "write loss.png at each evaluation and at the end"})
    peak_flops: Optional[float] = field(default=None, metadata={
        "help": "peak FLOP/s for MFU (default: a GPU table, or cores x clock x FMA width on CPU)"})

    def __post_init__(self) -> None:
        for name in ("max_iters", "eval_iters"):
            check_range(name, getattr(self, name), 0)
        for name in ("micro_batch_size", "grad_accum_steps", "eval_interval", "log_interval"):
            check_range(name, getattr(self, name), 1)
        check_range("checkpoint_interval", self.checkpoint_interval, 0)
        check_range("num_threads", self.num_threads, 1)


@dataclass
class DeepSpeedConfig(Config):
    zero_stage: int = field(default=2, metadata={"help": "ZeRO stage: 0, 1, 2 or 3"})
    offload_optimizer: bool = field(default=False, metadata={"help": "ZeRO-Offload the optimizer state to CPU"})
    extra: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "more DeepSpeed config keys, merged into the generated config"})

    def __post_init__(self) -> None:
        if self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"got {self.zero_stage!r}; allowed values: 0, 1, 2, 3", "zero_stage")


@dataclass
class SpanCorruptionConfig(Config):
    noise_density: float = field(default=0.15, metadata={
        "help": "t5: share of each raw window's tokens that are masked (Raffel et al. 2020: 0.15)"})
    mean_noise_span_length: float = field(default=3.0, metadata={"help": "t5: mean length of a masked span"})
    num_sentinels: int = field(default=100, metadata={
        "help": "t5: sentinel tokens <extra_id_0>... added to a tokenizer that lacks them (T5's extra_ids)"})

    def __post_init__(self) -> None:
        check_range("noise_density", self.noise_density, 0.0, 0.9, low_inclusive=False)
        check_range("mean_noise_span_length", self.mean_noise_span_length, 1.0)
        check_range("num_sentinels", self.num_sentinels, 1)


@dataclass
class PretrainConfig(Config):
    """``wandao pretrain``'s config: sections map to dotted flags (``--train.max_iters 100``)."""

    model: ModelSection = field(default_factory=ModelSection, metadata={"help": "model preset and overrides"})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "sources, tokenizer, split"})
    optim: OptimConfig = field(default_factory=OptimConfig, metadata={"help": "optimizer"})
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig, metadata={"help": "learning-rate schedule"})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "loop, evaluation, checkpoints"})
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig, metadata={"help": "DeepSpeed backend"})
    span_corruption: SpanCorruptionConfig = field(default_factory=SpanCorruptionConfig, metadata={
        "help": "t5's objective: the encoder reads a window with spans masked, the decoder writes the spans"})

    def __post_init__(self) -> None:
        if self.schedule.decay_iters is not None and self.schedule.decay_iters > 10 * max(1, self.train.max_iters):
            logger.warning("schedule.decay_iters=%d is far beyond train.max_iters=%d",
                           self.schedule.decay_iters, self.train.max_iters)


EPILOG = """example (nanoGPT's CPU Shakespeare run, ~1-2 minutes on 2 cores):
  wandao pretrain --config configs/pretrain/nanogpt-shakespeare-char.yaml
  wandao pretrain --config configs/pretrain/tiny.yaml --train.max_iters 50 --optim.name lamb
  wandao pretrain --config configs/pretrain/tiny-t5-span.yaml     # T5 span corruption, ~1 minute
  wandao pretrain --config configs/pretrain/tiny-t5-evidence.yaml # T5 reading augment pretrain's evidence
  deepspeed --num_gpus 1 $(which wandao) pretrain --config configs/pretrain/tiny.yaml --train.backend deepspeed
"""


# ------------------------------------------------------------------------------------------- setup


def _dist_info() -> tuple[int, int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def build_tokenizer(cfg: DataConfig, out_dir: Path, extra_special: Sequence[str] = ()):
    """The run's tokenizer, saved to ``out_dir/tokenizer`` (reused when resuming).

    ``extra_special`` (t5's sentinels) also makes sure of an EOS and a pad token: a char or BPE
    tokenizer is built with them (BPE counts them in ``vocab_size``); a loaded one that lacks any
    gets them appended. A loaded tokenizer without an EOS (a BERT WordPiece, say) takes the one its
    token folders were written with (``wandao augment pretrain`` closes chunks with ``[SEP]``), so the
    model learns to end text with the token its data ends with.
    """
    from pretrain import data as data_lib
    from pretrain import tokenizer as tok_lib

    saved = out_dir / "tokenizer"
    if cfg.tokenizer not in ("char", "bpe"):
        tok = tok_lib.load_tokenizer(os.path.expandvars(cfg.tokenizer))
        if extra_special:
            eos = _token_folders_eos(cfg, tok) if tok.eos_token is None else None
            tok_lib.ensure_special_tokens(tok, extra_special, **({"eos_token": eos} if eos else {}))
        return tok
    if (saved / "tokenizer.json").exists():
        tok = tok_lib.load_tokenizer(saved)
        if extra_special and tok_lib.ensure_special_tokens(tok, extra_special):
            tok.save_pretrained(str(saved))
        return tok
    texts = []
    for src in cfg.sources:
        path = Path(os.path.expandvars(os.path.expanduser(src.path)))
        if path.is_dir():
            raise ConfigError(f"source {path} is already tokenised: give the tokenizer it was made with "
                              "(--data.tokenizer PATH)", "data.tokenizer")
        docs = list(data_lib.iter_documents(path, src.text_field))
        if not any(d.strip() for d in docs):
            raise data_lib.DataFormatError(path, "holds no text to build a tokenizer from (an empty file?)",
                                           field=src.text_field)
        texts.append(docs)
    if cfg.tokenizer == "char":
        specials = (tok_lib.EOS_TOKEN, tok_lib.PAD_TOKEN, *extra_special) if extra_special else ()
        tok = tok_lib.build_char_tokenizer("".join(d for docs in texts for d in docs), special_tokens=specials)
    else:
        # Train BPE on the training part only, so validation text stays unseen.
        train_docs = [d for docs in texts for d in data_lib.split_documents(docs, cfg.val_fraction)[0]]
        tok = tok_lib.train_bpe_tokenizer(train_docs, cfg.vocab_size,
                                          special_tokens=(tok_lib.EOS_TOKEN, tok_lib.PAD_TOKEN, *extra_special))
    tok.save_pretrained(str(saved))
    return tok


def _token_folders_eos(cfg: DataConfig, tokenizer) -> str | None:
    """The EOS token the sources that are token folders were written with, when they agree on one."""
    from pretrain.data import open_tokens

    ids = {open_tokens(p).meta.get("eos_id") for p in
           (Path(os.path.expandvars(os.path.expanduser(s.path))) for s in cfg.sources) if (p / "meta.json").exists()}
    if len(ids) != 1 or None in ids:
        return None
    return tokenizer.convert_ids_to_tokens(ids.pop())


def sampler_factory(cfg: PretrainConfig, tokenizer, arch: str, block_size: int) -> Callable:
    """How token files become batches: ``make(files, weights, seed, device)`` gives next-token windows
    (decoder-only) or, for t5, encoder/decoder batches of at most ``block_size`` encoder tokens: span
    corruption over token streams, or, over ``wandao augment pretrain`` rows (packed, with a loss mask),
    the retrieved evidence through the encoder and the chunk as the decoder's target."""
    from pretrain.data import BatchSampler
    from pretrain.evidence_seq2seq import EvidenceSeq2SeqSampler, find_examples
    from pretrain.span_corruption import SpanCorruptionSampler, sentinel_tokens

    B = cfg.train.micro_batch_size
    if arch != "t5":
        def make_windows(files, weights, seed, device):
            return BatchSampler(files, weights, B, block_size, seed, device)

        return make_windows
    sc = cfg.span_corruption
    sentinel_ids = tokenizer.convert_tokens_to_ids(sentinel_tokens(sc.num_sentinels))
    # The evaluator makes a fresh sampler per evaluation: index each folder's examples once. The file
    # object is kept beside its examples so its id is not reused while cached.
    indexed: dict[int, tuple] = {}

    def examples_of(f):
        if id(f) not in indexed:
            indexed[id(f)] = (f, find_examples(f, tokenizer.eos_token_id))
        return indexed[id(f)][1]

    def make_seq2seq(files, weights, seed, device):
        augmented = [f.loss_mask is not None for f in files]
        if all(augmented):
            eos = tokenizer.eos_token_id
            for f in files:  # the decoder learns to end a chunk with the rows' EOS: it must be the model's
                row_eos = f.meta.get("eos_id")
                if row_eos != eos:
                    raise ConfigError(
                        f"{f.folder} closes its chunks with id {row_eos} "
                        f"({tokenizer.convert_ids_to_tokens(row_eos) if row_eos is not None else 'none'}) but the "
                        f"tokenizer's EOS is {tokenizer.eos_token} ({eos}); train with the tokenizer the rows were "
                        f"made with ({f.meta.get('tokenizer', 'unrecorded')}), and augment with one whose EOS token "
                        "is its own (one wandao pretrain trained has <|endoftext|>)", "data.tokenizer")
            return EvidenceSeq2SeqSampler(files, weights, B, block_size, seed, tokenizer.eos_token_id,
                                          tokenizer.pad_token_id, device, examples=[examples_of(f) for f in files])
        if any(augmented):
            raise ConfigError("t5 trains on token streams (span corruption) or on wandao augment pretrain rows "
                              "(evidence through the encoder), not both in one run: "
                              + ", ".join(f"{f.folder} ({'rows' if a else 'stream'})" for f, a in zip(files, augmented)),
                              "data.sources")
        return SpanCorruptionSampler(files, weights, B, block_size, seed, sentinel_ids, tokenizer.eos_token_id,
                                     tokenizer.pad_token_id, sc.noise_density, sc.mean_noise_span_length, device)

    return make_seq2seq


def build_data(cfg: PretrainConfig, tokenizer, out_dir: Path, make_sampler: Callable, rank: int, device: str):
    from pretrain import data as data_lib

    if not cfg.data.sources:
        raise ConfigError("no data sources: set data.sources in the YAML file", "data.sources")
    cache = Path(cfg.data.cache_dir) if cfg.data.cache_dir else out_dir / "data"
    tok_id = cfg.data.tokenizer if cfg.data.tokenizer not in ("char", "bpe") else \
        f"{cfg.data.tokenizer}:{data_lib.fingerprint(sorted(tokenizer.get_vocab().items()))}"
    sources = [data_lib.prepare_source(s.path, tokenizer, cache, cfg.data.val_fraction, name=s.name,
                                       weight=s.weight, text_field=s.text_field, tokenizer_id=tok_id)
               for s in cfg.data.sources]
    seed = cfg.train.seed + 1000 * rank  # each rank draws its own windows
    train = make_sampler([s.train for s in sources], [s.weight for s in sources], seed, device)
    val_sources = [s for s in sources if s.val is not None]
    val_files = [s.val for s in val_sources]
    if not val_files:
        logger.warning("no validation data (data.val_fraction=0): evaluation reports the training split only")
    return sources, train, val_files, [s.weight for s in val_sources]


def build_model_config(cfg: ModelSection, vocab_size: int):
    from pretrain.model import from_preset

    overrides = {k: getattr(cfg, k) for k in ("arch", "n_layer", "n_head", "n_kv_head", "n_embd", "block_size",
                                              "dropout", "bias") if getattr(cfg, k) is not None}
    overrides["vocab_size"] = cfg.vocab_size or vocab_size
    if overrides["vocab_size"] < vocab_size:
        raise ConfigError(f"got {overrides['vocab_size']}; the tokenizer has {vocab_size} tokens", "model.vocab_size")
    return from_preset(cfg.preset, **overrides)


def _autocast(device: str, dtype: str):
    import torch

    if device == "cuda" and dtype == "bfloat16":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


@dataclass
class _Evaluator:
    """Mean loss over ``eval_iters`` batches per split, from a sampler re-seeded at every evaluation
    (the same windows each time: comparable curves, nothing to save for resume)."""

    files: dict[str, tuple[list, list]]
    make_sampler: Callable  # sampler_factory's make(files, weights, seed, device)
    iters: int
    seed: int
    device: str

    def __call__(self, forward) -> dict[str, float]:
        import torch

        out = {}
        for split, (files, weights) in self.files.items():
            if not files:
                continue
            sampler = self.make_sampler(files, weights, self.seed, self.device)
            losses = torch.zeros(self.iters)
            for k in range(self.iters):
                losses[k] = forward(sampler.next_batch()).float()
            out[split] = losses.mean().item()  # sync point (eval only)
        return out


def batch_loss(model, batch):
    """How a batch becomes a loss. Decoder-only ``(x, y, loss_mask)``: next-token cross-entropy over
    the unmasked targets. t5's :class:`~pretrain.span_corruption.Seq2SeqBatch`: the encoder reads
    ``enc_idx`` (``enc_mask`` marks its padding), the decoder reads ``idx``, cross-entropy over every
    target token but the -100 padding."""
    if hasattr(batch, "enc_idx"):
        return model(batch.idx, batch.targets, enc_idx=batch.enc_idx, enc_mask=batch.enc_mask)[1]
    x, y, m = batch
    return model(x, y, loss_mask=m)[1]


def _to_device(batch, device):
    moved = [None if t is None else t.to(device) for t in batch]
    return type(batch)(*moved) if hasattr(batch, "_fields") else tuple(moved)


# -------------------------------------------------------------------------------------------- main


def setup_runtime(tc) -> tuple[str, str, tuple[int, int, int]]:
    """Device, autocast dtype and ``(rank, local_rank, world)`` for a run's train section.

    Shared by every trainer (pretrain, SFT): picks the device, starts the process group for the
    DeepSpeed backend, binds the local GPU, resolves ``dtype: auto`` and sets CPU threads.
    """
    import torch

    device = tc.device if tc.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if tc.backend == "deepspeed":
        _init_distributed(device)
    rank, local_rank, world = _dist_info()
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("got 'cuda' but no CUDA device is visible; use --train.device cpu", "train.device")
        torch.cuda.set_device(local_rank)
    dtype = tc.dtype
    if dtype == "auto":
        dtype = "bfloat16" if device == "cuda" and torch.cuda.is_bf16_supported() else "float32"
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    return device, dtype, (rank, local_rank, world)


def run(cfg: PretrainConfig) -> dict[str, Any]:
    """Train as ``cfg`` says; returns the final summary (also printed as the last line by :func:`main`)."""
    import numpy as np
    import torch

    from pretrain import checkpoint as ckpt
    from pretrain import metrics as metrics_lib
    from pretrain.data import mixture_report
    from pretrain.model import build_model, load_pretrained
    from pretrain.optim import LRSchedule, build_optimizer, clip_grad_norm, set_lr
    from pretrain.span_corruption import sentinel_tokens

    tc = cfg.train
    use_ds = tc.backend == "deepspeed"
    device, dtype, (rank, local_rank, world) = setup_runtime(tc)
    master = rank == 0
    out_dir = Path(tc.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    resume_from = ckpt.resolve_resume(tc.resume, out_dir)
    if master:
        cfg.save(out_dir)

    # -- tokenizer and data (rank 0 first: it writes the tokenizer and the token cache the others read)
    if world > 1 and rank != 0:
        torch.distributed.barrier()
    model = None
    if resume_from is not None:
        model = load_pretrained(resume_from)
    elif cfg.model.init_from:
        model = load_pretrained(os.path.expandvars(cfg.model.init_from))
    arch = model.cfg.arch if model is not None else build_model_config(cfg.model, 1).arch
    # t5's span corruption needs sentinels, an EOS and a pad (the decoder's start token) in the vocabulary.
    sentinels = sentinel_tokens(cfg.span_corruption.num_sentinels) if arch == "t5" else ()
    tokenizer = build_tokenizer(cfg.data, out_dir, sentinels)
    torch.manual_seed(tc.seed)
    if model is None:
        model = build_model(build_model_config(cfg.model, len(tokenizer)))
    mcfg = model.cfg
    if mcfg.vocab_size < len(tokenizer):
        raise ConfigError(f"the model's vocab_size={mcfg.vocab_size} is smaller than the tokenizer ({len(tokenizer)})",
                          "model.vocab_size")
    T = mcfg.block_size  # t5: the encoder's input length
    make_sampler = sampler_factory(cfg, tokenizer, arch, T)
    sources, sampler, val_files, val_weights = build_data(cfg, tokenizer, out_dir, make_sampler, rank,
                                                         device if not use_ds else "cpu")
    if world > 1 and rank == 0:
        torch.distributed.barrier()
    B, accum = tc.micro_batch_size, tc.grad_accum_steps
    # Tokens a row consumes from the data: T next-token targets, or t5's raw window (inputs + targets
    # less the sentinels and EOS).
    row_tokens = sampler.tokens_length if arch == "t5" else T
    tokens_per_step = B * row_tokens * accum * world
    # The transformers config ids a t5 folder needs (decoder_start = pad, as T5); decoder-only: none.
    hf_ids = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id,
              "decoder_start_token_id": tokenizer.pad_token_id} if arch == "t5" else {}
    if master and arch == "t5" and hasattr(sampler, "examples"):
        logger.info("evidence through the encoder: %d examples, %d tokens each on average (evidence + chunk), "
                    "encoder cut at %d tokens, targets up to %d", sum(map(len, sampler.examples)),
                    sampler.tokens_length, T, sampler.targets_length)
    elif master and arch == "t5":
        logger.info("span corruption: %d raw tokens -> %d encoder + %d target tokens (noise density %.2f, "
                    "mean span %.1f)", sampler.tokens_length, T, sampler.targets_length,
                    cfg.span_corruption.noise_density, cfg.span_corruption.mean_noise_span_length)
    if master:
        for row in mixture_report(sources, tokens_per_step, tc.max_iters):
            logger.info("data %-20s weight %.3f  train tokens %12d  draws %12d  = %.2f epochs", row["source"],
                        row["weight"], row["train_tokens"], row["tokens_seen"], row["epochs"])
    evaluator = _Evaluator({"train": ([s.train for s in sources], [s.weight for s in sources]),
                            "val": (val_files, val_weights)}, make_sampler, tc.eval_iters, tc.seed + 7, device)

    # -- model, optimizer, backend
    model.to(device)
    n_params = model.num_params()
    if arch == "t5":  # a row's tokens split between encoder and decoder: count each where it runs
        flops_per_token = model.flops_per_example(sampler.encoder_length, sampler.decoder_length) / row_tokens
    else:
        flops_per_token = model.flops_per_token(T)
    optimizer = build_optimizer(model, cfg.optim, device)
    schedule = LRSchedule(cfg.optim.lr, cfg.schedule, tc.max_iters)
    engine = None
    if use_ds:
        engine = _deepspeed_engine(model, optimizer, cfg, device, dtype)
        optimizer = engine.optimizer
    train_model = torch.compile(model) if tc.compile and not use_ds else model
    ctx = _autocast(device, dtype) if not use_ds else nullcontext()

    # -- resume
    start_step = 0
    if resume_from is not None:
        state = ckpt.load_trainer_state(resume_from)
        start_step = int(state["step"])
        if use_ds:
            engine.load_checkpoint(str(resume_from / "deepspeed"), tag="state", load_lr_scheduler_states=False)
            rank_state = resume_from / f"trainer_state_rank{rank}.pt"
            if rank and rank_state.exists():
                state = torch.load(rank_state, map_location="cpu", weights_only=False)
        else:
            optimizer.load_state_dict(ckpt.load_optimizer_state(resume_from))
        sampler.load_state_dict(state["sampler"])
        schedule.load_state_dict(state["schedule"])
        ckpt.set_rng_state(state["rng"])
        logger.info("resumed from %s at step %d", resume_from, start_step)
    metrics = metrics_lib.MetricsLogger(out_dir, tc.tensorboard, start_step if resume_from else None, enabled=master)
    peak = tc.peak_flops or metrics_lib.peak_flops(device, dtype, torch.get_num_threads())
    if master:
        logger.info("model %s: %.2fM parameters (non-embedding), %.3g FLOPs/token; %d tokens/step; device %s %s%s",
                    mcfg.arch, n_params / 1e6, flops_per_token, tokens_per_step, device, dtype,
                    f"; deepspeed ZeRO-{cfg.deepspeed.zero_stage}" if use_ds else "")

    def forward_loss(batch):
        with torch.no_grad(), ctx:
            return batch_loss(engine if use_ds else train_model, batch)

    def evaluate(step: int) -> dict[str, float]:
        model.eval()
        losses = evaluator(forward_loss)
        model.train()
        rec = {"train_loss": losses.get("train"), "val_loss": losses.get("val", losses.get("train"))}
        rec["val_ppl"] = math.exp(rec["val_loss"]) if rec["val_loss"] is not None and rec["val_loss"] < 50 else None
        if master:
            metrics.log(step, "eval", **rec)
            logger.info("step %d: train loss %.4f, val loss %.4f, val ppl %.2f", step, rec["train_loss"],
                        rec["val_loss"], rec["val_ppl"] or float("nan"))
        return rec

    def save(step: int, last_eval: dict) -> None:
        trainer_state = {"step": step, "sampler": sampler.state_dict(), "schedule": schedule.state_dict(),
                         "rng": ckpt.rng_state()}
        readable = {"val_loss": last_eval.get("val_loss"), "tokens_seen": step * tokens_per_step}
        def save_model(folder: Path) -> None:
            model.save_pretrained(folder, force=True, **hf_ids)

        if use_ds:
            _deepspeed_save(engine, model, out_dir, step, trainer_state, readable, tokenizer, cfg, rank, world,
                            save_model=save_model)
        elif master:
            ckpt.save_checkpoint(out_dir, step, save_model, optimizer.state_dict(), trainer_state,
                                 readable, tokenizer=tokenizer, config=cfg, keep=tc.keep_checkpoints)

    # -- the loop, in nanoGPT's order
    model.train()
    last_eval: dict = {}
    iter_times: list[float] = []
    train_time = 0.0
    t_log, tokens_since_log = time.perf_counter(), 0
    step = start_step
    for step in range(start_step, tc.max_iters + 1):
        t0 = time.perf_counter()
        lr = schedule(step)
        set_lr(optimizer, lr)

        last = step == tc.max_iters
        t_eval = time.perf_counter()
        if step % tc.eval_interval == 0 or last:
            last_eval = evaluate(step)
            if master and tc.plot and step > start_step:
                metrics_lib.plot_loss_curve(metrics.path, out_dir / "loss.png", title=f"{mcfg.arch} on {out_dir.name}")
        if step > start_step and ((tc.checkpoint_interval and step % tc.checkpoint_interval == 0)
                                  or (last and tc.save_final)):
            save(step, last_eval)
        if last:
            break
        t_train = time.perf_counter()

        for micro in range(accum):
            batch = sampler.next_batch()
            if use_ds:
                loss = batch_loss(engine, _to_device(batch, engine.device))
                engine.backward(loss)  # scales by 1/accum itself
                engine.step()  # only steps (clip, update, zero grad) at the accumulation boundary
            else:
                with ctx:
                    loss = batch_loss(train_model, batch) / accum
                loss.backward()
            if accum > 1:  # the logged loss is the mean over micro-batches (no sync: a device tensor)
                loss_sum = loss.detach() if micro == 0 else loss_sum + loss.detach()
        if use_ds:
            grad_norm = engine.get_global_grad_norm()
        else:
            grad_norm = clip_grad_norm(model.parameters(), cfg.optim.grad_clip)  # a tensor: no sync
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        tokens_since_log += tokens_per_step
        if step % tc.log_interval == 0 or step == tc.max_iters - 1:
            # Sync point: .item() waits for the device; only here, every log_interval steps.
            lossf = loss_sum.item() / (accum if use_ds else 1) if accum > 1 else loss.item()
            gnorm = float(grad_norm) if grad_norm is not None else float("nan")
            now = time.perf_counter()
            tps = tokens_since_log / max(now - t_log, 1e-9)
            mfu = flops_per_token * tps / world / peak if peak else None
            mem = metrics_lib.peak_memory_mb(device)
            if master:
                metrics.log(step, "train", loss=lossf, lr=lr, grad_norm=gnorm, tokens_per_s=tps, mfu=mfu,
                            peak_mem_mb=mem)
                logger.info("step %d: loss %.4f, lr %.2e, grad norm %.3f, %.0f tok/s, %.1f ms/iter, mfu %s, "
                            "peak mem %.0f MiB", step, lossf, lr, gnorm, tps, 1000 * (now - t_train),
                            f"{100 * mfu:.2f}%" if mfu is not None else "n/a", mem)
            t_log, tokens_since_log = time.perf_counter(), 0
        # Time per iteration: everything in the step (lr, batch, forward/backward, step, log) but evaluation
        # and checkpointing, as the benchmark measures the baseline.
        t1 = time.perf_counter()
        iter_times.append(t1 - t0 - (t_train - t_eval))
        train_time += iter_times[-1]

    steps_run = max(0, step - start_step)
    tokens = steps_run * tokens_per_step
    summary = {
        "final_val_loss": last_eval.get("val_loss"),
        "final_train_loss": last_eval.get("train_loss"),
        "final_val_ppl": last_eval.get("val_ppl"),
        "steps": step,
        "steps_this_run": steps_run,
        "tokens": tokens,
        "tokens_per_s": tokens / train_time if train_time > 0 else None,
        "ms_per_iter": 1000 * statistics.fmean(iter_times) if iter_times else None,
        "ms_per_iter_median": 1000 * statistics.median(iter_times) if iter_times else None,
        "params_non_embedding": n_params,
        "arch": mcfg.arch,
        "optimizer": cfg.optim.name,
        "backend": tc.backend + (f"-zero{cfg.deepspeed.zero_stage}" if use_ds else ""),
        "device": device,
        "out_dir": str(out_dir),
    }
    if master:
        metrics.close()
        if tc.plot and (out_dir / "metrics.jsonl").exists():
            summary["loss_curve"] = str(metrics_lib.plot_loss_curve(out_dir / "metrics.jsonl", out_dir / "loss.png",
                                                                    title=f"{mcfg.arch} on {out_dir.name}"))
        metrics_lib.write_summary(out_dir, summary)
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


# --------------------------------------------------------------------------------------- DeepSpeed


def _init_distributed(device: str) -> None:
    """Join the launcher's process group, or make a one-process world when there is no launcher."""
    try:
        import deepspeed
    except ImportError as err:
        raise ImportError(f"the deepspeed backend needs DeepSpeed ({err}): pip install 'wandao[deepspeed]'") from None
    import socket

    if "RANK" not in os.environ:  # no launcher: a single-process world
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=os.environ.get("MASTER_PORT", str(port)))
    import torch.distributed as dist

    if not dist.is_initialized():
        # CPU: gloo (DeepSpeed's CPU default, oneCCL, is not installed here); GPU: nccl.
        deepspeed.init_distributed(dist_backend="nccl" if device == "cuda" else "gloo")


def _deepspeed_engine(model, optimizer, cfg: PretrainConfig, device: str, dtype: str,
                      micro_batch_size: Optional[int] = None, grad_accum_steps: Optional[int] = None):
    """``deepspeed.initialize`` with a config built from ours (client optimizer: our AdamW/LAMB/...).

    ``cfg`` needs ``train``, ``optim`` and ``deepspeed`` sections; a trainer whose train section has no
    ``micro_batch_size``/``grad_accum_steps`` (PPO: one optimizer step per minibatch) passes them.
    """
    import deepspeed

    tc = cfg.train
    micro = micro_batch_size if micro_batch_size is not None else tc.micro_batch_size
    accum = grad_accum_steps if grad_accum_steps is not None else tc.grad_accum_steps
    zero: dict[str, Any] = {"stage": cfg.deepspeed.zero_stage}
    if cfg.deepspeed.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    ds_config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accum,
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": device == "cuda" and dtype == "bfloat16"},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    from pretrain.config import _merge

    ds_config = _merge(ds_config, cfg.deepspeed.extra)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    return engine


def _deepspeed_save(engine, model, out_dir: Path, step: int, trainer_state: dict, readable: dict, tokenizer,
                    cfg: PretrainConfig, rank: int, world: int, save_model=None) -> None:
    """All ranks write DeepSpeed's sharded states into one temporary folder; rank 0 adds the HF model and renames.

    ``save_model(folder)`` writes the HF model (default: ``model.save_pretrained(folder, force=True)``);
    under ZeRO-3 it runs with every parameter of ``model`` gathered.
    """
    if save_model is None:
        def save_model(folder: Path) -> None:
            model.save_pretrained(folder, force=True)
    import shutil

    import torch
    import torch.distributed as dist

    from pretrain import checkpoint as ckpt

    final = out_dir / ckpt.step_dir_name(step)
    tmp = out_dir / f".{final.name}.tmp-ds"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    engine.save_checkpoint(str(tmp / "deepspeed"), tag="state")
    if cfg.deepspeed.zero_stage == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
            if rank == 0:
                save_model(tmp)
    elif rank == 0:
        save_model(tmp / "_model")
        for f in (tmp / "_model").iterdir():
            os.replace(f, tmp / f.name)
        (tmp / "_model").rmdir()
    if rank:
        torch.save(trainer_state, tmp / f"trainer_state_rank{rank}.pt")
    dist.barrier()
    if rank == 0:
        tokenizer.save_pretrained(str(tmp))
        torch.save(trainer_state, tmp / "trainer_state.pt")
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step, **readable}, indent=2) + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        ckpt.prune_checkpoints(out_dir, cfg.train.keep_checkpoints, final)
    dist.barrier()


# ---------------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    """``wandao pretrain --config FILE.yaml [--section.key value ...]``; the last stdout line is JSON."""
    argv = sys.argv[1:] if argv is None else argv
    # The deepspeed launcher appends --local_rank=N; LOCAL_RANK in the environment says the same.
    argv = [a for a in argv if not a.startswith("--local_rank")]
    cfg = PretrainConfig.parse(argv, prog="wandao pretrain",
                               description="Pretrain a decoder-only LM or a T5-style encoder-decoder "
                                           "(plain torch or DeepSpeed).", epilog=EPILOG)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=os.environ.get("WANDAO_LOG_LEVEL", "INFO"),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from pretrain.data import DataFormatError

    try:
        summary = run(cfg)
    except (ConfigError, DataFormatError, FileNotFoundError) as err:
        print(f"wandao pretrain: {err}", file=sys.stderr)
        return 2
    if _dist_info()[0] == 0:
        print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
