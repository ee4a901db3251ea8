"""Retrieval metrics with trec_eval semantics (via ``pytrec_eval``), TREC run files, significance.

Metric names and how each is computed (trec_eval 9 as wrapped by pytrec_eval; Van Gysel & de
Rijke 2018):

- ``ndcg@10``: trec_eval ``ndcg_cut.10`` (gain = relevance grade, discount log2(rank + 1), ideal
  ranking from the qrels) — what BEIR and Anserini report.
- ``recall@100``, ``recall@1000``: ``recall.100`` / ``recall.1000`` (relevance ≥ 1).
- ``map``: ``map`` over the whole run.
- ``mrr@10``: ``recip_rank`` on the run cut at depth 10 — trec_eval's ``-M 10 -m recip_rank``
  as used for MS MARCO MRR@10 (pytrec_eval has no ``-M``, so the run is cut here, in trec_eval's
  own order: score descending, ties by doc id descending). BEIR's ``mrr_cut`` gives the same.

Queries judged in the qrels but absent from the run score 0 on every metric (trec_eval ``-c``,
as Anserini's BEIR regressions run it); runs' queries without judgements are ignored.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from indexer.data import DataError

logger = logging.getLogger(__name__)

Run = dict[str, dict[str, float]]
Qrels = dict[str, dict[str, int]]

#: our metric name -> (pytrec_eval measure, key in pytrec_eval's per-query output, run depth cut)
MEASURES: dict[str, tuple[str, str, int | None]] = {
    "ndcg@10": ("ndcg_cut.10", "ndcg_cut_10", None),
    "recall@100": ("recall.100", "recall_100", None),
    "recall@1000": ("recall.1000", "recall_1000", None),
    "mrr@10": ("recip_rank", "recip_rank", 10),
    "map": ("map", "map", None),
}
DEFAULT_METRICS = ("ndcg@10", "recall@100", "recall@1000", "mrr@10", "map")


def _parse_metric(name: str) -> tuple[str, str, int | None]:
    """Known names, or ``ndcg@k`` / ``recall@k`` / ``p@k`` / ``mrr@k`` for any k."""
    if name in MEASURES:
        return MEASURES[name]
    base, _, k = name.partition("@")
    if not k.isdigit():
        raise ValueError(f"unknown metric {name!r}; use one of {', '.join(MEASURES)} or ndcg@K, recall@K, p@K, mrr@K")
    table = {"ndcg": ("ndcg_cut.{k}", "ndcg_cut_{k}", None), "recall": ("recall.{k}", "recall_{k}", None),
             "p": ("P.{k}", "P_{k}", None), "mrr": ("recip_rank", "recip_rank", int(k))}
    if base not in table:
        raise ValueError(f"unknown metric {name!r}")
    m, key, cut = table[base]
    return m.format(k=k), key.format(k=k), cut


def trec_sorted(docs: Mapping[str, float]) -> list[tuple[str, float]]:
    """A query's hits in trec_eval's order: score descending, ties by doc id descending."""
    return sorted(docs.items(), key=lambda kv: (-kv[1], _Desc(kv[0])))


class _Desc(str):
    """A string that sorts in reverse (for ties broken by doc id descending)."""

    def __lt__(self, other: str) -> bool:  # type: ignore[override]
        return str.__gt__(self, other)


def cut_run(run: Run, depth: int) -> Run:
    """Keep each query's top ``depth`` hits in trec_eval order."""
    return {q: dict(trec_sorted(docs)[:depth]) for q, docs in run.items()}


