"""Feedback models: log-likelihoods of options and text generation from a local HF LM or an endpoint.

Two backends with one interface, used by Constitutional AI's labeller (:mod:`align.rlaif`) and by
``wandao eval feedback-mc`` (:mod:`evals.suites.feedback_mc` imports them from here, since align
may not import evals):

- :class:`HFCausalLM`: any HF causal LM folder (or hub id when online); ``transformers`` and
  ``torch`` are imported when it is built.
- :class:`OpenAICompletions`: any OpenAI-compatible ``/completions`` endpoint that supports
  ``echo`` with ``logprobs`` (vLLM, the legacy OpenAI API, ``wandao serve``): the prompt is sent
  with ``max_tokens=0, echo=true`` and the continuation's token log-probs are summed, found by
  ``text_offset``.

Both implement

- ``loglikelihood(requests) -> list[float]`` for ``(context, continuation)`` pairs, following
  lm-evaluation-harness: trailing whitespace of the context moves to the continuation, context and
  continuation are tokenised separately and concatenated (HF; an endpoint tokenises the joined
  text), an empty context is replaced by the BOS/EOS token, and over-long inputs are truncated
  from the left;
- ``generate(prompts, max_new_tokens, stop, temperature, seed) -> list[str]``: a completion of
  each prompt taken verbatim (no chat template), cut before the first stop string.

Perplexity: :meth:`HFCausalLM.sliding_window_nll` over token ids and
:meth:`OpenAICompletions.text_nll` over text share the windows (:func:`sliding_windows`).

:func:`make_scorer` builds either from one string: a folder, or an ``http(s)://…/v1`` base URL.

Example:
    >>> fm = make_scorer("runs/cai/tiny/init")                          # doctest: +SKIP
    >>> fm.loglikelihood([("The answer is:", " (A)"), ("The answer is:", " (B)")])  # doctest: +SKIP
    [-3.2, -3.9]
"""

from __future__ import annotations

import json
import logging
import math
import os
import urllib.error
import urllib.request
from typing import Any, Sequence

logger = logging.getLogger(__name__)


def _split_ws(context: str, continuation: str) -> tuple[str, str]:
    n = len(context) - len(context.rstrip())
    if n > 0:
        return context[:-n], context[-n:] + continuation
    return context, continuation


def is_endpoint(model: str) -> bool:
    """True when ``model`` names an OpenAI-compatible base URL rather than a model folder."""
    return str(model).startswith(("http://", "https://"))


def post_json(url: str, payload: dict | None, api_key: str | None = None, timeout: float = 60.0,
              retries: int = 2) -> dict:
    """POST JSON (GET when ``payload`` is None) with ``urllib``; the decoded JSON reply.

    Retries on 5xx and connection errors; a 4xx raises ``RuntimeError`` with the server's message.
    """
    data = json.dumps(payload).encode("utf-8") if payload is not None else None
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    last: Exception | None = None
    for attempt in range(retries + 1):
        req = urllib.request.Request(url, data=data, headers=headers, method="POST" if data is not None else "GET")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return json.loads(resp.read().decode("utf-8"))
        except urllib.error.HTTPError as err:
            body = err.read().decode("utf-8", "replace")[:500]
            if err.code < 500 or attempt == retries:
                raise RuntimeError(f"{url}: HTTP {err.code}: {body}") from None
            last = err
        except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
            last = err
            if attempt == retries:
                break
    raise RuntimeError(f"{url}: request failed: {last}")


def sliding_windows(n: int, stride: int, max_length: int) -> list[tuple[int, int, int]]:
    """The sliding windows over ``n`` tokens: ``(s, t0, t1)``, input ``ids[s:t1-1]`` predicts ``ids[t0:t1]``.

    Every token after the first is a target exactly once, ``stride`` at a time, with up to
    ``max_length`` tokens of input (the HF perplexity guide's sliding window).

    Example:
        >>> sliding_windows(10, 4, 6)
        [(0, 1, 5), (2, 5, 9), (3, 9, 10)]
    """
    if stride < 1 or stride > max_length:
        raise ValueError(f"--stride must be in [1, max_length={max_length}], got {stride}")
    windows = []
    t0 = 1
    while t0 < n:
        t1 = min(t0 + stride, n)
        windows.append((max(0, t1 - 1 - max_length), t0, t1))
        t0 = t1
    return windows


