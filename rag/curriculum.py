"""A synthetic cloze-question curriculum: SQuAD-style QA rows built from corpus paragraphs.

Why: a small decoder trained on the ~950 XQuAD-train questions alone does not learn to find the
sentence of the evidence that matches a question and copy the answer out of it (issue 9's probes:
F1 0.5). Tens of thousands of pseudo-questions built from plain paragraphs teach that skill first
(the "find the matching context and copy" pattern of induction heads, Olsson et al. 2022), in the
same row format as XQuAD, so the real questions only fine-tune it. The construction follows the
cloze-translation idea of unsupervised QA (Lewis et al. 2019, "Unsupervised Question Answering by
Cloze Translation"): pick an answer span in a sentence, replace it by a wh-phrase of its type, and
keep a window of the sentence around the gap, with some words dropped and (for fronted questions)
moved, so that the question is not a verbatim substring of the paragraph.

Answer spans (SQuAD-like types, found with regular expressions only; no tagger model is needed):

- ``date``: ``March 7, 1999`` / ``7 March 1999`` / ``March 1999`` → *when*;
- ``year``: ``1066`` → *what year* (*in what year* after "in");
- ``number``: ``12,000 people`` → *how many people*; ``40 %`` / ``40 percent`` → *what percentage*;
- ``name``: a run of capitalised words (``Richard of Normandy``) not opening the sentence → *who*
  before a person verb (said, wrote, was born, …), *where* after a place preposition (in, at, …),
  else *what*;
- ``noun``: a determiner + up to three lowercase words (``the river delta``) → *what*.

Question forms: ``inplace`` ("the Normans gave their name to what?") or ``fronted`` ("What did the
Normans gave their name to?" style: the wh-phrase first, then the window around the gap).

Output rows (``wandao augment sft --data FILE`` and ``wandao sft --data.train FILE`` read them like
xquad-en): ``id``, ``title``, ``context``, ``question``, ``answers: {"text": [...],
"answer_start": [...]}``, ``paragraph_id`` (the evidence document's id, so retrieval treats it as
the gold document), ``answer_type`` and ``form``. ``corpus_out`` writes the paragraphs used as an
index-ready corpus (``_id``, ``title``, ``text``). Every ``answer_start`` is checked against its
context before a row is written.

No XQuAD-test text: the sources ``xquad-en``, ``xquad-en:all`` and ``xquad-en:test`` are refused, and
every other paragraph is compared with the XQuAD-test paragraphs of :mod:`rag.xquad`'s article split
(exact paragraph, or any shared sentence of eight or more words): a match raises :class:`DataError`
naming the source and the document.

Example:
    >>> write_cloze_questions(["xquad-en:train", "wikitext-2"], Path("runs/cloze.jsonl"),
    ...                       examples=50_000, seed=0)  # doctest: +SKIP
    {'examples': 50000, 'paragraphs': 5123, 'by_type': {...}, ...}
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from indexer.data import DataError
from pretrain.config import Config, ConfigError, check_range

logger = logging.getLogger(__name__)

ANSWER_TYPES = ("date", "year", "number", "name", "noun")
FORMS = ("inplace", "fronted")
REFUSED_SOURCES = ("xquad-en", "xquad-en:all", "xquad-en:test")

_MONTHS = ("January|February|March|April|May|June|July|August|September|October|November|December")
_DATE = re.compile(rf"\b(?:(?:{_MONTHS}) \d{{1,2}}, \d{{4}}|\d{{1,2}} (?:{_MONTHS}) \d{{4}}|(?:{_MONTHS}) \d{{4}})\b")
_YEAR = re.compile(r"(?<![\d,.])\b(1[0-9]{3}|20[0-9]{2})\b(?![\d,.%]| ?%| percent)")
_NUMBER = re.compile(r"(?<![\w.,])(\d{1,3}(?:,\d{3})+|\d+(?:\.\d+)?)(?: (million|billion|thousand|hundred))?"
                     r"( ?%| percent| [a-z]{3,}\b)")
_NAME_WORD = r"[A-Z](?:[a-zA-Z'\-]*[a-zA-Z])?"
_NAME = re.compile(rf"\b{_NAME_WORD}(?: (?:of|de|the|von|van) {_NAME_WORD}| {_NAME_WORD}){{0,4}}\b(?![\-+])")
_NOUN = re.compile(r"\b(?:the|a|an|his|her|its|their) ((?:[a-z][a-z\-]+ ){0,2}[a-z][a-z\-]{2,})\b")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
_WORD = re.compile(r"\S+")

_PERSON_VERBS = {"said", "wrote", "was", "became", "died", "married", "led", "won", "founded", "played", "argued",
                 "claimed", "declared", "invented", "painted", "composed", "ruled", "told", "took", "gave", "made"}
_PLACE_PREPS = {"in", "at", "near", "from", "across", "throughout"}
# Words a noun-phrase answer should not end in, nor a name start with (they make poor answers).
_STOP = {"the", "a", "an", "of", "and", "or", "in", "on", "at", "to", "for", "by", "with", "from", "as", "is", "was",
         "were", "be", "been", "are", "that", "which", "who", "this", "these", "those", "it", "its", "he", "she",
         "they", "his", "her", "their", "also", "not", "but", "than", "then", "there", "such", "other", "first",
         "after", "before", "during", "when", "while", "where", "however", "although", "one", "two", "most", "more",
         "many", "some", "several", "being", "has", "had", "have", "would", "could", "can", "will", "may", "into"}
_NAME_BAD_FIRST = {"The", "A", "An", "In", "On", "At", "It", "He", "She", "They", "This", "These", "His", "Her",
                   "Their", "However", "After", "Before", "During", "When", "While", "Although", "But", "And", "As",
                   "If", "Of", "For", "By", "With", "From", "To", "There", "That", "Its", "We", "I", "One", "Some",
                   *_MONTHS.split("|")}


@dataclass
class ClozeConfig(Config):
    """``wandao augment cloze``: synthetic cloze questions over corpus paragraphs."""

    sources: list[str] = field(default_factory=list, metadata={
        "help": "corpora: xquad-en:train, wikitext-2, scifact, tinyshakespeare, or JSONL/text files"})
    out: str = field(default="", metadata={"help": "output SQuAD-style JSONL"})
    corpus_out: str | None = field(default=None, metadata={
        "help": "also write the paragraphs used as an index-ready corpus JSONL (_id, title, text)"})
    examples: int = field(default=10_000, metadata={"help": "questions to write (fewer if the spans run out)"})
    seed: int = field(default=0, metadata={"help": "seed: the same seed and sources give the same file"})
    min_words: int = field(default=40, metadata={"help": "shortest paragraph kept (words)"})
    max_words: int = field(default=160, metadata={"help": "longer paragraphs are split at sentence ends"})
    max_answer_words: int = field(default=5, metadata={"help": "longest answer span (words)"})
    window_before: int = field(default=8, metadata={"help": "sentence words kept before the gap"})
    window_after: int = field(default=6, metadata={"help": "sentence words kept after the gap"})
    drop_fraction: float = field(default=0.15, metadata={"help": "probability of dropping each question word"})
    fronted_fraction: float = field(default=0.5, metadata={"help": "share of fronted (wh-first) questions"})
    types: list[str] = field(default_factory=lambda: list(ANSWER_TYPES), metadata={
        "help": f"answer types to use: {', '.join(ANSWER_TYPES)}"})
    per_paragraph: int = field(default=0, metadata={"help": "most questions per paragraph (0: no limit)"})
    xquad_path: str | None = field(default=None, metadata={
        "help": "XQuAD-en JSONL for the test-paragraph check (default: the mirrored dataset)"})

    def __post_init__(self) -> None:
        check_range("examples", self.examples, 1)
        check_range("min_words", self.min_words, 1)
        check_range("max_words", self.max_words, self.min_words)
        check_range("max_answer_words", self.max_answer_words, 1)
        check_range("window_before", self.window_before, 0)
        check_range("window_after", self.window_after, 0)
        check_range("drop_fraction", self.drop_fraction, 0.0, 0.9)
        check_range("fronted_fraction", self.fronted_fraction, 0.0, 1.0)
        check_range("per_paragraph", self.per_paragraph, 0)
        bad = [t for t in self.types if t not in ANSWER_TYPES]
        if bad or not self.types:
            raise ConfigError(f"unknown answer type {bad[0] if bad else '(none given)'!r}; allowed: "
                              f"{', '.join(ANSWER_TYPES)}", "types")


@dataclass
class Span:
    """An answer candidate: ``text`` at ``start`` (offset in its sentence) and how to ask for it."""

    start: int
    text: str
    type: str
    wh: str


# ------------------------------------------------------------------------------------- paragraphs


def detokenize_wikitext(text: str) -> str:
    """Undo WikiText's tokenisation (``1 @,@ 000`` → ``1,000``, ``word , word`` → ``word, word``).

    Example:
        >>> detokenize_wikitext("It weighs 1 @,@ 200 kg ( 2 @.@ 6 lb ) , the \\" crusher \\" .")
        'It weighs 1,200 kg (2.6 lb), the "crusher".'
    """
    text = re.sub(r" @([.,\-])@ ", r"\1", text)
    text = re.sub(r"\" (.*?) \"", r'"\1"', text)
    text = re.sub(r" ([.,;:!?%)\]])", r"\1", text)
    text = re.sub(r"([(\[]) ", r"\1", text)
    text = re.sub(r" (n't|'s|'re|'ve|'ll|'d|'m)\b", r"\1", text)
    return " ".join(text.split())


def _split_sentences(text: str) -> list[tuple[int, str]]:
    """``(offset, sentence)`` pairs; offsets index ``text``."""
    out, pos = [], 0
    for m in _SENTENCE_END.finditer(text):
        out.append((pos, text[pos:m.start()]))
        pos = m.end()
    if pos < len(text):
        out.append((pos, text[pos:]))
    return [(o, s) for o, s in out if s.strip()]


def _paragraphs_of(doc: dict, source: str, min_words: int, max_words: int) -> Iterator[dict]:
    """Split one document into paragraphs of ``min_words``..``max_words`` words (at sentence ends)."""
    wiki = source == "wikitext-2" or str(source).endswith((".raw", ".tokens"))
    title = doc.get("title", "") or ""
    n = 0
    for block in re.split(r"\n\s*\n|\n", doc.get("text", "")):
        block = block.strip()
        if not block or re.fullmatch(r"=+ .* =+", block):
            continue
        block = detokenize_wikitext(block) if wiki else " ".join(block.split())
        chunk: list[str] = []
        words = 0
        for _, sent in _split_sentences(block) + [(0, "")]:
            w = len(sent.split())
            if chunk and (not sent or words + w > max_words):
                if words >= min_words:
                    yield {"id": f"{doc['id']}:p{n}", "title": title, "text": " ".join(chunk)}
                    n += 1
                chunk, words = [], 0
            if sent:
                chunk.append(sent)
                words += w


def sentence_windows(paragraph: dict, window: int = 1) -> Iterator[dict]:
    """Split a paragraph into evidence chunks of ``window`` consecutive sentences (non-overlapping).

    Chunk ids are ``<paragraph id>#s<i>`` (``i`` the first sentence's index), so
    :func:`rag.retriever.source_of` maps a chunk back to its paragraph. Rows are index-ready
    (``_id``, ``title``, ``text``). Short evidence makes the copy easy for a small reader: the top-1
    BM25 sentence holds the answer for about 70% of XQuAD questions (docs/headline-recipe.md).

    Example:
        >>> [c["_id"] + " " + c["text"] for c in sentence_windows({"id": "p", "title": "T",
        ...     "text": "One is here. Two is there. Three."}, 2)]
        ['p#s0 One is here. Two is there.', 'p#s2 Three.']
    """
    if window < 1:
        raise ValueError(f"window must be at least 1 sentence, got {window}")
    sentences = [s for _, s in _split_sentences(" ".join(paragraph["text"].split()))]
    for i in range(0, len(sentences), window):
        yield {"_id": f"{paragraph['id']}#s{i}", "title": paragraph.get("title", ""),
               "text": " ".join(sentences[i:i + window])}


def iter_paragraphs(sources: list[str], min_words: int = 40, max_words: int = 160,
                    xquad_path: str | None = None) -> Iterator[tuple[str, dict]]:
    """``(source, paragraph)`` for every source; XQuAD-train paragraphs are kept whole with their xquad ids.

    Raises:
        DataError: a source that holds XQuAD-test paragraphs (``xquad-en``, ``:all``, ``:test``).
    """
    from rag.augment_pretrain import iter_corpus_any
    from rag.xquad import xquad_corpus

    for source in sources:
        if source in REFUSED_SOURCES:
            raise DataError(source, "holds XQuAD-test paragraphs; use xquad-en:train", field="sources")
        if source == "xquad-en:train":
            for p in xquad_corpus("train", xquad_path):
                yield source, {"id": p["id"], "title": p["title"], "text": p["text"]}
            continue
        for doc in iter_corpus_any(source):
            for p in _paragraphs_of(doc, source, min_words, max_words):
                yield source, p


def _norm_words(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


class TestTextGuard:
    """Refuses paragraphs that share a paragraph or a sentence (≥ 8 words) with XQuAD-test.

    Example:
        >>> guard = TestTextGuard.from_xquad()  # doctest: +SKIP
        >>> guard.check("wikitext-2", {"id": "x", "text": "A lobster is blue."})  # doctest: +SKIP
    """

    __test__ = False  # not a pytest class
    MIN_SENTENCE_WORDS = 8

    def __init__(self, test_paragraphs: list[str]):
        self.paragraphs = {_norm_words(t) for t in test_paragraphs}
        self.sentences = {s for t in test_paragraphs for s in self._sentences(t)}

    @classmethod
    def from_xquad(cls, path: str | None = None) -> "TestTextGuard":
        from rag.xquad import xquad_corpus

        return cls([d["text"] for d in xquad_corpus("test", path)])

    def _sentences(self, text: str) -> Iterator[str]:
        for _, s in _split_sentences(" ".join(text.split())):
            norm = _norm_words(s)
            if len(norm.split()) >= self.MIN_SENTENCE_WORDS:
                yield norm

    def check(self, source: str, paragraph: dict) -> None:
        """Raise :class:`DataError` if ``paragraph`` holds XQuAD-test text."""
        if _norm_words(paragraph["text"]) in self.paragraphs or any(
                s in self.sentences for s in self._sentences(paragraph["text"])):
            raise DataError(source, f"document {paragraph['id']!r} contains an XQuAD-test paragraph or sentence; "
                                    "remove it (rag.xquad's article split keeps test text out of training)",
                            field="sources")


# ------------------------------------------------------------------------------------------ spans


def _wh_for_name(sentence: str, start: int, end: int) -> str:
    before = sentence[:start].split()
    after = sentence[end:].split()
    if before and before[-1].lower() in _PLACE_PREPS:
        return "where"
    if after and after[0].strip(",.;").lower() in _PERSON_VERBS and (len(after) < 2 or after[1] != "of"):
        return "who"
    return "what"


def find_spans(sentence: str, max_answer_words: int = 5, types: tuple[str, ...] | list[str] = ANSWER_TYPES
               ) -> list[Span]:
    """Answer candidates in ``sentence``, non-overlapping, dates before years before numbers before names.

    Example:
        >>> [(s.text, s.type, s.wh) for s in find_spans("In 1066 the Normans conquered England.")]
        [('1066', 'year', 'in what year'), ('Normans', 'name', 'what'), ('England', 'name', 'what')]
    """
    spans: list[Span] = []
    taken: list[tuple[int, int]] = []

    def free(a: int, b: int) -> bool:
        return all(b <= s or a >= e for s, e in taken)

    def add(a: int, b: int, kind: str, wh: str) -> None:
        if not free(a, b):
            return
        taken.append((a, b))  # a span of an unused type still blocks lower-priority overlaps ("1999" in a date)
        if kind in types and len(sentence[a:b].split()) <= max_answer_words:
            spans.append(Span(a, sentence[a:b], kind, wh))

    for m in _DATE.finditer(sentence):
        add(m.start(), m.end(), "date", "when")
    for m in _YEAR.finditer(sentence):
        prev = sentence[:m.start()].split()
        wh = "in what year" if prev and prev[-1].lower() == "in" else "what year"
        add(m.start(), m.end(), "year", wh)
    for m in _NUMBER.finditer(sentence):
        unit = m.group(3)
        if unit.strip() in ("%", "percent"):
            add(m.start(), m.end(), "number", "what percentage")
        elif unit.strip() not in _STOP:
            # "12,000 people": the answer is the number (and its multiplier), the unit stays in the question.
            add(m.start(), m.end(2) if m.group(2) else m.end(1), "number", f"how many{unit}")
    for m in _NAME.finditer(sentence):
        a, b = m.start(), m.end()
        first = m.group(0).split()[0]
        if a == 0 or first in _NAME_BAD_FIRST or sentence[:a].rstrip().endswith((".", "\"")):
            continue
        add(a, b, "name", _wh_for_name(sentence, a, b))
    for m in _NOUN.finditer(sentence):
        words = m.group(1).split()
        if words[-1] in _STOP or any(w in _STOP for w in words):
            continue
        add(m.start(), m.end(), "noun", "what")
    spans.sort(key=lambda s: s.start)
    return spans


# -------------------------------------------------------------------------------------- questions


def make_question(sentence: str, span: Span, form: str, rng: random.Random, window_before: int = 8,
                  window_after: int = 6, drop_fraction: float = 0.15) -> str:
    """Turn ``sentence`` into a question about ``span``.

    ``inplace`` keeps the words around the gap in order with the wh-phrase in the gap; ``fronted``
    puts the wh-phrase first. Each kept word is dropped with probability ``drop_fraction``, but a
    question keeps at least two of the context words (so it can still be matched to its sentence).

    Example:
        >>> s = "The Normans gave their name to Normandy, a region in France."
        >>> sp = [x for x in find_spans(s) if x.text == "Normandy"][0]
        >>> make_question(s, sp, "inplace", random.Random(0), drop_fraction=0.0)
        'The Normans gave their name to what?'
    """
    before = _WORD.findall(sentence[:span.start])[-window_before:] if window_before else []
    after_all = _WORD.findall(sentence[span.start + len(span.text):])
    after = after_all[:window_after] if window_after else []
    # Cut the after-window at the end of the clause: "to Normandy, a region" asks about "to Normandy".
    for i, w in enumerate(after):
        if w.endswith((",", ";", ":", ".")) or i and w in ("and", "which", "who", "but"):
            after = after[:i + (0 if w in ("and", "which", "who", "but") else 1)]
            break
    if span.wh.startswith("how many "):
        after = after[1:]  # the unit is in the wh-phrase
    words = [w.strip(",;:.!?\"()") for w in before] + ["\x00"] + [w.strip(",;:.!?\"()") for w in after]
    words = [w for w in words if w]
    context = [i for i, w in enumerate(words) if w != "\x00"]
    keep = [i for i in context if rng.random() >= drop_fraction]
    if len(keep) < min(2, len(context)):
        keep = sorted(rng.sample(context, min(2, len(context))))
    kept = [w for i, w in enumerate(words) if w == "\x00" or i in set(keep)]
    if form == "inplace":
        out = " ".join(span.wh if w == "\x00" else w for w in kept)
    else:
        gap = kept.index("\x00")
        rest = kept[gap + 1:] + kept[:gap] if rng.random() < 0.5 else kept[:gap] + kept[gap + 1:]
        out = span.wh + " " + " ".join(rest)
    out = out.strip()
    return out[:1].upper() + out[1:] + "?"


# ------------------------------------------------------------------------------------------ writer


def _row_id(seed: int, paragraph_id: str, start: int, form: str) -> str:
    digest = hashlib.sha256(f"{seed}\x00{paragraph_id}\x00{start}\x00{form}".encode("utf-8")).hexdigest()[:12]
    return f"cloze-{digest}"


def cloze_rows(paragraphs: list[dict], cfg: ClozeConfig, stats: dict) -> Iterator[dict]:
    """Yield up to ``cfg.examples`` rows, visiting paragraphs round-robin in a seeded order.

    Each visit takes one unused (span, form) of the paragraph, so questions spread over the corpus
    before any paragraph gets a second one.
    """
    rng = random.Random(cfg.seed)
    candidates: list[list[tuple[int, Span, str]]] = []
    for p in paragraphs:
        cands = []
        for offset, sent in _split_sentences(p["text"]):
            for sp in find_spans(sent, cfg.max_answer_words, cfg.types):
                cands.append((offset, sp, sent))
        rng.shuffle(cands)
        candidates.append(cands)
    order = [i for i, c in enumerate(candidates) if c]
    rng.shuffle(order)
    used = [0] * len(paragraphs)
    written = 0
    while order and written < cfg.examples:
        still = []
        for i in order:
            if written >= cfg.examples:
                break
            p, cands = paragraphs[i], candidates[i]
            offset, sp, sent = cands[used[i]]
            used[i] += 1
            form = "fronted" if rng.random() < cfg.fronted_fraction else "inplace"
            question = make_question(sent, sp, form, rng, cfg.window_before, cfg.window_after, cfg.drop_fraction)
            start = offset + sp.start
            if p["text"][start:start + len(sp.text)] != sp.text:  # never write a span that is not where it says
                raise AssertionError(f"answer_start {start} does not point at {sp.text!r} in {p['id']}")
            yield {"id": _row_id(cfg.seed, p["id"], start, form), "title": p["title"], "context": p["text"],
                   "question": question, "answers": {"text": [sp.text], "answer_start": [start]},
                   "paragraph_id": p["id"], "answer_type": sp.type, "form": form}
            written += 1
            stats["by_type"][sp.type] = stats["by_type"].get(sp.type, 0) + 1
            stats["by_form"][form] = stats["by_form"].get(form, 0) + 1
            if used[i] < len(cands) and (not cfg.per_paragraph or used[i] < cfg.per_paragraph):
                still.append(i)
        order = still
    stats["exhausted"] = written < cfg.examples


def write_cloze_questions(sources: list[str], out: Path, examples: int, seed: int, **options) -> dict:
    """Write ``examples`` synthetic cloze questions over ``sources`` to ``out`` (SQuAD-style JSONL).

    Args:
        sources: corpora (``xquad-en:train``, ``wikitext-2``, ``scifact``, JSONL/text files).
        out: output JSONL path (written atomically).
        examples: number of questions (fewer if the sources run out of spans; ``exhausted`` says so).
        seed: the same seed, sources and options give a byte-identical file.
        **options: any other :class:`ClozeConfig` field (``corpus_out``, ``drop_fraction``, ...).

    Returns:
        A summary: ``examples``, ``paragraphs``, ``by_type``, ``by_form``, ``by_source``, ``exhausted``,
        ``out``, ``corpus_out``, ``seconds``.

    Raises:
        DataError: a source holding XQuAD-test paragraphs, or any paragraph sharing text with them.
    """
    cfg = ClozeConfig(sources=list(sources), out=str(out), examples=examples, seed=seed, **options)
    return run_cloze(cfg)


def run_cloze(cfg: ClozeConfig) -> dict:
    """:func:`write_cloze_questions` from a config (``wandao augment cloze``)."""
    from indexer.data import write_jsonl

    for name in ("sources", "out"):
        if not getattr(cfg, name):
            raise ConfigError("is required", name)
    t0 = time.perf_counter()
    guard = TestTextGuard.from_xquad(cfg.xquad_path)
    paragraphs, by_source, seen = [], {}, set()
    for source, p in iter_paragraphs(cfg.sources, cfg.min_words, cfg.max_words, cfg.xquad_path):
        if p["id"] in seen:
            raise DataError(source, f"paragraph id {p['id']!r} also occurs in an earlier source", field="sources")
        seen.add(p["id"])
        guard.check(source, p)
        paragraphs.append(p)
        by_source[source] = by_source.get(source, 0) + 1
    stats: dict = {"by_type": {}, "by_form": {}}
    n = write_jsonl(cfg.out, cloze_rows(paragraphs, cfg, stats))
    if cfg.corpus_out:
        write_jsonl(cfg.corpus_out, ({"_id": p["id"], "title": p["title"], "text": p["text"]} for p in paragraphs))
    if stats["exhausted"]:
        logger.warning("augment cloze: the sources ran out of answer spans after %d of %d questions", n, cfg.examples)
    summary = {"examples": n, "paragraphs": len(paragraphs), "by_source": by_source, "by_type": stats["by_type"],
               "by_form": stats["by_form"], "exhausted": stats["exhausted"], "out": cfg.out,
               "corpus_out": cfg.corpus_out, "seconds": round(time.perf_counter() - t0, 2)}
    logger.info("augment cloze: %s", summary)
    return summary
