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

import re
from dataclasses import dataclass, field
from typing import Sequence

from evals.entailment import EntailmentJudge, LexicalJudge



def remove_citations(sent: str) -> str:
    """ALCE's ``remove_citations``: drop ``[n]`` markers (and a preceding space)."""
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
    """0-based passage indices of ALCE ``[n]`` markers in a sentence (``[n]`` is 1-based)."""
    return [int(r[1:]) - 1 for r in re.findall(r"\[\d+", sentence)]


def format_passage(doc: dict) -> str:
    """ALCE's ``_format_document``: ``"Title: {title}\\n{text}"``."""
    return "Title: %s\n%s" % (doc.get("title", ""), doc.get("sent", doc.get("text", "")))


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
    """ALCE recall/precision of one answer (fractions in [0, 1]) with per-sentence detail."""
    sents = item.sentences
    if len(item.citations) != len(sents):
        raise ValueError(f"{len(item.citations)} citation lists for {len(sents)} sentences")
    if not sents:
        return {"recall": 0.0, "precision": 0.0, "sentences": [], "citations": 0}
    entail = entail_prec = total_citations = 0
    detail = []
    for sent, refs in zip(sents, item.citations):
        target = remove_citations(sent).strip()
        refs = list(refs)
        if at_most_citations is not None:
            refs = refs[:at_most_citations]
        if not refs or any(r not in item.passages for r in refs):
            joint = False  # no citation, or a citation out of range: unsupported (ALCE)
            relevant = 0
        else:
            total_citations += len(refs)
            joint_passage = "\n".join(format_passage(item.passages[r]) for r in refs)
            joint = _ask(judge, [(joint_passage, target)], item.answers)[0]
            if joint and len(refs) > 1:
                relevant = 0
                for r in refs:
                    alone = _ask(judge, [(format_passage(item.passages[r]), target)], item.answers)[0]
                    if alone:
                        relevant += 1
                        continue
                    rest = "\n".join(format_passage(item.passages[x]) for x in refs if x != r)
                    # condition B: the rest still entails it -> this citation is unnecessary
                    if not _ask(judge, [(rest, target)], item.answers)[0]:
                        relevant += 1
            else:
                relevant = int(joint)
        entail += int(joint)
        entail_prec += relevant
        detail.append({"sentence": target, "citations": refs, "supported": bool(joint), "relevant": relevant})
    return {"recall": entail / len(sents),
            "precision": entail_prec / total_citations if total_citations > 0 else 0.0,
            "sentences": detail, "citations": total_citations}


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
