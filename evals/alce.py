"""ALCE citation recall and precision (Gao et al. 2023, "Enabling Large Language Models to Generate
Text with Citations", EMNLP 2023; ``compute_autoais`` in princeton-nlp/ALCE ``eval.py``).

Per answer, split into sentences, each with the passages it cites:

- **recall**: a sentence scores 1 when the concatenation of its cited passages entails it
  (0 when it cites nothing or cites a passage that does not exist). The answer's recall is the
  mean over its sentences; the corpus number is the mean over answers × 100.
- **precision**: every citation of a supported sentence counts as relevant, except that when a
  supported sentence cites several passages, a citation is *irrelevant* if (a) the passage alone
  does not entail the sentence AND (b) the remaining cited passages still entail it. Citations of
  unsupported sentences are not relevant. The answer's precision is relevant citations / all
  citations (0 when it has none); the corpus number is the mean × 100.

Passages are formatted as ALCE does: ``"Title: {title}\\n{text}"``, joined with newlines.
Inline ALCE markers (``[1]``, 1-based into the answer's passage list) are parsed when an item gives
an ``answer`` string without explicit ``citations``; the markers are removed from the sentence
before judging, with ALCE's ``remove_citations``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from evals.entailment import EntailmentJudge, LexicalJudge
# the marker handling and the per-answer computation are shared with align's attribution reward
from rag.citations import (alce_answer_scores, format_passage, inline_citations, remove_citations,  # noqa: F401
                           split_sentences)


@dataclass
class CitedAnswer:
    """One answer to judge: sentences, per-sentence citations (keys into ``passages``), passages."""

    sentences: list[str]
    citations: list[list[str]]
    passages: dict[str, dict]
    answers: list[str] = field(default_factory=list)  # optional gold answer spans (lexical judge)


def _ask(judge: EntailmentJudge, pairs: list[tuple[str, str]], answers: Sequence[str]) -> list[bool]:
    if isinstance(judge, LexicalJudge) and answers:
        return [judge.supports(p, h, answers) for p, h in pairs]
    return judge.judge(pairs)


def score_answer(item: CitedAnswer, judge: EntailmentJudge, at_most_citations: int | None = None) -> dict:
    """ALCE recall/precision of one answer (fractions in [0, 1]) with per-sentence detail
    (:func:`rag.citations.alce_answer_scores` with ``judge``)."""
    return alce_answer_scores(item.sentences, item.citations, item.passages,
                              lambda pairs: _ask(judge, pairs, item.answers), at_most_citations)


def citation_scores(items: Sequence[CitedAnswer], judge: EntailmentJudge,
                    at_most_citations: int | None = None) -> tuple[dict, list[dict]]:
    """Corpus ALCE ``citation_rec``/``citation_prec`` (×100) and per-answer detail.

    Example:
        >>> item = CitedAnswer(["Paris is the capital of France."], [["d1", "d2"]],
        ...                    {"d1": {"title": "Paris", "text": "Paris is the capital of France."},
        ...                     "d2": {"title": "Lyon", "text": "Lyon is a city."}})
        >>> m, _ = citation_scores([item], LexicalJudge())
        >>> m["citation_rec"], m["citation_prec"]
        (100.0, 50.0)
    """
    per = [score_answer(it, judge, at_most_citations) for it in items]
    n = len(per)
    metrics = {
        "citation_rec": 100.0 * sum(p["recall"] for p in per) / n if n else 0.0,
        "citation_prec": 100.0 * sum(p["precision"] for p in per) / n if n else 0.0,
        "answers": n,
        "sentences": sum(len(p["sentences"]) for p in per),
        "judge": judge.name,
    }
    return metrics, per
