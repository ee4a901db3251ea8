"""DPR's ``has_answer`` and top-k retrieval accuracy.

Source: ``dpr/data/qa_validation.py`` and ``dpr/utils/tokenizers.py`` in facebookresearch/DPR
(Karpukhin et al., "Dense Passage Retrieval for Open-Domain Question Answering", EMNLP 2020).
Kept exactly:

- text and answers are NFD-normalised (``unicodedata.normalize("NFD", ...)``);
- both are tokenised with DPR's ``SimpleTokenizer``: the regex ``([\\p{L}\\p{N}\\p{M}]+)|([^\\p{Z}\\p{C}])``
  (runs of letters/digits/marks, or any single non-space, non-control character);
- ``string`` mode: an answer matches when its uncased tokens are a contiguous subsequence of the
  passage's uncased tokens; ``regex`` mode: ``re.search`` with IGNORECASE|UNICODE|MULTILINE.
- top-k accuracy: the fraction of questions with a matching passage among their first k.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Iterable, Sequence

_ALPHA_NUM = r"[\p{L}\p{N}\p{M}]+"
_NON_WS = r"[^\p{Z}\p{C}]"
_TOKEN_RE = None


def _token_regex():
    global _TOKEN_RE
    if _TOKEN_RE is None:
        import regex  # the third-party `regex` module: \p{..} classes, as DPR uses

        _TOKEN_RE = regex.compile(f"({_ALPHA_NUM})|({_NON_WS})",
                                  flags=regex.IGNORECASE + regex.UNICODE + regex.MULTILINE)
    return _TOKEN_RE


def simple_tokenize(text: str, uncased: bool = True) -> list[str]:
    """DPR ``SimpleTokenizer(...).tokenize(text).words(uncased)``.

    Example:
        >>> simple_tokenize("Don't stop, 1990s!")
        ['don', "'", 't', 'stop', ',', '1990s', '!']
    """
    words = [m.group() for m in _token_regex().finditer(text)]
    return [w.lower() for w in words] if uncased else words


def _normalize(text: str) -> str:
    return unicodedata.normalize("NFD", text)


def has_answer(answers: Iterable[str], text: str, match_type: str = "string") -> bool:
    """Whether ``text`` contains any of ``answers`` (DPR semantics, see the module docstring).

    Args:
        answers: gold answer strings (``regex`` mode: regular expressions).
        text: the passage (DPR passes the passage text; titles are not searched).
        match_type: ``"string"`` (token subsequence, uncased) or ``"regex"``.

    Example:
        >>> has_answer(["Beyoncé"], "Beyonce\\u0301 Knowles was born in 1981.")
        True
        >>> has_answer(["Paris"], "Parisian cafés")
        False
    """
    text = _normalize(text)
    if match_type == "string":
        tokens = simple_tokenize(text)
        for single_answer in answers:
            ans = simple_tokenize(_normalize(single_answer))
            for i in range(0, len(tokens) - len(ans) + 1):
                if ans == tokens[i:i + len(ans)]:
                    return True
        return False
    if match_type == "regex":
        for single_answer in answers:
            try:
                pattern = re.compile(_normalize(single_answer), flags=re.IGNORECASE + re.UNICODE + re.MULTILINE)
            except re.error:
                continue  # DPR's regex_match treats a bad pattern as no match
            if pattern.search(text) is not None:
                return True
        return False
    raise ValueError(f"match_type must be 'string' or 'regex', got {match_type!r}")


def first_hit_ranks(answers: Sequence[Sequence[str]], passages: Sequence[Sequence[str]],
                    match_type: str = "string") -> list[int | None]:
    """Per question, the 1-based rank of the first passage that has an answer (``None``: none does)."""
    ranks: list[int | None] = []
    for golds, texts in zip(answers, passages, strict=True):
        rank = next((j + 1 for j, t in enumerate(texts) if has_answer(golds, t, match_type)), None)
        ranks.append(rank)
    return ranks


def top_k_accuracy(ranks: Sequence[int | None], ks: Iterable[int] = (1, 5, 10, 20)) -> dict[str, float]:
    """``{"top@k": fraction of questions whose first answer-bearing passage ranks ≤ k}`` (DPR).

    Example:
        >>> top_k_accuracy([1, 3, None, 20], ks=(1, 5, 20))
        {'top@1': 0.25, 'top@5': 0.5, 'top@20': 0.75}
    """
    n = len(ranks)
    return {f"top@{k}": (sum(1 for r in ranks if r is not None and r <= k) / n if n else 0.0) for k in ks}
