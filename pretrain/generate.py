"""Shared text generation over any HF causal LM: batched, with a KV cache, streaming token by token.

One decoding loop serves three callers: the server streams one request at a time
(:func:`stream`), alignment code samples batches (:func:`generate`), and both get the same
sampling, stopping and detokenisation rules.

- The model is any ``transformers`` causal LM (``AutoModelForCausalLM.from_pretrained(dir)``
  loads wandao's saved checkpoints, see :func:`load_model`). The loop is written out: one full
  forward over the (left-padded) prompts, then one forward per new token with
  ``past_key_values``, so each step costs one token's compute.
- Sampling follows the usual order (as in transformers' ``LogitsProcessor`` list): temperature,
  then top-k, then top-p (nucleus, Holtzman et al. 2020, "The Curious Case of Neural Text
  Degeneration"), then a draw from a ``torch.Generator`` seeded per call. ``temperature=0`` is
  greedy decoding.
- A row stops at an EOS id, at a stop string (the text before it is kept, the stop string is
  not), at ``max_new_tokens``, or when ``should_stop()`` says so (a disconnected client).
- Text is decoded incrementally (the prefix/read offsets of vLLM's detokenizer): a piece is
  emitted once it no longer ends in an incomplete UTF-8 sequence, and text that could still
  turn into a stop string is held back until it cannot.

Example:
    >>> model, tok = load_model("runs/tiny-hf")                         # doctest: +SKIP
    >>> cfg = GenerationConfig(max_new_tokens=20, temperature=0.0, stop=["\\nUser:"])
    >>> for ev in stream(model, tok, "User: hi\\nAssistant:", cfg):       # doctest: +SKIP
    ...     print(ev.text, end="")
    >>> [g.text for g in generate(model, tok, ["a", "b"], cfg)]         # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

logger = logging.getLogger(__name__)


@dataclass
class GenerationConfig:
    """Sampling and stopping settings.

    Attributes:
        max_new_tokens: most tokens generated per prompt.
        temperature: softmax temperature; 0 means greedy decoding.
        top_k: keep the k most likely tokens (0: off).
        top_p: keep the smallest set of tokens whose probability reaches p (1.0: off).
        seed: seed of the sampling generator (same seed, same prompts: same output).
        stop: stop strings; generation ends before the first one and it is not returned.
        eos_token_id: end-of-sequence id(s); default: the model's generation config, else the tokenizer's.
        truncate: ``left`` drops the oldest prompt tokens when prompt + max_new_tokens exceeds the
            model's context; ``error`` raises ``ValueError`` instead.
    """

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = 0
    stop: list[str] = field(default_factory=list)
    eos_token_id: int | list[int] | None = None
    truncate: str = "left"

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.truncate not in ("left", "error"):
            raise ValueError(f"truncate must be 'left' or 'error', got {self.truncate!r}")
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = [s for s in self.stop if s]


@dataclass
class TokenEvent:
    """One decoding step of one row: the token drawn and the text now safe to show.

    ``text`` may be empty (an incomplete character, or text that could become a stop string).
    The last event of a row has ``finish_reason`` set (``stop``, ``length`` or ``cancelled``);
    its ``token_id`` is ``None`` when it only flushes held text.
    """

    token_id: int | None
    text: str
    finish_reason: str | None = None


@dataclass
class Generation:
    """A finished row: the text (stop string excluded), the generated ids and why it ended."""

    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int


def load_model(path: str | os.PathLike, device: str = "cpu", dtype: Any = None):
    """``(model, tokenizer)`` from an HF folder (wandao checkpoints included), in eval mode: a causal LM,
    or a seq2seq model (T5) when the folder's config is an encoder-decoder."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    kwargs = {"dtype": dtype} if dtype is not None else {}
    # An encoder-decoder (wandao's t5 checkpoints) reads the prompt with its encoder; see decode_steps.
    auto = AutoModelForSeq2SeqLM if AutoConfig.from_pretrained(str(path)).is_encoder_decoder else AutoModelForCausalLM
    model = auto.from_pretrained(str(path), **kwargs).to(device)
    model.eval()
    return model, tokenizer


