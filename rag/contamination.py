"""Contamination check: evaluation questions or answers that appear in a training set or its evidence.

Text is normalised as SQuAD's evaluation does (lower case, punctuation and the articles
a/an/the removed, whitespace collapsed) and split into words. Then, per evaluation item:

- **question overlap** = the largest fraction of the question's word ``n``-grams found in any
  one training record (a question shorter than ``n`` words counts as one n-gram of its own
  length). Flagged at ``>= threshold``. GPT-3 (Brown et al. 2020, App. C) used 13-grams on
  documents; questions are short, so the default here is ``n = 8``.
- **answer hit** = the whole normalised answer appears as a word sequence in a training record.
  Short answers ("1857", "Denver") occur everywhere, so only answers of at least
  ``min_answer_words`` words are flagged on their own; a short answer is flagged when it appears
  in the same record as a flagged question.
- **passage overlap** (when the evaluation set has passages, such as XQuAD's paragraphs) = the
  largest fraction of a test passage's word ``passage_ngram``-grams (13, as GPT-3) found in any one
  training record. Flagged at ``>= threshold``: the test passage itself was trained on.

A training record's text is every string in it (prompt with its rendered evidence, response,
messages…); with an index, the full text of its ``evidence_ids`` documents is added, so
evidence cut by a budget is still checked.
"""

from __future__ import annotations

import logging
import re
import string
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from pretrain.config import Config, check_range

logger = logging.getLogger(__name__)

_PUNCT = str.maketrans({c: " " for c in string.punctuation})
_ARTICLES = re.compile(r"\b(a|an|the)\b")
MAX_ANSWER_WORDS = 16


def normalize_words(text: str) -> list[str]:
    """SQuAD-style normalisation into words.

    Example:
        >>> normalize_words("The Denver Broncos' win, in 2016!")
        ['denver', 'broncos', 'win', 'in', '2016']
    """
    return _ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split()


def ngrams(words: list[str], n: int) -> set[tuple[str, ...]]:
    if len(words) < n:
        return {tuple(words)} if words else set()
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


@dataclass
class CheckConfig(Config):
    """``wandao augment check``: n-gram contamination between an eval set and training data."""

    eval: str = field(default="", metadata={"help": "evaluation set: a split name (xquad-en:test) or JSONL"})
    train: list[str] = field(default_factory=list, metadata={"help": "training JSONL files (augment outputs)"})
    index: str | None = field(default=None, metadata={"help": "index to expand evidence_ids to full documents"})
    ngram: int = field(default=8, metadata={"help": "n for question n-grams"})
    threshold: float = field(default=0.5, metadata={"help": "question overlap fraction that flags an item"})
    min_answer_words: int = field(default=3, metadata={"help": "answers this long are flagged on their own"})
    eval_passages: str | None = field(default=None, metadata={
        "help": "the evaluation set's passages (a corpus or xquad-en:test); default: the XQuAD split's paragraphs "
                "when --eval is one, else none"})
    passage_ngram: int = field(default=13, metadata={"help": "n for passage n-grams"})
    out: str | None = field(default=None, metadata={"help": "write flagged items as JSONL here"})

    def __post_init__(self) -> None:
        check_range("ngram", self.ngram, 1)
        check_range("threshold", self.threshold, 0.0, 1.0, low_inclusive=False)
        check_range("min_answer_words", self.min_answer_words, 1)
        check_range("passage_ngram", self.passage_ngram, 1)


@dataclass
class Finding:
    """One evaluation item's worst overlap."""

    id: str
    question: str
    question_overlap: float = 0.0
    question_record: str | None = None
    answer_records: list[str] = field(default_factory=list)
    flagged_question: bool = False
    flagged_answer: bool = False

    def to_dict(self) -> dict:
        return {"id": self.id, "question": self.question, "question_overlap": round(self.question_overlap, 4),
                "question_record": self.question_record, "answer_records": self.answer_records[:10],
                "flagged_question": self.flagged_question, "flagged_answer": self.flagged_answer}


