"""Evidence templates: named, versioned formats that put search results into a model's text.

Four templates, each rendering an :class:`Example` (question, optional search query, optional
chat history, retrieved passages, answer) into a prompt part and a response part, and parsing
that text back:

- ``sparrow`` (Glaese et al. 2022, "Improving alignment of dialogue agents via targeted human
  judgements"): a ``Search Query:`` turn, then ``Search Results:`` with ``Page title:`` and a
  snippet per result, then the answer turn.
- ``lamda`` (Thoppilan et al. 2022, "LaMDA: Language Models for Dialog Applications"): toolset
  turns ``TS, <query>`` then ``TS: <result>``, then the reply addressed to the user (``User, …``).
- ``docs`` (FlashRAG's default generator prompt, Jin et al. 2024): ``Doc i (Title: …) text`` blocks
  before the question.
- ``search-r1`` (Jin et al. 2025, "Search-R1"): ``<search>…</search><information>…</information>``
  in the prompt and ``<answer>…</answer>`` as the response, for RL rollouts.

Shared rules:

- Passages are sanitised first (:mod:`rag.sanitize`): a document cannot forge a turn, a tag, a
  citation or a special token.
- Budgets are counted with a real tokenizer (:class:`Budget`): per passage (the passage's whole
  rendered block, marker and title included) and in total (all blocks together). Text is cut
  at a sentence end when that keeps at least half of what fits, else at a word boundary; the
  template's markers are never cut (they are outside the cut text).
- Passage ``i`` carries citation marker ``[i]`` (``Doc i`` in ``docs``/``search-r1``);
  :attr:`Rendered.evidence_ids` maps markers back to document ids, in citation order.
- When not even ``Budget.min_passages`` passages fit, :class:`EvidenceBudgetError` says so.

The prompt part holds everything the model reads (history, question, evidence, the answer turn
header); the response part is what it is trained to write. SFT masks the prompt; PPO treats it
(evidence included) as context.

Example:
    >>> t = get_template("sparrow")
    >>> r = t.render(Example(question="Who won?", answer="Denver",
    ...                      passages=[Passage("d1", "Super Bowl 50", "Denver won.")]))
    >>> print(r.prompt + r.response)
    User: Who won?
    Search Query: Who won?
    Search Results:
    [1] Page title: Super Bowl 50
    Denver won.
    <BLANKLINE>
    Assistant: Denver
    >>> r.evidence_ids
    ['d1']
    >>> t.parse(r.prompt, r.response).passages[0].title
    'Super Bowl 50'
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from itertools import accumulate
from typing import TYPE_CHECKING, ClassVar, Sequence

from rag.sanitize import Sanitizer

if TYPE_CHECKING:
    from rag.tokenizer import TextTokenizer

#: The default target when the evidence does not contain the answer (RA-DIT, Sparrow).
ABSTAIN_ANSWER = "I could not find this in the search results."


class EvidenceBudgetError(ValueError):
    """The minimum evidence does not fit in the token budget."""


class TemplateParseError(ValueError):
    """Text that does not have the template's structure."""


@dataclass
class Passage:
    """One retrieved document as rendered: its id, title and (snippet) text."""

    doc_id: str
    title: str
    text: str
    score: float | None = None
    truncated: bool = False


