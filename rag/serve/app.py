"""``wandao serve``: an OpenAI-compatible, retrieval-augmented streaming server (FastAPI + uvicorn).

Endpoints: ``POST /v1/chat/completions`` and ``POST /v1/completions`` (``stream: true`` sends
OpenAI's SSE chunks, ending ``data: [DONE]``), ``GET /v1/models``, ``GET /health``, and the chat
page at ``/``. The ``openai`` Python client works unchanged.

Per request: the input is moderated, the question retrieves ``k`` passages from the index (unless
the request says ``"retrieval": false``), the prompt is assembled (operator section, sanitised
user text and evidence in the model's template, :mod:`rag.serve.operator`), a contested question
is answered two-sided or neutrally (:mod:`rag.serve.contested`), tokens are generated
(:mod:`pretrain.generate`) and pass the streaming moderator (:mod:`rag.serve.moderation`) before
the client sees them. The response carries ``citations`` (``[{"index", "id", "title", "text"}]``)
at the top level, and the last stream chunk carries them too.

Wire format beyond OpenAI's (extra fields, which the ``openai`` client keeps):

- request: ``retrieval`` (bool, default true), ``k`` (int), ``ignore_eos`` (bool, as vLLM's; for benchmarks);
- response / last chunk: ``citations``, ``moderation_events`` (list), ``contested``;
- a moderation event in a stream is its own chunk with ``"moderation_event": {...}`` and an empty delta
  (not ``moderation``: the ``openai`` client declares that field for OpenAI's own moderation results);
- a blocked **prompt** gets **HTTP 200** with the refusal as the answer, ``finish_reason:
  "content_filter"`` and a moderation event with ``stage: "input"`` (the model never runs); a
  stopped **answer** ends with the policy message, ``finish_reason: "content_filter"`` and an event.

Legacy completions (``/v1/completions`` with ``echo`` or ``logprobs``, OpenAI's legacy semantics, as
vLLM serves them): the prompt is the model's input verbatim (no operator section, template,
retrieval or contested plan; input and output moderation still apply), only the request's own
``stop`` strings stop it, and ``choices[0].logprobs`` holds ``tokens``, ``token_logprobs``,
``top_logprobs`` (the ``logprobs`` most likely tokens plus the chosen one, by their text) and
``text_offset`` (each token's start in ``choices[0].text``). ``echo: true`` puts the prompt in front
of the completion, its first token with log-prob ``null``; ``max_tokens: 0`` is allowed with echo
and scores the prompt only. Log-probs are the model's own distribution (before temperature, top-k
and top-p). Not with ``stream: true``. This is what feedback models scored through an endpoint need
(:class:`align.feedback.OpenAICompletions`).

Errors (``{"error": {"message", "type", "code", "param"}}``): 400 malformed JSON / bad values /
prompt too long / max_tokens over the limit, 401 missing or wrong bearer token, 404 unknown model,
413 body over ``max_body_bytes``, 422 wrong field types, 503 queue full (``Retry-After``), 504
timeout before the first token of a non-streamed answer. A stream that times out ends with
``finish_reason: "length"`` and ``"timeout": true``.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import logging
import os
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator

from starlette.requests import Request as HTTPRequest  # module level: FastAPI resolves annotations here

logger = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"


@dataclass
class ServeConfig:
    """``wandao serve`` settings (YAML file first, flags override it)."""

    model: str | None = field(default=None, metadata={"help": "HF causal-LM folder (wandao checkpoints load too)"})
    index: str | None = field(default=None, metadata={"help": "index directory (wandao index build); none: no retrieval"})
    retriever: str | None = field(default=None, metadata={"help": "bm25 | lucene | dense | hybrid (default: the index's)"})
    k: int = field(default=3, metadata={"help": "passages retrieved per request"})
    template: str = field(default="sparrow", metadata={"help": "evidence template the model was trained with"})
    passage_tokens: int = field(default=160, metadata={"help": "token budget per passage"})
    total_tokens: int = field(default=512, metadata={"help": "token budget for all passages"})
    moderation: str | None = field(default=None, metadata={"help": "moderation YAML (blocklist, hold-back, action)"})
    operator_prompt: str | None = field(default=None, metadata={"help": "operator instructions file (never shown)"})
    contested: str | None = field(default=None, metadata={"help": "contested-topics YAML"})
    contested_mode: str | None = field(default=None, metadata={"help": "two-sided | neutral | off (overrides the YAML)"})
    host: str = field(default="127.0.0.1", metadata={"help": "bind address (loopback unless told otherwise)"})
    port: int = field(default=8000, metadata={"help": "TCP port"})
    api_key: str | None = field(default=None, metadata={"help": "bearer token required on /v1 (env WANDAO_API_KEY)"})
    model_name: str | None = field(default=None, metadata={"help": "model id clients send (default: folder name)"})
    max_body_bytes: int = field(default=1_000_000, metadata={"help": "largest request body (413 beyond)"})
    max_prompt_tokens: int = field(default=2048, metadata={"help": "largest assembled prompt in tokens (400 beyond)"})
    max_tokens_limit: int = field(default=512, metadata={"help": "largest max_tokens a request may ask for"})
    default_max_tokens: int = field(default=128, metadata={"help": "max_tokens when the request gives none"})
    temperature: float = field(default=0.7, metadata={"help": "default sampling temperature"})
    request_timeout_s: float = field(default=120.0, metadata={"help": "per-request wall-clock limit"})
    max_concurrency: int = field(default=8, metadata={"help": "requests generating at once"})
    max_queue: int = field(default=64, metadata={"help": "requests waiting for a slot before 503"})
    shutdown_grace_s: float = field(default=60.0, metadata={"help": "how long shutdown waits for in-flight streams"})
    torch_threads: int = field(default=0, metadata={"help": "torch intra-op threads (0: torch's default)"})

    def __post_init__(self) -> None:
        for name in ("k", "max_body_bytes", "max_prompt_tokens", "max_tokens_limit", "default_max_tokens",
                     "max_concurrency"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.max_queue < 0:
            raise ValueError(f"--max-queue must be >= 0, got {self.max_queue}")
        if self.contested_mode not in (None, "two-sided", "neutral", "off"):
            raise ValueError(f"--contested-mode must be two-sided, neutral or off, got {self.contested_mode!r}")
        if self.default_max_tokens > self.max_tokens_limit:
            raise ValueError("--default-max-tokens must be <= --max-tokens-limit")


class APIError(Exception):
    """An error answered as ``{"error": {...}}`` with an HTTP status."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.headers = status, message, code, param, headers

    def body(self) -> dict:
        kind = {401: "authentication_error", 404: "not_found_error", 503: "overloaded_error",
                504: "timeout_error"}.get(self.status, "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "code": self.code, "param": self.param}}


# ------------------------------------------------------------------------------ request checking

_TYPES = {"model": str, "stream": bool, "ignore_eos": bool, "max_tokens": int, "max_completion_tokens": int,
          "temperature": (int, float),
          "top_p": (int, float), "top_k": int, "seed": int, "retrieval": bool, "k": int, "n": int, "user": str}


def _check_types(body: dict) -> None:
    for name, tp in _TYPES.items():
        if name in body and body[name] is not None:
            value = body[name]
            if isinstance(value, bool) and tp is not bool and bool not in (tp if isinstance(tp, tuple) else (tp,)):
                raise APIError(422, f"'{name}' must be {_tname(tp)}, got a boolean", "invalid_type", name)
            if not isinstance(value, tp):
                raise APIError(422, f"'{name}' must be {_tname(tp)}, got {type(value).__name__}", "invalid_type", name)
    if "stop" in body and body["stop"] is not None:
        stop = body["stop"]
        if not (isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(s, str) for s in stop))):
            raise APIError(422, "'stop' must be a string or a list of strings", "invalid_type", "stop")


