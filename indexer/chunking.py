"""Split long documents into overlapping passages, keeping the source id and character offsets.

A passage's id is ``"<doc id>#<n>"``; it carries ``doc_id``, ``start`` and ``end`` (character
offsets into the original text) so a hit can be traced back and highlighted.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable, Iterator

_WORD = re.compile(r"\S+")

#: A token splitter returns (start, end) character spans of the tokens of a text.
Spans = Callable[[str], list[tuple[int, int]]]


def word_spans(text: str) -> list[tuple[int, int]]:
    """Whitespace-delimited words as character spans."""
    return [m.span() for m in _WORD.finditer(text)]


def tokenizer_spans(tokenizer) -> Spans:
    """Spans from an HF fast tokenizer's offset mapping (sub-word tokens)."""

    def spans(text: str) -> list[tuple[int, int]]:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return [tuple(span) for span in enc["offset_mapping"] if span[1] > span[0]]

    return spans


def chunk_text(text: str, max_tokens: int, overlap: int = 0, spans: Spans = word_spans) -> list[tuple[int, int]]:
    """Character ranges of consecutive windows of ``max_tokens`` tokens overlapping by ``overlap``.

    Example:
        >>> chunk_text("a b c d e", max_tokens=2, overlap=1)
        [(0, 3), (2, 5), (4, 7), (6, 9)]
    """
    if max_tokens <= 0:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    if not 0 <= overlap < max_tokens:
        raise ValueError(f"overlap must be in [0, max_tokens), got {overlap} with max_tokens={max_tokens}")
    token_spans = spans(text)
    if not token_spans:
        return [(0, len(text))]
    step = max_tokens - overlap
    ranges = []
    for first in range(0, len(token_spans), step):
        window = token_spans[first:first + max_tokens]
        ranges.append((window[0][0], window[-1][1]))
        if first + max_tokens >= len(token_spans):
            break
    return ranges


def chunk_documents(docs: Iterable[dict], max_tokens: int = 200, overlap: int = 0,
                    spans: Spans = word_spans) -> Iterator[dict]:
    """Yield passages ``{"id", "doc_id", "title", "text", "start", "end"}`` for each document.

    Every passage keeps its document's title, so title-aware retrievers still see it.
    """
    for doc in docs:
        for n, (start, end) in enumerate(chunk_text(doc["text"], max_tokens, overlap, spans)):
            yield {"id": f"{doc['id']}#{n}", "doc_id": doc["id"], "title": doc.get("title", ""),
                   "text": doc["text"][start:end], "start": start, "end": end}
