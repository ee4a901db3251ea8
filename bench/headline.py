"""Issue 9's headline recipe, step by step: retrieval-augmented vs closed-book training at equal size.

Stages (each is skipped when its output exists; ``--force`` redoes them):

1. ``chunks``: a sentence-level evidence corpus (one sentence per document, id ``<paragraph id>#s<i>``)
   over the XQuAD paragraphs (all: test questions must be able to retrieve their evidence), WikiText-2
   (valid + test) and SciFact; a BM25 index over it; ``xquad-test-chunk-ids.txt``, every chunk of an
   XQuAD-test paragraph (``rag.xquad.test_paragraph_ids``), which training rows never retrieve.
2. ``cloze``: ``wandao augment cloze`` over XQuAD-train + WikiText-2 (valid + test): synthetic
   questions (no XQuAD-test text; the curriculum's guard refuses it).
4. ``sft-data``: ``wandao augment sft`` of the cloze set and of XQuAD-train with the top-1 retrieved
   sentence (sparrow template, test chunks excluded), and the same rows closed-book; only rows whose
   retrieved sentence holds the answer are kept (the same ids in both sets), XQuAD-train rows are
   repeated ``--xquad-repeat`` times, and the mix is shuffled with a fixed seed.
3. ``pretrain``: ``wandao pretrain --config configs/headline/pretrain.yaml`` (skipped when
   ``--init`` names an existing checkpoint).
5. ``sft``: ``wandao sft`` twice from the same checkpoint, same steps and batch:
   ``configs/headline/sft-evidence.yaml`` and ``configs/headline/sft-closed-book.yaml``.
6. ``eval``: XQuAD-test (``xquad-en:test``, 244 questions) QA EM/F1 of the evidence model with the top-1
   sentence and of the closed-book model without evidence; the share of non-empty evidence answers that
   occur in the passage the model read (k = 1, so that passage is the one it cites); the contamination
   check of the training mix against XQuAD-test. Writes ``<out>/summary.json``; the last line printed is
   that JSON.

Run: ``python bench/headline.py --out runs/headline/full`` (add ``--stages eval`` to rerun one stage;
``--threads 1`` on a shared machine). See docs/headline-recipe.md for the probes behind the settings.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import subprocess
import sys
import time
from pathlib import Path

logger = logging.getLogger("headline")

STAGES = ("chunks", "cloze", "pretrain", "sft-data", "sft", "eval")
WIKITEXT = ("wikitext-2", "${WANDAO_DATA_DIR}/wikitext-2/raw/wiki.test.raw")


def _expand(path: str) -> str:
    return os.path.expandvars(path)


def _wandao(*args: str) -> None:
    cmd = [str(Path(sys.executable).with_name("wandao")), *args]
    logger.info("$ %s", " ".join(cmd))
    subprocess.run(cmd, check=True)


def stage_chunks(out: Path) -> None:
    """Sentence corpus, BM25 index and the test-chunk exclusion list."""
    from indexer import build_index
    from indexer.data import write_jsonl
    from rag.curriculum import iter_paragraphs, sentence_windows
    from rag.xquad import test_paragraph_ids, xquad_corpus

    paragraphs = [{"id": p["id"], "title": p["title"], "text": p["text"]} for p in xquad_corpus("all")]
    paragraphs += [p for _, p in iter_paragraphs([_expand(s) for s in WIKITEXT] + ["scifact"])]
    chunks = [c for p in paragraphs for c in sentence_windows(p, 1)]
    write_jsonl(out / "chunks.jsonl", chunks)
    build_index(str(out / "chunks.jsonl"), out / "index", bm25=True, force=True)
    test = test_paragraph_ids()
    excluded = sorted(c["_id"] for c in chunks if c["_id"].split("#", 1)[0] in test)
    tmp = out / "xquad-test-chunk-ids.txt.tmp"
    tmp.write_text("\n".join(excluded) + "\n", encoding="utf-8")
    tmp.replace(out / "xquad-test-chunk-ids.txt")
    logger.info("chunks: %d paragraphs, %d sentences, %d excluded test chunks", len(paragraphs), len(chunks),
                len(excluded))


def stage_cloze(out: Path, examples: int, easy: bool = False) -> None:
    from rag.curriculum import write_cloze_questions

    # easy: the blank stays in place and no context word is dropped, so the question restates its sentence
    options = {"drop_fraction": 0.0, "fronted_fraction": 0.0} if easy else {}
    write_cloze_questions(["xquad-en:train", *[_expand(s) for s in WIKITEXT]], out / "cloze.jsonl",
                          examples=examples, seed=0, **options)


def _answer_in_evidence(row: dict) -> bool:
    from evals.squad import normalize_answer

    evidence = normalize_answer(row["prompt"].split("Search Results:", 1)[-1])
    return any(normalize_answer(a) and normalize_answer(a) in evidence for a in row["answers"])


def stage_sft_data(out: Path, tokenizer: str, xquad_repeat: int, seed: int = 0) -> dict:
    from indexer.data import iter_jsonl, write_jsonl

    common = ["--index", str(out / "index"), "--template", "sparrow", "-k", "1", "--exclude-ids",
              str(out / "xquad-test-chunk-ids.txt"), "--tokenizer", tokenizer, "--seed", "0"]
    stats = {}
    for name, data in (("cloze", str(out / "cloze.jsonl")), ("xquad", "xquad-en:train")):
        _wandao("augment", "sft", "--data", data, "--out", str(out / f"{name}-ev.jsonl"), *common)
        _wandao("augment", "sft", "--data", data, "--out", str(out / f"{name}-cb.jsonl"), *common,
                "--no-evidence-fraction", "1.0")
        keep = {r["id"] for _, r in iter_jsonl(out / f"{name}-ev.jsonl") if _answer_in_evidence(r)}
        stats[name] = {"rows": sum(1 for _ in iter_jsonl(out / f"{name}-ev.jsonl")), "answer_in_evidence": len(keep)}
        for mode in ("ev", "cb"):
            rows = []
            for _, r in iter_jsonl(out / f"{name}-{mode}.jsonl"):
                if r["id"] in keep:
                    r.pop("meta", None)
                    rows.append(r)
            stats[name][mode] = rows
    for mode in ("ev", "cb"):
        mix = stats["cloze"][mode] + stats["xquad"][mode] * xquad_repeat
        random.Random(seed).shuffle(mix)
        write_jsonl(out / f"mix-{mode}.jsonl", mix)
    summary = {n: {"rows": s["rows"], "answer_in_evidence": s["answer_in_evidence"]} for n, s in stats.items()}
    summary["xquad_repeat"] = xquad_repeat
    logger.info("sft-data: %s", summary)
    return summary


def _evidence_support(per_example: list[dict]) -> dict:
    """Share of non-empty answers found (normalised) in the one passage the model was shown (k = 1, so the
    passage it answers from is the one it would cite)."""
    from evals.squad import normalize_answer

    answered = supported = 0
    for r in per_example:
        pred = normalize_answer(r.get("prediction") or "")
        if not pred:
            continue
        answered += 1
        supported += pred in normalize_answer(" ".join(p.get("text", "") for p in r.get("passages") or []))
    return {"answered": answered, "supported": supported,
            "attribution_rate": round(100.0 * supported / answered, 2) if answered else 0.0}


def stage_eval(out: Path, dataset: str) -> dict:
    import evals
    from rag.contamination import CheckConfig, run_check

    ev = evals.run("qa", out=out / "eval-evidence", force=True, dataset=dataset, model=str(out / "sft-evidence/model"),
                   index=str(out / "index"), template="sparrow", k=1, max_new_tokens=24)
    cb = evals.run("qa", out=out / "eval-closed-book", force=True, dataset=dataset,
                   model=str(out / "sft-closed-book/model"), template="sparrow", max_new_tokens=24)
    support = _evidence_support(ev.per_example)
    _, check = run_check(CheckConfig(eval="xquad-en:test", train=[str(out / "mix-ev.jsonl")]))
    f1_ev, f1_cb = ev.metrics["f1"], cb.metrics["f1"]
    return {"dataset": dataset, "questions": ev.metrics.get("count"),
            "f1_retrieval_sft": round(f1_ev, 2), "em_retrieval_sft": round(ev.metrics["exact_match"], 2),
            "f1_closed_book": round(f1_cb, 2), "em_closed_book": round(cb.metrics["exact_match"], 2),
            "ratio": round(f1_ev / f1_cb, 2) if f1_cb else None, **support, "contamination": check}


def _latest_step(run_dir: Path) -> Path | None:
    from pretrain.checkpoint import latest_checkpoint

    return latest_checkpoint(run_dir)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/headline/full", help="work folder")
    ap.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    ap.add_argument("--force", action="store_true", help="redo stages whose outputs exist")
    ap.add_argument("--cloze-examples", type=int, default=80_000, help="cloze questions (the sources hold ~55k)")
    ap.add_argument("--easy-cloze", action="store_true",
                    help="cloze questions that keep every word in place (probe C's data)")
    ap.add_argument("--xquad-repeat", type=int, default=5, help="copies of each XQuAD-train row in the mix")
    ap.add_argument("--pretrain-config", default="configs/headline/pretrain.yaml")
    ap.add_argument("--init", default=None, help="SFT start checkpoint (default: the pretrain run's last step)")
    ap.add_argument("--sft-evidence", default="configs/headline/sft-evidence.yaml")
    ap.add_argument("--sft-closed-book", default="configs/headline/sft-closed-book.yaml")
    ap.add_argument("--threads", type=int, default=None, help="torch threads for pretrain and SFT")
    ap.add_argument("--sft-set", nargs="*", default=[], help="extra dotted overrides for both SFT runs (key=value)")
    ap.add_argument("--dataset", default="xquad-en:test")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("WANDAO_DATA_DIR", str(Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    pre_dir = out / "pretrain"
    init = args.init
    threads = ["--train.num_threads", str(args.threads)] if args.threads else []
    for stage in STAGES:
        if stage not in args.stages:
            continue
        t0 = time.time()
        done = {"chunks": out / "index" / "manifest.json", "cloze": out / "cloze.jsonl",
                "sft-data": out / "mix-cb.jsonl", "pretrain": pre_dir / "summary.json",
                "sft": out / "sft-closed-book" / "model"}.get(stage)
        if done is not None and done.exists() and not args.force:
            logger.info("%s: done already (%s)", stage, done)
            continue
        if stage == "chunks":
            stage_chunks(out)
        elif stage == "cloze":
            stage_cloze(out, args.cloze_examples, args.easy_cloze)
        elif stage == "sft-data":
            stage_sft_data(out, init or str(pre_dir / "tokenizer"), args.xquad_repeat)
        elif stage == "pretrain":
            if init:
                logger.info("pretrain: skipped, SFT starts from %s", init)
                continue
            corpus = Path("runs/headline/xq-train-corpus.jsonl")  # the path configs/headline/pretrain.yaml reads
            if not corpus.exists():
                _wandao("augment", "corpus", "--from", "xquad-en:train", "--out", str(corpus))
            _wandao("pretrain", "--config", args.pretrain_config, "--train.out_dir", str(pre_dir), *threads)
            (pre_dir / "summary.json").write_text(json.dumps({"model": str(_latest_step(pre_dir))}) + "\n",
                                                  encoding="utf-8")
        elif stage == "sft":
            start = init or str(_latest_step(pre_dir))
            overrides = [x for kv in args.sft_set for x in (f"--{kv.split('=', 1)[0]}", kv.split("=", 1)[1])]
            for name, config in (("evidence", args.sft_evidence), ("closed-book", args.sft_closed_book)):
                mode = "ev" if name == "evidence" else "cb"
                _wandao("sft", "--config", config, "--model.init_from", start, "--data.train",
                        str(out / f"mix-{mode}.jsonl"), "--train.out_dir", str(out / f"sft-{name}"), *threads,
                        *overrides)
        elif stage == "eval":
            result = stage_eval(out, args.dataset)
            timings[stage] = round((time.time() - t0) / 60, 2)
            result["minutes"] = timings
            tmp = out / "summary.json.tmp"
            tmp.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
            tmp.replace(out / "summary.json")
            print(json.dumps(result))
            return result
        timings[stage] = round((time.time() - t0) / 60, 2)
        logger.info("%s: %.1f min", stage, timings[stage])
    return {"minutes": timings}


if __name__ == "__main__":
    main()
