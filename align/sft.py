"""``wandao sft``: evidence-aware supervised fine-tuning of any HF causal LM, loss on response tokens only.

Read it top to bottom: the config, the data pieces (read rows → render with a rag template → encode
with a response-only loss mask → pad or pack → a resumable sampler), then :func:`run`: set up
(tokenizer, model, data, optimizer, backend, resume) → the loop in nanoGPT's order (set lr →
evaluate/checkpoint → forward/backward with gradient accumulation → clip → step → zero grad → log) →
save the HF folder and report. The last line printed is JSON with ``final_val_loss``, ``steps``,
``out_dir`` and ``model_dir``.

Data
    Rows that are already rendered (``wandao augment sft`` output: ``prompt`` with the evidence in
    it, ``response``, ``evidence_ids``; optional ``eos: false`` for a response that was cut, not
    finished, so no EOS is learned after it) are used verbatim. Any other row shape that
    :mod:`rag.data` reads (chat ``messages``, ``prompt``/``response``, ``question``/``answers``,
    hh-rlhf ``chosen``, or a registered split such as ``xquad-en:train``) is rendered on the fly
    with ``data.template``, with evidence retrieved through :class:`rag.Retriever` when
    ``data.index`` is set (budgets counted with the policy's own tokenizer). ``data.template: null``
    joins ``prompt + response`` as they are.

Loss mask
    Each example is ``prompt ids + response ids + EOS``; the mask is 0 over the prompt (history,
    question, evidence, the answer-turn header) and 1 over the response and its EOS. Training takes
    ``x = ids[:-1]``, ``y = ids[1:]``, ``mask = mask[1:]`` (the pretrain token-folder convention:
    ``mask[i] = 1`` means *predicting* token ``i`` counts). Too-long examples lose prompt tokens
    from the left first (the answer turn and the nearest evidence survive), then response tokens
    from the right.

Packing
    ``data.packing: true`` concatenates whole examples, each ending in EOS, into rows of exactly
    ``max_length + 1`` tokens (first fit in shuffled order; the rest of a row is padding with mask
    0). Attention is causal over the whole row, as in the pretrain packer: a later example can
    attend to an earlier one, separated by EOS (wandao's models take no block-diagonal mask). The
    loss still covers response tokens only, and an example's first prompt token is never a target.
    Without packing each row holds one example, right-padded, so nothing leaks.

Models
    A wandao pretrain checkpoint or any HF folder of GPT-2 / Llama / GPT-NeoX loads into wandao's
    own modules (:func:`pretrain.model.load_pretrained`); any other causal-LM family runs as the
    plain ``AutoModelForCausalLM`` behind the same ``(logits, loss)`` interface. The output
    ``<out_dir>/model/`` is an HF folder (model + tokenizer) that ``transformers`` loads.
"""

from __future__ import annotations

import hashlib
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
from typing import Any, Callable, Iterable, Iterator, Literal, Optional, Sequence

from pretrain.config import Config, ConfigError, check_range
from pretrain.optim import OptimConfig, ScheduleConfig
from pretrain.train import DeepSpeedConfig

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ config


@dataclass
class ModelSection(Config):
    init_from: str = field(default="", metadata={
        "help": "the starting HF causal-LM folder (a wandao pretrain checkpoint or any HF model); $VARS expand"})
    tokenizer: Optional[str] = field(default=None, metadata={
        "help": "tokenizer folder (default: the one saved with init_from)"})
    dropout: Optional[float] = field(default=None, metadata={"help": "override the model's dropout (wandao models)"})

    def __post_init__(self) -> None:
        check_range("dropout", self.dropout, 0.0, 1.0)


@dataclass
class DataSection(Config):
    train: str = field(default="", metadata={
        "help": "training rows: wandao augment sft JSONL, chat/prompt-response/QA/hh-rlhf JSONL(.gz)/parquet, "
                "or a registered split (xquad-en:train)"})
    val: Optional[str] = field(default=None, metadata={
        "help": "validation rows (default: val_fraction of train, chosen by a hash of the row id)"})
    val_fraction: float = field(default=0.1, metadata={"help": "held-out fraction of train when val is not given"})
    template: Optional[str] = field(default="sparrow", metadata={
        "help": "rag template for rows not already rendered (sparrow, lamda, docs, search-r1; null: prompt+response "
                "joined as they are)"})
    index: Optional[str] = field(default=None, metadata={
        "help": "index folder: retrieve evidence for rows not already rendered (default: render without evidence)"})
    retriever: Optional[str] = field(default=None, metadata={"help": "bm25|lucene|dense|hybrid (default: the index's)"})
    k: int = field(default=3, metadata={"help": "passages retrieved per row"})
    passage_tokens: int = field(default=160, metadata={"help": "token budget per passage block (policy tokenizer)"})
    total_tokens: int = field(default=512, metadata={"help": "token budget for all passage blocks"})
    max_length: Optional[int] = field(default=None, metadata={
        "help": "tokens per training row (default: the model's context length)"})
    min_prompt_tokens: int = field(default=16, metadata={
        "help": "prompt tokens kept when a long response has to be cut"})
    packing: bool = field(default=False, metadata={
        "help": "pack several examples per row (EOS-separated, causal attention across them; see the docstring)"})
    unknown_chars: Literal["error", "drop"] = field(default="error", metadata={
        "help": "characters a character-level vocabulary lacks: error names the row, drop removes them"})
    prompt_loss: bool = field(default=False, metadata={
        "help": "also learn the prompt tokens (evidence included) of training rows; validation stays response-only"})
    limit: Optional[int] = field(default=None, metadata={"help": "read at most this many training rows"})

    def __post_init__(self) -> None:
        check_range("val_fraction", self.val_fraction, 0.0, 0.9)
        check_range("k", self.k, 1)
        check_range("max_length", self.max_length, 2)
        check_range("min_prompt_tokens", self.min_prompt_tokens, 0)
        check_range("limit", self.limit, 1)


