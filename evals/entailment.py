"""Entailment judges for citation evaluation: an HF NLI model, an OpenAI-compatible endpoint, or lexical.

Every judge answers ``judge(pairs) -> list[bool]`` for ``(premise, hypothesis)`` pairs and has a
``name`` that is recorded next to the numbers it produced (``metrics["judge"]``).

- :class:`NLIJudge`: any local HF model folder (or hub id when online). Sequence-classification
  NLI models (``*ForSequenceClassification`` with an ``entailment`` label) say yes when the
  entailment label has the highest probability. Seq2seq models such as ALCE's default
  ``google/t5_xxl_true_nli_mixture`` get ALCE's prompt ``"premise: {p} hypothesis: {h}"`` and say
  yes when they generate ``"1"`` (Honovich et al. 2022, TRUE).
- :class:`OpenAIJudge`: any OpenAI-compatible ``/chat/completions`` endpoint (vLLM, the wandao
  server, OpenAI), asked a yes/no entailment question at temperature 0.
- :class:`LexicalJudge`: no model. The hypothesis counts as supported when (1) its whole
  normalised text, or an answer span it contains, occurs as a contiguous token sequence in the
  premise, or (2) at least ``threshold`` of its content words (SQuAD-normalised tokens minus
  English stopwords) occur in the premise. It is a cheap proxy for NLI: it cannot see negation
  or paraphrase, so report it as such.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Protocol, Sequence

from evals.squad import normalize_answer

logger = logging.getLogger(__name__)

# NLTK's English stopword list (179 words), with SQuAD normalisation applied (no apostrophes).
STOPWORDS = frozenset("""
i me my myself we our ours ourselves you youre youve youll youd your yours yourself yourselves he him his
himself she shes her hers herself it its itself they them their theirs themselves what which who whom this
that thatll these those am is are was were be been being have has had having do does did doing a an the and
but if or because as until while of at by for with about against between into through during before after
above below to from up down in out on off over under again further then once here there when where why how
all any both each few more most other some such no nor not only own same so than too very s t can will just
don dont should shouldve now d ll m o re ve y ain aren arent couldn couldnt didn didnt doesn doesnt hadn
hadnt hasn hasnt haven havent isn isnt ma mightn mightnt mustn mustnt needn neednt shan shant shouldn
shouldnt wasn wasnt weren werent won wont wouldn wouldnt
""".split())


class EntailmentJudge(Protocol):
    name: str

    def judge(self, pairs: Sequence[tuple[str, str]]) -> list[bool]:
        """For each ``(premise, hypothesis)``, whether the premise entails the hypothesis."""
        ...


def _contains_span(haystack: list[str], needle: list[str]) -> bool:
    n = len(needle)
    return n > 0 and any(haystack[i:i + n] == needle for i in range(len(haystack) - n + 1))


@dataclass
class LexicalJudge:
    """Model-free support check (see the module docstring for the rule).

    Args:
        threshold: fraction of the hypothesis' content words that must occur in the premise.
        answers: optional answer strings; one that occurs in both hypothesis and premise
            (as a token span) makes the hypothesis supported.

    Example:
        >>> j = LexicalJudge(threshold=0.75)
        >>> j.judge([("Paris is the capital of France.", "The capital of France is Paris."),
        ...          ("Paris is the capital of France.", "Lyon is the capital of France.")])
        [True, False]
    """

    threshold: float = 0.75
    answers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"--lexical-threshold must be in (0, 1], got {self.threshold}")

    @property
    def name(self) -> str:
        return f"lexical(threshold={self.threshold:g})"

    def supports(self, premise: str, hypothesis: str, answers: Sequence[str] = ()) -> bool:
        p = normalize_answer(premise).split()
        h = normalize_answer(hypothesis).split()
        if not h:
            return False
        if _contains_span(p, h):
            return True
        for ans in list(answers) + list(self.answers):
            a = normalize_answer(ans).split()
            if _contains_span(h, a) and _contains_span(p, a):
                return True
        content = [t for t in h if t not in STOPWORDS]
        if not content:
            return False
        vocab = set(p)
        covered = sum(1 for t in content if t in vocab)
        return covered / len(content) >= self.threshold

    def judge(self, pairs: Sequence[tuple[str, str]]) -> list[bool]:
        return [self.supports(p, h) for p, h in pairs]


class NLIJudge:
    """An HF NLI model as entailment judge (lazy ``transformers`` import).

    Args:
        model: a local model folder or hub id.
        batch_size: pairs per forward pass.
        max_length: truncation length in tokens (the premise is truncated first).
        device: ``"cpu"``, ``"cuda"``...; default: CUDA when available.
    """

    def __init__(self, model: str, batch_size: int = 16, max_length: int = 512, device: str | None = None):
        import torch
        from transformers import AutoConfig, AutoTokenizer

        self.model_path = model
        self.batch_size = batch_size
        self.max_length = max_length
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        config = AutoConfig.from_pretrained(model)
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.seq2seq = bool(getattr(config, "is_encoder_decoder", False))
        if self.seq2seq:
            from transformers import AutoModelForSeq2SeqLM

            self.model = AutoModelForSeq2SeqLM.from_pretrained(model)
        else:
            from transformers import AutoModelForSequenceClassification

            self.model = AutoModelForSequenceClassification.from_pretrained(model)
            labels = {int(i): str(l).lower() for i, l in self.model.config.id2label.items()}
            found = [i for i, l in labels.items() if l.startswith("entail")]
            if not found:
                raise ValueError(f"{model}: no 'entailment' label in id2label {labels}; "
                                 "pass an NLI model (labels like entailment/neutral/contradiction)")
            self.entail_id = found[0]
        self.model.to(self.device).eval()

    @property
    def name(self) -> str:
        return f"nli:{self.model_path}"

    def judge(self, pairs: Sequence[tuple[str, str]]) -> list[bool]:
        import torch

        out: list[bool] = []
        for start in range(0, len(pairs), self.batch_size):
            batch = pairs[start:start + self.batch_size]
            with torch.inference_mode():
                if self.seq2seq:
                    texts = [f"premise: {p} hypothesis: {h}" for p, h in batch]
                    enc = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True,
                                         max_length=self.max_length).to(self.device)
                    gen = self.model.generate(**enc, max_new_tokens=10)
                    decoded = self.tokenizer.batch_decode(gen, skip_special_tokens=True)
                    out += [d.strip() == "1" for d in decoded]
                else:
                    enc = self.tokenizer([p for p, _ in batch], [h for _, h in batch], return_tensors="pt",
                                         padding=True, truncation="only_first",
                                         max_length=self.max_length).to(self.device)
                    logits = self.model(**enc).logits  # (B, n_labels)
                    out += (logits.argmax(-1) == self.entail_id).tolist()
        return out


_JUDGE_PROMPT = (
    "Premise:\n{premise}\n\nHypothesis:\n{hypothesis}\n\n"
    "Does the premise entail the hypothesis, that is, is every claim in the hypothesis supported by "
    "the premise? Answer with exactly one word: yes or no.")


def post_json(url: str, payload: dict, api_key: str | None = None, timeout: float = 60.0,
              retries: int = 2) -> dict:
    """POST JSON with ``urllib`` and return the decoded JSON reply (retries on 5xx/connection errors)."""
    data = json.dumps(payload).encode("utf-8")
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    last: Exception | None = None
    for attempt in range(retries + 1):
        req = urllib.request.Request(url, data=data, headers=headers, method="POST")
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


class OpenAIJudge:
    """Entailment from an OpenAI-compatible chat endpoint.

    Args:
        base_url: e.g. ``http://localhost:8000/v1`` (``/chat/completions`` is appended).
        model: the model name the endpoint serves.
        api_key: bearer token; default ``$OPENAI_API_KEY`` when set.
    """

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout: float = 60.0):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.timeout = timeout

    @property
    def name(self) -> str:
        return f"openai:{self.model}@{self.base_url}"

    def judge(self, pairs: Sequence[tuple[str, str]]) -> list[bool]:
        out = []
        for premise, hypothesis in pairs:
            reply = post_json(f"{self.base_url}/chat/completions", {
                "model": self.model, "temperature": 0, "max_tokens": 3,
                "messages": [{"role": "user", "content": _JUDGE_PROMPT.format(premise=premise,
                                                                              hypothesis=hypothesis)}],
            }, api_key=self.api_key, timeout=self.timeout)
            try:
                text = reply["choices"][0]["message"]["content"]
            except (KeyError, IndexError, TypeError):
                raise RuntimeError(f"{self.base_url}: unexpected reply {str(reply)[:300]}") from None
            out.append(text.strip().lower().startswith("yes"))
        return out


def make_judge(kind: str = "lexical", model: str | None = None, url: str | None = None,
               threshold: float = 0.75) -> EntailmentJudge:
    """Build a judge from CLI-style options: ``lexical``, ``nli`` (needs ``model``) or ``openai``
    (needs ``url`` and ``model``)."""
    if kind == "lexical":
        return LexicalJudge(threshold=threshold)
    if kind == "nli":
        if not model:
            raise ValueError("--judge nli needs --judge-model PATH (an HF NLI model folder)")
        return NLIJudge(model)
    if kind == "openai":
        if not (url and model):
            raise ValueError("--judge openai needs --judge-url BASE_URL and --judge-model NAME")
        return OpenAIJudge(url, model)
    raise ValueError(f"--judge must be one of lexical, nli, openai; got {kind!r}")
