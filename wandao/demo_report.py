"""The demo's ``report.md``: the headline table first, then each stage's numbers, timings and plots."""

from __future__ import annotations

import datetime as _dt
import os
import platform
from pathlib import Path
from typing import Any

HEADLINE_F1 = 20.0  #: issue 9's target: F1 with retrieval on XQuAD-test ...
HEADLINE_RATIO = 3.0  #: ... and at least this many times the closed-book F1


def machine() -> str:
    """CPU model, cores and memory of this machine, in words."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        mem = f", {pages * size / 2 ** 30:.0f} GiB"
    except (ValueError, OSError, AttributeError):
        pass
    gpu = ""
    try:
        import torch

        if torch.cuda.is_available():
            gpu = f", GPU {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return f"{cpu}, {os.cpu_count()} cores{mem}{gpu}"


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _bar_plot(path: Path, labels: list[str], values: list[float], title: str, ylabel: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    bars = ax.bar(labels, values, color=["#8c8c8c", "#3b75af", "#c44e52", "#55a868", "#8172b2"][:len(values)])
    for bar, v in zip(bars, values):
        ax.annotate(f"{v:.1f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                    fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel)
    ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def headline_verdict(f1_closed: float | None, f1_retrieval: float | None) -> str:
    """Whether the run meets the headline target, in one sentence, with the numbers."""
    if f1_closed is None or f1_retrieval is None:
        return "The QA evaluation did not run."
    ratio = f1_retrieval / f1_closed if f1_closed > 0 else float("inf") if f1_retrieval > 0 else float("nan")
    met = f1_retrieval >= HEADLINE_F1 and ratio >= HEADLINE_RATIO
    ratio_txt = "closed-book F1 is 0" if f1_closed == 0 else f"{ratio:.2f}x the closed-book F1"
    return (f"Target (F1 >= {HEADLINE_F1:.0f} with retrieval and >= {HEADLINE_RATIO:.0f}x closed-book): "
            f"{'MET' if met else 'NOT met'} here: retrieval F1 {f1_retrieval:.1f}, {ratio_txt}.")


def write_report(out: Path, results: dict[str, dict], timings: dict[str, float], mode: str) -> Path:
    """Write ``out/report.md`` (atomically) and its plots under ``out/plots``; returns the report path."""
    from indexer.io import atomic_write_text

    from wandao.demo import SYSTEMS

    ev, augment = results.get("eval", {}), results.get("augment", {})
    qa = ev.get("qa", {})
    lines = [f"# wandao demo report ({mode})", "",
             f"{_dt.datetime.now().strftime('%Y-%m-%d %H:%M')}, on {machine()}; "
             f"stages took {sum(timings.values()) / 60:.1f} minutes in all (table at the end).", "",
             "## Headline: what retrieval buys on XQuAD-test", "",
             "Same pretrained model, same SFT steps; the evidence runs read BM25 passages from SciFact + XQuAD "
             "(training: an index without any XQuAD-test paragraph). 244 questions, SQuAD v1.1 EM/F1 (x100).", "",
             "| system | EM | F1 | citation recall | citation precision | abstained | attributed | answer inside its "
             "cited passage |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for label, key, with_evidence in SYSTEMS:
        row = qa.get(key, {})
        lines.append(f"| {label} | {_fmt(row.get('exact_match'))} | {_fmt(row.get('f1'))} | "
                     f"{_fmt(row.get('citation_rec'), 1) if with_evidence else '-'} | "
                     f"{_fmt(row.get('citation_prec'), 1) if with_evidence else '-'} | "
                     f"{_fmt(row.get('abstained'), 3) if with_evidence else '-'} | "
                     f"{_fmt(row.get('attribution_rate'), 3) if with_evidence else '-'} | "
                     f"{_fmt(row.get('supported'), 3) if with_evidence else '-'} |")
    judge = qa.get("retrieval_sft", {}).get("judge")
    lines += ["", headline_verdict(qa.get("closed_book", {}).get("f1"), qa.get("retrieval_sft", {}).get("f1")),
              (f"Citation recall/precision (x100): ALCE's definitions over the answers that do not abstain, judge "
               f"`{judge}`; attributed = citation recall x the answered share, over all questions; the "
               "last column is the strict check that the answer text occurs in the passage it cites.") if judge else "",
              ""]
    if qa:
        labels = [label for label, key, _ in SYSTEMS if key in qa]
        plot = _bar_plot(out / "plots" / "headline_f1.png", labels, [qa[k]["f1"] for _, k, _ in SYSTEMS if k in qa],
                         "XQuAD-test F1", "F1")
        lines += [f"![F1 per system]({plot.relative_to(out)})", ""]
    check = augment.get("check", {})
    lines += ["## Contamination", "",
              f"Training sets (SFT with evidence and closed-book, evidence documents expanded in full) against the "
              f"{check.get('eval_items', 'n/a')} XQuAD-test questions: {check.get('questions_flagged', 'n/a')} "
              "questions "
              f"and {check.get('answers_flagged', 'n/a')} answers found ({check.get('ngram', 8)}-gram, threshold "
              f"{check.get('threshold', 0.5)}); flagged items are listed in `rag/contamination.jsonl` (an answer "
              "string of three or more words found in a training record counts even when the record is unrelated). "
              f"XQuAD-test paragraphs found in training records ({check.get('passage_ngram', 13)}-gram containment "
              f">= {check.get('threshold', 0.5)}): {check.get('passages_flagged', 'n/a')} of "
              f"{check.get('passages', 'n/a')} (largest containment {check.get('passage_overlap_max', 'n/a')}). "
              "The training index (`rag/train-index`) holds no XQuAD-test paragraph, so none can be retrieved into "
              "training data.", ""]
    retrieval = results.get("retrieval", {})
    if retrieval:
        from wandao.demo import ANCHORS

        lines += ["## Retrieval", "", "SciFact test (300 queries):", "",
                  "| retriever | nDCG@10 | R@100 | MRR@10 | anchor |", "|---|---:|---:|---:|---|"]
        for name, row in retrieval.get("scifact", {}).items():
            anchor, source = ANCHORS[name]
            lines.append(f"| {name} | {row['ndcg@10']:.4f} | {row['recall@100']:.4f} | {row['mrr@10']:.4f} | "
                         f"{f'{anchor:.4f} ' if anchor is not None else ''}{source} |")
        lines += ["", "XQuAD-test over the XQuAD paragraphs, answer in the top k (DPR has_answer, %):", "",
                  "| retriever | top@1 | top@5 | top@20 |", "|---|---:|---:|---:|"]
        for name, row in retrieval.get("xquad_odqa", {}).items():
            cells = " | ".join(_fmt(row.get(k)) for k in ("top@1", "top@5", "top@20"))
            lines.append(f"| {name} | {cells} |")
        lines.append("")
    pre, sft, rm, ppo = (results.get(k, {}) for k in ("pretrain", "sft", "rm", "ppo"))
    ppl = ev.get("perplexity", {})
    lines += ["## Training", "",
              f"- Pretraining: {_fmt(pre.get('parameters'), 0)} non-embedding parameters, {pre.get('steps', 'n/a')} "
              "steps at "
              f"{_fmt(pre.get('tokens_per_s'), 0)} tokens/s, validation loss {_fmt(pre.get('final_val_loss'), 3)}; "
              f"{_fmt(pre.get('ralm_chunks'), 0)} retrieval-augmented chunks; WikiText-2 test perplexity "
              f"{_fmt(ppl.get('perplexity'))} ({_fmt(ppl.get('bits_per_byte'), 3)} bits/byte). "
              "![loss](pretrain/run/loss.png)"]
    for key, label in (("retrieval", "SFT with evidence"), ("closed_book", "SFT closed-book")):
        s = sft.get(key, {})
        lines.append(f"- {label}: response loss {_fmt(s.get('initial_val_loss'), 3)} -> "
                     f"{_fmt(s.get('final_val_loss'), 3)} (validation) in {s.get('steps', 'n/a')} steps.")
    if rm:
        lines.append(f"- Reward model (MiniLM, hh-rlhf): pairwise accuracy {rm['accuracy']:.3f} on {rm['pairs']} test "
                     "pairs (" + ", ".join(f"{src} {m['accuracy']:.3f}" for src, m in rm["per_source"].items()) +
                     f") after {rm['steps']} steps.")
    if ppo:
        lines.append(f"- PPO (RM + attribution + not-human rewards, evidence retrieved per rollout): reward "
                     f"{_fmt(ppo.get('reward_start'), 3)} -> {_fmt(ppo.get('reward_end'), 3)}, KL "
                     f"{_fmt(ppo.get('kl_start'), 2)} -> {_fmt(ppo.get('kl_end'), 2)} nats in {ppo.get('steps')} "
                     "steps. "
                     "![curves](ppo/curves.png)")
    mod = ev.get("moderation", {})
    if mod:
        lines += ["", "## Moderation", "",
                  f"Streaming moderation (configs/serve/moderation.yaml) on adversarial streams: "
                  f"{mod.get('leaks')} leaks in {mod.get('cases')} cases (leak rate {_fmt(mod.get('leak_rate'), 4)}), "
                  f"false-block rate {_fmt(mod.get('false_block_rate'), 4)} on benign XQuAD text."]
    lines += ["", "## Stage timings", "", "| stage | seconds |", "|---|---:|"]
    lines += [f"| {name} | {seconds:.1f} |" for name, seconds in timings.items()]
    if timings:
        plot = _bar_plot(out / "plots" / "timings.png", list(timings), [v / 60 for v in timings.values()],
                         "minutes per stage", "minutes")
        lines += ["", f"![timings]({plot.relative_to(out)})"]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