@dataclass
class TrainSection(Config):
    out_dir: str = field(default="runs/sft", metadata={"help": "run folder: config, metrics, plots, checkpoints, model/"})
    max_iters: int = field(default=200, metadata={"help": "optimizer steps"})
    micro_batch_size: int = field(default=8, metadata={"help": "rows per forward pass"})
    grad_accum_steps: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    eval_interval: int = field(default=50, metadata={"help": "evaluate the val loss every N steps (and at the last)"})
    eval_examples: int = field(default=256, metadata={"help": "validation rows per evaluation (0: all)"})
    log_interval: int = field(default=10, metadata={"help": "log every N steps (the only host syncs)"})
    checkpoint_interval: int = field(default=0, metadata={"help": "save step-XXXXXXXX/ every N steps (0: only at the end)"})
    keep_checkpoints: int = field(default=2, metadata={"help": "keep the newest N checkpoints (0: all)"})
    save_final: bool = field(default=True, metadata={"help": "save a step checkpoint at the last step"})
    resume: Optional[str] = field(default=None, metadata={
        "help": "auto (newest checkpoint in out_dir), a step folder or a run folder; default: fresh start"})
    seed: int = field(default=1337, metadata={"help": "seed for data order and dropout"})
    device: Literal["auto", "cpu", "cuda"] = field(default="auto", metadata={"help": "auto picks cuda if present"})
    dtype: Literal["auto", "float32", "bfloat16"] = field(default="auto", metadata={
        "help": "autocast dtype: auto = bfloat16 on GPUs that support it, float32 on CPU"})
    num_threads: Optional[int] = field(default=None, metadata={"help": "torch.set_num_threads (CPU)"})
    backend: Literal["torch", "deepspeed"] = field(default="torch", metadata={"help": "plain torch or DeepSpeed"})
    plot: bool = field(default=True, metadata={"help": "write loss.png at each evaluation and at the end"})

    def __post_init__(self) -> None:
        check_range("max_iters", self.max_iters, 0)
        check_range("eval_examples", self.eval_examples, 0)
        for name in ("micro_batch_size", "grad_accum_steps", "eval_interval", "log_interval"):
            check_range(name, getattr(self, name), 1)
        check_range("checkpoint_interval", self.checkpoint_interval, 0)
        check_range("num_threads", self.num_threads, 1)


def _sft_optim() -> OptimConfig:
    return OptimConfig(lr=1e-4, weight_decay=0.0)


def _sft_schedule() -> ScheduleConfig:
    return ScheduleConfig(kind="cosine", warmup_iters=10, min_lr=1e-5)


@dataclass
class SFTConfig(Config):
    """``wandao sft``'s config: sections map to dotted flags (``--train.max_iters 100``)."""

    model: ModelSection = field(default_factory=ModelSection, metadata={"help": "starting model and tokenizer"})
    data: DataSection = field(default_factory=DataSection, metadata={"help": "rows, template, evidence, lengths"})
    optim: OptimConfig = field(default_factory=_sft_optim, metadata={"help": "optimizer"})
    schedule: ScheduleConfig = field(default_factory=_sft_schedule, metadata={"help": "learning-rate schedule"})
    train: TrainSection = field(default_factory=TrainSection, metadata={"help": "loop, evaluation, checkpoints"})
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig, metadata={"help": "DeepSpeed backend"})


EPILOG = """examples:
  wandao sft --config configs/sft/xquad-tiny.yaml
  wandao sft --config configs/sft/xquad-tiny.yaml --train.max_iters 50 --data.packing true
  wandao sft --model.init_from runs/tiny/step-00000200 --data.train runs/rag/xquad-sft.jsonl --train.out_dir runs/sft
  deepspeed --num_gpus 1 $(which wandao) sft --config configs/sft/xquad-tiny.yaml --train.backend deepspeed
"""


# -------------------------------------------------------------------------------------------- data


