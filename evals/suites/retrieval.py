"""``retrieval``: BEIR-layout retrieval quality with trec_eval semantics.

Retrieves every judged query of ``--split`` with an index (``--index``), or scores an existing
TREC run file (``--run``) with no index. The query's own id is removed from its results, as
Anserini's ``-removeQuery`` does (BEIR's ``ignore_identical_ids``). Metrics: see :mod:`evals.trec`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from evals.trec import DEFAULT_METRICS, evaluate_run, read_run, write_run

logger = logging.getLogger(__name__)

HEADLINE = ("ndcg@10", "recall@100", "recall@1000", "mrr@10", "map")
WORST = ("ndcg@10", True)
WORST_COLUMNS = ("id", "query", "ndcg@10", "first_relevant_rank", "relevant", "top")
EXAMPLE = ("wandao index build --corpus scifact --out runs/indexes/scifact --bm25\n"
           "  wandao eval retrieval --index runs/indexes/scifact --dataset scifact --run-out runs/scifact.trec --json")
RETRIEVERS = ("bm25", "dense", "hybrid", "lucene")


@dataclass
class Config:
    dataset: str = field(default="", metadata={"help": "registered dataset name (scifact) or BEIR folder"})
    index: str | None = field(default=None, metadata={"help": "index directory to retrieve with"})
    run: str | None = field(default=None, metadata={"help": "score this TREC run file instead of retrieving"})
    split: str = field(default="test", metadata={"help": "qrels split (qrels/<split>.tsv)"})
    retriever: str | None = field(default=None, metadata={"help": "retriever of the index (default: the index's own)",
                                                          "choices": RETRIEVERS})
    k: int = field(default=1000, metadata={"help": "hits retrieved per query", "flags": ["-k"]})
    run_out: str | None = field(default=None, metadata={"help": "write the run as a TREC run file here"})
    qrels: str | None = field(default=None, metadata={"help": "qrels file (default: the dataset's split)"})
    queries: str | None = field(default=None, metadata={"help": "queries file (default: the dataset's)"})
    remove_query: bool = field(default=True, metadata={"help": "drop the query's own id from its results"})
    metrics: tuple[str, ...] = field(default=DEFAULT_METRICS, metadata={"help": "metrics to compute"})
    fusion: str = field(default="rrf", metadata={"help": "hybrid fusion: rrf or minmax", "choices": ("rrf", "minmax")})
    rrf_k: int = field(default=60, metadata={"help": "RRF constant k (hybrid, fusion rrf)"})
    batch_size: int = field(default=256, metadata={"help": "queries per retrieve() call"})
    tag: str = field(default="wandao", metadata={"help": "run tag written in the TREC run file"})

    def __post_init__(self) -> None:
        if not self.index and not self.run:
            raise ValueError("retrieval needs --index DIR (retrieve) or --run FILE (score a TREC run)")
        if self.index and self.run:
            raise ValueError("give either --index or --run, not both")
        if not self.dataset and not self.qrels:
            raise ValueError("retrieval needs --dataset NAME_OR_BEIR_DIR or --qrels FILE")
        if self.index and not self.dataset and not self.queries:
            raise ValueError("retrieving with --index needs the queries: --dataset or --queries FILE")
        if self.fusion not in ("rrf", "minmax"):
            raise ValueError(f"--fusion must be rrf or minmax, got {self.fusion!r}")
        if self.retriever is not None and self.retriever not in RETRIEVERS:
            raise ValueError(f"--retriever must be one of {', '.join(RETRIEVERS)}; got {self.retriever!r}")
        if self.k < 1:
            raise ValueError(f"-k must be ≥ 1, got {self.k}")
        self.metrics = tuple(self.metrics)


def _paths(cfg: Config):
    from indexer.data import beir_paths

    qrels_path, queries_path = cfg.qrels, cfg.queries
    if cfg.dataset and (qrels_path is None or (queries_path is None and cfg.index)):
        _, q, r = beir_paths(cfg.dataset, cfg.split)
        qrels_path = qrels_path or r
        queries_path = queries_path or q
    return qrels_path, queries_path


def retrieve_run(cfg: Config, qids: list[str], texts: list[str]) -> dict[str, dict[str, float]]:
    """Retrieve ``texts`` with the index in batches; returns ``{qid: {docid: score}}``."""
    from tqdm.auto import tqdm

    from indexer.index import open_index

    index = open_index(cfg.index)
    run: dict[str, dict[str, float]] = {}
    for start in tqdm(range(0, len(qids), cfg.batch_size), desc="retrieve", unit="batch"):
        ids = qids[start:start + cfg.batch_size]
        exclude = [{q} for q in ids] if cfg.remove_query else None
        extra = {"fusion": cfg.fusion, "rrf_k": cfg.rrf_k} if cfg.retriever == "hybrid" else {}
        res = index.retrieve(texts[start:start + cfg.batch_size], k=cfg.k, retriever=cfg.retriever, exclude=exclude,
                             **extra)
        run.update(res.to_run(ids))
    return run


def suite(cfg: Config) -> tuple[dict, list[dict]]:
    """Run the retrieval eval. Returns metrics (``ndcg@10``, ``recall@100``, ``recall@1000``,
    ``mrr@10``, ``map``, ``queries``) and one row per judged query."""
    from indexer.data import load_qrels, load_queries

    qrels_path, queries_path = _paths(cfg)
    qrels = load_qrels(qrels_path)
    queries = load_queries(queries_path) if queries_path else {}
    if cfg.run:
        run = read_run(cfg.run)
    else:
        qids = [q for q in qrels if q in queries]
        absent = len(qrels) - len(qids)
        if absent:
            logger.warning("%d judged queries are not in %s; they score 0", absent, queries_path)
        run = retrieve_run(cfg, qids, [queries[q] for q in qids])
    if cfg.remove_query:
        run = {q: {d: s for d, s in docs.items() if d != q} for q, docs in run.items()}
    if cfg.run_out:
        write_run(cfg.run_out, run, tag=cfg.tag)
        logger.info("wrote TREC run %s", cfg.run_out)
    metrics, per_query = evaluate_run(qrels, run, cfg.metrics)
    metrics.update({"dataset": cfg.dataset or str(qrels_path), "split": cfg.split,
                    "retriever": cfg.retriever or ("run-file" if cfg.run else "index-default")})
    from evals.trec import trec_sorted

    rows = []
    for qid, vals in per_query.items():
        ranked = [d for d, _ in trec_sorted(run.get(qid, {}))]
        rel = {d for d, r in qrels[qid].items() if r > 0}
        first = next((i + 1 for i, d in enumerate(ranked) if d in rel), None)
        rows.append({"id": qid, "query": queries.get(qid, ""), **vals, "first_relevant_rank": first,
                     "relevant": sorted(rel), "top": ranked[:5]})
    return metrics, rows
