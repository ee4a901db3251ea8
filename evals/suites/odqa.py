"""``odqa-retrieval``: DPR top-k answer-containing accuracy of an index on a QA set with answers.

For each question, the index's top ``max(ks)`` passages are checked with DPR's ``has_answer``
(:mod:`evals.dpr`: NFD, SimpleTokenizer, uncased token subsequence; passage text only, as DPR).
``top@k`` is the fraction of questions with an answer-bearing passage in the first k, ×100 as DPR
reports it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

HEADLINE = ("top@1", "top@5", "top@10", "top@20")
WORST = ("first_hit_rank", False)  # None (no hit) sorts worst
WORST_COLUMNS = ("id", "question", "answers", "first_hit_rank", "top")
EXAMPLE = ("wandao index build --corpus my-passages.jsonl --out runs/indexes/xquad --bm25\n"
           "  wandao eval odqa-retrieval --index runs/indexes/xquad --dataset xquad-en --json")


@dataclass
class Config:
    index: str = field(default="", metadata={"help": "index directory over the passages"})
    dataset: str = field(default="xquad-en", metadata={"help": "SQuAD-style QA set (name, folder or .jsonl/.json)"})
    retriever: str | None = field(default=None, metadata={"help": "retriever of the index",
                                                          "choices": ("bm25", "dense", "hybrid", "lucene")})
    ks: tuple[int, ...] = field(default=(1, 5, 10, 20), metadata={"help": "cut-offs for top-k accuracy"})
    match: str = field(default="string", metadata={"help": "has_answer mode", "choices": ("string", "regex")})
    batch_size: int = field(default=128, metadata={"help": "questions per retrieve() call"})
    limit: int | None = field(default=None, metadata={"help": "evaluate only the first N questions"})

    def __post_init__(self) -> None:
        if not self.index:
            raise ValueError("odqa-retrieval needs --index DIR")
        self.ks = tuple(sorted(set(int(k) for k in self.ks)))
        if not self.ks or self.ks[0] < 1:
            raise ValueError(f"--ks must be positive integers, got {self.ks}")
        if self.match not in ("string", "regex"):
            raise ValueError(f"--match must be string or regex, got {self.match!r}")


def _passage_texts(index, res, i: int) -> list[str]:
    hits = list(res.hits(i))
    if hits and hits[0].document is not None:
        return [h.document.get("text", "") for h in hits]
    docs = index.docstore.get([h.doc_id for h in hits]) if hits else []
    return [d.get("text", "") if d else "" for d in docs]


def suite(cfg: Config) -> tuple[dict, list[dict]]:
    from tqdm.auto import tqdm

    from evals.dpr import has_answer, top_k_accuracy
    from evals.qa_data import load_qa
    from indexer.index import open_index

    examples = load_qa(cfg.dataset)[:cfg.limit]
    index = open_index(cfg.index)
    depth = max(cfg.ks)
    rows: list[dict] = []
    for start in tqdm(range(0, len(examples), cfg.batch_size), desc="retrieve", unit="batch"):
        batch = examples[start:start + cfg.batch_size]
        res = index.retrieve([e["question"] for e in batch], k=depth, retriever=cfg.retriever, with_documents=True)
        for i, ex in enumerate(batch):
            texts = _passage_texts(index, res, i)
            ids = [h.doc_id for h in res.hits(i)]
            rank = next((j + 1 for j, t in enumerate(texts) if has_answer(ex["answers"], t, cfg.match)), None)
            rows.append({"id": ex["id"], "question": ex["question"], "answers": ex["answers"],
                         "first_hit_rank": rank, "top": ids[:5]})
    acc = top_k_accuracy([r["first_hit_rank"] for r in rows], cfg.ks)
    metrics = {k: 100.0 * v for k, v in acc.items()}
    metrics.update({"questions": len(rows), "dataset": cfg.dataset, "retriever": cfg.retriever or "index-default",
                    "match": cfg.match})
    return metrics, rows