@dataclass
class SFTExample:
    """One training example: what the model reads (evidence included) and what it learns to write."""

    id: str
    prompt: str
    response: str
    evidence_ids: list[str] = field(default_factory=list)
    eos: bool = True  #: end the response with EOS (False for a sampled response cut at its token limit)


def _source_rows(source: str) -> tuple[Iterator[tuple[int, dict]], str]:
    from indexer.data import DataError, iter_records
    from rag.data import SPLITS

    if source in SPLITS and not Path(source).exists():
        return SPLITS[source](), source
    path = os.path.expandvars(os.path.expanduser(source))
    if not Path(path).exists():
        raise DataError(path, f"not found: give a JSONL/parquet file, an HF dataset folder or a registered split "
                              f"({', '.join(SPLITS)})")
    return iter_records(path), path


def _is_rendered(row: dict) -> bool:
    """``wandao augment sft`` output: the prompt already holds the evidence."""
    return isinstance(row, dict) and "prompt" in row and "response" in row and "evidence_ids" in row


def read_examples(source: str, template: str | None = "sparrow", retriever: Any = None, k: int = 3,
                  tokenizer: Any = None, passage_tokens: int = 160, total_tokens: int = 512,
                  limit: int | None = None) -> list[SFTExample]:
    """Read SFT rows and render the ones that need it.

    Args:
        source: a file or a registered split (see :class:`DataSection`).
        template: the rag template for rows not already rendered; ``None`` joins prompt and response.
        retriever: a :class:`rag.Retriever` to fetch ``k`` passages per unrendered row (None: no evidence).
        tokenizer: the policy tokenizer, for the template's token budgets.

    Returns:
        :class:`SFTExample` rows in file order. Bad rows raise :class:`~indexer.data.DataError`
        naming the file, line and field.
    """
    from indexer.data import DataError
    from rag.data import row_to_item

    rows, path = _source_rows(source)
    out: list[SFTExample] = []
    pending: list[tuple[int, Any]] = []  # (position in out, QAItem) to render
    for n, (line, row) in enumerate(rows):
        if limit is not None and n >= limit:
            break
        if not isinstance(row, dict):
            raise DataError(path, "expected a JSON object", line)
        if _is_rendered(row):
            for key in ("prompt", "response"):
                if not isinstance(row[key], str):
                    raise DataError(path, f"{key} must be a string", line, field=key)
            ids = row.get("evidence_ids") or []
            if not isinstance(ids, list):
                raise DataError(path, "evidence_ids must be a list", line, field="evidence_ids")
            if not isinstance(row.get("eos", True), bool):
                raise DataError(path, "eos must be true or false", line, field="eos")
            out.append(SFTExample(str(row.get("id", line)), row["prompt"], row["response"], [str(i) for i in ids],
                                  row.get("eos", True)))
            continue
        item = row_to_item(row, path, line)
        if not item.answer:
            raise DataError(path, "no response to learn (an SFT row needs a response or answer)", line, field="response")
        if template is None:
            if item.history:
                raise DataError(path, "a chat row needs a template (set data.template)", line, field="messages")
            out.append(SFTExample(item.id, item.question, item.answer))
            continue
        out.append(SFTExample(item.id, "", item.answer))
        pending.append((len(out) - 1, item))
    if not out:
        raise DataError(path, "no rows found")
    if pending:
        for (at, item), rendered in zip(pending, render_items([it for _, it in pending], template, retriever, k,
                                                              tokenizer, passage_tokens, total_tokens,
                                                              with_answers=True)):
            out[at].prompt, out[at].response, out[at].evidence_ids = rendered.prompt, rendered.response, \
                list(rendered.evidence_ids)
    return out


def render_items(items: Sequence[Any], template: str, retriever: Any = None, k: int = 3, tokenizer: Any = None,
                 passage_tokens: int = 160, total_tokens: int = 512, with_answers: bool = True,
                 batch_size: int = 256) -> list[Any]:
    """Render :class:`rag.data.QAItem` rows with ``template``, evidence from ``retriever`` (top ``k``).

    Returns one :class:`rag.templates.Rendered` per item; ``Rendered.passages`` is not kept, so the
    passages are attached as ``rendered.passages`` (list of dicts ``id``, ``title``, ``text``).
    """
    from rag.templates import Budget, Example, Passage, get_template

    tok = None
    if tokenizer is not None:
        from rag.tokenizer import load_tokenizer

        tok = load_tokenizer(tokenizer)
    tpl = get_template(template, tok, Budget(passage_tokens=passage_tokens, total_tokens=total_tokens, min_passages=0))
    out = []
    for start in range(0, len(items), batch_size):
        batch = items[start:start + batch_size]
        passages: list[list[Passage]] = [[] for _ in batch]
        if retriever is not None:
            queries = [" ".join((it.query if it.query is not None else it.question).split()) for it in batch]
            res = retriever.retrieve(queries, k=k)
            for i in range(len(batch)):
                passages[i] = [tpl.clean_passage(Passage(h.document["id"], h.document.get("title", ""),
                                                         h.document.get("text", ""), h.score)) for h in res.hits(i)]
        rendered = tpl.render_many([Example(question=it.question, answer=it.answer if with_answers else "",
                                            passages=ps, query=it.query, history=list(it.history))
                                    for it, ps in zip(batch, passages)], passages_are_clean=True)
        for r, ps in zip(rendered, passages):
            by_id = {p.doc_id: p for p in ps}
            r.passages = [{"id": d, "title": by_id[d].title, "text": by_id[d].text} for d in r.evidence_ids]
            out.append(r)
    return out