def _tname(tp) -> str:
    names = {str: "a string", bool: "a boolean", int: "an integer", float: "a number"}
    return " or ".join(names[t] for t in tp) if isinstance(tp, tuple) else names[tp]


@dataclass
class ChatRequest:
    """A validated request."""

    kind: str  # "chat" | "completion"
    messages: list[dict]
    stream: bool
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    seed: int | None
    stop: list[str]
    retrieval: bool
    k: int
    model: str
    ignore_eos: bool = False
    echo: bool = False
    logprobs: int | None = None

    @property
    def legacy(self) -> bool:
        """A legacy completion (echo or logprobs): the prompt is the model's input verbatim."""
        return self.kind == "completion" and (self.echo or self.logprobs is not None)


class Server:
    """Model, retriever, policies and the admission control shared by all requests."""

    def __init__(self, cfg: ServeConfig):
        import torch

        from pretrain.generate import context_length, load_model
        from rag.serve.contested import ContestedDetector
        from rag.serve.moderation import Moderation
        from rag.serve.operator import PromptAssembler, read_operator_prompt
        from rag.templates import Budget, get_template
        from rag.tokenizer import load_tokenizer

        if not cfg.model:
            raise ValueError("--model is required (an HF causal-LM folder), or use --demo")
        if cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
        self.cfg = cfg
        self.api_key = cfg.api_key or os.environ.get("WANDAO_API_KEY") or None
        self.model, self.tokenizer = load_model(cfg.model)
        self.model_name = cfg.model_name or Path(cfg.model).resolve().name
        self.context = context_length(self.model)
        self.retriever = None
        if cfg.index:
            from rag.retriever import Retriever

            self.retriever = Retriever(cfg.index, retriever=cfg.retriever)
        text_tok = load_tokenizer(self.tokenizer)
        template = get_template(cfg.template, tokenizer=text_tok,
                                budget=Budget(passage_tokens=cfg.passage_tokens, total_tokens=cfg.total_tokens,
                                              min_passages=0))
        operator = read_operator_prompt(cfg.operator_prompt) if cfg.operator_prompt else None
        self.assembler = PromptAssembler(template, operator, special_tokens=text_tok.special_tokens)
        self.moderation = Moderation.from_yaml(cfg.moderation) if cfg.moderation else None
        self.contested = ContestedDetector.from_yaml(cfg.contested) if cfg.contested else None
        if self.contested is not None and cfg.contested_mode:
            self.contested.mode = cfg.contested_mode
        # the template's next turn header ends the answer; "\nOperator" can never be continued
        self.stops = ["\nUser:", "\nOperator", "\nSearch Query:", "\nQuestion:"]
        self.executor = ThreadPoolExecutor(max_workers=cfg.max_concurrency, thread_name_prefix="wandao-gen")
        self.slots = asyncio.Semaphore(cfg.max_concurrency)  # bound lazily to the running loop (py>=3.10)
        self.waiting = 0
        self.active = 0
        self.served = 0
        self.cancelled = 0
        self._retrieve_lock = threading.Lock()

    # -- admission ---------------------------------------------------------------------------------

    async def acquire(self) -> None:
        if self.waiting >= self.cfg.max_queue and self.slots.locked():
            raise APIError(503, f"server busy: {self.active} requests generating and {self.waiting} queued "
                                f"(max_concurrency={self.cfg.max_concurrency}, max_queue={self.cfg.max_queue})",
                           "server_busy", headers={"Retry-After": "1"})
        self.waiting += 1
        try:
            await self.slots.acquire()
        finally:
            self.waiting -= 1
        self.active += 1

    def release(self) -> None:
        self.active -= 1
        self.served += 1
        self.slots.release()

    # -- request parsing ---------------------------------------------------------------------------

    def parse(self, body: Any, kind: str) -> ChatRequest:
        from rag.serve.operator import message_text

        if not isinstance(body, dict):
            raise APIError(400, "the request body must be a JSON object", "invalid_body")
        _check_types(body)
        model = body.get("model")
        if not model:
            raise APIError(400, "'model' is required", "missing_field", "model")
        if model != self.model_name:
            raise APIError(404, f"the model '{model}' does not exist; this server has '{self.model_name}' "
                                "(GET /v1/models)", "model_not_found", "model")
        if body.get("n", 1) != 1:
            raise APIError(400, "only n=1 is supported", "unsupported", "n")
        legacy_fields = ("tools", "functions", "best_of") + (("logprobs", "echo") if kind == "chat" else ())
        for unsupported in legacy_fields:
            if body.get(unsupported):
                raise APIError(400, f"'{unsupported}' is not supported by this server", "unsupported", unsupported)
        echo, logprobs = False, None
        if kind == "completion":
            echo, logprobs = body.get("echo", False), body.get("logprobs")
            if echo is None:
                echo = False
            if not isinstance(echo, bool):
                raise APIError(422, "'echo' must be a boolean", "invalid_type", "echo")
            if logprobs is not None:
                if isinstance(logprobs, bool) or not isinstance(logprobs, int):
                    raise APIError(422, "'logprobs' must be an integer (the number of top tokens)", "invalid_type",
                                   "logprobs")
                if not 0 <= logprobs <= 20:
                    raise APIError(400, f"logprobs must be between 0 and 20, got {logprobs}", "invalid_value", "logprobs")
            if (echo or logprobs is not None) and body.get("stream"):
                raise APIError(400, "echo and logprobs are not supported with stream: true", "unsupported", "stream")
        if kind == "chat":
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise APIError(422 if "messages" in body else 400, "'messages' must be a non-empty list",
                               "invalid_type" if "messages" in body else "missing_field", "messages")
            for i, m in enumerate(messages):
                if not isinstance(m, dict):
                    raise APIError(422, f"messages[{i}] must be an object", "invalid_type", f"messages[{i}]")
                try:
                    message_text(m.get("content"), f"messages[{i}]")
                except ValueError as err:
                    raise APIError(422, str(err), "invalid_type", f"messages[{i}].content") from None
        else:
            prompt = body.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
                prompt = prompt[0]
            if not isinstance(prompt, str):
                raise APIError(422 if "prompt" in body else 400, "'prompt' must be a string (or a list of one)",
                               "invalid_type" if "prompt" in body else "missing_field", "prompt")
            messages = [{"role": "user", "content": prompt}]
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or self.cfg.default_max_tokens
        if echo and body.get("max_tokens") == 0:
            max_tokens = 0  # score the prompt only (legacy echo)
        elif not 1 <= max_tokens <= self.cfg.max_tokens_limit:
            raise APIError(400, f"max_tokens must be between 1 and {self.cfg.max_tokens_limit}, got {max_tokens}",
                           "max_tokens_out_of_range", "max_tokens")
        temperature = float(body["temperature"]) if body.get("temperature") is not None else self.cfg.temperature
        if not 0.0 <= temperature <= 2.0:
            raise APIError(400, f"temperature must be between 0 and 2, got {temperature}", "invalid_value",
                           "temperature")
        top_p = float(body["top_p"]) if body.get("top_p") is not None else 1.0
        if not 0.0 < top_p <= 1.0:
            raise APIError(400, f"top_p must be in (0, 1], got {top_p}", "invalid_value", "top_p")
        k = body.get("k") or self.cfg.k
        if not 1 <= k <= 20:
            raise APIError(400, f"k must be between 1 and 20, got {k}", "invalid_value", "k")
        stop = body.get("stop") or []
        stop = [stop] if isinstance(stop, str) else list(stop)
        if len(stop) > 4:
            raise APIError(400, "at most 4 stop strings", "invalid_value", "stop")
        return ChatRequest(kind, messages, bool(body.get("stream", False)), max_tokens, temperature, top_p,
                       body.get("top_k") or 0, body.get("seed"), stop,
                       body.get("retrieval", True) and self.retriever is not None and not (echo or logprobs is not None),
                       k, model, bool(body.get("ignore_eos", False)), echo, logprobs)

    # -- the pipeline --------------------------------------------------------------------------------

    def prepare(self, req: ChatRequest) -> dict:
        """Input moderation, retrieval, contested plan and prompt assembly (raises APIError 400)."""
        from rag.serve.operator import PromptError, message_text
        from rag.templates import Passage

        user_text = "\n".join(message_text(m.get("content"), "m") for m in req.messages)
        if self.moderation is not None and self.moderation.cfg.check_input:
            event = self.moderation.check_text(user_text, stage="input")
            if event is not None:
                return {"refusal": self.moderation.cfg.input_message, "events": [event.to_dict()], "passages": [],
                        "prompt_tokens": 0, "contested": None}
        if req.legacy:
            return self._prepare_legacy(req, user_text)
        question = message_text(req.messages[-1].get("content"), "m")
        passages: list[Passage] = []
        if req.retrieval and question.strip():
            with self._retrieve_lock:  # sqlite/numba backends: one query at a time is plenty here
                res = self.retriever.retrieve([question], k=req.k)
            for hit, doc in zip(res.hits(0), res.documents[0]):
                passages.append(Passage(str(doc["id"]), str(doc.get("title") or ""), str(doc.get("text") or ""),
                                        score=float(hit.score)))
        plan = None
        if self.contested is not None:
            topic = self.contested.detect(question)
            if topic is not None:
                plan = self.contested.plan(topic)
        try:
            assembled = self.assembler.build(req.messages, passages, extra_operator=plan["operator"] if plan else ())
        except PromptError as err:
            raise APIError(400, str(err), "invalid_messages", "messages") from None
        n_prompt = len(self.tokenizer(assembled.prompt, add_special_tokens=False)["input_ids"])
        limit = self.cfg.max_prompt_tokens
        if self.context is not None:
            limit = min(limit, self.context - req.max_tokens)
        if n_prompt > limit:
            raise APIError(400, f"the prompt takes {n_prompt} tokens (evidence and operator section included); at "
                                f"most {limit} fit with max_tokens={req.max_tokens} (model context: {self.context})",
                           "context_length_exceeded", "messages")
        return {"refusal": None, "assembled": assembled, "plan": plan, "prompt_tokens": n_prompt, "events": [],
                "passages": assembled.passages,
                "contested": {k: plan[k] for k in ("mode", "topic", "perspectives")} if plan else None}

    def _prepare_legacy(self, req: ChatRequest, prompt: str) -> dict:
        """A legacy completion's prompt: verbatim, checked against the context only."""
        if req.echo and not prompt:
            raise APIError(400, "echo needs a non-empty prompt", "invalid_value", "prompt")
        try:
            n_prompt = len(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        except Exception as err:  # tokenizers raises a plain Exception (a character outside a small vocabulary)
            raise APIError(400, f"the model's tokenizer cannot encode the prompt: {err}", "invalid_prompt",
                           "prompt") from None
        limit = self.cfg.max_prompt_tokens
        if self.context is not None:
            limit = min(limit, self.context - req.max_tokens)
        if n_prompt > limit:
            raise APIError(400, f"the prompt takes {n_prompt} tokens; at most {limit} fit with max_tokens="
                                f"{req.max_tokens} (model context: {self.context})", "context_length_exceeded", "prompt")
        return {"refusal": None, "raw_prompt": prompt, "assembled": None, "plan": None, "prompt_tokens": n_prompt,
                "events": [], "passages": [], "contested": None}

    def legacy_logprobs(self, prompt: str, completion_ids: list[int], text: str, echo: bool, top_n: int) -> dict:
        """OpenAI's legacy ``logprobs`` object for ``prompt`` + the generated ids, as one forward pass.

        ``text`` is ``choices[0].text`` (the prompt in front when ``echo``); offsets index into it.
        Generated tokens that start past the returned text (the tokens of a stop string) are left out.
        """
        import torch

        enc = self.tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=self.tokenizer.is_fast)
        prompt_ids = list(enc["input_ids"])
        context = prompt_ids
        if not context:  # generation started from BOS (pretrain.generate.encode_prompts does the same)
            bos = getattr(self.tokenizer, "bos_token_id", None)
            context = [bos if bos is not None else self.tokenizer.eos_token_id]
        ids = context + list(completion_ids)
        device = next(self.model.parameters()).device
        with torch.inference_mode():
            logits = self.model(input_ids=torch.tensor([ids], device=device)).logits[0]
        logp = torch.log_softmax(logits.float(), dim=-1)  # (T, V): row t predicts token t + 1

        def piece(tid: int) -> str:
            return self.tokenizer.decode([tid], skip_special_tokens=False, clean_up_tokenization_spaces=False)

        def entry(pos: int) -> tuple[float, dict]:  # the log-prob of ids[pos] and the top tokens before it
            row = logp[pos - 1]
            chosen = float(row[ids[pos]])
            top: dict[str, float] = {}
            if top_n:
                values, idx = torch.topk(row, min(top_n, row.numel()))
                top = {piece(int(i)): float(v) for v, i in zip(values.tolist(), idx.tolist())}
            top.setdefault(piece(ids[pos]), chosen)
            return chosen, top

        tokens, token_lps, tops, offsets = [], [], [], []
        if echo:
            if "offset_mapping" in enc:
                starts = [a for a, _ in enc["offset_mapping"]]
            else:
                starts, at = [], 0
                for tid in prompt_ids:
                    starts.append(at)
                    at += len(piece(tid))
            for j, tid in enumerate(prompt_ids):
                tokens.append(piece(tid))
                offsets.append(starts[j])
                if j == 0:
                    token_lps.append(None)  # nothing before the first token to condition on
                    tops.append(None)
                else:
                    lp, top = entry(j)
                    token_lps.append(lp)
                    tops.append(top)
        at = len(prompt) if echo else 0
        for k, tid in enumerate(completion_ids):
            if at >= len(text):
                break
            lp, top = entry(len(context) + k)
            tokens.append(piece(tid))
            token_lps.append(lp)
            tops.append(top)
            offsets.append(at)
            at += len(tokens[-1])
        return {"tokens": tokens, "token_logprobs": token_lps, "top_logprobs": tops, "text_offset": offsets}

    async def run(self, req: ChatRequest, prep: dict, is_disconnected) -> AsyncIterator[tuple]:
        """Yield ``("delta", text)``, ``("event", dict)`` and finally ``("finish", reason, extra)``."""
        if prep["refusal"] is not None:
            for ev in prep["events"]:
                yield ("event", ev)
            yield ("delta", prep["refusal"])
            yield ("finish", "content_filter", {"completion_tokens": 0})
            return
        from pretrain.generate import GenerationConfig, eos_ids

        if req.max_tokens == 0:  # legacy echo that only scores the prompt
            yield ("finish", "length", {"completion_tokens": 0, "token_ids": []})
            return
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + self.cfg.request_timeout_s
        cancel = threading.Event()
        moderator = self.moderation.stream() if self.moderation is not None else None
        plan = prep["plan"]
        sections = plan["sections"] if plan else [""]
        base_prompt = prep["raw_prompt"] if req.legacy else prep["assembled"].prompt
        # a legacy completion stops only where the request says; a chat answer also at the next turn header
        stops = list(req.stop) if req.legacy else self.stops + req.stop
        so_far = ""
        n_tokens = 0
        token_ids: list[int] = []
        reason = "stop"
        timed_out = False
        completed = False
        try:
            for j, header in enumerate(sections):
                if j > 0:
                    so_far += "\n"
                    yield_text = "\n"
                else:
                    yield_text = ""
                yield_text += header
                so_far += header
                if yield_text:
                    got = self._moderate(moderator, yield_text)
                    for item in got:
                        yield item
                    if moderator is not None and moderator.stopped:
                        reason = "content_filter"
                        break
                # Each remaining section gets an equal share of what is left, so a two-sided answer always
                # shows both sides even when the model never ends the first one on its own.
                budget = (req.max_tokens - n_tokens) // (len(sections) - j)
                if budget < 1:
                    reason = "length"
                    break
                gcfg = GenerationConfig(max_new_tokens=budget, temperature=req.temperature, top_k=req.top_k,
                                        top_p=req.top_p, seed=req.seed if req.seed is not None else 0,
                                        stop=stops + (["\n"] if len(sections) > 1 else []),
                                        eos_token_id=-1 if req.ignore_eos else None)
                eos = eos_ids(self.model, self.tokenizer, gcfg)  # EOS ends a row and is not part of its text
                queue: asyncio.Queue = asyncio.Queue()

                def work(prompt=base_prompt + so_far, gcfg=gcfg):
                    from pretrain.generate import stream

                    try:
                        for ev in stream(self.model, self.tokenizer, prompt, gcfg,
                                         should_stop=lambda: cancel.is_set() or time.monotonic() > deadline):
                            loop.call_soon_threadsafe(queue.put_nowait, ev)
                    except BaseException as err:  # surfaced to the request, never lost in the thread
                        loop.call_soon_threadsafe(queue.put_nowait, err)
                    finally:
                        loop.call_soon_threadsafe(queue.put_nowait, None)

                future = loop.run_in_executor(self.executor, work)
                last_check = time.monotonic()
                finish = None
                while True:
                    try:
                        ev = await asyncio.wait_for(queue.get(), timeout=0.25)
                    except asyncio.TimeoutError:
                        ev = "tick"
                    if time.monotonic() - last_check > 0.2:
                        last_check = time.monotonic()
                        if await is_disconnected():
                            cancel.set()
                    if ev == "tick":
                        continue
                    if ev is None:
                        break
                    if isinstance(ev, BaseException):
                        raise ev
                    if ev.token_id is not None:
                        n_tokens += 1
                        if not (ev.finish_reason == "stop" and ev.token_id in eos):
                            token_ids.append(ev.token_id)
                    so_far += ev.text
                    if ev.finish_reason:
                        finish = ev.finish_reason
                    for item in self._moderate(moderator, ev.text):
                        yield item
                    if moderator is not None and moderator.stopped:
                        cancel.set()
                await future
                if moderator is not None and moderator.stopped:
                    reason = "content_filter"
                    break
                if finish == "cancelled":
                    if time.monotonic() > deadline:
                        timed_out, reason = True, "length"
                    else:
                        reason = "cancelled"
                    break
                reason = "length" if finish == "length" else "stop"
                if finish == "length" and n_tokens >= req.max_tokens:
                    break
            if moderator is not None and not moderator.stopped:
                for item in self._moderate(moderator, None):
                    yield item
                if moderator.stopped:
                    reason = "content_filter"
            completed = reason != "cancelled"
        finally:
            cancel.set()  # the generation thread stops at its next token
            if not completed:  # the client went away (or the response was closed under us)
                self.cancelled += 1
        yield ("finish", reason, {"completion_tokens": n_tokens, "timeout": timed_out,
                                  "held_max": moderator.held_max if moderator else 0, "token_ids": token_ids})

    def _moderate(self, moderator, text: str | None) -> list[tuple]:
        """Pass generated text through the moderator; ``None`` flushes at the end."""
        if moderator is None:
            return [("delta", text)] if text else []
        if moderator.stopped:
            return []  # tokens drawn before the generator saw the cancel flag are dropped
        got = moderator.finish() if text is None else moderator.feed(text)
        out: list[tuple] = []
        if got.text:
            out.append(("delta", got.text))
        if got.event is not None:
            out.append(("event", got.event.to_dict()))
        if got.stopped:
            sep = "\n" if moderator.released_chars else ""
            out.append(("delta", sep + self.moderation.cfg.policy_message))
        return out

    def citations(self, prep: dict) -> list[dict]:
        """Cited passages as the model saw them (sanitised, cut to budget); blocked terms redacted."""
        from rag.serve.moderation import redact_text

        clean = (lambda t: redact_text(self.moderation, t)) if self.moderation is not None else (lambda t: t)
        return [{"index": i, "id": p.doc_id, "title": clean(p.title), "text": clean(p.text)}
                for i, p in enumerate(prep.get("passages") or [], start=1)]


