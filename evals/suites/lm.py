"""``lm``: perplexity and bits-per-byte of an HF causal LM or an OpenAI-compatible endpoint on a text set,
with a sliding window.

Text sets: ``wikitext-2`` (``raw/wiki.{split}.raw``, split ``test``/``valid``), ``tinyshakespeare``
(split ``val`` = the last 10% of characters as nanoGPT splits it, ``train`` = the first 90%,
``all``), or any UTF-8 text file.

The text is tokenised whole (with a BOS token in front when the tokenizer has one, so every
text token is predicted), then scored ``--stride`` tokens at a time with up to ``--max-length``
tokens of context (:meth:`evals.scorers.HFCausalLM.sliding_window_nll`). Metrics:

- ``perplexity`` = exp(total NLL / scored tokens) — token-level, so only comparable across models
  with the same tokenizer;
- ``bits_per_byte`` = total NLL / ln 2 / UTF-8 bytes — tokenizer-independent (Gao et al. 2020, The Pile);
- ``word_perplexity`` = exp(total NLL / whitespace-separated words) (lm-evaluation-harness's wikitext).

``--model http://HOST:PORT/v1`` scores through an OpenAI-compatible legacy ``/completions``
endpoint (``echo`` + ``logprobs`` with ``max_tokens 0``: vLLM, ``wandao serve``) with the same
windows over the endpoint's own tokens (:meth:`align.feedback.OpenAICompletions.text_nll`). A
request carries ``max_length + 1`` tokens (its first token is never scored), so ``--max-length``
is at most the endpoint's context minus one; it defaults to that when ``GET /models`` reports a
``max_model_len`` (vLLM), and must be given otherwise (``wandao serve``: the model's context,
or ``--max-prompt-tokens`` when smaller, minus one). A prompt is text, so a BOS token can only
be sent as the text the endpoint's tokenizer reads as it (``--bos-text '<|endoftext|>'``);
without it the first token is context only (``first_token_scored`` false). With the same
``--max-length``, ``--stride`` and BOS, the numbers equal the local model's up to float noise
(tests/evals/test_lm.py: 1e-4 relative on the total NLL) when the endpoint tokenises each window's
text as it does the whole text; windows where it does not are counted (``retokenized_windows``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

HEADLINE = ("bits_per_byte",)
WORST = ("ppl", False)
WORST_COLUMNS = ("id", "begin", "end", "scored", "ppl")
EXAMPLE = ("wandao eval lm --model runs/pretrain/final --dataset tinyshakespeare --stride 256 --json\n"
           "  wandao eval lm --model http://127.0.0.1:8000/v1 --max-length 255 --dataset tinyshakespeare --json")


@dataclass
class Config:
    model: str = field(default="", metadata={
        "help": "HF causal LM folder (or hub id), or an OpenAI-compatible base URL (http://HOST:PORT/v1)"})
    api_model: str | None = field(default=None, metadata={
        "help": "endpoint: the served model's name (default: its only model, from GET /models)"})
    dataset: str = field(default="wikitext-2", metadata={"help": "wikitext-2, tinyshakespeare or a text file"})
    split: str | None = field(default=None, metadata={"help": "wikitext-2: test|valid; tinyshakespeare: val|train|all"})
    max_length: int | None = field(default=None, metadata={
        "help": "context window (default: the model's; endpoint: its max_model_len minus one, when reported)"})
    stride: int = field(default=512, metadata={"help": "tokens scored per window"})
    max_chars: int | None = field(default=None, metadata={"help": "score only the first N characters"})
    add_bos: bool = field(default=True, metadata={"help": "prepend the tokenizer's BOS token when it has one"})
    bos_text: str | None = field(default=None, metadata={
        "help": "endpoint: the text its tokenizer reads as the BOS token, sent in front when --add-bos"})
    batch_size: int = field(default=4, metadata={"help": "windows per forward pass"})
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, ... (default: cuda when available)"})
    dtype: str = field(default="float32", metadata={"help": "model dtype", "choices": ("float32", "bfloat16", "float16")})

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("lm needs --model PATH (an HF causal LM folder) or --model http://HOST:PORT/v1")
        if self.stride < 1:
            raise ValueError(f"--stride must be ≥ 1, got {self.stride}")


def load_text(dataset: str, split: str | None = None) -> tuple[str, str]:
    """(text, description) of a registered text set or a file."""
    from indexer.data import DataError
    from indexer.datasets import resolve

    path = resolve(dataset)
    if path.is_dir():
        if (path / "raw").is_dir():  # wikitext-2
            split = split or "test"
            path = path / "raw" / f"wiki.{split}.raw"
            if not path.exists():
                raise DataError(path, f"split {split!r} not found (wikitext-2 has test and valid)")
        elif (path / "input.txt").exists():  # tinyshakespeare
            split = split or "val"
            text = (path / "input.txt").read_text(encoding="utf-8")
            cut = int(0.9 * len(text))
            parts = {"val": text[cut:], "train": text[:cut], "all": text}
            if split not in parts:
                raise DataError(path, f"split {split!r} not found (tinyshakespeare: val, train, all)")
            return parts[split], f"{path / 'input.txt'}[{split}]"
        else:
            raise DataError(path, "not a known text set folder; pass a text file")
    try:
        return path.read_text(encoding="utf-8"), str(path)
    except UnicodeDecodeError as err:
        raise DataError(path, f"not valid UTF-8 at byte {err.start}") from None


def suite(cfg: Config) -> tuple[dict, list[dict]]:
    from align.feedback import is_endpoint

    text, source = load_text(cfg.dataset, cfg.split)
    if cfg.max_chars:
        text = text[:cfg.max_chars]
    if is_endpoint(cfg.model):
        total, count, rows, extra = _endpoint_nll(cfg, text, source)
    else:
        total, count, rows, extra = _local_nll(cfg, text, source)
    n_bytes = len(text.encode("utf-8"))
    n_words = len(text.split())
    metrics = {"perplexity": math.exp(total / count), "bits_per_byte": total / math.log(2) / n_bytes,
               "word_perplexity": math.exp(total / max(n_words, 1)), "nll_per_token": total / count,
               "tokens": count, "bytes": n_bytes, "words": n_words, "dataset": source, "model": cfg.model, **extra}
    for i, r in enumerate(rows):
        r["id"] = f"window-{i}"
    return metrics, rows


def _local_nll(cfg: Config, text: str, source: str) -> tuple[float, int, list[dict], dict]:
    from evals.scorers import HFCausalLM

    lm = HFCausalLM(cfg.model, device=cfg.device, dtype=cfg.dtype, batch_size=cfg.batch_size,
                    max_length=cfg.max_length)
    ids = lm.encode(text)
    bos = lm.tokenizer.bos_token_id
    if cfg.add_bos and bos is not None:
        ids = [bos] + ids
    if len(ids) < 2:
        raise ValueError(f"{source}: text too short to score ({len(ids)} tokens)")
    stride = min(cfg.stride, lm.max_length)
    total, count, rows = lm.sliding_window_nll(ids, stride)
    return total, count, rows, {"max_length": lm.max_length, "stride": stride, "scorer": lm.name,
                                "first_token_scored": bool(cfg.add_bos and bos is not None)}


def _endpoint_nll(cfg: Config, text: str, source: str) -> tuple[float, int, list[dict], dict]:
    from evals.scorers import OpenAICompletions

    lm = OpenAICompletions(cfg.model, cfg.api_model)
    max_length = cfg.max_length
    if max_length is None:
        context = lm.max_model_len()
        if context is None:
            raise ValueError(f"{cfg.model} does not report its context (max_model_len in GET /models): give "
                             "--max-length, at most the context minus one (wandao serve: its model's context, or "
                             "--max-prompt-tokens when smaller, minus one)")
        max_length = context - 1
    if max_length < 1:
        raise ValueError(f"--max-length must be >= 1, got {max_length}")
    stride = min(cfg.stride, max_length)
    bos = cfg.bos_text if cfg.add_bos and cfg.bos_text else ""
    total, count, rows, retokenized = lm.text_nll(bos + text, stride, max_length)
    if count < 1:
        raise ValueError(f"{source}: text too short to score")
    return total, count, rows, {"max_length": max_length, "stride": stride, "scorer": lm.name,
                                "first_token_scored": bool(bos), "retokenized_windows": retokenized}
