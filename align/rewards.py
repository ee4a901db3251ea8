"""Reward sources for PPO: a learned RM, Sparrow-style rules and programmatic rewards, weighted and summed.

Every source maps rollout rows to one float per row. A row is a dict with

- ``question``, ``history``, ``prompt`` (the rendered prompt, evidence included),
- ``evidence``: the passages shown (``id``, ``title``, ``text``), ``evidence_ids``,
- ``response`` (text), ``response_ids`` (token ids, EOS excluded), ``finished`` (ended with EOS).

:class:`CompositeReward` sums ``weight · score`` over its sources and keeps each source's scores,
so PPO logs them separately (``reward/<name>``).

Sparrow (Glaese et al. 2022) judges each rule with its own model; here a rule is a named check
that is either programmatic or any ``module:function`` (a rule-conditioned classifier plugs in
there). The shipped rules score 1 when the response follows the rule, 0 when it breaks it:

- ``attribution`` ("the answer is supported by the cited evidence"): the fraction of the
  response's content words (SQuAD-normalised tokens minus NLTK's English stopwords, as
  :mod:`evals.entailment`'s lexical judge) found in the cited passages, or 1 when the whole
  normalised response occurs as a span there. Cited passages are those named by ``[i]`` markers
  (:func:`rag.templates.cited_ids`); a response citing nothing is judged against every passage
  shown, or scores 0 with ``require_citation``. A response without content words scores 0.
- ``not_human`` ("do not pretend to be a human"): 0 when the response claims a human identity,
  body, life or feelings (English patterns), else 1.
- ``blocklist``: 0 when a listed term occurs (case-insensitive, on word boundaries), else 1.

Programmatic rewards with a known optimum, for reference curves:

- ``target_token``: the fraction of response tokens equal to one token id (optimum 1.0 when every
  response token is it); an empty response scores 0.

Example:
    >>> r = CompositeReward([RewardSource("not_human", NotHumanRule(), 1.0),
    ...                      RewardSource("blocklist", BlocklistRule(["darn"]), 0.5)])
    >>> total, parts = r([{"response": "I am a person and darn proud."}, {"response": "Paris."}])
    >>> total, parts["not_human"], parts["blocklist"]
    ([0.0, 1.5], [0.0, 1.0], [0.0, 1.0])
"""

from __future__ import annotations

import importlib
import os
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

Rows = Sequence[dict]

# NLTK's English stopword list (179 words), with SQuAD normalisation applied; the same list as
# evals.entailment.STOPWORDS (align may not import evals).
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

_PUNCT = set(string.punctuation)
_CITE = re.compile(r"\[\d+\]")


def normalize_tokens(text: str) -> list[str]:
    """SQuAD's answer normalisation (lower case, no punctuation, no articles), split on whitespace.

    Example:
        >>> normalize_tokens("The Denver Broncos [1] won!")
        ['denver', 'broncos', '1', 'won']
    """
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return text.split()


def _contains_span(haystack: list[str], needle: list[str]) -> bool:
    n = len(needle)
    return n > 0 and any(haystack[i:i + n] == needle for i in range(len(haystack) - n + 1))


# ------------------------------------------------------------------------------------------- rules


@dataclass
class AttributionRule:
    """"The answer is supported by the cited evidence" (see the module docstring for the score)."""

    require_citation: bool = False

    def score_one(self, response: str, evidence: Sequence[dict], evidence_ids: Sequence[str]) -> float:
        from rag.templates import cited_ids

        ids = [str(i) for i in evidence_ids] or [str(p.get("id", "")) for p in evidence]
        cited = set(cited_ids(response, ids))
        if cited:
            passages = [p for i, p in zip(ids, evidence) if i in cited]
        elif self.require_citation:
            return 0.0
        else:
            passages = list(evidence)
        h = normalize_tokens(_CITE.sub(" ", response))
        if not h or not passages:
            return 0.0
        p = normalize_tokens(" ".join(f"{q.get('title', '')} {q.get('text', '')}" for q in passages))
        if _contains_span(p, h):
            return 1.0
        content = [t for t in h if t not in STOPWORDS]
        if not content:
            return 0.0
        vocab = set(p)
        return sum(t in vocab for t in content) / len(content)

    def __call__(self, rows: Rows) -> list[float]:
        return [self.score_one(r["response"], r.get("evidence") or [], r.get("evidence_ids") or []) for r in rows]


#: First-person claims of a human identity, body, life or feelings (Sparrow's "no pretending to be human").
HUMAN_CLAIMS = (
    r"\bi(?: am|'m| was)(?: also| really| actually)? (?:a |an )?(?:human|person|man|woman|boy|girl|human being|real person)\b",
    r"\bi(?: am|'m) not (?:an? )?(?:ai|bot|robot|machine|language model|computer program|program|chatbot)\b",
    r"\bas an? (?:human|person|human being)\b",
    r"\bmy (?:body|mother|father|wife|husband|childhood|hometown|kids|children|parents)\b",
    r"\bi (?:ate|eat|sleep|slept|grew up|was born|live in|went to school)\b",
    r"\bi(?: have|'ve)(?: a)? (?:body|family|feelings|hands|a heart)\b",
    r"\bwhen i was (?:a )?(?:kid|child|young|little)\b",
)


@dataclass
class NotHumanRule:
    """"Do not pretend to be a human": 0 when a :data:`HUMAN_CLAIMS` pattern matches, else 1.

    Example:
        >>> NotHumanRule()([{"response": "I'm a real person."}, {"response": "I am an AI assistant."}])
        [0.0, 1.0]
    """

    patterns: tuple[str, ...] = HUMAN_CLAIMS

    def __post_init__(self) -> None:
        self._re = re.compile("|".join(f"(?:{p})" for p in self.patterns), re.IGNORECASE)

    def __call__(self, rows: Rows) -> list[float]:
        return [0.0 if self._re.search(r["response"].replace("\u2019", "'")) else 1.0 for r in rows]


