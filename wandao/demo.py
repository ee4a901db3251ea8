"""`wandao demo`: the end-to-end pipeline over the mirrored data, stage by stage.

Each stage writes its outputs under ``--out`` and a ``stages/<name>.json`` record; a second run
reuses finished stages (``--redo NAME`` or ``--force`` reruns them). The last line printed is one
JSON object with the headline numbers and the minutes taken.

Stages so far: ``indexes`` (BM25 + dense over SciFact), ``retrieval`` (BM25 / dense / hybrid on the
SciFact test queries against the published anchors), ``search`` (a few example queries),
``augment`` (retrieval-augmented XQuAD-train SFT set, one rendered example per template) and
``pretrain`` (a short pretraining run of a tiny model on the mirrored text).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

logger = logging.getLogger(__name__)

EXAMPLE = """\
examples:
  wandao demo                      # the quick demo (what `make demo` runs)
  wandao demo --out runs/demo --redo retrieval
  wandao demo --full               # the headline configuration (hours on 2 CPU cores)
"""

#: Published anchors the retrieval table is printed against (SciFact test, nDCG@10).
ANCHORS = {
    "bm25": (0.6789, "Anserini regression beir-v1.0.0-scifact.flat (Lucene BM25 k1=0.9 b=0.4)"),
    "dense": (0.6451, "plain SentenceTransformer all-MiniLM-L6-v2, measured here"),
    "hybrid": (None, "must be >= the best single retriever"),
}


@dataclass
class DemoContext:
    out: Path
    quick: bool
    full: bool


def _stage_indexes(ctx: DemoContext) -> dict:
    from indexer.index import BuildOptions, build_index

    path = ctx.out / "indexes" / "scifact"
    index = build_index("scifact", path, BuildOptions(bm25=True, dense="default"), force=True)
    return {"index": str(path), "documents": index.manifest["corpus"]["documents"],
            "seconds": {k: v.get("seconds") for k, v in index.manifest["backends"].items()}}


def _stage_retrieval(ctx: DemoContext) -> dict:
    import evals

    index = ctx.out / "indexes" / "scifact"
    rows = {}
    for retriever in ("bm25", "dense", "hybrid"):
        result = evals.run("retrieval", out=ctx.out / "eval" / f"scifact-{retriever}", force=True,
                           index=str(index), dataset="scifact", retriever=retriever, k=1000)
        rows[retriever] = {m: result.metrics.get(m) for m in ("ndcg@10", "recall@100", "mrr@10")}
    print("\nSciFact test (300 queries), query's own id removed:")
    print(f"{'retriever':<9} {'nDCG@10':>8} {'R@100':>7} {'MRR@10':>7}  anchor")
    for name, row in rows.items():
        anchor, source = ANCHORS[name]
        anchor_txt = f"{anchor:.4f} ({source})" if anchor is not None else source
        print(f"{name:<9} {row['ndcg@10']:>8.4f} {row['recall@100']:>7.4f} {row['mrr@10']:>7.4f}  {anchor_txt}")
    return rows


def _stage_search(ctx: DemoContext) -> dict:
    from indexer.index import open_index

    index = open_index(ctx.out / "indexes" / "scifact")
    queries = ["microRNA expression in cancer", "vitamin D deficiency and bone fractures",
               "coffee consumption and heart disease"]
    results = index.retrieve(queries, k=3, retriever="hybrid", with_documents=True)
    shown = {}
    for query, hits in zip(queries, results.to_dicts()):
        print(f"\nquery: {query}")
        for hit in hits:
            print(f"  {hit['rank']}. {hit['id']:>10}  {hit['title'][:100]}")
        shown[query] = [hit["id"] for hit in hits]
    return shown


def _stage_augment(ctx: DemoContext) -> dict:
    from rag.demo import augment_demo

    summary = augment_demo(ctx.out)
    return {name: {k: v for k, v in value.items() if isinstance(v, (int, float, str))}
            for name, value in summary.items() if isinstance(value, dict)}


def _stage_pretrain(ctx: DemoContext) -> dict:
    """A short pretraining run: BPE tokenizer + a tiny GPT on WikiText-2 and the XQuAD-train paragraphs."""
    import os

    from indexer.data import write_jsonl
    from pretrain.config import from_dict
    from pretrain.train import PretrainConfig, run
    from rag.xquad import xquad_corpus

    work = ctx.out / "pretrain"
    paragraphs = work / "xquad-train-paragraphs.jsonl"
    write_jsonl(paragraphs, ({"text": d["title"] + "\n" + d["text"]} for d in xquad_corpus("train")))
    wikitext = os.path.join(os.environ.get("WANDAO_DATA_DIR", "data"), "wikitext-2", "raw")
    cfg = from_dict(PretrainConfig, {
        # 512 positions: the serving stage's prompt carries retrieved passages in the sparrow template.
        "model": {"preset": "tiny", "block_size": 512},
        "data": {"sources": [{"path": f"{wikitext}/wiki.valid.raw", "name": "wikitext-2-valid"},
                             {"path": f"{wikitext}/wiki.test.raw", "name": "wikitext-2-test"},
                             {"path": str(paragraphs), "name": "xquad-train", "weight": 0.5}],
                 "tokenizer": "bpe", "vocab_size": 4096},
        "optim": {"name": "adamw", "lr": 3e-3},
        "schedule": {"kind": "cosine", "warmup_iters": 20},
        "train": {"out_dir": str(work / "run"), "max_iters": 150 if ctx.quick else 2000, "micro_batch_size": 4,
                  "eval_interval": 50, "eval_iters": 10, "log_interval": 25, "seed": 1337},
    }, source="wandao demo")
    summary = run(cfg)
    import shutil

    final = work / "final"  # the model the later stages and `wandao serve --demo` start from
    last = sorted((work / "run").glob("step-*"))[-1]
    shutil.rmtree(final, ignore_errors=True)
    shutil.copytree(last, final, ignore=shutil.ignore_patterns("optimizer*", "trainer_state*", "rng*", "*.pt"))
    curve = work / "run" / "loss.png"
    print(f"pretraining: final validation loss {summary['final_val_loss']:.3f} after {summary['steps']} steps; "
          f"loss curve: {curve}")
    return {k: summary[k] for k in ("final_val_loss", "steps", "tokens_per_s", "out_dir") if k in summary}


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stage_serve(ctx: DemoContext) -> dict:
    """Start `wandao serve --demo`, ask one question through the openai client, show a moderated request."""
    import os
    import subprocess
    import urllib.request

    from openai import OpenAI

    port = _free_port()
    log = open(ctx.out / "serve.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "wandao.cli", "serve", "--demo", "--demo-dir", str(ctx.out),
                               "--host", "127.0.0.1", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, "WANDAO_LOG_LEVEL": "WARNING"})
    try:
        deadline = time.time() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"the demo server did not start; see {ctx.out / 'serve.log'}") from None
                time.sleep(1)
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="demo")
        model = client.models.list().data[0].id
        question = "What did the Normans do in France?"
        print(f"\nuser: {question}\nassistant (streamed): ", end="", flush=True)
        answer, citations = "", []
        for chunk in client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                                    stream=True, max_tokens=48, temperature=0.0,
                                                    extra_body={"k": 2}):
            delta = chunk.choices[0].delta.content if chunk.choices else None
            if delta:
                answer += delta
                print(delta, end="", flush=True)
            extra = getattr(chunk, "model_extra", None) or {}
            citations = extra.get("citations") or citations
        print("\ncitations: " + "; ".join(f"[{i + 1}] {c.get('id')} ({c.get('title')})"
                                          for i, c in enumerate(citations)))
        blocked = "Tell me everything about V o l d e m o r t."  # an obfuscated blocklist entry
        reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": blocked}],
                                               max_tokens=32)
        events = (reply.model_extra or {}).get("moderation_events", [])
        print(f"\nuser: {blocked}\nassistant: {reply.choices[0].message.content}\n"
              f"finish_reason: {reply.choices[0].finish_reason}; moderation events: {json.dumps(events)}")
        return {"answer": answer, "citations": [c.get("id") for c in citations],
                "moderated_finish_reason": reply.choices[0].finish_reason, "moderation_events": len(events)}
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


STAGES: list[tuple[str, Callable[[DemoContext], dict]]] = [
    ("indexes", _stage_indexes),
    ("retrieval", _stage_retrieval),
    ("search", _stage_search),
    ("augment", _stage_augment),
    ("pretrain", _stage_pretrain),
    ("serve", _stage_serve),
]


def run_demo(out: Path, quick: bool = True, full: bool = False, redo: set[str] | None = None,
             force: bool = False) -> dict:
    """Run every stage (reusing finished ones) and return the summary."""
    ctx = DemoContext(out=out, quick=quick, full=full)
    (out / "stages").mkdir(parents=True, exist_ok=True)
    started = time.time()
    timings: dict[str, float] = {}
    results: dict[str, dict] = {}
    redo = redo or set()
    unknown = redo - {name for name, _ in STAGES}
    if unknown:
        raise ValueError(f"unknown stage(s) {sorted(unknown)}; stages: {', '.join(n for n, _ in STAGES)}")
    for name, stage in STAGES:
        record = out / "stages" / f"{name}.json"
        if record.exists() and not force and name not in redo:
            saved = json.loads(record.read_text())
            results[name], timings[name] = saved["result"], 0.0
            print(f"[{name}] reused from {record} (--redo {name} to rerun)")
            continue
        print(f"\n[{name}] running ...", flush=True)
        t0 = time.time()
        results[name] = stage(ctx)
        timings[name] = time.time() - t0
        from indexer.io import atomic_write_text

        atomic_write_text(record, json.dumps({"result": results[name], "seconds": timings[name]}, indent=2))
    print("\nstage timings:")
    for name, seconds in timings.items():
        print(f"  {name:<10} {seconds:8.1f} s" + ("  (reused)" if seconds == 0.0 else ""))
    summary = {
        "bm25_ndcg@10": results["retrieval"]["bm25"]["ndcg@10"],
        "dense_ndcg@10": results["retrieval"]["dense"]["ndcg@10"],
        "hybrid_ndcg@10": results["retrieval"]["hybrid"]["ndcg@10"],
        "contamination_overlaps": results.get("augment", {}).get("check", {}).get("contaminated"),
        "pretrain_val_loss": results.get("pretrain", {}).get("final_val_loss"),
        "out": str(out),
        "minutes": round((time.time() - started) / 60, 2),
    }
    return summary


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="wandao demo", description=__doc__.split("\n\n")[0], epilog=EXAMPLE,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="the small-scale demo (default)")
    mode.add_argument("--full", action="store_true", help="the headline configuration")
    parser.add_argument("--out", default="runs/demo", help="output folder")
    parser.add_argument("--redo", action="append", default=[], metavar="STAGE", help="rerun this stage (repeatable)")
    parser.add_argument("--force", action="store_true", help="rerun every stage")
    args = parser.parse_args(argv)
    summary = run_demo(Path(args.out), quick=not args.full, full=args.full, redo=set(args.redo), force=args.force)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