def make_encoder(tokenizer: Any, unknown_chars: str = "error") -> Callable[[str], list[int]]:
    """``text -> ids`` without special tokens; with ``unknown_chars="drop"``, characters a
    character-level vocabulary lacks are removed first instead of raising."""
    from pretrain.tokenizer import encode_ids

    vocab = set(tokenizer.get_vocab()) if unknown_chars == "drop" else set()

    def encode(text: str) -> list[int]:
        try:
            return encode_ids(tokenizer, text)
        except ValueError:
            if unknown_chars != "drop":
                raise
            return encode_ids(tokenizer, "".join(c for c in text if c in vocab))

    return encode


def encode_example(prompt_ids: Sequence[int], response_ids: Sequence[int], eos_id: int | None, max_tokens: int,
                   min_prompt_tokens: int = 16) -> tuple[list[int], list[int]]:
    """Join one example into ``(ids, mask)`` of at most ``max_tokens`` tokens.

    ``ids = prompt + response + [eos]``; ``mask`` is 0 over the prompt and 1 over the response and EOS.
    Too long: the prompt is cut from the left down to ``min_prompt_tokens`` first, then the response
    (and its EOS) from the right.

    Example:
        >>> encode_example([5, 6, 7], [8, 9], eos_id=0, max_tokens=10)
        ([5, 6, 7, 8, 9, 0], [0, 0, 0, 1, 1, 1])
        >>> encode_example([5, 6, 7], [8, 9], eos_id=0, max_tokens=5, min_prompt_tokens=1)
        ([6, 7, 8, 9, 0], [0, 0, 1, 1, 1])
    """
    resp = list(response_ids) + ([eos_id] if eos_id is not None else [])
    prompt = list(prompt_ids)
    resp = resp[: max(1, max_tokens - min(len(prompt), min_prompt_tokens))]
    keep = max(0, max_tokens - len(resp))
    prompt = prompt[len(prompt) - keep:] if keep < len(prompt) else prompt
    return prompt + resp, [0] * len(prompt) + [1] * len(resp)


def encode_examples(examples: Sequence[SFTExample], encode: Callable[[str], list[int]], eos_id: int | None,
                    max_tokens: int, min_prompt_tokens: int, source: str = "<data>",
                    stats: dict | None = None) -> list[tuple[list[int], list[int]]]:
    """:func:`encode_example` over rows; a row whose text the tokenizer cannot encode raises naming its id.

    ``stats``, when given, gets ``cut_examples`` (rows that lost tokens to ``max_tokens``) and
    ``empty_examples`` (rows with nothing to learn, skipped)."""
    from indexer.data import DataError

    out = []
    for ex in examples:
        try:
            p, r = encode(ex.prompt), encode(ex.response)
        except ValueError as err:
            raise DataError(source, f"row id {ex.id!r}: {err} (set data.unknown_chars drop to remove them)",
                            field="prompt") from None
        eos = eos_id if ex.eos else None
        ids, mask = encode_example(p, r, eos, max_tokens, min_prompt_tokens)
        if stats is not None:
            cut = len(p) + len(r) + (eos is not None) > max_tokens
            stats["cut_examples"] = stats.get("cut_examples", 0) + cut
        if sum(mask[1:]) == 0:
            if stats is not None:
                stats["empty_examples"] = stats.get("empty_examples", 0) + 1
            continue  # nothing to learn (an empty response with no EOS)
        out.append((ids, mask))
    return out


def pack_examples(encoded: Sequence[tuple[list[int], list[int]]], row_tokens: int,
                  pad_id: int) -> list[tuple[list[int], list[int]]]:
    """Pack whole examples into rows of exactly ``row_tokens`` tokens (first fit, in the given order).

    Examples are never split; a row's unused tail is ``pad_id`` with mask 0. Examples arrive with
    their EOS already, so consecutive examples are EOS-separated.

    Example:
        >>> pack_examples([([1, 2, 0], [0, 1, 1]), ([3, 4, 0], [0, 1, 1]), ([5, 6, 7, 0], [0, 0, 1, 1])], 7, 9)
        [([1, 2, 0, 3, 4, 0, 9], [0, 1, 1, 0, 1, 1, 0]), ([5, 6, 7, 0, 9, 9, 9], [0, 0, 1, 1, 0, 0, 0])]
    """
    rows: list[tuple[list[int], list[int]]] = []
    for ids, mask in encoded:
        if len(ids) > row_tokens:
            raise ValueError(f"an example of {len(ids)} tokens does not fit a packed row of {row_tokens}")
        for r_ids, r_mask in rows:
            if len(r_ids) + len(ids) <= row_tokens:
                r_ids.extend(ids)
                r_mask.extend(mask)
                break
        else:
            rows.append((list(ids), list(mask)))
    return [(ids + [pad_id] * (row_tokens - len(ids)), mask + [0] * (row_tokens - len(mask))) for ids, mask in rows]