def context_length(model) -> int | None:
    """The model's maximum number of positions (None when unbounded or unknown)."""
    cfg = model.config
    for name in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def eos_ids(model, tokenizer, cfg: GenerationConfig) -> set[int]:
    """EOS ids: the config's, else the model's generation config, else the tokenizer's."""
    raw = cfg.eos_token_id
    if raw is None:
        gen = getattr(model, "generation_config", None)
        raw = getattr(gen, "eos_token_id", None) if gen is not None else None
    if raw is None:
        raw = getattr(tokenizer, "eos_token_id", None)
    if raw is None:
        return set()
    return {int(raw)} if isinstance(raw, int) else {int(x) for x in raw}


class Detokenizer:
    """Incremental decoding: text pieces that never end inside a multi-byte character.

    Keeps a prefix offset and a read offset into the ids (as vLLM's detokenizer does), so each
    step decodes a few tokens, not the whole sequence.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self._prefix = 0
        self._read = 0

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def add(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        prefix_text = self._decode(self.ids[self._prefix:self._read])
        new_text = self._decode(self.ids[self._prefix:])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self.ids)
            return new_text[len(prefix_text):]
        return ""

    def flush(self) -> str:
        """Whatever is still undecoded (an incomplete character decodes as U+FFFD)."""
        prefix_text = self._decode(self.ids[self._prefix:self._read])
        rest = self._decode(self.ids[self._prefix:])[len(prefix_text):]
        self._prefix = self._read = len(self.ids)
        return rest


class StopMatcher:
    """Holds back text that could still become a stop string; cuts at the first stop string."""

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """Text now safe to emit; sets ``stopped`` when a stop string completed."""
        if not self.stops:
            return text
        self.pending += text
        cut = min((i for i in (self.pending.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            out, self.pending, self.stopped = self.pending[:cut], "", True
            return out
        hold = 0
        for s in self.stops:  # the longest suffix of pending that is a proper prefix of a stop string
            for n in range(min(len(s) - 1, len(self.pending)), hold, -1):
                if self.pending.endswith(s[:n]):
                    hold = n
                    break
        out = self.pending[:len(self.pending) - hold]
        self.pending = self.pending[len(out):]
        return out

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


def _sample(logits, cfg: GenerationConfig, generator):
    """Next ids (B,) from last-position logits (B, V): temperature → top-k → top-p → draw."""
    import torch

    logits = logits.float()
    if cfg.temperature == 0.0:
        return logits.argmax(dim=-1)
    logits = logits / cfg.temperature
    if cfg.top_k and cfg.top_k < logits.shape[-1]:
        kth = torch.topk(logits, cfg.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cum - sorted_logits.softmax(dim=-1) >= cfg.top_p  # keep tokens until the mass reaches top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def encode_prompts(model, tokenizer, prompts: Sequence[str], cfg: GenerationConfig) -> list[list[int]]:
    """Token ids per prompt, cut on the left (or refused) to leave room for ``max_new_tokens``."""
    max_pos = context_length(model)
    out = []
    for i, p in enumerate(prompts):
        ids = tokenizer(p, add_special_tokens=False)["input_ids"]
        if not ids:
            bos = getattr(tokenizer, "bos_token_id", None)
            if bos is None:
                bos = next(iter(eos_ids(model, tokenizer, cfg)), None)
            if bos is None:
                raise ValueError(f"prompt {i} is empty and the tokenizer has no BOS/EOS token to start from")
            ids = [bos]
        if max_pos is not None:
            # An encoder-decoder's new tokens go to the decoder: the prompt may fill the encoder.
            room = max_pos - (0 if _is_encoder_decoder(model) else cfg.max_new_tokens)
            if room < 1:
                raise ValueError(f"max_new_tokens={cfg.max_new_tokens} leaves no room for a prompt in the "
                                 f"model's context of {max_pos} tokens")
            if len(ids) > room:
                if cfg.truncate == "error":
                    raise ValueError(f"prompt {i} has {len(ids)} tokens; with max_new_tokens={cfg.max_new_tokens} "
                                     f"at most {room} fit the model's context of {max_pos}")
                logger.warning("prompt %d: %d tokens, keeping the last %d to fit the context", i, len(ids), room)
                ids = ids[-room:]
        out.append(ids)
    return out


def decode_steps(model, tokenizer, prompts: Sequence[str], cfg: GenerationConfig,
                 should_stop: Callable[[], bool] | None = None,
                 prompt_ids: Sequence[Sequence[int]] | None = None) -> Iterator[list[TokenEvent | None]]:
    """The decoding loop: per step, one event per row (``None`` for rows already finished).

    Rows are left-padded to one batch; positions count real tokens only, so a padded row sees the
    same positions as it would alone. Finished rows keep being fed (their output is ignored).
    """
    import torch

    ids_list = [list(x) for x in prompt_ids] if prompt_ids is not None else encode_prompts(model, tokenizer, prompts,
                                                                                        cfg)
    B = len(ids_list)
    if B == 0:
        return
    device = next(model.parameters()).device
    eos = eos_ids(model, tokenizer, cfg)
    pad = getattr(tokenizer, "pad_token_id", None)
    pad = pad if pad is not None else (next(iter(eos)) if eos else 0)
    if _is_encoder_decoder(model):
        yield from _decode_steps_seq2seq(model, tokenizer, ids_list, cfg, should_stop, eos, pad)
        return
    T = max(len(x) for x in ids_list)
    input_ids = torch.full((B, T), pad, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    for b, ids in enumerate(ids_list):  # left padding: every row's last prompt token sits at T-1
        input_ids[b, T - len(ids):] = torch.tensor(ids, dtype=torch.long)
        mask[b, T - len(ids):] = 1
    input_ids, mask = input_ids.to(device), mask.to(device)
    positions = (mask.cumsum(dim=-1) - 1).clamp(min=0)  # (B, T)
    generator, detoks, stops, done = _row_state(tokenizer, cfg, B, device)
    past = None
    cache_arg = _cache_argument(model)
    extra = {"logits_to_keep": 1} if _accepts(model, "logits_to_keep") else {}
    step_ids, step_pos = input_ids, positions
    with torch.inference_mode():
        for step in range(cfg.max_new_tokens):
            out = model(input_ids=step_ids, attention_mask=mask, position_ids=step_pos, use_cache=True,
                        **{cache_arg: past}, **extra)
            past = getattr(out, cache_arg, None)
            next_ids = _sample(out.logits[:, -1, :], cfg, generator)  # (B,)
            cancelled = should_stop() if should_stop is not None else False
            yield _step_events(next_ids.tolist(), step == cfg.max_new_tokens - 1, cancelled, done, eos, detoks, stops)
            if all(done):
                return
            step_ids = next_ids.unsqueeze(-1)  # (B, 1)
            mask = torch.cat([mask, mask.new_ones((B, 1))], dim=-1)
            step_pos = step_pos[:, -1:] + 1


def _row_state(tokenizer, cfg: GenerationConfig, batch_size: int, device) -> tuple:
    """The sampling generator (seeded per call) and each row's detokenizer, stop matcher and done flag."""
    import torch

    generator = torch.Generator(device=device)
    if cfg.seed is not None:
        generator.manual_seed(cfg.seed)
    return (generator, [Detokenizer(tokenizer) for _ in range(batch_size)],
            [StopMatcher(cfg.stop) for _ in range(batch_size)], [False] * batch_size)