# ------------------------------------------------------------------------------ the FastAPI app


def create_app(cfg: ServeConfig, server: Server | None = None):
    """The FastAPI app over a loaded :class:`Server` (built from ``cfg`` when not given)."""
    from fastapi import FastAPI
    from fastapi.responses import FileResponse, JSONResponse, StreamingResponse

    server = server or Server(cfg)
    app = FastAPI(title="wandao serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server

    @app.exception_handler(APIError)
    async def _api_error(_, err: APIError):
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    def check_auth(request: HTTPRequest) -> None:
        if server.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), server.api_key.encode()):
            raise APIError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'", "invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})

    async def read_json(request: HTTPRequest) -> Any:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > cfg.max_body_bytes:
            raise APIError(413, f"request body of {length} bytes is over the limit of {cfg.max_body_bytes}",
                           "body_too_large")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > cfg.max_body_bytes:
                raise APIError(413, f"request body is over the limit of {cfg.max_body_bytes} bytes", "body_too_large")
            chunks.append(chunk)
        try:
            return json.loads(b"".join(chunks) or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise APIError(400, f"malformed JSON body: {err}", "invalid_json") from None

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": server.model_name, "active": server.active, "queued": server.waiting,
                "served": server.served, "cancelled": server.cancelled,
                "retrieval": server.retriever is not None, "moderation": server.moderation is not None}

    @app.get("/")
    async def chat_page():
        return FileResponse(STATIC / "chat.html", media_type="text/html")

    @app.get("/v1/models")
    async def models(request: HTTPRequest):
        check_auth(request)
        return {"object": "list", "data": [{"id": server.model_name, "object": "model", "created": 0,
                                            "owned_by": "wandao"}]}

    async def handle(request: HTTPRequest, kind: str):
        check_auth(request)
        body = await read_json(request)
        req = server.parse(body, kind)
        await server.acquire()
        released = False
        try:
            loop = asyncio.get_running_loop()
            prep = await loop.run_in_executor(None, server.prepare, req)
            rid = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
            created = int(time.time())
            if req.stream:
                gen = _sse(server, req, prep, rid, created, request)

                async def body_iter():
                    try:
                        async for chunk in gen:
                            yield chunk
                    finally:
                        await gen.aclose()
                        server.release()

                released = True
                return StreamingResponse(body_iter(), media_type="text/event-stream",
                                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
            return await _complete(server, req, prep, rid, created, request)
        finally:
            if not released:
                server.release()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: HTTPRequest):
        return await handle(request, "chat")

    @app.post("/v1/completions")
    async def completions(request: HTTPRequest):
        return await handle(request, "completion")

    return app


