"""Augmentation throughput: batched SFT augmentation vs a one-query-at-a-time loop, and pretraining chunks/s.

SFT: every XQuAD-en question (1,190) over an index of SciFact abstracts + XQuAD paragraphs
(5,423 documents, embedded BM25), template ``sparrow``, k = 3, MiniLM tokenizer budgets.
- batched: :func:`rag.augment.sft_records` (one retrieval call per 256 queries, each document
  sanitised once, budgets verified with one batched tokenizer call);
- naive: for each question, ``Retriever.retrieve([q], k=3)`` then ``template.render(example)``.
Both run in this process on the same index, without the retrieval cache. Target: >= 10x.

Pretraining: WikiText-2 (valid) chunks of 64 MiniLM tokens, k = 2 neighbours from an index of
the same text cut into 64-word passages (same-document passages excluded), reported as chunks/s.

Writes bench/out/augment.md and bench/out/augment.json; prints the machine.

    python bench/bench_augment.py [--pretrain-docs 30]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: import wandao's packages from this checkout
OUT = ROOT / "bench" / "out"


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    return (f"{platform.node()} | {cpu} | {os.cpu_count()} CPUs visible | load {os.getloadavg()[0]:.1f} | "
            f"python {platform.python_version()} | torch {torch.__version__}")


def build_indexes(work: Path) -> tuple[Path, Path]:
    from indexer import build_index
    from rag.augment_pretrain import iter_corpus_any
    from rag.cli import write_corpus

    sft_index, wiki_index = work / "xquad-scifact-index", work / "wikitext-valid-index"
    if not (sft_index / "manifest.json").exists():
        write_corpus(["xquad-en", "scifact"], str(work / "xquad-scifact.jsonl"))
        build_index(str(work / "xquad-scifact.jsonl"), sft_index, bm25=True, force=True)
    if not (wiki_index / "manifest.json").exists():
        build_index(list(iter_corpus_any("wikitext-2")), wiki_index, bm25=True, chunk_tokens=64, force=True)
    return sft_index, wiki_index


def bench_sft(index: Path) -> dict:
    from rag.augment import SFTAugmentConfig, sft_records
    from rag.data import iter_items
    from rag.retriever import Retriever
    from rag.templates import Budget, Example, get_template
    from rag.tokenizer import load_tokenizer

    items = list(iter_items("xquad-en:all"))
    tok = load_tokenizer()
    cfg = SFTAugmentConfig(index=str(index), data="xquad-en:all", out="-", k=3, template="sparrow")

    retriever = Retriever(index, cache=None)
    retriever.retrieve(["warm up"], k=3)  # load the backend once, outside both timings
    template = get_template("sparrow", tok, Budget())
    t0 = time.perf_counter()
    batched = list(sft_records(items, retriever, template, cfg))
    t_batched = time.perf_counter() - t0

    retriever = Retriever(index, cache=None)
    retriever.retrieve(["warm up"], k=3)
    template = get_template("sparrow", tok, Budget())
    t0 = time.perf_counter()
    naive = []
    for it in items:
        res = retriever.retrieve([" ".join(it.question.split())], k=3)
        from rag.templates import Passage

        ps = [Passage(h.doc_id, h.document.get("title", ""), h.document.get("text", ""), h.score) for h in res.hits(0)]
        r = template.render(Example(question=it.question, answer=it.answer, passages=ps))
        naive.append({"id": it.id, "prompt": r.prompt, "evidence_ids": r.evidence_ids})
    t_naive = time.perf_counter() - t0
    same = sum(a["prompt"] == b["prompt"] and a["evidence_ids"] == b["evidence_ids"] for a, b in zip(batched, naive))
    return {"examples": len(items), "batched_s": round(t_batched, 3), "naive_s": round(t_naive, 3),
            "batched_ex_per_s": round(len(items) / t_batched, 1), "naive_ex_per_s": round(len(items) / t_naive, 1),
            "speedup": round(t_naive / t_batched, 2), "identical_outputs": same}


def bench_pretrain(index: Path, work: Path, docs: int) -> dict:
    from rag.augment_pretrain import PretrainAugmentConfig, augment_pretrain

    cfg = PretrainAugmentConfig(index=str(index), corpus="wikitext-2", out=str(work / "wiki-ralm"), k=2,
                                chunk_tokens=64, limit=docs, force=True)
    return augment_pretrain(cfg)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pretrain-docs", type=int, default=30, help="WikiText-2 articles to augment")
    ap.add_argument("--work", default=str(OUT / "augment-work"))
    args = ap.parse_args(argv)
    os.environ.setdefault("WANDAO_NO_PROGRESS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    sft_index, wiki_index = build_indexes(work)
    sft = bench_sft(sft_index)
    pre = bench_pretrain(wiki_index, work, args.pretrain_docs)
    result = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "sft": sft,
              "pretrain": {k: pre[k] for k in ("chunks", "rows", "seconds", "chunks_per_s", "near_duplicates_dropped")}}
    ok = sft["speedup"] >= 10.0
    md = "\n".join([
        "# Augmentation throughput (bench/bench_augment.py)", "",
        f"Machine: {result['machine']}  ", f"Date: {result['date']}", "",
        "| task | batched | naive loop | ratio | target |", "| --- | --- | --- | --- | --- |",
        f"| SFT, {sft['examples']} XQuAD questions, sparrow, k=3 | {sft['batched_ex_per_s']} ex/s | "
        f"{sft['naive_ex_per_s']} ex/s | {sft['speedup']}x | >= 10x ({'met' if ok else 'NOT met'}) |",
        f"| pretraining, WikiText-2 valid, 64-token chunks, k=2 | {pre['chunks_per_s']} chunks/s | | | report |",
        "", f"Batched and naive outputs identical for {sft['identical_outputs']}/{sft['examples']} examples.", ""])
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "augment.json").write_text(json.dumps(result, indent=2) + "\n")
    (OUT / "augment.md").write_text(md)
    print(md)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
