"""The one result shape every retriever returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

#: Padding id for rows with fewer than ``k`` matching documents.
NO_DOC = ""


@dataclass
class Results:
    """Top-k hits for a batch of queries (the bm25s shape).

    Attributes:
        ids: ``(n_queries, k)`` unicode array of document ids, best first. Rows with fewer
            than ``k`` matching documents are padded with ``""`` (:data:`NO_DOC`).
        scores: ``(n_queries, k)`` float32 array; padding is ``-inf``.
        documents: optional per-query lists of document dicts (``id``, ``title``, ``text``)
            aligned with the non-padded part of each row.

    Example:
        >>> r = Results.from_lists([["d1", "d2"]], [[2.0, 1.0]])
        >>> [(h.doc_id, h.rank) for h in r.hits(0)]
        [('d1', 1), ('d2', 2)]
    """

    ids: np.ndarray
    scores: np.ndarray
    documents: list[list[dict]] | None = field(default=None)

    def __post_init__(self) -> None:
        if self.ids.shape != self.scores.shape or self.ids.ndim != 2:
            raise ValueError(f"ids {self.ids.shape} and scores {self.scores.shape} must both be (n_queries, k)")

    def __len__(self) -> int:
        return self.ids.shape[0]

    @property
    def k(self) -> int:
        return self.ids.shape[1]

    @classmethod
    def from_lists(cls, ids: list[list[str]], scores: list[list[float]], k: int | None = None,
                   documents: list[list[dict]] | None = None) -> "Results":
        """Build from ragged per-query lists (already sorted best first), padding to ``k``."""
        k = k if k is not None else max((len(r) for r in ids), default=0)
        n = len(ids)
        width = max([1] + [len(d) for row in ids for d in row])
        out_ids = np.full((n, k), NO_DOC, dtype=f"<U{width}")
        out_scores = np.full((n, k), -np.inf, dtype=np.float32)
        for i, (row_ids, row_scores) in enumerate(zip(ids, scores)):
            m = min(k, len(row_ids))
            out_ids[i, :m] = row_ids[:m]
            out_scores[i, :m] = row_scores[:m]
        return cls(out_ids, out_scores, documents)

    @classmethod
    def empty(cls, n_queries: int, k: int) -> "Results":
        return cls(np.full((n_queries, k), NO_DOC, dtype="<U1"), np.full((n_queries, k), -np.inf, np.float32))

    def count(self, i: int) -> int:
        """Number of real (non-padding) hits for query ``i``."""
        return int(np.count_nonzero(self.ids[i] != NO_DOC))

    def hits(self, i: int) -> Iterator["Hit"]:
        """Iterate the real hits of query ``i`` as :class:`Hit` (rank starts at 1)."""
        docs = self.documents[i] if self.documents is not None else None
        for j in range(self.count(i)):
            doc = docs[j] if docs is not None else None
            yield Hit(str(self.ids[i, j]), float(self.scores[i, j]), j + 1, doc)

    def to_dicts(self) -> list[list[dict]]:
        """Per-query lists of ``{"id", "score", "rank", "title", "text"}`` (title/text when loaded)."""
        out = []
        for i in range(len(self)):
            row = []
            for h in self.hits(i):
                d = {"id": h.doc_id, "score": h.score, "rank": h.rank}
                if h.document is not None:
                    d["title"] = h.document.get("title", "")
                    d["text"] = h.document.get("text", "")
                row.append(d)
            out.append(row)
        return out

    def to_run(self, query_ids: list[str]) -> dict[str, dict[str, float]]:
        """A pytrec_eval run dict ``{qid: {docid: score}}``."""
        if len(query_ids) != len(self):
            raise ValueError(f"{len(query_ids)} query ids for {len(self)} result rows")
        return {qid: {h.doc_id: h.score for h in self.hits(i)} for i, qid in enumerate(query_ids)}

    def write_trec(self, path: str, query_ids: list[str], tag: str = "wandao") -> None:
        """Write a TREC run file (``qid Q0 docid rank score tag``)."""
        from indexer.data import atomic_write_text

        lines = []
        for i, qid in enumerate(query_ids):
            for h in self.hits(i):
                lines.append(f"{qid} Q0 {h.doc_id} {h.rank} {h.score:.6f} {tag}\n")
        atomic_write_text(path, "".join(lines))


@dataclass(frozen=True)
class Hit:
    doc_id: str
    score: float
    rank: int
    document: dict | None = None
