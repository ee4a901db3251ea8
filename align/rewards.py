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

- ``attribution`` ("the answer is supported by the cited evidence"): ALCE's citation F1 of the
  answer, the harmonic mean of its citation recall and precision (Gao et al. 2023; computed by
  :func:`rag.citations.alce_answer_scores`, the code behind ``wandao eval attribution``, with the
  same lexical judge and at most 3 citations per sentence), and only for a well-formed cited
  answer (:func:`rag.citations.check_cited_answer`): markers exactly ``[n]`` naming passages that
  were shown, content words outside them, not number fragments that are citation debris, and no
  verbatim run of ``max_copy_tokens`` or more tokens from a passage (restating the evidence is not
  an answer). Anything else scores ``-malformed_penalty`` (0 by default). Sentences citing nothing
  are unsupported, as in ALCE; with ``require_citation`` off, an answer without any marker is
  judged as if each sentence cited every passage shown, and scores its recall.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

# SQuAD-normalised tokens and the lexical judge's stopwords: one copy, shared with evals through rag
from rag.citations import STOPWORDS, normalize_tokens  # noqa: F401 (re-exported)

Rows = Sequence[dict]

# ------------------------------------------------------------------------------------------- rules


@dataclass
class AttributionRule:
    """"The answer is supported by the cited evidence" (see the module docstring for the score).

    Args:
        require_citation: a sentence citing nothing is unsupported (ALCE); off: an answer with no
            marker at all is judged against every passage shown (recall only).
        malformed_penalty: a malformed answer scores ``-malformed_penalty``.
        lexical_threshold: the lexical judge's content-word coverage (the eval suite's default 0.75).
        at_most_citations: citations per sentence considered (ALCE's and the eval suite's 3).
        max_copy_tokens: an answer sharing a verbatim run of this many normalised tokens with a
            shown passage is malformed (it restates the evidence); 0 switches the check off.
        judge: any entailment judge with ``judge(pairs) -> list[bool]`` (e.g. ``evals.entailment``'s
            NLI judge); default the lexical judge.

    Example:
        >>> ev = [{"id": "d1", "title": "Paris", "text": "Paris is the capital of France."}]
        >>> AttributionRule().score_one("Paris is the capital [1].", ev, ["d1"])
        1.0
        >>> AttributionRule(malformed_penalty=0.5).score_one("1]", ev, ["d1"])
        -0.5
    """

    require_citation: bool = True
    malformed_penalty: float = 0.0
    lexical_threshold: float = 0.75
    at_most_citations: int | None = 3
    max_copy_tokens: int = 12
    judge: Any = None

    def __post_init__(self) -> None:
        from rag.citations import LexicalJudge

        if self.malformed_penalty < 0:
            raise ValueError(f"malformed_penalty must be >= 0 (it is subtracted), got {self.malformed_penalty}")
        if self.max_copy_tokens < 0:
            raise ValueError(f"max_copy_tokens must be >= 0, got {self.max_copy_tokens}")
        if self.judge is None:
            self.judge = LexicalJudge(threshold=self.lexical_threshold)

    def details(self, response: str, evidence: Sequence[dict], evidence_ids: Sequence[str] = ()) -> dict:
        """``score``, ``reason`` (None, or why the answer is malformed), ALCE ``recall``/``precision``."""
        from rag.citations import (alce_answer_scores, check_cited_answer, inline_citations, longest_common_run,
                                   remove_citations, split_sentences)

        fail = {"score": -self.malformed_penalty if self.malformed_penalty else 0.0, "recall": 0.0, "precision": 0.0}
        reason = check_cited_answer(response, len(evidence))
        if reason is None and self.max_copy_tokens:
            said = normalize_tokens(remove_citations(response))
            if any(longest_common_run(said, normalize_tokens(f"{p.get('title', '')} {p.get('text', '')}"))
                   >= self.max_copy_tokens for p in evidence):
                reason = "copies a passage"
        if reason is not None:
            return {**fail, "reason": reason}
        ids = [str(i) for i in evidence_ids][:len(evidence)]
        ids += [f"#{j + 1}" for j in range(len(ids), len(evidence))]  # positions stand in for missing ids
        passages = dict(zip(ids, evidence))
        sentences = split_sentences(response)
        cites = [[ids[i] for i in inline_citations(s)] for s in sentences]  # in range: checked above
        lenient = not self.require_citation and not any(cites)
        if lenient:
            cites = [list(ids)] * len(sentences)
        s = alce_answer_scores(sentences, cites, passages, self.judge.judge,
                               None if lenient else self.at_most_citations)
        r, p = s["recall"], s["precision"]
        score = r if lenient else (2 * r * p / (r + p) if r + p > 0 else 0.0)
        return {"score": score, "reason": None, "recall": r, "precision": p}

    def score_one(self, response: str, evidence: Sequence[dict], evidence_ids: Sequence[str] = ()) -> float:
        return self.details(response, evidence, evidence_ids)["score"]

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
    """A reward model trained by ``wandao rm train`` (:mod:`align.reward`), scoring question + evidence + response.

    ``head`` names the objective head to read; an RM with several heads needs one (checked here, at
    construction, not at the first rollout).
    """

    def __init__(self, path: str | os.PathLike, device: str = "cpu", batch_size: int = 64,
                 head: str | None = None) -> None:
        from align.reward import load_reward_model

        self.path = Path(os.path.expandvars(os.path.expanduser(str(path))))
        if not self.path.is_dir():
            raise FileNotFoundError(f"{self.path}: no RM folder (train one with wandao rm train)")
        self.rm = load_reward_model(self.path, device, head)
        if self.rm.needs_head:
            raise ValueError(f"{self.path}: this RM has heads {', '.join(self.rm.heads)}; give the reward a head")
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
                 token: str = "", tokenizer: Any = None, require_citation: bool = True, device: str = "cpu",
                 batch_size: int = 64, malformed_penalty: float = 0.0, head: str | None = None) -> RewardSource:
    """One :class:`RewardSource` from its config fields (``kind``: rm, attribution, not_human,
    blocklist, target_token, function; ``head``: the RM's objective head, for kind rm)."""
    if head and kind != "rm":
        raise ValueError(f"head {head!r} is for kind rm (an RM with objective heads), not {kind}")
    if kind == "rm":
        fn: Callable = LearnedRM(path, device, batch_size, head)
    elif kind == "attribution":
        fn = AttributionRule(require_citation, malformed_penalty)
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
