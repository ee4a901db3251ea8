"""Citations in answers: ALCE's inline markers, a lexical support judge, ALCE's per-answer citation
recall and precision, and the checks that make an answer a well-formed cited answer.

One implementation for the two places that judge citations (align may not import evals, so the
shared logic lives here):

- :mod:`evals.alce` and the ``attribution`` eval suite (ALCE's corpus numbers, any judge);
- :class:`align.rewards.AttributionRule`, the PPO reward (the same per-answer numbers).

Pieces:

- ALCE's marker handling (Gao et al. 2023, "Enabling Large Language Models to Generate Text with
  Citations", ``remove_citations`` in princeton-nlp/ALCE ``utils.py``): :func:`remove_citations`,
  :func:`split_sentences`, :func:`inline_citations`, :func:`format_passage`.
- :class:`LexicalJudge`: the model-free entailment proxy (SQuAD-normalised tokens, NLTK's English
  stopwords): a hypothesis is supported when its whole normalised text, or a given answer span it
  contains, occurs contiguously in the premise, or when at least ``threshold`` of its content
  words occur in the premise.
- :func:`alce_answer_scores`: ALCE's ``compute_autoais`` for one answer, given any yes/no judge.
- :func:`check_cited_answer`: why an answer is not a well-formed cited answer (malformed or
  out-of-range markers, no content words outside the markers, number fragments that are citation
  debris), or ``None``.

Example:
    >>> split_sentences("Paris is in France [1]. It is big.[2] Yes")
    ['Paris is in France [1].', 'It is big.[2]', 'Yes']
    >>> check_cited_answer("1]", n_passages=2)
    'malformed citation marker'
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Callable, Sequence

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

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
#: A well-formed citation marker: ``[n]`` with n written in 1 to 3 digits (1-based into the passages shown).
MARKER = re.compile(r"\[(\d{1,3})\]")


def normalize_tokens(text: str) -> list[str]:
    """SQuAD v1.1's answer normalisation (lower case, no punctuation, no articles), split on whitespace.

    The same tokens as ``evals.squad.normalize_answer(text).split()``.

    Example:
        >>> normalize_tokens("The Denver Broncos [1] won!")
        ['denver', 'broncos', '1', 'won']
    """
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return _ARTICLES.sub(" ", text).split()


def contains_span(haystack: Sequence[str], needle: Sequence[str]) -> bool:
    """Whether ``needle`` (non-empty) occurs as a contiguous run in ``haystack``."""
    n = len(needle)
    return n > 0 and any(list(haystack[i:i + n]) == list(needle) for i in range(len(haystack) - n + 1))


def longest_common_run(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest contiguous token run shared by ``a`` and ``b`` (dynamic programming).

    Example:
        >>> longest_common_run("x paris is the capital y".split(), "paris is the capital of france".split())
        4
    """
    best, prev = 0, [0] * (len(b) + 1)
    for ta in a:
        cur = [0] * (len(b) + 1)
        for j, tb in enumerate(b, start=1):
            if ta == tb:
                cur[j] = prev[j - 1] + 1
                best = max(best, cur[j])
        prev = cur
    return best


# ------------------------------------------------------------------------------------ ALCE markers


def remove_citations(sent: str) -> str:
    """ALCE's ``remove_citations``: drop ``[n]`` markers (and a preceding space).

    Example:
        >>> remove_citations("Eiffel was built in 1889 [1][3].")
        'Eiffel was built in 1889.'
    """
    return re.sub(r"\[\d+", "", re.sub(r" \[\d+", "", sent)).replace(" |", "").replace("]", "")


def split_sentences(text: str) -> list[str]:
    """Split an answer into sentences (ALCE uses NLTK's punkt; this is a regex stand-in that keeps
    trailing citation markers such as ``... Paris.[1][2]`` with their sentence).

    Example:
        >>> split_sentences("Paris is in France [1]. It is big.[2] Yes")
        ['Paris is in France [1].', 'It is big.[2]', 'Yes']
    """
    text = text.strip()
    if not text:
        return []
    out, start = [], 0
    for m in re.finditer(r"[.!?](?:\s*\[\d+\])*(\s+)(?=[\"'(\[]?[A-Z0-9])", text):
        end = m.start(1)
        out.append(text[start:end].strip())
        start = m.end(1)
    out.append(text[start:].strip())
    return [s for s in out if s]


def inline_citations(sentence: str) -> list[int]:
    """0-based passage indices of ALCE ``[n]`` markers in a sentence (``[n]`` is 1-based).

    Example:
        >>> inline_citations("Paris [2][1].")
        [1, 0]
    """
    return [int(r[1:]) - 1 for r in re.findall(r"\[\d+", sentence)]


def format_passage(doc: dict) -> str:
    """ALCE's ``_format_document``: ``"Title: {title}\\n{text}"``."""
    return "Title: %s\n%s" % (doc.get("title", ""), doc.get("sent", doc.get("text", "")))


# ----------------------------------------------------------------------------------- lexical judge


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
        p = normalize_tokens(premise)
        h = normalize_tokens(hypothesis)
        if not h:
            return False
        if contains_span(p, h):
            return True
        for ans in list(answers) + list(self.answers):
            a = normalize_tokens(ans)
            if contains_span(h, a) and contains_span(p, a):
                return True
        content = [t for t in h if t not in STOPWORDS]
        if not content:
            return False
        vocab = set(p)
        covered = sum(1 for t in content if t in vocab)
        return covered / len(content) >= self.threshold

    def judge(self, pairs: Sequence[tuple[str, str]]) -> list[bool]:
        return [self.supports(p, h) for p, h in pairs]


