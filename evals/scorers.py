"""Log-probability scorers for multiple-choice and perplexity evals.

- :class:`HFCausalLM`: any HF causal LM folder (or hub id when online); ``transformers`` and
  ``torch`` are imported when it is built.
- :class:`OpenAICompletions`: any OpenAI-compatible ``/completions`` endpoint that supports
  ``echo`` with ``logprobs`` (vLLM, the legacy OpenAI API): the prompt is sent with
  ``max_tokens=0, echo=true`` and the continuation's token log-probs are summed, found by
  ``text_offset``.

Both implement ``loglikelihood(requests) -> list[float]`` for ``(context, continuation)`` pairs,
following lm-evaluation-harness: trailing whitespace of the context moves to the continuation,
context and continuation are tokenised separately and concatenated, an empty context is
replaced by the BOS/EOS token, and over-long inputs are truncated from the left.
"""

from __future__ import annotations

import logging
import math
from typing import Sequence

logger = logging.getLogger(__name__)


def _split_ws(context: str, continuation: str) -> tuple[str, str]:
    n = len(context) - len(context.rstrip())
    if n > 0:
        return context[:-n], context[-n:] + continuation
    return context, continuation


class HFCausalLM:
    """A local HF causal LM for log-likelihoods and sliding-window perplexity.

    Args:
        model: model folder (or hub id).
        device: default CUDA when available, else CPU.
        dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"``.
        batch_size: sequences per forward pass.
        max_length: context window in tokens (default: the model's).

    Example:
        >>> lm = HFCausalLM("runs/tiny-gpt2")  # doctest: +SKIP
        >>> lm.loglikelihood([("The answer is:", " (B)")])  # doctest: +SKIP
        [-3.21]
    """

    def __init__(self, model: str, device: str | None = None, dtype: str = "float32", batch_size: int = 8,
                 max_length: int | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_path = model
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.tokenizer.model_max_length = 10**12  # we window ourselves; silence the length warning
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, dtype))
        self.model.to(self.device).eval()
        cfg = self.model.config
        self.max_length = max_length or getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", 2048)
        self.batch_size = batch_size
        tok = self.tokenizer
        self.prefix_id = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id

    @property
    def name(self) -> str:
        return f"hf:{self.model_path}"

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _forward_logprobs(self, seqs: list[list[int]]):
        """Log-softmax over the vocabulary for right-padded sequences: (B, T, V)."""
        import torch

        width = max(len(s) for s in seqs)
        ids = torch.zeros((len(seqs), width), dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, :len(s)] = torch.tensor(s)
            mask[i, :len(s)] = 1
        with torch.inference_mode():
            logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
        return torch.log_softmax(logits.float(), dim=-1)  # (B, T, V)

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[float]:
        """Sum of log p(continuation tokens | context) for each ``(context, continuation)``."""
        prepared = []
        for context, continuation in requests:
            context, continuation = _split_ws(context, continuation)
            ctx = self.encode(context) if context else [self.prefix_id]
            cont = self.encode(continuation)
            if not cont:
                raise ValueError(f"empty continuation for context {context[-40:]!r}")
            whole = (ctx + cont)[-(self.max_length + 1):]
            prepared.append((whole[:-1], cont))
        out = [0.0] * len(prepared)
        order = sorted(range(len(prepared)), key=lambda i: -len(prepared[i][0]))  # similar lengths together
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            logp = self._forward_logprobs([prepared[i][0] for i in idx])
            for row, i in enumerate(idx):
                inp, cont = prepared[i]
                n, m = len(inp), len(cont)
                # position t predicts token t+1: the continuation's m tokens are predicted at n-m .. n-1
                positions = range(n - m, n)
                out[i] = float(sum(logp[row, p, tok].item() for p, tok in zip(positions, cont)))
        return out

    def sliding_window_nll(self, ids: list[int], stride: int) -> tuple[float, int, list[dict]]:
        """Total NLL (nats) of ``ids[1:]``, scored ``stride`` tokens at a time.

        Each window predicts the next ``stride`` tokens from up to ``max_length`` tokens of
        input, so every token after the first is scored exactly once with at least
        ``max_length - stride`` tokens of context (the HF perplexity guide's sliding window;
        summed exactly rather than averaged per window). ``stride = max_length`` is the
        non-overlapping evaluation. Returns ``(total_nll, n_scored, per_window)``.
        """
        import torch
        from tqdm.auto import tqdm

        if stride < 1 or stride > self.max_length:
            raise ValueError(f"--stride must be in [1, max_length={self.max_length}], got {stride}")
        windows = []  # (s, t0, t1): input ids[s:t1-1] predicts targets ids[t0:t1]
        t0 = 1
        while t0 < len(ids):
            t1 = min(t0 + stride, len(ids))
            windows.append((max(0, t1 - 1 - self.max_length), t0, t1))
            t0 = t1
        total, count, rows = 0.0, 0, []
        for start in tqdm(range(0, len(windows), self.batch_size), desc="perplexity", unit="batch"):
            chunk = windows[start:start + self.batch_size]
            logp = self._forward_logprobs([ids[s:t1 - 1] for s, _, t1 in chunk])  # (B, T, V)
            for row, (s, t0, t1) in enumerate(chunk):
                targets = torch.tensor(ids[t0:t1], device=logp.device)
                preds = logp[row, t0 - 1 - s:t1 - 1 - s]  # (t1 - t0, V): position j predicts token s + j + 1
                nll = float(-preds.gather(1, targets[:, None]).sum().item())
                total += nll
                count += t1 - t0
                rows.append({"begin": s, "first_target": t0, "end": t1, "scored": t1 - t0, "nll": nll,
                             "ppl": math.exp(nll / (t1 - t0))})
        return total, count, rows


class OpenAICompletions:
    """Log-likelihoods from an OpenAI-compatible ``/completions`` endpoint (echo + logprobs).

    Args:
        base_url: e.g. ``http://localhost:8000/v1``.
        model: served model name.
        api_key: bearer token; default ``$OPENAI_API_KEY``.
    """

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout: float = 120.0):
        import os

        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.timeout = timeout

    @property
    def name(self) -> str:
        return f"openai:{self.model}@{self.base_url}"

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[float]:
        from evals.entailment import post_json

        out = []
        for context, continuation in requests:
            context, continuation = _split_ws(context, continuation)
            reply = post_json(f"{self.base_url}/completions", {
                "model": self.model, "prompt": context + continuation, "max_tokens": 0, "echo": True,
                "logprobs": 0, "temperature": 0}, api_key=self.api_key, timeout=self.timeout)
            try:
                lp = reply["choices"][0]["logprobs"]
                offsets, token_lps = lp["text_offset"], lp["token_logprobs"]
            except (KeyError, IndexError, TypeError):
                raise RuntimeError(f"{self.base_url}/completions: reply has no echoed logprobs "
                                   f"(does the server support echo=true?): {str(reply)[:300]}") from None
            total, n = 0.0, 0
            for off, value in zip(offsets, token_lps):
                if off >= len(context):
                    if value is None:
                        raise RuntimeError(f"{self.base_url}: no log-prob for a continuation token")
                    total += value
                    n += 1
            if n == 0:
                raise RuntimeError(f"{self.base_url}: no continuation tokens found after offset {len(context)}")
            out.append(total)
        return out
