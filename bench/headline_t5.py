"""Issue 9's encoder-decoder lever: a T5 from scratch that reads the evidence through its encoder.

Reuses ``bench/headline.py``'s data (run it first with ``--stages chunks cloze sft-data --init minilm``:
the MiniLM WordPiece is the tokenizer, so no tokenizer has to be trained). Then:

1. ``rows``: ``mix-ev.jsonl`` / ``mix-cb.jsonl`` (cloze questions + XQuAD-train, top-1 retrieved sentence,
   sparrow prompts; the closed-book set has the same rows without evidence) become
   ``wandao augment pretrain``-format rows, one example per row: the prompt (loss mask 0), the response
   (mask 1), then [SEP]. A t5 run over such rows reads the prompt through its encoder and writes the
   response (pretrain/evidence_seq2seq.py).
2. ``train``: ``wandao pretrain`` twice, same model, steps and seed: ``configs/headline/t5-qa.yaml`` on the
   evidence rows and on the closed-book rows, in parallel, one thread each.
3. ``eval``: XQuAD-test QA EM/F1 through ``evals.run("qa", model=...)`` (greedy, pretrain.generate's
   encoder-decoder loop): the evidence model with the top-1 sentence from the headline index, the
   closed-book model without; the share of answers found in the passage shown. Writes
   ``<out>/t5-summary.json``; the last line printed is that JSON.

    python bench/headline.py --out runs/headline/t5 --stages chunks cloze sft-data --easy-cloze --init minilm
    python bench/headline_t5.py --out runs/headline/t5 [--steps 3000] [--stages rows train eval]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: import wandao's packages from this checkout

logger = logging.getLogger("headline_t5")

STAGES = ("rows", "train", "eval")
SEQ_LEN = 256  # prompt + response + [SEP]; longer examples are skipped and counted


def stage_rows(out: Path) -> dict:
    from indexer.data import iter_jsonl
    from pretrain.data import TokenWriter
    from pretrain.tokenizer import load_tokenizer

    tok = load_tokenizer("minilm")
    sep = tok.convert_tokens_to_ids("[SEP]")
    stats = {}
    for mode in ("ev", "cb"):
        folder, kept, skipped = out / f"t5-rows-{mode}", 0, 0
        with TokenWriter(folder, vocab_size=len(tok), eos_id=sep, seq_len=SEQ_LEN, with_loss_mask=True,
                         extra_meta={"tokenizer": "minilm", "source": str(out / f"mix-{mode}.jsonl")}) as w:
            for _, row in iter_jsonl(out / f"mix-{mode}.jsonl"):
                prompt = tok(row["prompt"], add_special_tokens=False)["input_ids"]
                response = tok(row["response"], add_special_tokens=False)["input_ids"]
                n = len(prompt) + len(response) + 1
                if n > SEQ_LEN or not response:
                    skipped += 1
                    continue
                pad = SEQ_LEN - n
                w.add([*prompt, *response, sep, *[sep] * pad], [0] * len(prompt) + [1] * len(response) + [0] * (1 + pad))
                kept += 1
        stats[mode] = {"rows": kept, "skipped": skipped}
    logger.info("rows: %s", stats)
    return stats


def stage_train(out: Path, config: str, steps: int, extra: list[str]) -> None:
    wandao = str(Path(sys.executable).with_name("wandao"))
    procs = []
    for mode in ("ev", "cb"):
        cmd = [wandao, "pretrain", "--config", config, "--data.sources",
               json.dumps([{"path": str(out / f"t5-rows-{mode}"), "name": f"headline-{mode}"}]),
               "--train.out_dir", str(out / f"t5-{mode}"), "--train.max_iters", str(steps),
               "--train.num_threads", "1", *extra]
        logger.info("$ %s", " ".join(cmd))
        log = open(out / f"t5-{mode}.log", "w", encoding="utf-8")
        procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log))
    for p, log in procs:
        if p.wait() != 0:
            raise SystemExit(f"{p.args[-1]}: wandao pretrain failed; see {log.name}")
        log.close()


def stage_eval(out: Path, dataset: str) -> dict:
    import evals
    from pretrain.checkpoint import latest_checkpoint

    sys.path.insert(0, str(ROOT / "bench"))
    from headline import _evidence_support

    ev_model, cb_model = latest_checkpoint(out / "t5-ev"), latest_checkpoint(out / "t5-cb")
    ev = evals.run("qa", out=out / "t5-eval-evidence", force=True, dataset=dataset, model=str(ev_model),
                   index=str(out / "index"), template="sparrow", k=1, max_new_tokens=24)
    cb = evals.run("qa", out=out / "t5-eval-closed-book", force=True, dataset=dataset, model=str(cb_model),
                   template="sparrow", max_new_tokens=24)
    f1_ev, f1_cb = ev.metrics["f1"], cb.metrics["f1"]
    return {"dataset": dataset, "questions": ev.metrics.get("count"), "models": [str(ev_model), str(cb_model)],
            "f1_retrieval": round(f1_ev, 2), "em_retrieval": round(ev.metrics["exact_match"], 2),
            "f1_closed_book": round(f1_cb, 2), "em_closed_book": round(cb.metrics["exact_match"], 2),
            "ratio": round(f1_ev / f1_cb, 2) if f1_cb else None, **_evidence_support(ev.per_example)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/headline/t5", help="bench/headline.py's work folder")
    ap.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    ap.add_argument("--config", default="configs/headline/t5-qa.yaml")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--set", nargs="*", default=[], help="extra dotted overrides for both runs (key=value)")
    ap.add_argument("--dataset", default="xquad-en:test")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("WANDAO_DATA_DIR", str(ROOT.parent / "shared" / "data"))
    out = Path(args.out)
    if not (out / "mix-ev.jsonl").exists():
        raise SystemExit(f"{out}/mix-ev.jsonl is missing: run bench/headline.py --out {out} "
                         "--stages chunks cloze sft-data --init minilm first")
    result: dict = {"minutes": {}}
    for stage in STAGES:
        if stage not in args.stages:
            continue
        t0 = time.time()
        if stage == "rows":
            result["rows"] = stage_rows(out)
        elif stage == "train":
            extra = [x for kv in args.set for x in (f"--{kv.split('=', 1)[0]}", kv.split("=", 1)[1])]
            stage_train(out, args.config, args.steps, extra)
        else:
            result.update(stage_eval(out, args.dataset))
        result["minutes"][stage] = round((time.time() - t0) / 60, 2)
    tmp = out / "t5-summary.json.tmp"
    tmp.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    tmp.replace(out / "t5-summary.json")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