# ------------------------------------------------------------------------------ ALCE per answer


def alce_answer_scores(sentences: Sequence[str], citations: Sequence[Sequence[str]], passages: dict[str, dict],
                       ask: Callable[[list[tuple[str, str]]], list[bool]],
                       at_most_citations: int | None = None) -> dict:
    """ALCE citation recall and precision of one answer (fractions in [0, 1]), with per-sentence detail.

    ALCE's ``compute_autoais`` (Gao et al. 2023): a sentence is supported when the concatenation of
    its cited passages (:func:`format_passage`, joined by newlines) entails it; citing nothing, or a
    key not in ``passages``, is unsupported. A citation of a supported sentence is relevant unless
    the sentence cites several passages, the passage alone does not entail it and the other cited
    passages still do. Recall = supported sentences / sentences; precision = relevant citations /
    counted citations (0 when none).

    Args:
        sentences: the answer's sentences (markers may stay in them; they are removed before judging).
        citations: per sentence, the keys of ``passages`` it cites.
        passages: key → ``{"title", "text"}``.
        ask: the judge, ``ask([(premise, hypothesis), ...]) -> [bool, ...]``.
        at_most_citations: citations per sentence considered (ALCE: 3); None for all.

    Example:
        >>> P = {"d1": {"title": "Paris", "text": "Paris is the capital of France."},
        ...      "d2": {"title": "Lyon", "text": "Lyon is a city."}}
        >>> s = alce_answer_scores(["Paris is the capital of France [1][2]."], [["d1", "d2"]], P,
        ...                        LexicalJudge().judge)
        >>> s["recall"], s["precision"]
        (1.0, 0.5)
    """
    if len(citations) != len(sentences):
        raise ValueError(f"{len(citations)} citation lists for {len(sentences)} sentences")
    if not sentences:
        return {"recall": 0.0, "precision": 0.0, "sentences": [], "citations": 0}
    entail = entail_prec = total_citations = 0
    detail = []
    for sent, refs in zip(sentences, citations):
        target = remove_citations(sent).strip()
        refs = list(refs)
        if at_most_citations is not None:
            refs = refs[:at_most_citations]
        if not refs or any(r not in passages for r in refs):
            joint = False  # no citation, or a citation out of range: unsupported (ALCE)
            relevant = 0
        else:
            total_citations += len(refs)
            joint_passage = "\n".join(format_passage(passages[r]) for r in refs)
            joint = ask([(joint_passage, target)])[0]
            if joint and len(refs) > 1:
                relevant = 0
                for r in refs:
                    if ask([(format_passage(passages[r]), target)])[0]:
                        relevant += 1
                        continue
                    rest = "\n".join(format_passage(passages[x]) for x in refs if x != r)
                    # condition B: the rest still entails it -> this citation is unnecessary
                    if not ask([(rest, target)])[0]:
                        relevant += 1
            else:
                relevant = int(joint)
        entail += int(joint)
        entail_prec += relevant
        detail.append({"sentence": target, "citations": refs, "supported": bool(joint), "relevant": relevant})
    return {"recall": entail / len(sentences),
            "precision": entail_prec / total_citations if total_citations > 0 else 0.0,
            "sentences": detail, "citations": total_citations}


# ----------------------------------------------------------------------------- well-formedness


def _marker_debris(token: str, n_passages: int) -> bool:
    """Whether a numeral is only marker numbers run together ("1", "11", "121" with 2 passages shown)."""
    if not token.isdigit() or n_passages < 1:
        return False
    ok = [True] + [False] * len(token)  # ok[i]: token[:i] splits into integers in [1, n_passages]
    for i in range(1, len(token) + 1):
        for j in range(max(0, i - len(str(n_passages))), i):
            piece = token[j:i]
            if ok[j] and piece[0] != "0" and 1 <= int(piece) <= n_passages:
                ok[i] = True
                break
    return ok[-1]


def check_cited_answer(answer: str, n_passages: int) -> str | None:
    """Why ``answer`` is not a well-formed cited answer, or ``None`` when it is.

    An answer is well-formed when (1) every ``[`` and ``]`` belongs to a :data:`MARKER` ``[n]``,
    (2) every marker names a passage that was shown (1 ≤ n ≤ ``n_passages``), (3) the text outside
    the markers has content words (SQuAD-normalised tokens that are not stopwords) and (4) those
    content words are not all citation debris: numerals made only of marker numbers run together
    (with 2 passages shown "1", "2", "11", "121" are debris, "24" is not). Rule (4) also refuses
    a true one-digit count such as "2 [1]" when 2 passages are shown; a policy can emit such
    numbers for any question, so the rule cannot tell them apart from debris.

    Returns:
        ``"empty answer"``, ``"malformed citation marker"``, ``"citation out of range"``,
        ``"no content words"``, ``"citation debris"`` or ``None``.

    Example:
        >>> [check_cited_answer(a, 2) for a in ("", "1]", "Paris [3]", "[1]", "11 [1]", "Paris [1]")]
        ['empty answer', 'malformed citation marker', 'citation out of range', 'no content words', \
'citation debris', None]
    """
    if not answer.strip():
        return "empty answer"
    outside = MARKER.sub(" ", answer)
    if "[" in outside or "]" in outside:
        return "malformed citation marker"
    if any(not 1 <= int(m.group(1)) <= n_passages for m in MARKER.finditer(answer)):
        return "citation out of range"
    content = [t for t in normalize_tokens(outside) if t not in STOPWORDS]
    if not content:
        return "no content words"
    if all(_marker_debris(t, n_passages) for t in content):
        return "citation debris"
    return None