def _strings(obj) -> Iterator[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            if k not in ("id", "_id", "evidence_ids", "gold_ids", "template", "mode", "retrieval"):
                yield from _strings(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _strings(v)


def check_contamination(eval_items: Iterable[dict], train_records: Iterable[tuple[str, str]], ngram: int = 8,
                        threshold: float = 0.5, min_answer_words: int = 3, passages: dict[str, str] | None = None,
                        passage_ngram: int = 13) -> tuple[list[Finding], dict]:
    """Find evaluation items whose question or answer appears in the training records.

    Args:
        eval_items: dicts with ``id``, ``question`` and ``answers`` (list of strings).
        train_records: ``(record_id, text)`` pairs, streamed once.
        ngram, threshold, min_answer_words, passage_ngram: see the module docstring.
        passages: the evaluation set's passages ``{id: text}`` (none: no passage check).

    Returns:
        ``(findings, summary)``: one :class:`Finding` per evaluation item, and counts; with
        ``passages``, ``summary["passages_flagged"]`` and the worst ``summary["passage_overlap_max"]``.

    Example:
        >>> f, s = check_contamination([{"id": "q1", "question": "who won super bowl fifty in 2016", "answers": []}],
        ...                            [("t1", "Q: Who won Super Bowl fifty in 2016? A: Denver")], ngram=3)
        >>> f[0].flagged_question, f[0].question_overlap, s["questions_flagged"]
        (True, 1.0, 1)
    """
    items = list(eval_items)
    findings = [Finding(str(it["id"]), it["question"]) for it in items]
    q_grams: dict[tuple, list[int]] = defaultdict(list)
    q_sizes = []
    for i, it in enumerate(items):
        grams = ngrams(normalize_words(it["question"]), ngram)
        q_sizes.append(len(grams))
        for g in grams:
            q_grams[g].append(i)
    a_grams: dict[tuple, list[int]] = defaultdict(list)
    for i, it in enumerate(items):
        for a in it.get("answers", []):
            words = normalize_words(a)[:MAX_ANSWER_WORDS]
            if words:
                a_grams[tuple(words)].append(i)
    a_lengths = sorted({len(g) for g in a_grams})
    p_grams: dict[tuple, list[str]] = defaultdict(list)
    p_sizes: dict[str, int] = {}
    for pid, text in (passages or {}).items():
        grams = ngrams(normalize_words(text), passage_ngram)
        p_sizes[pid] = len(grams)
        for g in grams:
            p_grams[g].append(pid)
    p_worst: dict[str, tuple[float, str | None]] = {pid: (0.0, None) for pid in p_sizes}
    short_question_lengths = sorted({len(g) for g in q_grams if len(g) < ngram})
    n_records = 0
    for rec_id, text in train_records:
        n_records += 1
        words = normalize_words(text)
        grams = ngrams(words, ngram) if len(words) >= ngram else set()
        for n in short_question_lengths:
            grams |= {tuple(words[j:j + n]) for j in range(len(words) - n + 1)}
        counts: dict[int, int] = defaultdict(int)
        for g in grams:
            for i in q_grams.get(g, ()):
                counts[i] += 1
        for i, c in counts.items():
            frac = c / q_sizes[i]
            if frac > findings[i].question_overlap:
                findings[i].question_overlap, findings[i].question_record = frac, rec_id
        if p_grams:
            p_counts: dict[str, int] = defaultdict(int)
            for g in ngrams(words, passage_ngram) if len(words) >= passage_ngram else ():
                for pid in p_grams.get(g, ()):
                    p_counts[pid] += 1
            for pid, c in p_counts.items():
                if c / p_sizes[pid] > p_worst[pid][0]:
                    p_worst[pid] = (c / p_sizes[pid], rec_id)
        for n in a_lengths:
            for j in range(len(words) - n + 1):
                for i in a_grams.get(tuple(words[j:j + n]), ()):
                    if not findings[i].answer_records or findings[i].answer_records[-1] != rec_id:
                        findings[i].answer_records.append(rec_id)
    for it, f in zip(items, findings):
        f.flagged_question = f.question_overlap >= threshold
        long_answer = any(len(normalize_words(a)) >= min_answer_words for a in it.get("answers", []))
        f.flagged_answer = bool(f.answer_records) and (long_answer or (f.flagged_question
                                                                        and f.question_record in f.answer_records))
    summary = {"eval_items": len(items), "train_records": n_records, "ngram": ngram, "threshold": threshold,
               "questions_flagged": sum(f.flagged_question for f in findings),
               "answers_flagged": sum(f.flagged_answer for f in findings),
               "contaminated": sum(f.flagged_question or f.flagged_answer for f in findings)}
    if passages is not None:
        flagged = {pid: w for pid, w in p_worst.items() if w[0] >= threshold}
        summary.update(passages=len(p_sizes), passage_ngram=passage_ngram, passages_flagged=len(flagged),
                       passage_overlap_max=round(max((w[0] for w in p_worst.values()), default=0.0), 4),
                       passages_flagged_records={pid: rec for pid, (_, rec) in sorted(flagged.items())[:10]})
    return findings, summary


def train_texts(paths: Iterable[str], index: str | None = None) -> Iterator[tuple[str, str]]:
    """``(record_id, text)`` for every line of the training files (``path:line:id``)."""
    from indexer.data import iter_records

    store = None
    if index:
        from indexer import open_index

        store = open_index(index).docstore
    for path in paths:
        for line, row in iter_records(path):
            text = "\n".join(_strings(row))
            if store is not None and row.get("evidence_ids"):
                text += "\n" + "\n".join(d.get("title", "") + "\n" + d.get("text", "")
                                         for d in store.get([str(x) for x in row["evidence_ids"]]))
            yield f"{path}:{line}:{row.get('id', '')}", text


def _eval_passages(cfg: CheckConfig) -> dict[str, str] | None:
    """The evaluation set's passages: ``cfg.eval_passages``, or an XQuAD split's own paragraphs."""
    source = cfg.eval_passages or (cfg.eval if str(cfg.eval).startswith("xquad-en:") else None)
    if source is None:
        return None
    if str(source).startswith("xquad-en:"):
        from rag.xquad import xquad_corpus

        return {d["id"]: d["text"] for d in xquad_corpus(str(source).split(":", 1)[1])}
    from indexer.data import iter_corpus

    return {d["id"]: d["text"] for d in iter_corpus(source)}


def run_check(cfg: CheckConfig) -> tuple[list[Finding], dict]:
    """Run the check described by ``cfg`` (eval items from :func:`rag.data.iter_items`)."""
    from pretrain.config import ConfigError
    from rag.data import iter_items

    if not cfg.eval or not cfg.train:
        raise ConfigError("both --eval and --train are required", "eval" if not cfg.eval else "train")
    items = [{"id": it.id, "question": it.question, "answers": it.answers} for it in iter_items(cfg.eval)]
    findings, summary = check_contamination(items, train_texts(cfg.train, cfg.index), cfg.ngram, cfg.threshold,
                                            cfg.min_answer_words, _eval_passages(cfg), cfg.passage_ngram)
    if cfg.out:
        from indexer.data import write_jsonl

        write_jsonl(cfg.out, (f.to_dict() for f in findings if f.flagged_question or f.flagged_answer))
    return findings, summary
