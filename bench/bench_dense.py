"""Dense encoding speed and quality: wandao's fast CPU path against plain ``SentenceTransformer.encode``.

Both encoders see the same SciFact documents in the same run with the same thread count. The
documents are processed in chunks, and within each chunk the two encoders alternate which goes
first, so that load from other processes on a shared machine hits both alike. Reports docs/s of
each, the ratio, the per-document cosine between the two, and nDCG@10 on the SciFact test split
(exact inner-product search, query's own id removed, pytrec_eval) for each encoder.

Run:
    python bench/bench_dense.py                 # full SciFact (5,183 docs; minutes on 2 cores)
    python bench/bench_dense.py --limit 512     # a quick speed check; nDCG from cached full embeddings if any

Writes bench/out/dense.md and bench/out/dense.json. Full-corpus embeddings are cached under
``$WANDAO_CACHE_DIR/bench-dense`` so later quick runs can still report nDCG.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import describe_machine, machine, markdown_table, peak_rss_mib, write_outputs  # noqa: E402

TARGET_RATIO = 2.0
TARGET_NDCG_DELTA = 0.005
ANCHOR_PLAIN_NDCG = 0.6451  # plain MiniLM on SciFact, as stated in issue 2


def _ndcg(encoder, emb: np.ndarray, doc_ids: list[str], queries: dict, qrels: dict) -> float:
    import pytrec_eval

    qids = [q for q in queries if q in qrels]
    q = encoder.encode_queries([queries[x] for x in qids])
    scores = q @ emb.T  # (n_queries, n_docs)
    run = {}
    for i, qid in enumerate(qids):
        top = np.argsort(-scores[i])[:11]
        run[qid] = {doc_ids[j]: float(scores[i, j]) for j in top if doc_ids[j] != qid}
    res = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut_10"}).evaluate(run)
    return float(np.mean([v["ndcg_cut_10"] for v in res.values()]))


def _cache_path(encoder) -> Path:
    from indexer.encode import cache_dir

    return cache_dir() / "bench-dense" / f"scifact-{encoder.fingerprint[:16]}-{encoder.backend}.npy"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_dense.py", description=__doc__.split("\n\n")[0],
                                     epilog="example: python bench/bench_dense.py --limit 512")
    parser.add_argument("--limit", type=int, default=0, help="documents to time (0 = the whole corpus)")
    parser.add_argument("--backend", default="onnx-int8", help="the fast encoder backend (onnx-int8, onnx-int8-token, onnx)")
    parser.add_argument("--chunk", type=int, default=512, help="documents per alternating chunk")
    parser.add_argument("--threads", type=int, default=0, help="threads for both (0 = torch's default)")
    parser.add_argument("--dataset", default="scifact")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import torch

    from indexer.data import beir_paths, load_qrels, load_queries, read_corpus
    from indexer.encode import Encoder

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    info = machine()
    print(f"machine: {describe_machine(info)}; {threads} threads for both encoders", flush=True)

    docs = read_corpus(args.dataset)
    _, qpath, rpath = beir_paths(args.dataset)
    queries, qrels = load_queries(qpath), load_qrels(rpath)
    timed = docs[:args.limit] if args.limit else docs
    full = len(timed) == len(docs)

    plain = Encoder(backend="torch", threads=threads, device="cpu")
    fast = Encoder(backend=args.backend, threads=threads)
    warm = docs[:8]
    plain.encode_documents(warm)
    fast.encode_documents(warm)  # exports/loads the ONNX model outside the timing

    seconds = {"plain": 0.0, "fast": 0.0}
    cpu = {"plain": 0.0, "fast": 0.0}  # process CPU seconds: less sensitive than wall time to other jobs
    parts = {"plain": [], "fast": []}
    n_chunks = (len(timed) + args.chunk - 1) // args.chunk
    for c in range(n_chunks):
        chunk = timed[c * args.chunk:(c + 1) * args.chunk]
        order = ("plain", "fast") if c % 2 == 0 else ("fast", "plain")
        for name in order:
            enc = plain if name == "plain" else fast
            t0, c0 = time.perf_counter(), time.process_time()
            parts[name].append(enc.encode_documents(chunk))
            seconds[name] += time.perf_counter() - t0
            cpu[name] += time.process_time() - c0
        done = (c + 1) * args.chunk
        print(f"  {min(done, len(timed))}/{len(timed)} docs: plain {done / seconds['plain']:.1f} docs/s, "
              f"{args.backend} {done / seconds['fast']:.1f} docs/s", flush=True)
    emb = {k: np.concatenate(v) for k, v in parts.items()}
    cos = np.sum(emb["plain"] * emb["fast"], axis=1)
    rate = {k: len(timed) / seconds[k] for k in seconds}
    ratio = rate["fast"] / rate["plain"]
    cpu_ratio = cpu["plain"] / cpu["fast"]

    ndcg = {}
    doc_ids = [d["id"] for d in docs]
    for name, enc in (("plain", plain), ("fast", fast)):
        path = _cache_path(enc)
        if full:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, emb[name], allow_pickle=False)
            ndcg[name] = _ndcg(enc, emb[name], doc_ids, queries, qrels)
        elif path.exists():
            ndcg[name] = _ndcg(enc, np.load(path, allow_pickle=False), doc_ids, queries, qrels)
    delta = ndcg["fast"] - ndcg["plain"] if len(ndcg) == 2 else None

    rows = [
        {"encoder": "plain SentenceTransformer.encode (torch fp32)", "docs_s": rate["plain"], "ratio": 1.0,
         "ndcg": ndcg.get("plain")},
        {"encoder": f"wandao {args.backend} (ONNX Runtime, token-budget batches)", "docs_s": rate["fast"],
         "ratio": ratio, "ndcg": ndcg.get("fast")},
    ]
    table = markdown_table(rows, [("encoder", "encoder", 0), ("docs_s", "docs/s", 1), ("ratio", "× plain", 2),
                                  ("ndcg", "nDCG@10", 4)])
    ok_speed = ratio >= TARGET_RATIO
    ok_quality = delta is not None and abs(delta) <= TARGET_NDCG_DELTA
    md = "\n".join([
        f"# Dense encoding: {args.dataset}, all-MiniLM-L6-v2",
        "",
        f"Machine: {describe_machine(info)}. Threads: {threads} for both encoders.",
        f"Documents timed: {len(timed)} ({'whole corpus' if full else 'first ' + str(len(timed))}), in chunks of "
        f"{args.chunk} alternating which encoder goes first.",
        "",
        table,
        "",
        f"- Speed ratio: **{ratio:.2f}×** wall time (target ≥ {TARGET_RATIO}×): {'met' if ok_speed else 'NOT met'}; "
        f"{cpu_ratio:.2f}× in process CPU time (plain {cpu['plain']:.0f} s, fast {cpu['fast']:.0f} s).",
        (f"- nDCG@10 change: **{delta:+.4f}** (target within ±{TARGET_NDCG_DELTA}): "
         f"{'met' if ok_quality else 'NOT met'}." if delta is not None else
         "- nDCG@10: not computed (run without --limit once to cache full-corpus embeddings)."),
        f"- Cosine to plain per document: min {cos.min():.4f}, mean {cos.mean():.4f}.",
        f"- Plain nDCG@10 anchor from issue 2: {ANCHOR_PLAIN_NDCG}.",
        f"- Peak RSS: {peak_rss_mib():.0f} MiB.",
    ])
    payload = {"machine": info, "threads": threads, "dataset": args.dataset, "docs_timed": len(timed),
               "backend": args.backend, "chunk": args.chunk,
               "docs_per_s": rate, "seconds": seconds, "cpu_seconds": cpu, "ratio": ratio, "cpu_ratio": cpu_ratio, "ndcg@10": ndcg, "ndcg_delta": delta,
               "cosine_min": float(cos.min()), "cosine_mean": float(cos.mean()),
               "targets": {"ratio": TARGET_RATIO, "ndcg_delta": TARGET_NDCG_DELTA},
               "met": {"speed": ok_speed, "quality": ok_quality}, "peak_rss_mib": peak_rss_mib()}
    md_path, _ = write_outputs("dense", md, payload)
    print(md)
    print(f"wrote {md_path}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