@dataclass
class Example:
    """What a template renders.

    Attributes:
        question: the user's message.
        answer: the target response ('' for prompts without a target, e.g. RL prompts).
        passages: retrieved passages in rank order; empty renders the no-evidence form.
        query: the search query (defaults to the question, on one line).
        history: earlier turns as ``(role, text)``, role ``"user"`` or ``"assistant"``.
    """

    question: str
    answer: str = ""
    passages: list[Passage] = field(default_factory=list)
    query: str | None = None
    history: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Budget:
    """Token budgets for the evidence.

    Attributes:
        passage_tokens: most tokens one passage's rendered block may take (marker, title and
            snippet together).
        total_tokens: most tokens all passage blocks may take together.
        min_passages: fewest passages that must fit; fewer raises :class:`EvidenceBudgetError`.
        min_passage_tokens: a passage cut to fewer snippet tokens than this is dropped instead.
    """

    passage_tokens: int = 160
    total_tokens: int = 512
    min_passages: int = 1
    min_passage_tokens: int = 8

    def __post_init__(self) -> None:
        for name in ("passage_tokens", "total_tokens", "min_passage_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"Budget.{name} must be >= 1, got {getattr(self, name)}")
        if self.min_passages < 0:
            raise ValueError(f"Budget.min_passages must be >= 0, got {self.min_passages}")


@dataclass
class Rendered:
    """A rendered example.

    Attributes:
        prompt: everything the model reads, ending with the answer turn's header.
        response: the target text.
        evidence_ids: document ids in citation order (``[1]`` is ``evidence_ids[0]``).
        evidence_spans: ``(start, end)`` character spans of each passage block in ``prompt``.
        truncated: per passage, whether its snippet was cut to fit.
    """

    template: str
    version: int
    prompt: str
    response: str
    evidence_ids: list[str]
    evidence_spans: list[tuple[int, int]]
    truncated: list[bool]
    query: str | None = None

    @property
    def text(self) -> str:
        return self.prompt + self.response

    @property
    def citations(self) -> dict[str, str]:
        """``{"[1]": doc_id, ...}``."""
        return {f"[{i}]": d for i, d in enumerate(self.evidence_ids, start=1)}

    @property
    def name(self) -> str:
        return f"{self.template}@{self.version}"


@dataclass
class Parsed:
    """What :meth:`Template.parse` recovers (passage ids are ``"[i]"`` citation markers)."""

    question: str
    answer: str
    passages: list[Passage]
    query: str | None
    history: list[tuple[str, str]]


_SENTENCE_END = re.compile(r"[.!?][\"')\]]*(?=\s)")
_CITATION = re.compile(r"\[(\d{1,3})\]")
_ROLE_NAMES = {"user": "User", "assistant": "Assistant"}


def cited_ids(response: str, evidence_ids: Sequence[str]) -> list[str]:
    """Document ids that a response cites with ``[i]`` markers, in first-citation order.

    Example:
        >>> cited_ids("Denver [2], as [1] and [2] say.", ["a", "b"])
        ['b', 'a']
    """
    out: list[str] = []
    for m in _CITATION.finditer(response):
        i = int(m.group(1))
        if 1 <= i <= len(evidence_ids) and evidence_ids[i - 1] not in out:
            out.append(evidence_ids[i - 1])
    return out


def _one_line(text: str) -> str:
    return " ".join(text.split())


class Template:
    """Base class: subclasses define the block format, the layout and the parser."""

    name: ClassVar[str]
    version: ClassVar[int]
    #: literal delimiters of this template that must not appear inside a passage.
    delimiters: ClassVar[tuple[str, ...]] = ()
    #: the sequence that must not appear inside a title (the title's closing delimiter).
    title_end: ClassVar[str | None] = None
    user_header = "User:"
    assistant_header = "Assistant:"

    def __init__(self, tokenizer: "TextTokenizer | None" = None, budget: Budget | None = None,
                 sanitizer: Sanitizer | None = None):
        self.tokenizer = tokenizer
        self.budget = budget or Budget()
        specials = tokenizer.special_tokens if tokenizer is not None else ()
        self.sanitizer = sanitizer or Sanitizer(special_tokens=specials, extra=self.delimiters)
        #: text -> (token end offsets, whole text tokenised?); see :meth:`_text_tokens`
        self._token_cache: dict[str, tuple[list[int], bool]] = {}
        self._overhead_cache: dict[tuple[int, str], int] = {}
        #: word -> its tokens' end offsets: see :meth:`_tokenize_texts`; used when the tokenizer's tokens
        #: never cross a space (additive, and no added token holds a space)
        self._word_tokens: dict[str, tuple[int, ...]] = {}
        self._need: tuple[int, int] | None = None  # (passage_tokens, _tokens_needed())
        self._words_split = tokenizer is not None and tokenizer.additive and not any(
            " " in t.content for t in tokenizer.backend.get_added_tokens_decoder().values())
        #: (title, text) -> sanitised (title, text), for the sanitiser in ``_clean_by``
        self._clean_cache: dict[tuple[str, str], tuple[str, str]] = {}
        self._clean_by: Sanitizer | None = None

    # ---- pieces each template defines ---------------------------------------------------------
    def block(self, i: int, title: str, text: str) -> str:
        """One passage block (no trailing newline)."""
        raise NotImplementedError

    def layout(self, ex: Example, blocks: list[str]) -> tuple[str, str, list[int]]:
        """Return (prompt, response, start offset of each block in the prompt)."""
        raise NotImplementedError

    def parse(self, prompt: str, response: str) -> Parsed:
        """Recover the example from rendered text; raises :class:`TemplateParseError`."""
        raise NotImplementedError

    # ---- shared machinery ---------------------------------------------------------------------
    def clean_passage(self, p: Passage) -> Passage:
        """Sanitise title and text; a title may not contain its closing delimiter.

        Results are kept per (title, text) for this template's sanitiser, so a document retrieved
        for many questions is cleaned once (by :meth:`render` and :meth:`render_many` alike).
        """
        if self._clean_by is not self.sanitizer:  # the sanitiser was replaced: forget what the old one did
            self._clean_cache, self._clean_by = {}, self.sanitizer
        key = (p.title, p.text)
        got = self._clean_cache.get(key)
        if got is None:
            title = self.sanitizer(p.title)
            if self.title_end and self.title_end in title:
                # a no-break space keeps the title readable but unambiguous to the parser
                title = title.replace(self.title_end, self.title_end.rstrip() + "\u00a0")
            got = (title, self.sanitizer(p.text))
            if len(self._clean_cache) > 50_000:
                self._clean_cache.clear()
            self._clean_cache[key] = got
        return Passage(p.doc_id, got[0], got[1], p.score, p.truncated)

    def render_many(self, examples: Sequence[Example], passages_are_clean: bool = False) -> list[Rendered]:
        """:meth:`render` for a batch, with the same result as rendering one example at a time.

        :meth:`prepare` first tokenises what the batch's passages need in batched calls; each
        example's evidence is then fitted from those cached token offsets. With a tokenizer that is
        not additive, all evidence strings are then tokenised together and every block is checked
        against the budgets in place; an example that fails is re-fitted exactly, one count at a time.
        """
        cleaned = [ex.passages if passages_are_clean else [self.clean_passage(p) for p in ex.passages]
                   for ex in examples]
        if self.tokenizer is None:
            fitted = [list(ps) for ps in cleaned]
        else:
            self.prepare(cleaned)
            fitted = [self._fit_fast(ps, verify=False) if ps else [] for ps in cleaned]
            todo = [i for i, f in enumerate(fitted) if f]
            if todo and not self.tokenizer.additive:
                joined = [self.join_blocks(fitted[i]) for i in todo]
                encs = self.tokenizer.backend.encode_batch(joined, add_special_tokens=False)
                for i, text, enc in zip(todo, joined, encs):
                    if not self._within_budget(fitted[i], text, enc.offsets):
                        fitted[i] = None
            fitted = [f if f is not None else self._fit_exact(ps) for f, ps in zip(fitted, cleaned)]
        return [self._layout_rendered(ex, f) for ex, f in zip(examples, fitted)]

    def _within_budget(self, kept: list[Passage], joined: str, offsets: list[tuple[int, int]]) -> bool:
        b = self.budget
        if len(offsets) > b.total_tokens:
            return False
        sep = self.join_blocks([Passage("", "", ""), Passage("", "", "")])
        sep = sep[len(self.block(1, "", "")):len(sep) - len(self.block(2, "", ""))]
        bounds, pos = [], 0
        for i, p in enumerate(kept, start=1):
            end = pos + len(self.block(i, p.title, p.text))
            bounds.append(end)
            pos = end + len(sep)
        import bisect

        starts = [s for s, _ in offsets]
        prev = 0
        for end in bounds:
            n = bisect.bisect_left(starts, end) - prev
            if n > b.passage_tokens:
                return False
            prev += n
        return True

    def prepare(self, passage_lists: Sequence[Sequence[Passage]]) -> None:
        """Tokenise, in batched calls, every passage text and block header of ``passage_lists`` that
        :meth:`fit` has not counted yet (with the tokenizer's parallel batch encoder).

        :meth:`render_many` calls it; it only fills caches, so rendering gives the same result
        with or without it.
        """
        if self.tokenizer is None:
            return
        texts = {p.text: None for ps in passage_lists for p in ps if p.text not in self._token_cache}
        heads = {(i, p.title): None for ps in passage_lists for i, p in enumerate(ps, start=1)
                 if (i, p.title) not in self._overhead_cache}
        if texts:
            self._tokenize_texts(list(texts))
        if heads:
            keys = list(heads)
            headers = [self.block(i, title, "") for i, title in keys]
            if self._words_split:  # a header's count is the sum of its words' counts
                new = {w: None for h in headers for w in h.split(" ") if w not in self._word_tokens}
                if new:
                    self._tokenize_words(list(new))
                counts = [self._words_count(h) for h in headers]
            else:
                counts = self.tokenizer.count_batch(headers)
            self._overhead_cache.update(zip(keys, counts))

    def render(self, ex: Example, passages_are_clean: bool = False) -> Rendered:
        """Sanitise, fit to the budget and lay out ``ex``.

        Args:
            ex: the example; ``ex.passages`` in rank order.
            passages_are_clean: skip sanitising (the caller already ran :meth:`clean_passage`).

        Raises:
            EvidenceBudgetError: passages were given but fewer than ``budget.min_passages`` fit.
        """
        passages = ex.passages if passages_are_clean else [self.clean_passage(p) for p in ex.passages]
        return self._layout_rendered(ex, self.fit(passages) if passages else [])

    def _layout_rendered(self, ex: Example, fitted: list[Passage]) -> Rendered:
        blocks = [self.block(i, p.title, p.text) for i, p in enumerate(fitted, start=1)]
        query = _one_line(ex.query if ex.query is not None else ex.question)
        prompt, response, starts = self.layout(Example(ex.question, ex.answer, ex.passages, query, ex.history), blocks)
        spans = [(s, s + len(b)) for s, b in zip(starts, blocks)]
        return Rendered(self.name, self.version, prompt, response, [p.doc_id for p in fitted], spans,
                        [p.truncated for p in fitted], query=query if fitted else None)

    def _count(self, text: str) -> int:
        return self.tokenizer.count(text)

    def fit(self, passages: list[Passage]) -> list[Passage]:
        """Cut passages to the per-passage budget and keep as many as fit the total budget.

        A fast path counts each passage text once (cached by text; see :meth:`_tokenize_texts`) and
        adds the block's overhead. With an additive tokenizer (tokens never cross whitespace, so
        counts add up across the block's separators) that is exact; otherwise one exact count of the
        result verifies it, and when that fails the exact path re-counts every step.
        """
        if self.tokenizer is None:
            return list(passages)
        # an additive tokenizer's counts add up across the block separators: the fast fit is exact
        fast = self._fit_fast(passages, verify=not self.tokenizer.additive)
        return fast if fast is not None else self._fit_exact(passages)

    #: characters tokenised per missing token: the first 161 MiniLM tokens of SciFact and XQuAD texts
    #: span 4.6 characters per token at the median and 5.9 at the 99th percentile
    _CHARS_PER_TOKEN_FIRST, _CHARS_PER_TOKEN_MORE = 4.7, 6.0

    def _tokens_needed(self) -> int:
        """How many leading tokens of a passage text decide its fit: one more than any block's text can
        hold (``passage_tokens`` less the smallest block header, marker and title included)."""
        key = self.budget.passage_tokens
        if self._need is None or self._need[0] != key:
            header = min(self._overhead(1, ""), self._overhead(10, ""))
            self._need = (key, max(1, key + 1 - header))
        return self._need[1]

    def _tokenize_texts(self, texts: Sequence[str]) -> None:
        """Fill :attr:`_token_cache` for ``texts``, one batched tokenizer call per round.

        With an additive tokenizer (its tokens never cross whitespace, see
        :class:`~rag.tokenizer.TextTokenizer`) a text's tokens are the tokens of its space-separated
        words, each tokenised on its own, offsets shifted to where the word starts. So the words
        are tokenised once each (:attr:`_word_tokens`, in one batched call for all new words of all
        ``texts``), and only as far into a text as the fit can reach (:meth:`_tokens_needed`). Other
        tokenizers get each whole text.
        """
        if not self._words_split:
            encs = self.tokenizer.backend.encode_batch(list(texts), add_special_tokens=False)
            done = {text: ([e for _, e in enc.offsets], True) for text, enc in zip(texts, encs)}
        else:
            need = self._tokens_needed()
            words = self._word_tokens
            state = {text: ([], 0) for text in texts}  # text -> (token ends so far, characters consumed)
            todo, per_token = list(state), self._CHARS_PER_TOKEN_FIRST
            while todo:
                plan, new = [], {}
                for text in todo:
                    ends, pos = state[text]
                    stop = pos + int(per_token * (need - len(ends))) + 1
                    cut = text.find(" ", stop) if stop < len(text) else -1
                    end = cut if cut > 0 else len(text)
                    seg = text[pos:end].split(" ")  # text[pos] is a space (or pos is 0)
                    plan.append((text, end, seg))
                    new.update(dict.fromkeys(seg))
                new = [w for w in new if w not in words]
                if new:
                    if len(words) + len(new) > 500_000:
                        words.clear()
                    self._tokenize_words(new)
                retry = []
                for text, end, seg in plan:
                    ends, pos = state[text]
                    starts = accumulate([len(w) + 1 for w in seg], initial=pos)  # where each word starts
                    ends += [start + e for start, w in zip(starts, seg) for e in words[w]]
                    state[text] = (ends, end)
                    if len(ends) < need and end < len(text):
                        retry.append(text)
                todo, per_token = retry, self._CHARS_PER_TOKEN_MORE
            done = {text: (ends, pos == len(text)) for text, (ends, pos) in state.items()}
        if len(self._token_cache) + len(done) > 50_000:
            self._token_cache.clear()
        self._token_cache.update(done)

    def _tokenize_words(self, words: list[str], per_call: int = 1000) -> None:
        """Tokenise ``words`` (none holding a space) into :attr:`_word_tokens`.

        Words go to the tokenizer joined by spaces, ``per_call`` to a string (one ``Encoding`` per
        string, not per word, which is where the time of small inputs goes), and each token is given
        to the word its end offset falls in: tokens never cross a space, so these are the tokens of
        each word on its own.
        """
        texts = [" ".join(words[i:i + per_call]) for i in range(0, len(words), per_call)]
        encs = self.tokenizer.backend.encode_batch(texts, add_special_tokens=False)
        for i, enc in zip(range(0, len(words), per_call), encs):
            group = words[i:i + per_call]
            rel: list[int] = []  # token ends relative to their word's start, all words in a row
            first = [0] * (len(group) + 1)  # word j's tokens are rel[first[j]:first[j + 1]]
            j, start, end = 0, 0, len(group[0])
            for _, e in enc.offsets:
                while e > end:  # past word j: move to the word holding this token's end
                    j += 1
                    first[j] = len(rel)
                    start, end = end + 1, end + 1 + len(group[j])
                rel.append(e - start)
            first[j + 1:] = [len(rel)] * (len(group) - j)
            # tuples of ints: the cyclic garbage collector stops tracking them
            self._word_tokens.update((w, tuple(rel[first[k]:first[k + 1]])) for k, w in enumerate(group))

    def _text_tokens(self, text: str) -> list[int]:
        """End offsets of ``text``'s tokens: all of them, or at least the first :meth:`_tokens_needed`."""
        got = self._token_cache.get(text)
        if got is None or (not got[1] and len(got[0]) < self._tokens_needed()):  # or the budget grew
            self._tokenize_texts([text])
            got = self._token_cache[text]
        return got[0]

    def _overhead(self, i: int, title: str) -> int:
        """Tokens of passage ``i``'s block without its text (marker, title, separators)."""
        key = (i, title)
        n = self._overhead_cache.get(key)
        if n is None:
            header = self.block(i, title, "")
            n = self._overhead_cache[key] = self._words_count(header) if self._words_split else self._count(header)
        return n

    def _words_count(self, text: str) -> int:
        """Token count of ``text`` from its space-separated words (tokenising the new ones)."""
        words = text.split(" ")
        new = [w for w in dict.fromkeys(words) if w not in self._word_tokens]
        if new:
            self._tokenize_words(new)
        return sum(len(self._word_tokens[w]) for w in words)

    def _fit_fast(self, passages: list[Passage], verify: bool = True) -> list[Passage] | None:
        import bisect

        b = self.budget
        kept: list[Passage] = []
        used = 0
        for i, p in enumerate(passages, start=1):
            # a partial token list has more tokens than the block has room for after its header
            # (see _tokens_needed), so n > room and the text is cut within the tokens it holds
            ends = self._text_tokens(p.text)
            over = self._overhead(i, p.title)
            n = over + len(ends)
            room = min(b.passage_tokens, b.total_tokens - used)
            if n > room:
                text_room = room - over
                if text_room < b.min_passage_tokens:
                    break
                text = _cut_at_boundary(p.text, ends[text_room - 1])
                n_text = bisect.bisect_right(ends, len(text))
                if not text or n_text < b.min_passage_tokens:
                    break
                p, n = Passage(p.doc_id, p.title, text, p.score, True), over + n_text
            kept.append(p)
            used += n
            if used >= b.total_tokens:
                break
        if len(kept) < b.min_passages:
            return None
        if not kept or not verify:
            return kept
        counts = self.tokenizer.count_batch([self.block(i, p.title, p.text) for i, p in enumerate(kept, start=1)]
                                            + [self.join_blocks(kept)])
        if all(c <= b.passage_tokens for c in counts[:-1]) and counts[-1] <= b.total_tokens:
            return kept
        return None

    def _fit_exact(self, passages: list[Passage]) -> list[Passage]:
        b = self.budget
        texts = [self.block(i, p.title, p.text) for i, p in enumerate(passages, start=1)]
        counts = self.tokenizer.count_batch(texts)
        kept: list[Passage] = []
        used = 0
        for i, (p, n) in enumerate(zip(passages, counts), start=1):
            room = min(b.passage_tokens, b.total_tokens - used)
            if n > room:
                cut = self._truncate(i, p, room)
                if cut is None:
                    break
                p, n = cut
            kept.append(p)
            used += n
            if used >= b.total_tokens:
                break
        # token counts of joined blocks can differ by a token from the sum; verify and shrink
        while kept and self._count(self.join_blocks(kept)) > b.total_tokens:
            last = kept.pop()
            over = self._count(self.join_blocks(kept + [last])) - b.total_tokens
            cut = self._truncate(len(kept) + 1, last, self._count(self.block(len(kept) + 1, last.title, last.text))
                                 - over - 1)
            if cut is not None:
                kept.append(cut[0])
            else:
                break
        if len(kept) < b.min_passages:
            overhead = self._count(self.block(1, passages[0].title, ""))
            raise EvidenceBudgetError(
                f"template {self.name}@{self.version}: the minimum evidence ({b.min_passages} passage(s) of at "
                f"least {b.min_passage_tokens} snippet tokens) does not fit: passage_tokens={b.passage_tokens}, "
                f"total_tokens={b.total_tokens}, and the first passage's marker and title alone take "
                f"{overhead} tokens. Raise the budget or lower min_passages.")
        return kept

    def join_blocks(self, passages: list[Passage]) -> str:
        return "\n".join(self.block(i, p.title, p.text) for i, p in enumerate(passages, start=1))

    def _truncate(self, i: int, p: Passage, max_block_tokens: int) -> tuple[Passage, int] | None:
        """Cut ``p.text`` so its block takes at most ``max_block_tokens``; None when too little is left."""
        overhead = self._count(self.block(i, p.title, ""))
        room = max_block_tokens - overhead
        if room < self.budget.min_passage_tokens:
            return None
        ids, offsets = self.tokenizer.encode_offsets(p.text)
        while True:
            limit = offsets[room - 1][1] if room <= len(offsets) else len(p.text)
            text = _cut_at_boundary(p.text, limit)
            if not text:
                return None
            n = self._count(self.block(i, p.title, text))
            if n <= max_block_tokens:
                return replace(p, text=text, truncated=True), n
            room -= n - max_block_tokens
            if room < self.budget.min_passage_tokens:
                return None

    def add_citation(self, response: str, marker: str) -> str:
        """The response with a citation marker (``[2]``) appended to the answer text."""
        return f"{response} {marker}"

    # ---- helpers for layouts/parsers ----------------------------------------------------------
    def _history_lines(self, history: list[tuple[str, str]]) -> list[str]:
        lines = []
        for role, text in history:
            if role not in _ROLE_NAMES:
                raise ValueError(f"history role must be 'user' or 'assistant', got {role!r}")
            lines.append(f"{_ROLE_NAMES[role]}: {text}")
        return lines

    def _split_user_turn(self, body: str) -> tuple[str, list[tuple[str, str]]]:
        """Split ``history + 'User: question\\n'`` into the question and the history."""
        if not body.endswith("\n"):
            raise TemplateParseError(f"{self.name}@{self.version}: the user turn must end with a newline")
        at = body.rfind("User: ")
        while at > 0 and body[at - 1] != "\n":
            at = body.rfind("User: ", 0, at)
        if at < 0:
            raise TemplateParseError(f"{self.name}@{self.version}: no 'User: ' turn found")
        return body[at + len("User: "):-1], self._parse_history(body[:at].rstrip("\n"))

    @staticmethod
    def _parse_history(text: str) -> list[tuple[str, str]]:
        if not text:
            return []
        parts = re.split(r"(?:^|\n)(User|Assistant): ", text)
        if parts[0] != "":
            raise TemplateParseError(f"history does not start with a turn header: {text[:60]!r}")
        return [(parts[j].lower(), parts[j + 1]) for j in range(1, len(parts), 2)]


_CLOSERS = "\"')]"


def _last_sentence_end(text: str, limit: int, floor: int) -> int:
    """The end of the last ``_SENTENCE_END`` match of ``text[:limit + 1]`` (followed by whitespace at or
    before ``limit``), searched from the right; 0 when there is none at or after ``floor``.

    A match is a ``.``/``!``/``?``, closing quotes, then whitespace, so whether one starts at a
    position depends only on the characters from there on: testing the candidates right to left
    finds the same last match as scanning the text from the start.
    """
    last = [text.rfind(c, 0, limit) for c in ".!?"]  # the last of each end mark not yet tested
    while True:
        p = max(last)
        if p < 0:
            return 0
        if p + 1 < floor and text[p + 1:floor].strip(_CLOSERS):
            return 0  # a match from p or before would end before floor (the caller's threshold)
        m = _SENTENCE_END.match(text, p, limit + 1)
        if m is not None:
            return m.end()
        i = last.index(p)
        last[i] = text.rfind(".!?"[i], 0, p)


def _cut_at_boundary(text: str, limit: int) -> str:
    """The longest prefix of ``text`` up to ``limit`` characters ending at a sentence end when that
    keeps at least half, else at a word boundary (never inside a word)."""
    if limit >= len(text):
        return text
    if text[limit].isspace():
        word_cut = limit
    else:
        word_cut = text.rfind(" ", 0, limit + 1)
        word_cut = max(word_cut, 0)
    sentence_cut = _last_sentence_end(text, limit, limit // 2)
    cut = sentence_cut if sentence_cut >= limit // 2 else word_cut
    return text[:cut].rstrip()


class SparrowTemplate(Template):
    name, version = "sparrow", 1
    delimiters = ("Search Query:", "Search Results:", "Page title:")

    def block(self, i: int, title: str, text: str) -> str:
        return f"[{i}] Page title: {title}\n{text}"

    def join_blocks(self, passages: list[Passage]) -> str:
        return "\n\n".join(self.block(i, p.title, p.text) for i, p in enumerate(passages, start=1))

    def layout(self, ex: Example, blocks: list[str]) -> tuple[str, str, list[int]]:
        head = "\n".join(self._history_lines(ex.history) + [f"User: {ex.question}"]) + "\n"
        starts: list[int] = []
        if blocks:
            head += f"Search Query: {ex.query}\nSearch Results:\n"
            for b in blocks:
                starts.append(len(head))
                head += b + "\n\n"
        return head + "Assistant: ", ex.answer, starts

    _BLOCK = re.compile(r"\[(\d+)\] Page title: ([^\n]*)\n([^\n]*)")

    def parse(self, prompt: str, response: str) -> Parsed:
        tail = "Assistant: "
        if not prompt.endswith(tail):
            raise TemplateParseError("not a sparrow@1 prompt: it must end with the answer turn 'Assistant: '")
        body = prompt[:-len(tail)]
        passages, query = [], None
        at = body.rfind("\nSearch Query: ")
        if at >= 0:
            body, evidence = body[:at + 1], body[at + 1:]
            m = re.fullmatch(r"Search Query: ([^\n]*)\nSearch Results:\n(.*\n\n)", evidence, re.DOTALL)
            if not m:
                raise TemplateParseError("sparrow@1: malformed 'Search Query:'/'Search Results:' turns")
            query = m.group(1)
            for j, blk in enumerate(m.group(2)[:-2].split("\n\n"), start=1):
                b = self._BLOCK.fullmatch(blk)
                if not b or int(b.group(1)) != j:
                    raise TemplateParseError(f"sparrow@1: malformed search result {j}: {blk[:80]!r}")
                passages.append(Passage(f"[{j}]", b.group(2), b.group(3)))
        question, history = self._split_user_turn(body)
        return Parsed(question, response, passages, query, history)


class LamdaTemplate(Template):
    name, version = "lamda", 1
    delimiters = ("TS,", "TS:")
    title_end = " | "

    def block(self, i: int, title: str, text: str) -> str:
        return f"TS: [{i}] {title} | {text}"

    def layout(self, ex: Example, blocks: list[str]) -> tuple[str, str, list[int]]:
        head = "\n".join(self._history_lines(ex.history) + [f"User: {ex.question}"]) + "\n"
        starts: list[int] = []
        if blocks:
            head += f"Assistant: TS, {ex.query}\n"
            for b in blocks:
                starts.append(len(head))
                head += b + "\n"
        return head + "Assistant: User, ", ex.answer, starts

    _BLOCK = re.compile(r"TS: \[(\d+)\] (.*?) \| ([^\n]*)")

    def parse(self, prompt: str, response: str) -> Parsed:
        tail = "Assistant: User, "
        if not prompt.endswith(tail):
            raise TemplateParseError("not a lamda@1 prompt: it must end with the reply turn 'Assistant: User, '")
        body = prompt[:-len(tail)]
        passages, query = [], None
        at = body.rfind("\nAssistant: TS, ")
        if at >= 0:
            body, evidence = body[:at + 1], body[at + 1:]
            lines = evidence.rstrip("\n").split("\n")
            query = lines[0][len("Assistant: TS, "):]
            for j, line in enumerate(lines[1:], start=1):
                b = self._BLOCK.fullmatch(line)
                if not b or int(b.group(1)) != j:
                    raise TemplateParseError(f"lamda@1: malformed toolset result {j}: {line[:80]!r}")
                passages.append(Passage(f"[{j}]", b.group(2), b.group(3)))
        question, history = self._split_user_turn(body)
        return Parsed(question, response, passages, query, history)


class DocsTemplate(Template):
    """FlashRAG's generator prompt, with the documents numbered for citation."""

    name, version = "docs", 1
    title_end = ") "
    INSTRUCTION = ("Answer the question based on the given documents. Cite the documents you use as [i].\n"
                   "The following are given documents.\n\n")
    NO_DOCS = "Answer the question.\n\n"

    def block(self, i: int, title: str, text: str) -> str:
        return f"Doc {i} (Title: {title}) {text}"

    def layout(self, ex: Example, blocks: list[str]) -> tuple[str, str, list[int]]:
        starts: list[int] = []
        head = self.INSTRUCTION if blocks else self.NO_DOCS
        for b in blocks:
            starts.append(len(head))
            head += b + "\n"
        if blocks:
            head += "\n"
        hist = self._history_lines(ex.history)
        if hist:
            head += "\n".join(hist) + "\n"
        return head + f"Question: {ex.question}\nAnswer: ", ex.answer, starts

    _BLOCK = re.compile(r"Doc (\d+) \(Title: (.*?)\) ([^\n]*)")

    def parse(self, prompt: str, response: str) -> Parsed:
        if prompt.startswith(self.INSTRUCTION):
            rest = prompt[len(self.INSTRUCTION):]
            docs, sep, rest = rest.partition("\n\n")
            if not sep:
                raise TemplateParseError("docs@1: the document list does not end with a blank line")
            lines = docs.split("\n")
        elif prompt.startswith(self.NO_DOCS):
            rest, lines = prompt[len(self.NO_DOCS):], []
        else:
            raise TemplateParseError("not a docs@1 prompt: it must open with the FlashRAG instruction")
        passages = []
        for j, line in enumerate(lines, start=1):
            b = self._BLOCK.fullmatch(line)
            if not b or int(b.group(1)) != j:
                raise TemplateParseError(f"docs@1: malformed document {j}: {line[:80]!r}")
            passages.append(Passage(f"[{j}]", b.group(2), b.group(3)))
        at = rest.rfind("Question: ")
        while at > 0 and rest[at - 1] != "\n":
            at = rest.rfind("Question: ", 0, at)
        if at < 0 or not rest.endswith("\nAnswer: "):
            raise TemplateParseError("docs@1: expected 'Question: …' then 'Answer: ' at the end")
        question = rest[at + len("Question: "):-len("\nAnswer: ")]
        return Parsed(question, response, passages, None, self._parse_history(rest[:at].rstrip("\n")))


class SearchR1Template(Template):
    """Search-R1's rollout format; the prompt ends where the model writes ``<answer>``."""

    name, version = "search-r1", 1
    title_end = ") "
    INSTRUCTION = ("Answer the given question. You can call a search engine by <search> query </search> and it "
                   "will return the top searched results between <information> and </information>. Provide the "
                   "answer inside <answer> and </answer>, citing documents as [i]. ")

    def block(self, i: int, title: str, text: str) -> str:
        return f"Doc {i}(Title: {title}) {text}"

    def layout(self, ex: Example, blocks: list[str]) -> tuple[str, str, list[int]]:
        head = self.INSTRUCTION
        hist = self._history_lines(ex.history)
        if hist:
            head += "\n" + "\n".join(hist) + "\n"
        head += f"Question: {ex.question}\n"
        starts: list[int] = []
        if blocks:
            head += f"<search> {ex.query} </search>\n<information>"
            for j, b in enumerate(blocks):
                starts.append(len(head))
                head += b + ("\n" if j < len(blocks) - 1 else "")
            head += "</information>\n"
        return head, f"<answer> {ex.answer} </answer>", starts

    _BLOCK = re.compile(r"Doc (\d+)\(Title: (.*?)\) ([^\n]*)")

    def add_citation(self, response: str, marker: str) -> str:
        if response.endswith(" </answer>"):
            return response[:-len(" </answer>")] + f" {marker} </answer>"
        return f"{response} {marker}"

    def parse(self, prompt: str, response: str) -> Parsed:
        if not prompt.startswith(self.INSTRUCTION) or not prompt.endswith("\n"):
            raise TemplateParseError("not a search-r1@1 prompt: it must open with the Search-R1 instruction")
        a = re.fullmatch(r"<answer> (.*) </answer>", response, re.DOTALL)
        if not a:
            raise TemplateParseError("search-r1@1: the response must be '<answer> … </answer>'")
        body = prompt[len(self.INSTRUCTION):]
        passages, query = [], None
        at = body.rfind("\n<search> ")
        if at >= 0:
            body, evidence = body[:at + 1], body[at + 1:]
            m = re.fullmatch(r"<search> ([^\n]*) </search>\n<information>(.*)</information>\n", evidence, re.DOTALL)
            if not m:
                raise TemplateParseError("search-r1@1: malformed <search>/<information> section")
            query = m.group(1)
            for j, line in enumerate(m.group(2).split("\n"), start=1):
                b = self._BLOCK.fullmatch(line)
                if not b or int(b.group(1)) != j:
                    raise TemplateParseError(f"search-r1@1: malformed document {j}: {line[:80]!r}")
                passages.append(Passage(f"[{j}]", b.group(2), b.group(3)))
        at = body.rfind("Question: ")
        while at > 0 and body[at - 1] != "\n":
            at = body.rfind("Question: ", 0, at)
        if at < 0:
            raise TemplateParseError("search-r1@1: no 'Question: ' line")
        question = body[at + len("Question: "):-1]
        hist = body[:at]
        if hist and not (hist.startswith("\n") and hist.endswith("\n")):
            raise TemplateParseError("search-r1@1: text between the instruction and the question is not history")
        return Parsed(question, a.group(1), passages, query, self._parse_history(hist[1:-1]))


TEMPLATES: dict[str, dict[int, type[Template]]] = {}
for _cls in (SparrowTemplate, LamdaTemplate, DocsTemplate, SearchR1Template):
    TEMPLATES.setdefault(_cls.name, {})[_cls.version] = _cls


def get_template(name: str, tokenizer: "TextTokenizer | None" = None, budget: Budget | None = None) -> Template:
    """A template by name (``"sparrow"``, latest version) or ``"name@version"``.

    Args:
        name: ``sparrow``, ``lamda``, ``docs`` or ``search-r1``, optionally ``@<version>``.
        tokenizer: counts budgets and supplies special tokens to neutralise; without one,
            passages are not cut.
        budget: token budgets (defaults: :class:`Budget`).

    Raises:
        KeyError: unknown name or version, listing the known ones.
    """
    base, _, ver = name.partition("@")
    if base not in TEMPLATES:
        raise KeyError(f"unknown template {name!r}; known: {', '.join(sorted(TEMPLATES))}")
    versions = TEMPLATES[base]
    v = int(ver) if ver else max(versions)
    if v not in versions:
        raise KeyError(f"template {base!r} has no version {v}; known: {sorted(versions)}")
    return versions[v](tokenizer=tokenizer, budget=budget)