class HFCausalLM:
    """A local HF causal LM for log-likelihoods, generation and sliding-window perplexity.

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
                 max_length: int | None = None, loaded: tuple[Any, Any] | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_path = str(model)
        if loaded is not None:  # a model already in memory (the policy doubling as critic)
            self.model, self.tokenizer = loaded
            self.device = str(next(self.model.parameters()).device)
        else:
            self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
            self.tokenizer = AutoTokenizer.from_pretrained(model)
            self.model = AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, dtype))
            self.model.to(self.device)
        self.model.eval()
        self.tokenizer.model_max_length = 10**12  # we window ourselves; silence the length warning
        cfg = self.model.config
        self.max_length = max_length or getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", 2048)
        self.batch_size = batch_size
        tok = self.tokenizer
        self.prefix_id = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        self.truncated = 0  #: prompts cut from the left to fit the context (generate and loglikelihood)

    @classmethod
    def from_loaded(cls, model: Any, tokenizer: Any, name: str = "loaded", batch_size: int = 8) -> "HFCausalLM":
        """Wrap a model and tokenizer already loaded (no second copy in memory)."""
        return cls(name, batch_size=batch_size, loaded=(model, tokenizer))

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
            whole = ctx + cont
            if len(whole) > self.max_length + 1:
                self.truncated += 1
                whole = whole[-(self.max_length + 1):]
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

    def generate(self, prompts: Sequence[str], max_new_tokens: int, stop: Sequence[str] = (),
                 temperature: float = 0.0, seed: int = 0, top_p: float = 1.0) -> list[str]:
        """Completions of ``prompts`` (batched, KV-cached :func:`pretrain.generate.decode_steps`).

        A prompt longer than the context minus ``max_new_tokens`` keeps its last tokens (counted in
        :attr:`truncated`); EOS ends a row as a stop string does.
        """
        from pretrain.generate import GenerationConfig, decode_steps

        room = self.max_length - max_new_tokens
        if room < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in a context of "
                             f"{self.max_length} tokens")
        ids = []
        for p in prompts:
            x = self.encode(p) or [self.prefix_id]
            if len(x) > room:
                self.truncated += 1
                x = x[-room:]
            ids.append(x)
        cfg = GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
                               stop=list(stop))
        texts: list[list[str]] = [[] for _ in prompts]
        for start in range(0, len(ids), self.batch_size):
            chunk = ids[start:start + self.batch_size]
            for events in decode_steps(self.model, self.tokenizer, [], cfg, prompt_ids=chunk):
                for b, ev in enumerate(events):
                    if ev is not None:
                        texts[start + b].append(ev.text)
        return ["".join(t) for t in texts]

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

        windows = sliding_windows(len(ids), stride, self.max_length)
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


class PromptTooLong(RuntimeError):
    """The endpoint refused a prompt longer than its context (HTTP 400)."""


class OpenAICompletions:
    """Log-likelihoods and completions from an OpenAI-compatible ``/completions`` endpoint.

    Args:
        base_url: e.g. ``http://localhost:8000/v1``.
        model: served model name; ``None`` asks ``GET /models`` and takes the only one served.
        api_key: bearer token; default ``$OPENAI_API_KEY``.

    ``generate`` sends ``logprobs: 1`` along: legacy completions (``echo``/``logprobs``) are what
    ``wandao serve`` answers with the prompt taken verbatim (its plain completions wrap the prompt
    in the chat template with retrieval); other servers complete raw prompts either way.
    """

    def __init__(self, base_url: str, model: str | None = None, api_key: str | None = None, timeout: float = 120.0):
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.timeout = timeout
        if not model:
            listed = post_json(f"{self.base_url}/models", None, api_key=self.api_key, timeout=timeout)
            names = [m.get("id") for m in listed.get("data", [])]
            if len(names) != 1:
                raise ValueError(f"{self.base_url} serves {len(names)} models ({', '.join(map(str, names))}); "
                                 "name one (--api-model)")
            model = names[0]
        self.model = model

    @property
    def name(self) -> str:
        return f"openai:{self.model}@{self.base_url}"

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[float]:
        out = []
        for context, continuation in requests:
            context, continuation = _split_ws(context, continuation)
            offsets, token_lps = self.echo(context + continuation)
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

    def echo(self, prompt: str) -> tuple[list[int], list[float | None]]:
        """``(text_offset, token_logprobs)`` of ``prompt`` scored by the endpoint (``max_tokens 0``, ``echo``).

        Raises :class:`PromptTooLong` when the endpoint says the prompt exceeds its context.
        """
        try:
            reply = post_json(f"{self.base_url}/completions", {
                "model": self.model, "prompt": prompt, "max_tokens": 0, "echo": True, "logprobs": 0,
                "temperature": 0}, api_key=self.api_key, timeout=self.timeout)
        except RuntimeError as err:
            msg = str(err)
            if "HTTP 400" in msg and ("context_length" in msg or "maximum context length" in msg):
                raise PromptTooLong(msg) from None
            raise
        try:
            lp = reply["choices"][0]["logprobs"]
            offsets, token_lps = list(lp["text_offset"]), list(lp["token_logprobs"])
        except (KeyError, IndexError, TypeError):
            raise RuntimeError(f"{self.base_url}/completions: reply has no echoed logprobs "
                               f"(does the server support echo=true?): {str(reply)[:300]}") from None
        if len(offsets) != len(token_lps):
            raise RuntimeError(f"{self.base_url}/completions: {len(offsets)} text offsets for {len(token_lps)} log-probs")
        return offsets, token_lps

    def max_model_len(self) -> int | None:
        """The served model's context in tokens when ``GET /models`` reports it (vLLM's ``max_model_len``)."""
        listed = post_json(f"{self.base_url}/models", None, api_key=self.api_key, timeout=self.timeout)
        for m in listed.get("data", []):
            if m.get("id") == self.model and isinstance(m.get("max_model_len"), int):
                return m["max_model_len"]
        return None

    def token_starts(self, text: str, per_request: int) -> list[int]:
        """Character offsets in ``text`` where the endpoint's tokens start, for the whole text.

        The text goes in pieces of at most ``per_request`` tokens, each ending before a whitespace
        character; a piece keeps its tokens up to its last token that starts at or right after
        whitespace (never its last token, which the cut may have changed) and the next piece starts
        there, so the pieces join where a whole-text tokenisation would also break (for tokenizers
        that split words at whitespace first: byte-level BPE, SentencePiece, characters).
        """
        starts: list[int] = []
        a, chars = 0, 3 * per_request  # chars per piece: a first guess, adapted below
        while a < len(text):
            b = min(len(text), a + chars)
            if b < len(text):
                cut = max(text.rfind(c, a + 1, b) for c in " \n\t")
                b = cut if cut > a else b
            try:
                rel, _ = self.echo(text[a:b])
            except PromptTooLong:
                if chars == 1:
                    raise
                chars = max(1, chars // 2)
                continue
            if len(rel) > per_request:  # the endpoint's limit is larger than ours: keep ours
                chars = max(1, chars * per_request // len(rel))
                continue
            got = [a + r for r in rel]
            if b == len(text):
                starts += got
                break
            safe = [i for i in range(1, len(got) - 1) if text[got[i]].isspace() or text[got[i] - 1].isspace()]
            k = safe[-1] if safe else len(got) - 1
            if k < 1:  # one token in the piece: take a longer piece
                chars *= 2
                continue
            starts += got[:k]
            a = got[k]
            if len(rel) < per_request // 2:
                chars = chars * 3 // 2
        return starts

    def text_nll(self, text: str, stride: int, max_length: int) -> tuple[float, int, list[dict], int]:
        """Sliding-window NLL of ``text`` through the endpoint: the windows of
        :meth:`HFCausalLM.sliding_window_nll` (:func:`sliding_windows`), over the endpoint's own tokens.

        The text is tokenised by the endpoint (:meth:`token_starts`); window ``(s, t0, t1)`` sends
        the text of tokens ``s .. t1-1`` (``t1 - s <= max_length + 1`` tokens: the first is never
        scored) and sums the log-probs of its targets: the tokens that start within the characters
        of tokens ``t0 .. t1-1`` (a character that byte-level BPE splits over several tokens counts
        where its first token starts), so every token is a target once. When the endpoint
        tokenises a window's text differently from the whole text (an edge inside a word or a
        character), the targets are still those characters, and when the text then takes more
        tokens than the endpoint holds, the window starts one token later until it fits; such
        windows are counted.

        Returns:
            ``(total_nll, n_scored, per_window, retokenized_windows)``; ``n_scored`` counts the whole
            text's tokens after the first, as the local path does (when the text starts with a
            whole character).
        """
        from tqdm.auto import tqdm

        starts = self.token_starts(text, max_length + 1)
        bounds = starts + [len(text)]  # bounds[i]: where token i starts (bounds[n]: the end)
        windows = sliding_windows(len(starts), stride, max_length)
        total, count, rows, retokenized = 0.0, 0, [], 0
        for s, t0, t1 in tqdm(windows, desc="perplexity", unit="window"):
            lo, hi = bounds[t0], bounds[t1]  # the targets' characters
            for first in range(s, t0):  # the window's first token; later ones only if the text does not fit
                try:
                    rel, values = self.echo(text[bounds[first]:hi])
                    break
                except PromptTooLong as err:
                    if first == t0 - 1:
                        raise ValueError(f"a window of {t1 - s} tokens does not fit the endpoint's context; lower "
                                         f"--max-length (now {max_length}): {err}") from None
            got = [bounds[first] + r for r in rel]
            same = first == s and got == [g for g in starts[first:t1 + 1] if bounds[first] <= g < hi]
            retokenized += not same
            # the first token of a request is never scored (nothing before it)
            picked = [v for k, (g, v) in enumerate(zip(got, values)) if lo <= g < hi and k > 0]
            if any(v is None for v in picked):
                raise RuntimeError(f"{self.base_url}: no log-prob for a target token of window {s}..{t1}")
            nll = -float(sum(picked))
            total += nll
            count += len(picked)
            rows.append({"begin": first, "first_target": t0, "end": t1, "scored": len(picked), "nll": nll,
                         "ppl": math.exp(nll / len(picked)) if picked else float("nan"), "retokenized": not same})
        if retokenized:
            logger.warning("%d of %d windows were tokenised differently from the whole text by the endpoint "
                           "(an edge inside a word or character); their targets' characters were scored all the same",
                           retokenized, len(windows))
        return total, count, rows, retokenized

    def generate(self, prompts: Sequence[str], max_new_tokens: int, stop: Sequence[str] = (),
                 temperature: float = 0.0, seed: int = 0, top_p: float = 1.0) -> list[str]:
        out = []
        for i, prompt in enumerate(prompts):
            body = {"model": self.model, "prompt": prompt, "max_tokens": max_new_tokens, "temperature": temperature,
                    "top_p": top_p, "seed": seed + i, "logprobs": 1}
            if stop:
                body["stop"] = list(stop)[:4]  # the OpenAI API takes at most 4
            reply = post_json(f"{self.base_url}/completions", body, api_key=self.api_key, timeout=self.timeout)
            try:
                text = reply["choices"][0]["text"]
            except (KeyError, IndexError, TypeError):
                raise RuntimeError(f"{self.base_url}/completions: no completion text in {str(reply)[:300]}") from None
            for s in stop:  # a server that ignored a stop string beyond the first four
                at = text.find(s)
                text = text[:at] if at >= 0 else text
            out.append(text)
        return out


def make_scorer(model: str, api_model: str | None = None, device: str | None = None, dtype: str = "float32",
                batch_size: int = 8, max_length: int | None = None, api_key: str | None = None):
    """:class:`OpenAICompletions` when ``model`` is an ``http(s)://`` base URL, else :class:`HFCausalLM`."""
    if is_endpoint(model):
        return OpenAICompletions(model, api_model, api_key=api_key)
    return HFCausalLM(os.path.expandvars(os.path.expanduser(model)), device=device, dtype=dtype,
                      batch_size=batch_size, max_length=max_length)