def evaluate_run(qrels: Qrels, run: Run, metrics: Sequence[str] = DEFAULT_METRICS) -> tuple[dict, dict[str, dict]]:
    """Score a run against qrels.

    Args:
        qrels: ``{qid: {docid: relevance}}``.
        run: ``{qid: {docid: score}}`` (ranks are ignored, as trec_eval does).
        metrics: names such as ``ndcg@10``, ``recall@100``, ``mrr@10``, ``map``.

    Returns:
        ``(aggregate, per_query)``: means over every judged query (missing ones score 0) plus
        ``queries``, and ``{qid: {metric: value}}``.

    Example:
        >>> agg, per = evaluate_run({"q1": {"d1": 1}}, {"q1": {"d2": 2.0, "d1": 1.0}}, ["mrr@10", "ndcg@10"])
        >>> agg["mrr@10"], round(agg["ndcg@10"], 4), agg["queries"]
        (0.5, 0.6309, 1)
    """
    import pytrec_eval

    parsed = {m: _parse_metric(m) for m in metrics}
    # Stringify ids and coerce scores, as trec_eval reads them from text.
    run = {str(q): {str(d): float(s) for d, s in docs.items()} for q, docs in run.items()}
    qrels = {str(q): {str(d): int(r) for d, r in docs.items()} for q, docs in qrels.items()}
    judged = sorted(qrels)
    per_query: dict[str, dict] = {q: {m: 0.0 for m in metrics} for q in judged}
    by_cut: dict[int | None, list[str]] = {}
    for m, (_, _, cut) in parsed.items():
        by_cut.setdefault(cut, []).append(m)
    for cut, names in by_cut.items():
        r = cut_run(run, cut) if cut else run
        r = {q: docs for q, docs in r.items() if docs and q in qrels}
        evaluator = pytrec_eval.RelevanceEvaluator(qrels, {parsed[m][0] for m in names})
        for q, vals in evaluator.evaluate(r).items():
            for m in names:
                per_query[q][m] = float(vals[parsed[m][1]])
    missing = [q for q in judged if not run.get(q)]
    if missing:
        logger.warning("%d judged queries have no results and score 0 (e.g. %s)", len(missing), missing[0])
    n = len(judged)
    agg = {m: (sum(per_query[q][m] for q in judged) / n if n else 0.0) for m in metrics}
    agg["queries"] = n
    return agg, per_query


def read_run(path: str | os.PathLike) -> Run:
    """Read a TREC run file (``qid Q0 docid rank score tag``; whitespace-separated).

    Raises:
        DataError: wrong column count or a non-numeric score, naming the file and line.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(path, "run file not found")
    run: Run = {}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 6:
                raise DataError(path, f"expected 6 columns 'qid Q0 docid rank score tag', got {len(parts)}", line_no)
            qid, _, docid, rank, score, _ = parts
            try:
                value = float(score)
                int(rank)
            except ValueError:
                raise DataError(path, f"rank {rank!r} / score {score!r} must be numbers", line_no,
                                field="score") from None
            if not math.isfinite(value):
                raise DataError(path, f"score {score!r} is not finite", line_no, field="score")
            docs = run.setdefault(qid, {})
            if docid in docs:
                raise DataError(path, f"document {docid!r} appears twice for query {qid!r}", line_no, field="docid")
            docs[docid] = value
    if not run:
        raise DataError(path, "run file is empty")
    return run


def write_run(path: str | os.PathLike, run: Run, tag: str = "wandao", depth: int | None = None) -> None:
    """Write a run dict as a TREC run file, in trec_eval order, atomically."""
    from indexer.io import atomic_write_text

    lines = []
    for qid in run:
        for rank, (docid, score) in enumerate(trec_sorted(run[qid])[:depth], start=1):
            lines.append(f"{qid} Q0 {docid} {rank} {score:.6f} {tag}\n")
    atomic_write_text(path, "".join(lines))


def paired_tests(a: Mapping[str, float], b: Mapping[str, float], n_permutations: int = 10000,
                 seed: int = 0) -> dict:
    """Significance of the difference between two systems' per-query scores (b − a).

    Uses the queries both systems scored. Two tests, both two-sided:

    - paired t-test (``scipy.stats.ttest_rel``);
    - paired randomisation (permutation) test (Smucker, Allan & Carterette, CIKM 2007): the sign
      of each per-query difference is flipped at random ``n_permutations`` times with ``seed``;
      p = (#{|mean of flipped| ≥ |observed mean|} + 1) / (n_permutations + 1).

    Returns:
        ``{"n", "mean_a", "mean_b", "delta", "t", "p_ttest", "p_randomization"}``.
    """
    from scipy import stats

    common = sorted(set(a) & set(b))
    if len(common) < 2:
        raise ValueError(f"need at least 2 shared queries for a paired test, got {len(common)}")
    x = np.array([a[q] for q in common], dtype=np.float64)
    y = np.array([b[q] for q in common], dtype=np.float64)
    d = y - x
    observed = abs(d.mean())
    if np.allclose(d, 0):
        t, p_t = 0.0, 1.0
    else:
        res = stats.ttest_rel(y, x)
        t, p_t = float(res.statistic), float(res.pvalue)
    rng = np.random.default_rng(seed)
    hits = 0
    chunk = 1000
    for start in range(0, n_permutations, chunk):
        m = min(chunk, n_permutations - start)
        signs = rng.choice(np.array([-1.0, 1.0]), size=(m, d.size))
        hits += int(np.count_nonzero(np.abs((signs * d).mean(axis=1)) >= observed - 1e-12))
    return {"n": len(common), "mean_a": float(x.mean()), "mean_b": float(y.mean()), "delta": float(d.mean()),
            "t": t, "p_ttest": p_t, "p_randomization": (hits + 1) / (n_permutations + 1)}
