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
  or paraphrase, so report it as such. It lives in :mod:`rag.citations` (align's attribution
  reward judges with it too) and is re-exported here.
"""

from __future__ import annotations

import logging
import os
from typing import Protocol, Sequence

# one HTTP JSON client (align.feedback's, which the endpoint scorers use) and one lexical judge
# (rag.citations', which align's attribution reward uses too)
from align.feedback import post_json  # noqa: F401 (re-exported)
from rag.citations import STOPWORDS, LexicalJudge  # noqa: F401 (re-exported)

logger = logging.getLogger(__name__)


class EntailmentJudge(Protocol):
    name: str

    def judge(self, pairs: Sequence[tuple[str, str]]) -> list[bool]:
        """For each ``(premise, hypothesis)``, whether the premise entails the hypothesis."""
        ...


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