def _step_events(nexts: list[int], last_step: bool, cancelled: bool, done: list[bool], eos: set[int],
                 detoks: list, stops: list) -> list[TokenEvent | None]:
    """One step's events from the sampled ids, marking rows ``done`` as they stop."""
    events: list[TokenEvent | None] = []
    for b, tid in enumerate(nexts):
        if done[b]:
            events.append(None)
            continue
        if tid in eos:
            done[b] = True
            events.append(TokenEvent(tid, stops[b].feed(detoks[b].flush()) + stops[b].flush(), "stop"))
            continue
        text = stops[b].feed(detoks[b].add(tid))
        if stops[b].stopped:
            done[b] = True
            events.append(TokenEvent(tid, text, "stop"))
        elif cancelled:
            done[b] = True
            events.append(TokenEvent(tid, text, "cancelled"))
        elif last_step:
            done[b] = True
            events.append(TokenEvent(tid, text + stops[b].feed(detoks[b].flush()) + stops[b].flush(), "length"))
        else:
            events.append(TokenEvent(tid, text))
    return events


def _is_encoder_decoder(model) -> bool:
    return bool(getattr(model.config, "is_encoder_decoder", False))


def _decode_steps_seq2seq(model, tokenizer, ids_list, cfg: GenerationConfig, should_stop, eos: set[int],
                          pad: int) -> Iterator[list[TokenEvent | None]]:
    """The loop for an encoder-decoder: the encoder reads the (right-padded) prompts once, the decoder
    starts from ``decoder_start_token_id`` and feeds one token per step with its self-attention cache."""
    import torch

    B, device = len(ids_list), next(model.parameters()).device
    S = max(len(x) for x in ids_list)
    enc_ids = torch.full((B, S), pad, dtype=torch.long)
    enc_mask = torch.zeros((B, S), dtype=torch.long)
    for b, ids in enumerate(ids_list):
        enc_ids[b, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        enc_mask[b, :len(ids)] = 1
    enc_ids, enc_mask = enc_ids.to(device), enc_mask.to(device)
    start = model.config.decoder_start_token_id
    if start is None:
        raise ValueError("the encoder-decoder's config has no decoder_start_token_id")
    generator, detoks, stops, done = _row_state(tokenizer, cfg, B, device)
    past = None
    cache_arg = _cache_argument(model)
    step_ids = torch.full((B, 1), start, dtype=torch.long, device=device)
    with torch.inference_mode():
        encoder_outputs = model.get_encoder()(input_ids=enc_ids, attention_mask=enc_mask)
        for step in range(cfg.max_new_tokens):
            out = model(encoder_outputs=encoder_outputs, attention_mask=enc_mask, decoder_input_ids=step_ids,
                        use_cache=True, **{cache_arg: past})
            past = getattr(out, cache_arg, None)
            next_ids = _sample(out.logits[:, -1, :], cfg, generator)
            cancelled = should_stop() if should_stop is not None else False
            yield _step_events(next_ids.tolist(), step == cfg.max_new_tokens - 1, cancelled, done, eos, detoks, stops)
            if all(done):
                return
            step_ids = next_ids.unsqueeze(-1)


def _accepts(model, name: str) -> bool:
    import inspect

    return name in inspect.signature(model.forward).parameters


def _cache_argument(model) -> str:
    """``cache`` in transformers >= 5.2x (``past_key_values`` is deprecated there), else ``past_key_values``."""
    return "cache" if _accepts(model, "cache") else "past_key_values"


def stream(model, tokenizer, prompt: str, cfg: GenerationConfig,
           should_stop: Callable[[], bool] | None = None) -> Iterator[TokenEvent]:
    """Generate for one prompt, yielding a :class:`TokenEvent` per token (the last has ``finish_reason``)."""
    for events in decode_steps(model, tokenizer, [prompt], cfg, should_stop=should_stop):
        if events[0] is not None:
            yield events[0]


def generate(model, tokenizer, prompts: Sequence[str], cfg: GenerationConfig,
             should_stop: Callable[[], bool] | None = None) -> list[Generation]:
    """Generate for a batch of prompts with one KV-cached loop.

    Args:
        model: an HF causal LM in eval mode.
        tokenizer: its tokenizer (``transformers``).
        prompts: prompt strings.
        cfg: sampling and stopping settings.

    Returns:
        One :class:`Generation` per prompt, in order.
    """
    prompt_ids = encode_prompts(model, tokenizer, prompts, cfg)
    texts = [[] for _ in prompts]
    ids: list[list[int]] = [[] for _ in prompts]
    reasons = ["length"] * len(prompts)
    for events in decode_steps(model, tokenizer, prompts, cfg, should_stop=should_stop, prompt_ids=prompt_ids):
        for b, ev in enumerate(events):
            if ev is None:
                continue
            if ev.token_id is not None and not (ev.finish_reason == "stop" and ev.token_id in
                                                eos_ids(model, tokenizer, cfg)):
                ids[b].append(ev.token_id)
            texts[b].append(ev.text)
            if ev.finish_reason:
                reasons[b] = ev.finish_reason
    return [Generation("".join(t), i, r, len(p)) for t, i, r, p in zip(texts, ids, reasons, prompt_ids)]