def _chunk(req: ChatRequest, rid: str, created: int, delta: dict | None, finish: str | None = None,
           **extra: Any) -> str:
    if req.kind == "chat":
        choice = {"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish}
        obj = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": req.model,
               "choices": [choice], **extra}
    else:
        choice = {"index": 0, "text": (delta or {}).get("content", ""), "logprobs": None, "finish_reason": finish}
        obj = {"id": rid, "object": "text_completion", "created": created, "model": req.model,
               "choices": [choice], **extra}
    return "data: " + json.dumps(obj, ensure_ascii=False) + "\n\n"


async def _sse(server: Server, req: ChatRequest, prep: dict, rid: str, created: int, request) -> AsyncIterator[str]:
    if req.kind == "chat":
        yield _chunk(req, rid, created, {"role": "assistant", "content": ""})
    events = []
    async for item in server.run(req, prep, request.is_disconnected):
        if item[0] == "delta":
            yield _chunk(req, rid, created, {"content": item[1]})
        elif item[0] == "event":
            events.append(item[1])
            yield _chunk(req, rid, created, {}, moderation_event=item[1])
        else:
            _, reason, info = item
            if reason == "cancelled":
                return  # the client left: nothing more to send
            usage = {"prompt_tokens": prep["prompt_tokens"], "completion_tokens": info["completion_tokens"],
                     "total_tokens": prep["prompt_tokens"] + info["completion_tokens"]}
            extra = {"citations": server.citations(prep), "usage": usage, "moderation_events": events}
            if prep.get("contested"):
                extra["contested"] = prep["contested"]
            if info.get("timeout"):
                extra["timeout"] = True
            yield _chunk(req, rid, created, {}, reason, **extra)
    yield "data: [DONE]\n\n"