def collate(rows: Sequence[tuple[list[int], list[int]]], pad_id: int, device: str = "cpu"):
    """``(x, y, m)`` tensors ``(B, T)`` from ``(ids, mask)`` rows right-padded to the longest row.

    ``x = ids[:-1]``, ``y = ids[1:]``, ``m = mask[1:]``: ``m[b, t] = 1`` when predicting ``y[b, t]`` counts.
    """
    import torch

    T = max(len(ids) for ids, _ in rows) - 1
    x = torch.full((len(rows), T), pad_id, dtype=torch.long)
    y = torch.full((len(rows), T), pad_id, dtype=torch.long)
    m = torch.zeros((len(rows), T), dtype=torch.long)
    for b, (ids, mask) in enumerate(rows):
        n = len(ids) - 1
        x[b, :n] = torch.tensor(ids[:-1])
        y[b, :n] = torch.tensor(ids[1:])
        m[b, :n] = torch.tensor(mask[1:])
    if device != "cpu":
        return x.to(device, non_blocking=True), y.to(device, non_blocking=True), m.to(device, non_blocking=True)
    return x, y, m


class RowSampler:
    """Seeded shuffled epochs over ``n`` rows; its state (epoch, position) makes resume exact."""

    def __init__(self, n: int, batch_size: int, seed: int):
        if n < 1:
            raise ValueError("no training rows")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.epoch, self.pos = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        import numpy as np

        return np.random.default_rng([self.seed, epoch]).permutation(self.n).tolist()

    def next_indices(self) -> list[int]:
        out = []
        while len(out) < self.batch_size:
            if self.pos >= self.n:
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
            take = min(self.batch_size - len(out), self.n - self.pos)
            out += self._order[self.pos:self.pos + take]
            self.pos += take
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos, "seed": self.seed, "n": self.n}

    def load_state_dict(self, state: dict) -> None:
        if state.get("n") != self.n:
            logger.warning("resuming with %d rows; the checkpoint had %s", self.n, state.get("n"))
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self._order = self._permutation(self.epoch)


def split_by_id(examples: Sequence[SFTExample], val_fraction: float) -> tuple[list[SFTExample], list[SFTExample]]:
    """(train, val): an example is held out when a hash of its id falls below ``val_fraction``."""
    train, val = [], []
    for ex in examples:
        u = int.from_bytes(hashlib.sha256(f"sft-val\x00{ex.id}".encode()).digest()[:8], "big") / 2**64
        (val if u < val_fraction else train).append(ex)
    return train, val


# ------------------------------------------------------------------------------------------- model


class HFCausalLM:
    """A plain ``AutoModelForCausalLM`` behind wandao's ``model(x, y, loss_mask) -> (logits, loss)`` interface.

    For model families wandao's modules do not cover (OPT, Mistral, Qwen, ...). Built lazily as an
    ``nn.Module`` subclass so importing this file needs no torch.
    """

    def __new__(cls, hf_model):
        import torch

        class _Wrapped(torch.nn.Module):
            def __init__(self, hf):
                super().__init__()
                self.hf = hf
                from pretrain.generate import context_length

                self.block_size = context_length(hf) or 2048

            def forward(self, idx, targets=None, loss_mask=None):
                import torch.nn.functional as F

                logits = self.hf(input_ids=idx).logits
                loss = None
                if targets is not None:
                    if loss_mask is not None:
                        targets = targets.masked_fill(loss_mask == 0, -100)
                    loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1),
                                           ignore_index=-100)
                return logits, loss

            def num_params(self, non_embedding: bool = True) -> int:
                return sum(p.numel() for p in self.parameters())

            def save_pretrained(self, out_dir, force: bool = True, **hf_config):
                for k, v in hf_config.items():
                    setattr(self.hf.config, k, v)
                self.hf.save_pretrained(str(out_dir), safe_serialization=True)
                return Path(out_dir)

        return _Wrapped(hf_model)


