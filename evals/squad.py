"""SQuAD v1.1 exact match and F1, with the official normaliser verbatim.

Source: the official SQuAD v1.1 evaluation script (``evaluate-v1.1.py``, Rajpurkar et al. 2016),
which DPR, FlashRAG and In-Context RALM reuse unchanged. The semantics kept here exactly:

- normalise = lower-case, drop every ``string.punctuation`` character, replace the articles
  ``a|an|the`` (whole words) with a space, then collapse whitespace — in that order;
- EM is string equality of normalised texts; F1 is the bag-of-tokens F1 of normalised texts,
  and is 0 when no token is shared (so two empty strings score F1 0, as in v1.1);
- per question, the maximum over gold answers; the corpus score is the mean × 100, and a
  question with no prediction scores 0 (it still counts in the denominator).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Callable, Iterable, Mapping

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(s: str) -> str:
    """Lower text and remove punctuation, articles and extra whitespace (SQuAD v1.1, verbatim).

    Example:
        >>> normalize_answer("The  Quick, brown fox!")
        'quick brown fox'
    """

    def remove_articles(text: str) -> str:
        return _ARTICLES.sub(" ", text)

    def white_space_fix(text: str) -> str:
        return " ".join(text.split())

    def remove_punc(text: str) -> str:
        return "".join(ch for ch in text if ch not in _PUNCT)

    return white_space_fix(remove_articles(remove_punc(s.lower())))


def f1_score(prediction: str, ground_truth: str) -> float:
    """Token-level F1 of two answers after :func:`normalize_answer` (SQuAD v1.1)."""
    prediction_tokens = normalize_answer(prediction).split()
    ground_truth_tokens = normalize_answer(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(prediction_tokens)
    recall = num_same / len(ground_truth_tokens)
    return (2 * precision * recall) / (precision + recall)


def exact_match_score(prediction: str, ground_truth: str) -> float:
    """1.0 when the normalised answers are equal, else 0.0 (SQuAD v1.1)."""
    return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def metric_max_over_ground_truths(metric_fn: Callable[[str, str], float], prediction: str,
                                  ground_truths: Iterable[str]) -> float:
    """The best score of ``prediction`` against any gold answer (SQuAD v1.1)."""
    scores = [metric_fn(prediction, gt) for gt in ground_truths]
    if not scores:
        raise ValueError("no gold answers to score against")
    return max(scores)


def squad_evaluate(golds: Mapping[str, list[str]], predictions: Mapping[str, str]) -> dict:
    """Corpus EM/F1 (×100) over every question in ``golds``.

    Args:
        golds: question id → list of gold answer strings.
        predictions: question id → predicted answer; missing ids score 0 (as in v1.1).

    Returns:
        ``{"exact_match", "f1", "count", "missing"}``.

    Example:
        >>> squad_evaluate({"q1": ["the Eiffel Tower"], "q2": ["Paris"]}, {"q1": "Eiffel tower"})
        {'exact_match': 50.0, 'f1': 50.0, 'count': 2, 'missing': 1}
    """
    em = f1 = 0.0
    missing = 0
    for qid, answers in golds.items():
        if qid not in predictions:
            missing += 1
            continue
        em += metric_max_over_ground_truths(exact_match_score, predictions[qid], answers)
        f1 += metric_max_over_ground_truths(f1_score, predictions[qid], answers)
    total = len(golds)
    return {"exact_match": 100.0 * em / total if total else 0.0, "f1": 100.0 * f1 / total if total else 0.0,
            "count": total, "missing": missing}