async def _complete(server: Server, req: ChatRequest, prep: dict, rid: str, created: int, request):
    texts, events = [], []
    reason, info = "stop", {}
    async for item in server.run(req, prep, request.is_disconnected):
        if item[0] == "delta":
            texts.append(item[1])
        elif item[0] == "event":
            events.append(item[1])
        else:
            _, reason, info = item
    if info.get("timeout") and not texts:
        raise APIError(504, f"no answer within the request timeout of {server.cfg.request_timeout_s} s", "timeout")
    text = "".join(texts)
    usage = {"prompt_tokens": prep["prompt_tokens"], "completion_tokens": info.get("completion_tokens", 0),
             "total_tokens": prep["prompt_tokens"] + info.get("completion_tokens", 0)}
    if req.kind == "chat":
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                  "finish_reason": reason}
        obj = "chat.completion"
    else:
        logprobs = None
        if req.legacy and prep["refusal"] is None and reason != "content_filter":
            if req.echo:
                text = prep["raw_prompt"] + text
            if req.logprobs is not None:
                loop = asyncio.get_running_loop()
                logprobs = await loop.run_in_executor(
                    server.executor, server.legacy_logprobs, prep["raw_prompt"], info.get("token_ids", []), text,
                    req.echo, req.logprobs)
        choice = {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": reason}
        obj = "text_completion"
    out = {"id": rid, "object": obj, "created": created, "model": req.model, "choices": [choice], "usage": usage,
           "citations": server.citations(prep), "moderation_events": events}
    if prep.get("contested"):
        out["contested"] = prep["contested"]
    if info.get("timeout"):
        out["timeout"] = True
    return out


# ------------------------------------------------------------------------------ CLI

EPILOG = """examples:
  wandao serve --model runs/demo/pretrain/final --index runs/demo/rag/index --port 8000
  wandao serve --model DIR --moderation configs/serve/moderation.yaml --operator-prompt configs/serve/operator.txt \\
      --contested configs/serve/contested.yaml --api-key secret
  wandao serve --demo                      # the demo's model and index under runs/demo/
  wandao serve --config configs/serve/demo.yaml --port 8001

  curl -N http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
      -d '{"model": "final", "stream": true, "messages": [{"role": "user", "content": "Who won Super Bowl 50?"}]}'
  open http://127.0.0.1:8000/ for the chat page
"""


def find_demo(workdir: str | Path = "runs/demo") -> tuple[dict[str, str], list[str]]:
    """The demo's model folder and index, and what is missing (as sentences)."""
    work = Path(workdir)
    found: dict[str, str] = {}
    missing: list[str] = []
    # the demo's best model first: PPO on top of the evidence SFT, then that SFT, then the pretrained model
    candidates = [work / "serve" / "model", work / "ppo" / "model", work / "sft" / "evidence" / "model",
                  work / "sft" / "final", work / "pretrain" / "final", work / "pretrain"]
    candidates += sorted(work.glob("pretrain/step-*"), reverse=True)
    model = next((c for c in candidates if (c / "config.json").exists() and
                  ((c / "tokenizer.json").exists() or (c / "tokenizer_config.json").exists())), None)
    if model is None:
        missing.append(f"no generative model under {work} (looked for an HF folder with config.json and a tokenizer "
                       f"in {', '.join(str(c) for c in candidates[:4])}); run `wandao demo` (its pretrain stage) "
                       "or pass --model DIR")
    else:
        found["model"] = str(model)
    index = next((i for i in (work / "rag" / "index", work / "indexes" / "scifact") if (i / "manifest.json").exists()),
                 None)
    if index is None:
        missing.append(f"no index under {work} ({work}/rag/index or {work}/indexes/scifact); run `wandao demo` "
                       "(its augment stage) or pass --index DIR")
    else:
        found["index"] = str(index)
    return found, missing


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wandao serve", description=__doc__.splitlines()[0], epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="FILE.yaml", help="YAML config (configs/serve/*.yaml); flags override it")
    p.add_argument("--demo", action="store_true", help="serve the demo's model and index from runs/demo/")
    p.add_argument("--demo-dir", default="runs/demo", help="where --demo looks")
    import dataclasses

    for f in dataclasses.fields(ServeConfig):
        flag = "--" + f.name.replace("_", "-")
        tp = {int: int, float: float}.get(type(f.default), str)
        p.add_argument(flag, dest=f.name, type=tp, default=None, help=f.metadata.get("help"))
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from pretrain.config import ConfigError, load_config

    overrides = {k: v for k, v in vars(args).items() if v is not None and k not in ("config", "demo", "demo_dir")}
    if args.demo:
        found, missing = find_demo(args.demo_dir)
        if "model" not in found and "model" not in overrides:
            print("wandao serve --demo: cannot start:\n  - " + "\n  - ".join(missing), file=sys.stderr)
            return 2
        for m in missing:
            print(f"wandao serve --demo: note: {m}; serving without it", file=sys.stderr)
        for key, value in found.items():
            overrides.setdefault(key, value)
        demo_mod = Path(__file__).resolve().parents[2] / "configs" / "serve" / "moderation.yaml"
        if demo_mod.exists():
            overrides.setdefault("moderation", str(demo_mod))
    try:
        cfg = load_config(ServeConfig, args.config, overrides)
        app = create_app(cfg)
    except (ConfigError, ValueError, FileNotFoundError) as err:
        print(f"wandao serve: {err}", file=sys.stderr)
        return 2
    import uvicorn

    if cfg.host not in ("127.0.0.1", "localhost", "::1") and not app.state.server.api_key:
        logger.warning("binding %s without --api-key: anyone who can reach this address can use the model", cfg.host)
    logger.info("serving %s on http://%s:%d (chat page at /)", app.state.server.model_name, cfg.host, cfg.port)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="info",
                timeout_graceful_shutdown=int(cfg.shutdown_grace_s), limit_concurrency=None)
    return 0