def load_policy(path: str | os.PathLike, dropout: float | None = None):
    """A causal LM from an HF folder: wandao's module when the family is covered, else :class:`HFCausalLM`."""
    from pretrain.model import load_pretrained

    path = Path(os.path.expandvars(os.path.expanduser(str(path))))
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path}: not an HF model folder (no config.json); give a wandao pretrain "
                                "checkpoint (step-XXXXXXXX/) or any HF causal-LM folder")
    try:
        return load_pretrained(path, **({"dropout": dropout} if dropout is not None else {}))
    except ValueError as err:
        from transformers import AutoModelForCausalLM

        logger.info("%s; loading it as a plain transformers model", err)
        return HFCausalLM(AutoModelForCausalLM.from_pretrained(str(path)))


def context_of(model) -> int:
    cfg = getattr(model, "cfg", None)
    return int(cfg.block_size) if cfg is not None else int(model.block_size)


def special_ids(tokenizer) -> dict[str, int]:
    """EOS/BOS/pad ids for the saved HF config, so ``generate`` stops at EOS."""
    out = {}
    for key in ("eos_token_id", "bos_token_id", "pad_token_id"):
        v = getattr(tokenizer, key, None)
        if v is not None:
            out[key] = int(v)
    return out


def save_hf_folder(model, tokenizer, out: str | os.PathLike) -> Path:
    """Write ``out`` (model + tokenizer) atomically: a temporary sibling renamed into place."""
    from pretrain.checkpoint import atomic_folder

    out = Path(out)
    with atomic_folder(out) as tmp:
        model.save_pretrained(tmp, **special_ids(tokenizer))
        tokenizer.save_pretrained(str(tmp))
    return out


# ------------------------------------------------------------------------------------------- setup


