"""Hybrid retrieval: fuse the ranked lists of two or more retrievers for the same queries.

- :func:`reciprocal_rank_fusion`: ``score(d) = sum_i w_i / (rrf_k + rank_i(d))`` with ranks from 1,
  summed over the lists that contain ``d`` (Cormack, Clarke and Buettcher, "Reciprocal Rank Fusion
  outperforms Condorcet and individual Rank Learning Methods", SIGIR 2009; ``rrf_k = 60`` there).
- :func:`minmax_fusion`: each list's scores are min-max normalised per query to ``[0, 1]``
  (``(s - min) / (max - min)``; a list whose scores are all equal gives 1.0), then
  ``score(d) = sum_i w_i * norm_i(d)``, a document missing from a list adding 0 for it
  (the "CombSUM with min-max normalisation" of Lee, SIGIR 1997).

Ties are broken by document id (ascending) so the output is deterministic. Both return
:class:`~indexer.results.Results`. :class:`HybridRetriever` wraps retrievers (anything with
``retrieve(queries, k, exclude=...)``) and fuses their deeper lists.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from indexer.results import Results

logger = logging.getLogger(__name__)

FUSIONS = ("rrf", "minmax")


def _check(results: Sequence[Results], weights: Sequence[float] | None) -> list[float]:
    if len(results) < 1:
        raise ValueError("fusion needs at least one Results")
    n = len(results[0])
    for r in results[1:]:
        if len(r) != n:
            raise ValueError(f"all Results must cover the same queries: got {n} and {len(r)} rows")
    if weights is None:
        return [1.0] * len(results)
    if len(weights) != len(results):
        raise ValueError(f"{len(weights)} weights for {len(results)} retrievers")
    return [float(w) for w in weights]


def _fuse_rows(results: Sequence[Results], weights: Sequence[float], k: int, contribution) -> Results:
    """Per query: sum each list's ``contribution(scores, ranks, weight)`` per document, keep the top ``k``.

    Vectorised per query (hybrid retrieval fuses lists 1,000 deep: a dict loop over them cost more than
    both retrievers together). Sums run in list order, as a loop would; ties go to the smaller id.
    """
    ids_out, scores_out = [], []
    for q in range(len(results[0])):
        ids, parts = [], []
        for r, wi in zip(results, weights):
            n = r.count(q)
            if n == 0:
                continue
            ids.append(r.ids[q, :n])
            parts.append(contribution(r.scores[q, :n].astype(np.float64), np.arange(1, n + 1), wi))
        if not ids:
            ids_out.append([])
            scores_out.append([])
            continue
        uniq, inverse = np.unique(np.concatenate(ids), return_inverse=True)  # sorted ids
        fused = np.bincount(inverse, weights=np.concatenate(parts), minlength=len(uniq))
        top = np.argsort(-fused, kind="stable")[:k]  # stable over sorted ids: ties by id ascending
        ids_out.append(uniq[top].tolist())
        scores_out.append(fused[top].tolist())
    return Results.from_lists(ids_out, scores_out, k=k)


def _minmax(scores: np.ndarray, ranks: np.ndarray, weight: float) -> np.ndarray:
    lo, hi = scores.min(), scores.max()
    return weight * ((scores - lo) / (hi - lo) if hi > lo else np.ones_like(scores))


def reciprocal_rank_fusion(results: Sequence[Results], k: int = 10, rrf_k: float = 60,
                           weights: Sequence[float] | None = None) -> Results:
    """Reciprocal-rank fusion of ranked lists (Cormack et al. 2009).

    Args:
        results: one :class:`Results` per retriever, rows aligned on the same queries.
        k: hits per query in the fused list.
        rrf_k: the RRF constant (60 in the paper).
        weights: optional per-retriever weights (default 1 each).

    Returns:
        :class:`Results` with the fused scores.

    Example:
        >>> a = Results.from_lists([["d1", "d2"]], [[9.0, 5.0]])
        >>> b = Results.from_lists([["d2", "d3"]], [[0.8, 0.7]])
        >>> fused = reciprocal_rank_fusion([a, b], k=3, rrf_k=60)
        >>> fused.ids[0].tolist(), [round(s, 6) for s in fused.scores[0].tolist()]
        (['d2', 'd1', 'd3'], [0.032522, 0.016393, 0.016129])
    """
    if rrf_k < 0:
        raise ValueError(f"rrf_k must be >= 0, got {rrf_k}")
    w = _check(results, weights)
    return _fuse_rows(results, w, k, lambda scores, ranks, weight: weight / (rrf_k + ranks))


def minmax_fusion(results: Sequence[Results], k: int = 10, weights: Sequence[float] | None = None) -> Results:
    """Weighted sum of per-query min-max normalised scores.

    Args:
        results: one :class:`Results` per retriever, rows aligned on the same queries.
        k: hits per query in the fused list.
        weights: optional per-retriever weights (default 1 each).

    Example:
        >>> a = Results.from_lists([["d1", "d2", "d3"]], [[10.0, 6.0, 2.0]])
        >>> b = Results.from_lists([["d3", "d1"]], [[0.9, 0.5]])
        >>> fused = minmax_fusion([a, b], k=3)
        >>> fused.ids[0].tolist(), fused.scores[0].tolist()
        (['d1', 'd3', 'd2'], [1.0, 1.0, 0.5])
    """
    w = _check(results, weights)
    return _fuse_rows(results, w, k, _minmax)


def fuse(results: Sequence[Results], k: int = 10, method: str = "rrf", rrf_k: float = 60,
         weights: Sequence[float] | None = None) -> Results:
    """Fuse with ``method`` ``rrf`` or ``minmax``."""
    if method == "rrf":
        return reciprocal_rank_fusion(results, k=k, rrf_k=rrf_k, weights=weights)
    if method == "minmax":
        return minmax_fusion(results, k=k, weights=weights)
    raise ValueError(f"--fusion: unknown method {method!r}; choose one of {', '.join(FUSIONS)}")


class HybridRetriever:
    """Fuse two or more retrievers: each returns its top ``depth``, then the lists are fused.

    Args:
        retrievers: objects with ``retrieve(queries, k, exclude=None) -> Results``.
        method: ``rrf`` or ``minmax``.
        depth: hits taken from each retriever before fusing (at least ``k``).
        rrf_k: the RRF constant.
        weights: per-retriever weights.

    Example:
        >>> hybrid = HybridRetriever([bm25, dense], method="rrf", depth=1000)  # doctest: +SKIP
        >>> hybrid.retrieve(["vitamin D and bone density"], k=10).ids  # doctest: +SKIP
    """

    def __init__(self, retrievers: Sequence, method: str = "rrf", depth: int = 1000, rrf_k: float = 60,
                 weights: Sequence[float] | None = None):
        if len(retrievers) < 2:
            raise ValueError("a hybrid retriever needs at least two retrievers")
        if method not in FUSIONS:
            raise ValueError(f"--fusion: unknown method {method!r}; choose one of {', '.join(FUSIONS)}")
        if weights is not None and len(weights) != len(retrievers):
            raise ValueError(f"{len(weights)} weights for {len(retrievers)} retrievers")
        self.retrievers = list(retrievers)
        self.method, self.depth, self.rrf_k, self.weights = method, depth, rrf_k, weights

    def retrieve(self, queries: Sequence[str], k: int = 10, exclude=None) -> Results:
        depth = max(self.depth, k)
        runs = [r.retrieve(list(queries), k=depth, exclude=exclude) for r in self.retrievers]
        return fuse(runs, k=k, method=self.method, rrf_k=self.rrf_k, weights=self.weights)