@dataclass
class BlocklistRule:
    """0 when any term occurs in the response (case-insensitive, whole words/phrases), else 1.

    Example:
        >>> BlocklistRule(["bad word"])([{"response": "a Bad  word here"}, {"response": "badword"}])
        [0.0, 1.0]
    """

    terms: Sequence[str]

    def __post_init__(self) -> None:
        terms = [t.strip() for t in self.terms if t and t.strip()]
        if not terms:
            raise ValueError("the blocklist rule needs at least one term (rewards[].terms)")
        alts = [r"\s+".join(re.escape(w) for w in t.split()) for t in terms]
        self._re = re.compile(r"(?<!\w)(?:" + "|".join(alts) + r")(?!\w)", re.IGNORECASE)

    def __call__(self, rows: Rows) -> list[float]:
        return [0.0 if self._re.search(r["response"]) else 1.0 for r in rows]


@dataclass
class TargetTokenReward:
    """The fraction of response tokens equal to ``token_id``; optimum 1.0, empty response 0.

    Example:
        >>> TargetTokenReward(7)([{"response_ids": [7, 7, 3, 7]}, {"response_ids": []}])
        [0.75, 0.0]
    """

    token_id: int

    def __call__(self, rows: Rows) -> list[float]:
        out = []
        for r in rows:
            ids = list(r["response_ids"])
            out.append(sum(t == self.token_id for t in ids) / len(ids) if ids else 0.0)
        return out


class LearnedRM:
    """A reward model trained by ``wandao rm train`` (:mod:`align.reward`), scoring question + evidence + response."""

    def __init__(self, path: str | os.PathLike, device: str = "cpu", batch_size: int = 64) -> None:
        from align.reward import load_reward_model

        self.path = Path(os.path.expandvars(os.path.expanduser(str(path))))
        if not self.path.is_dir():
            raise FileNotFoundError(f"{self.path}: no RM folder (train one with wandao rm train)")
        self.rm = load_reward_model(self.path, device)
        self.device, self.batch_size = device, batch_size

    def __call__(self, rows: Rows) -> list[float]:
        from align.reward import score

        items = [{"prompt": r.get("question") or r.get("prompt", ""), "response": r["response"],
                  "history": r.get("history") or [], "evidence": r.get("evidence") or []} for r in rows]
        return [float(v) for v in score(self.rm, items, self.batch_size, self.device)]


def import_function(spec: str) -> Callable[[Rows], list[float]]:
    """``module:function`` → the function (which takes rows and returns floats)."""
    if ":" not in spec:
        raise ValueError(f"expected module:function, got {spec!r}")
    module, name = spec.split(":", 1)
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot import {spec!r}: {err}") from None


# --------------------------------------------------------------------------------------- composite


@dataclass
class RewardSource:
    """A named, weighted reward: ``fn(rows) -> list[float]``."""

    name: str
    fn: Callable[[Rows], list[float]]
    weight: float = 1.0


class CompositeReward:
    """``Σ_s weight_s · score_s`` per row, with each source's raw scores kept for logging."""

    def __init__(self, sources: Sequence[RewardSource]) -> None:
        if not sources:
            raise ValueError("no reward sources")
        names = [s.name for s in sources]
        if len(set(names)) != len(names):
            raise ValueError(f"reward source names must be unique, got {names}")
        self.sources = list(sources)

    def __call__(self, rows: Rows) -> tuple[list[float], dict[str, list[float]]]:
        parts: dict[str, list[float]] = {}
        total = [0.0] * len(rows)
        for s in self.sources:
            scores = [float(v) for v in s.fn(rows)]
            if len(scores) != len(rows):
                raise ValueError(f"reward source {s.name!r} returned {len(scores)} scores for {len(rows)} rows")
            parts[s.name] = scores
            total = [t + s.weight * v for t, v in zip(total, scores)]
        return total, parts


def build_source(kind: str, name: str | None = None, weight: float = 1.0, path: str = "", terms: Sequence[str] = (),
                 token: str = "", tokenizer: Any = None, require_citation: bool = False, device: str = "cpu",
                 batch_size: int = 64) -> RewardSource:
    """One :class:`RewardSource` from its config fields (``kind``: rm, attribution, not_human,
    blocklist, target_token, function)."""
    if kind == "rm":
        fn: Callable = LearnedRM(path, device, batch_size)
    elif kind == "attribution":
        fn = AttributionRule(require_citation)
    elif kind == "not_human":
        fn = NotHumanRule()
    elif kind == "blocklist":
        terms = list(terms)
        if path:
            lines = Path(os.path.expandvars(path)).read_text(encoding="utf-8").splitlines()
            terms += [t for t in lines if t.strip() and not t.startswith("#")]
        fn = BlocklistRule(terms)
    elif kind == "target_token":
        if tokenizer is None:
            raise ValueError("target_token needs the policy's tokenizer")
        ids = tokenizer(token, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(f"target_token: {token!r} is {len(ids)} tokens for this tokenizer; give one token")
        fn = TargetTokenReward(int(ids[0]))
    elif kind == "function":
        fn = import_function(path)
    else:
        raise ValueError(f"unknown reward kind {kind!r}; allowed: rm, attribution, not_human, blocklist, "
                         "target_token, function")
    return RewardSource(name or kind, fn, weight)