def _dist_info() -> tuple[int, int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def build_rows(cfg: SFTConfig, tokenizer, max_tokens: int) -> tuple[list, list, dict]:
    """Training rows (packed or single) and validation rows as ``(ids, mask)`` pairs, and counts."""
    import random

    dc = cfg.data
    retriever = None
    if dc.index:
        from rag.retriever import Retriever

        retriever = Retriever(os.path.expandvars(dc.index), retriever=dc.retriever)
    read = dict(template=dc.template, retriever=retriever, k=dc.k, tokenizer=tokenizer,
                passage_tokens=dc.passage_tokens, total_tokens=dc.total_tokens)
    examples = read_examples(dc.train, limit=dc.limit, **read)
    if dc.val:
        train_ex, val_ex = examples, read_examples(dc.val, **read)
    else:
        train_ex, val_ex = split_by_id(examples, dc.val_fraction)
        if not val_ex and dc.val_fraction > 0:
            val_ex = train_ex[-1:]
            logger.warning("the val_fraction split is empty; validating on one training row")
    if not train_ex:
        raise ConfigError(f"no training rows left after holding out val_fraction={dc.val_fraction}", "data.val_fraction")
    encode = make_encoder(tokenizer, dc.unknown_chars)
    eos = tokenizer.eos_token_id
    counts: dict = {"cut_examples": 0, "empty_examples": 0}
    train = encode_examples(train_ex, encode, eos, max_tokens, dc.min_prompt_tokens, dc.train, counts)
    val = encode_examples(val_ex, encode, eos, max_tokens, dc.min_prompt_tokens, dc.val or dc.train)
    if not train:
        raise ConfigError("every training row is empty after encoding (no response tokens)", "data.train")
    stats = {"train_examples": len(train), "val_examples": len(val),
             "response_tokens": sum(sum(m[1:]) for _, m in train), **counts}
    if dc.prompt_loss:
        # The evidence rows' prompts hold the copying signal a small model lacks (a cloze question restates
        # its evidence sentence): learning every token gives ~30x the supervised tokens of the response alone.
        train = [(ids, [1] * len(ids)) for ids, _ in train]
    stats["loss_tokens"] = sum(sum(m[1:]) for _, m in train)
    if dc.packing:
        order = list(range(len(train)))
        random.Random(cfg.train.seed).shuffle(order)  # packing order is fixed per seed: resume sees the same rows
        train = pack_examples([train[i] for i in order], max_tokens, _pad_id(tokenizer))
    stats["train_rows"] = len(train)
    return train, val, stats


def _pad_id(tokenizer) -> int:
    for v in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if v is not None:
            return int(v)
    return 0


def _autocast(device: str, dtype: str):
    import torch

    if device == "cuda" and dtype == "bfloat16":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


def response_loss(forward, rows: Sequence[tuple[list[int], list[int]]], batch_size: int, pad_id: int,
                  device: str) -> float:
    """Mean cross-entropy per response token over ``rows`` (token-weighted across batches)."""
    import torch

    total = torch.zeros((), dtype=torch.float64)
    count = 0
    for start in range(0, len(rows), batch_size):
        x, y, m = collate(rows[start:start + batch_size], pad_id, device)
        n = int(m.sum())
        if n == 0:
            continue
        total += forward(x, y, m).double().cpu() * n  # the forward returns the batch's mean over masked tokens
        count += n
    return float(total / max(count, 1))


# -------------------------------------------------------------------------------------------- main


def run(cfg: SFTConfig) -> dict[str, Any]:
    """Fine-tune as ``cfg`` says; returns the summary (also printed as the last line by :func:`main`)."""
    import torch

    from pretrain import checkpoint as ckpt
    from pretrain import metrics as metrics_lib
    from pretrain.optim import LRSchedule, build_optimizer, clip_grad_norm, set_lr
    from pretrain.tokenizer import load_tokenizer

    tc = cfg.train
    if not cfg.model.init_from:
        raise ConfigError("is required: the HF causal-LM folder to start from", "model.init_from")
    if not cfg.data.train:
        raise ConfigError("is required: the training rows", "data.train")
    use_ds = tc.backend == "deepspeed"
    from pretrain.train import setup_runtime

    device, dtype, (rank, local_rank, world) = setup_runtime(tc)
    master = rank == 0
    out_dir = Path(tc.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    resume_from = ckpt.resolve_resume(tc.resume, out_dir)
    if master:
        cfg.save(out_dir)

    # -- tokenizer, model, data
    init_from = Path(os.path.expandvars(os.path.expanduser(cfg.model.init_from)))
    tokenizer = load_tokenizer(os.path.expandvars(cfg.model.tokenizer) if cfg.model.tokenizer else init_from)
    if tokenizer.eos_token_id is None:
        raise ConfigError(f"the tokenizer of {init_from} has no EOS token: responses need one to end",
                          "model.tokenizer")
    torch.manual_seed(tc.seed)
    model = load_policy(resume_from if resume_from is not None else init_from, cfg.model.dropout)
    T = cfg.data.max_length or context_of(model)
    if T > context_of(model):
        raise ConfigError(f"got {T}; the model's context is {context_of(model)} tokens", "data.max_length")
    max_tokens = T + 1  # x and y are the row shifted by one
    train_rows, val_rows, data_stats = build_rows(cfg, tokenizer, max_tokens)
    pad_id = _pad_id(tokenizer)
    B, accum = tc.micro_batch_size, tc.grad_accum_steps
    sampler = RowSampler(len(train_rows), B, tc.seed + 1000 * rank)  # each rank draws its own rows
    eval_rows = val_rows[: tc.eval_examples] if tc.eval_examples else val_rows
    train_eval_rows = [train_rows[i] for i in RowSampler(len(train_rows), min(len(train_rows), len(eval_rows) or B),
                                                         tc.seed + 7).next_indices()]
    if master:
        logger.info("sft data: %s (max %d tokens per row%s)", data_stats, max_tokens, ", packed" if cfg.data.packing else "")

    # -- optimizer, backend
    model.to(device)
    optimizer = build_optimizer(model, cfg.optim, device)
    schedule = LRSchedule(cfg.optim.lr, cfg.schedule, tc.max_iters)
    engine = None
    if use_ds:
        from pretrain.train import _deepspeed_engine

        engine = _deepspeed_engine(model, optimizer, cfg, device, dtype)  # reads train/optim/deepspeed sections
        optimizer = engine.optimizer
    ctx = _autocast(device, dtype) if not use_ds else nullcontext()
    start_step = 0
    if resume_from is not None:
        state = ckpt.load_trainer_state(resume_from)
        start_step = int(state["step"])
        if use_ds:
            engine.load_checkpoint(str(resume_from / "deepspeed"), tag="state", load_lr_scheduler_states=False)
        else:
            optimizer.load_state_dict(ckpt.load_optimizer_state(resume_from))
        sampler.load_state_dict(state["sampler"])
        schedule.load_state_dict(state["schedule"])
        ckpt.set_rng_state(state["rng"])
        logger.info("resumed from %s at step %d", resume_from, start_step)
    metrics = metrics_lib.MetricsLogger(out_dir, False, start_step if resume_from else None, enabled=master)

    def forward_loss(x, y, m):
        with torch.no_grad(), ctx:
            return (engine if use_ds else model)(x, y, loss_mask=m)[1].float()

    def evaluate(step: int) -> dict:
        model.eval()
        rec = {"val_loss": response_loss(forward_loss, eval_rows, B, pad_id, device) if eval_rows else None,
               "train_loss": response_loss(forward_loss, train_eval_rows, B, pad_id, device)}
        model.train()
        if rec["val_loss"] is None:
            rec["val_loss"] = rec["train_loss"]
        rec["val_ppl"] = math.exp(rec["val_loss"]) if rec["val_loss"] < 50 else None
        if master:
            metrics.log(step, "eval", **rec)
            logger.info("step %d: response loss train %.4f, val %.4f", step, rec["train_loss"], rec["val_loss"])
        return rec

    def save(step: int, last_eval: dict) -> None:
        trainer_state = {"step": step, "sampler": sampler.state_dict(), "schedule": schedule.state_dict(),
                         "rng": ckpt.rng_state()}
        readable = {"val_loss": last_eval.get("val_loss")}
        if use_ds:
            from pretrain.train import _deepspeed_save

            _deepspeed_save(engine, model, out_dir, step, trainer_state, readable, tokenizer, cfg, rank, world)
        elif master:
            ckpt.save_checkpoint(out_dir, step, lambda d: model.save_pretrained(d, **special_ids(tokenizer)),
                                 optimizer.state_dict(), trainer_state, readable, tokenizer=tokenizer, config=cfg,
                                 keep=tc.keep_checkpoints)

    # -- the loop, in nanoGPT's order
    model.train()
    first_eval: dict = {}
    last_eval: dict = {}
    iter_times: list[float] = []
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
            first_eval = first_eval or last_eval
            if master and tc.plot and step > start_step:
                metrics_lib.plot_loss_curve(metrics.path, out_dir / "loss.png", title=f"SFT on {out_dir.name}")
        if step > start_step and ((tc.checkpoint_interval and step % tc.checkpoint_interval == 0)
                                  or (last and tc.save_final)):
            save(step, last_eval)
        if last:
            break
        t_train = time.perf_counter()

        for micro in range(accum):
            x, y, m = collate([train_rows[i] for i in sampler.next_indices()], pad_id, device)
            tokens_since_log += x.numel()
            if use_ds:
                loss = engine(x, y, loss_mask=m)[1]
                engine.backward(loss)  # scales by 1/accum itself
                engine.step()  # only steps (clip, update, zero grad) at the accumulation boundary
            else:
                with ctx:
                    _, loss = model(x, y, loss_mask=m)
                    loss = loss / accum
                loss.backward()
            loss_sum = loss.detach() if micro == 0 else loss_sum + loss.detach()  # a device tensor: no sync
        if use_ds:
            grad_norm = engine.get_global_grad_norm()
        else:
            grad_norm = clip_grad_norm(model.parameters(), cfg.optim.grad_clip)  # a tensor: no sync
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        if step % tc.log_interval == 0 or step == tc.max_iters - 1:
            # Sync point: .item() waits for the device; only here, every log_interval steps.
            lossf = loss_sum.item() / (accum if use_ds else 1)
            gnorm = float(grad_norm) if grad_norm is not None else float("nan")
            now = time.perf_counter()
            tps = tokens_since_log * world / max(now - t_log, 1e-9)
            mem = metrics_lib.peak_memory_mb(device)
            if master:
                metrics.log(step, "train", loss=lossf, lr=lr, grad_norm=gnorm, tokens_per_s=tps, peak_mem_mb=mem)
                logger.info("step %d: loss %.4f, lr %.2e, grad norm %.3f, %.0f tok/s, %.1f ms/iter, peak mem %.0f MiB",
                            step, lossf, lr, gnorm, tps, 1000 * (now - t_train), mem)
            t_log, tokens_since_log = time.perf_counter(), 0
        iter_times.append(time.perf_counter() - t0 - (t_train - t_eval))

    # -- save the HF folder and report
    model_dir = out_dir / "model"
    if master:
        save_hf_folder(model, tokenizer, model_dir)
    summary = {
        "final_val_loss": last_eval.get("val_loss"),
        "final_train_loss": last_eval.get("train_loss"),
        "initial_val_loss": first_eval.get("val_loss") if start_step == 0 else None,
        "steps": step,
        "steps_this_run": max(0, step - start_step),
        "ms_per_iter": 1000 * statistics.fmean(iter_times) if iter_times else None,
        **data_stats,
        "max_tokens": max_tokens,
        "packing": cfg.data.packing,
        "backend": tc.backend + (f"-zero{cfg.deepspeed.zero_stage}" if use_ds else ""),
        "device": device,
        "out_dir": str(out_dir),
        "model_dir": str(model_dir),
    }
    if master:
        metrics.close()
        if tc.plot and metrics.path.exists():
            summary["loss_curve"] = str(metrics_lib.plot_loss_curve(metrics.path, out_dir / "loss.png",
                                                                    title=f"SFT on {out_dir.name}"))
        metrics_lib.write_summary(out_dir, summary, title="wandao sft run")
        from indexer.io import atomic_write_text

        atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


# ---------------------------------------------------------------------------------------------- demo


# ----------------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    """``wandao sft --config FILE.yaml [--section.key value ...]``; the last stdout line is JSON."""
    argv = sys.argv[1:] if argv is None else argv
    argv = [a for a in argv if not a.startswith("--local_rank")]  # the deepspeed launcher's flag
    cfg = SFTConfig.parse(argv, prog="wandao sft",
                          description="Supervised fine-tuning with evidence; the loss covers response tokens only.",
                          epilog=EPILOG)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=os.environ.get("WANDAO_LOG_LEVEL", "INFO"),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from indexer.data import DataError

    try:
        summary = run(cfg)
    except (ConfigError, DataError, FileNotFoundError) as err:
        print(f"wandao sft: {err}", file=sys.stderr)
        return 2
    if _dist_info()[0] == 0:
        print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
