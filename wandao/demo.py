"""`wandao demo`: the end-to-end pipeline over the mirrored data, stage by stage.

Stages, in order (each writes under ``--out`` and records itself in ``stages/<name>.json``; a
second run reuses finished stages, ``--redo NAME`` or ``--force`` reruns them, ``--stop-after
NAME`` stops there):

1. ``indexes``: BM25 + dense over SciFact and over the XQuAD paragraphs; the evidence indexes
   (SciFact + XQuAD paragraphs): ``rag/index`` for evaluation and serving, and ``rag/train-index``
   without any XQuAD-test paragraph, which every training stage retrieves from.
2. ``retrieval``: the SciFact table (BM25 / dense / hybrid) against the published anchors, and
   XQuAD-test top-k answer accuracy (DPR's has_answer).
3. ``search``: a few example queries.
4. ``pretrain``: a byte-level BPE tokenizer and a small decoder pretrained on WikiText-2 (valid)
   and the XQuAD-train paragraphs, a share of it as retrieval-augmented chunks (In-Context RALM:
   neighbours prepended, loss on the chunk only). WikiText-2 test stays held out for perplexity.
5. ``augment``: the XQuAD-train SFT sets, with evidence (sparrow template, cited) and closed-book,
   and the contamination check of both against XQuAD-test.
6. ``sft``: SFT with evidence and, in the same run at equal steps, closed-book SFT (the control).
7. ``rm``: a MiniLM reward model on hh-rlhf (helpful + harmless).
8. ``ppo``: PPO from the evidence SFT with RM + attribution + not-human rewards, evidence retrieved
   per rollout.
9. ``eval``: XQuAD-test QA EM/F1 and ALCE attribution for closed-book SFT, retrieval SFT and
   retrieval SFT + PPO; RM accuracy; moderation leak rate; perplexity.
10. ``report``: ``report.md`` with the headline table, timings and plots.
11. ``serve``: start ``wandao serve``, ask one question through the openai client, show a refusal.

The last line printed is one JSON object with the headline numbers and the minutes taken.
``--quick`` (about 5 minutes on 2 CPU cores, what CI runs), the default (about 15 minutes, what
``make demo`` runs) and ``--full`` (the headline scale) are presets in ``configs/demo/``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from pretrain.config import Config, ConfigError, check_range

logger = logging.getLogger(__name__)

EXAMPLE = """\
examples:
  wandao demo                      # the default demo, about 15 minutes on 2 CPU cores (what `make demo` runs)
  wandao demo --quick              # the same stages at a small scale, about 5 minutes (what CI runs)
  wandao demo --out runs/demo --redo eval --redo report
  wandao demo --quick --stop-after sft          # stop after a stage; the next run resumes there
  wandao demo --quick --pretrain.max_iters 300  # any setting of the preset, as a dotted flag
  wandao demo --full               # the headline scale (58 minutes measured on 2 CPU cores)
"""

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "demo"

#: Published anchors the retrieval table is printed against (SciFact test, nDCG@10).
ANCHORS = {
    "bm25": (0.6789, "Anserini regression beir-v1.0.0-scifact.flat (Lucene BM25 k1=0.9 b=0.4)"),
    "dense": (0.6451, "plain SentenceTransformer all-MiniLM-L6-v2 (docs/benchmarks.md)"),
    "hybrid": (None, "must be >= the best single retriever"),
}

#: The three systems of the headline table: (name, SFT run, uses evidence).
SYSTEMS = (("closed-book SFT", "closed_book", False), ("retrieval SFT", "retrieval_sft", True),
           ("retrieval SFT + PPO", "retrieval_ppo", True))


# ------------------------------------------------------------------------------------------ config


@dataclass
class IndexSection(Config):
    dense: bool = field(default=True, metadata={"help": "dense (all-MiniLM-L6-v2) indexes beside BM25"})


@dataclass
class PretrainSection(Config):
    n_layer: int = field(default=4, metadata={"help": "decoder layers"})
    n_head: int = field(default=4, metadata={"help": "attention heads"})
    n_embd: int = field(default=128, metadata={"help": "model width"})
    block_size: int = field(default=256, metadata={"help": "context length (the SFT prompt with its evidence fits)"})
    vocab_size: int = field(default=4096, metadata={"help": "byte-level BPE vocabulary"})
    max_iters: int = field(default=150, metadata={"help": "optimizer steps"})
    micro_batch_size: int = field(default=8, metadata={"help": "rows per step"})
    lr: float = field(default=3e-3, metadata={"help": "peak learning rate (cosine)"})
    ralm_weight: float = field(default=1.0, metadata={
        "help": "mixture weight of the retrieval-augmented chunks (0: none)"})
    ralm_k: int = field(default=2, metadata={"help": "neighbours per augmented chunk"})
    ralm_chunk_tokens: int = field(default=64, metadata={"help": "tokens per augmented chunk"})

    def __post_init__(self) -> None:
        for name in ("n_layer", "n_head", "n_embd", "max_iters", "micro_batch_size", "ralm_chunk_tokens"):
            check_range(name, getattr(self, name), 1)
        check_range("block_size", self.block_size, 64)
        check_range("ralm_weight", self.ralm_weight, 0.0)
        check_range("ralm_k", self.ralm_k, 0)
        if self.n_embd % self.n_head:
            raise ConfigError(f"n_embd {self.n_embd} is not a multiple of n_head {self.n_head}", "n_embd")


@dataclass
class SFTSection(Config):
    k: int = field(default=2, metadata={"help": "passages per question"})
    passage_tokens: int = field(default=96, metadata={"help": "token budget per passage"})
    total_tokens: int = field(default=160, metadata={"help": "token budget for all passages"})
    max_iters: int = field(default=100, metadata={"help": "optimizer steps (each of the two SFT runs)"})
    micro_batch_size: int = field(default=8, metadata={"help": "rows per step"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate (cosine)"})

    def __post_init__(self) -> None:
        for name in ("k", "passage_tokens", "total_tokens", "max_iters", "micro_batch_size"):
            check_range(name, getattr(self, name), 1)


@dataclass
class RMSection(Config):
    backbone: str = field(default="minilm", metadata={"help": "the shipped MiniLM, or any HF encoder path"})
    max_steps: int = field(default=30, metadata={"help": "optimizer steps"})
    batch_size: int = field(default=16, metadata={"help": "comparisons per step"})
    max_length: int = field(default=128, metadata={"help": "tokens per (prompt, response)"})
    lr: float = field(default=5e-5, metadata={"help": "peak learning rate (linear decay)"})
    eval_limit: Optional[int] = field(default=200, metadata={"help": "test pairs per hh-rlhf subset (null: all)"})

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "max_length"):
            check_range(name, getattr(self, name), 1)
        check_range("eval_limit", self.eval_limit, 1)


@dataclass
class PPOSection(Config):
    steps: int = field(default=6, metadata={"help": "PPO steps"})
    batch_size: int = field(default=8, metadata={"help": "episodes per step"})
    max_new_tokens: int = field(default=24, metadata={"help": "most tokens per response"})
    lr: float = field(default=1e-4, metadata={"help": "learning rate"})
    kl_beta: float = field(default=0.02, metadata={"help": "per-token KL penalty"})

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "max_new_tokens"):
            check_range(name, getattr(self, name), 1)


@dataclass
class EvalSection(Config):
    max_new_tokens: int = field(default=24, metadata={"help": "answer length cap"})
    moderation_limit: Optional[int] = field(default=100, metadata={
        "help": "prompts per adversarial/benign set in the moderation suite (null: all)"})
    perplexity_chars: Optional[int] = field(default=200_000, metadata={
        "help": "characters of WikiText-2 test scored (null: all)"})


@dataclass
class DemoConfig(Config):
    """``wandao demo``'s settings; the presets are configs/demo/{quick,default,full}.yaml."""

    out: str = field(default="runs/demo", metadata={"help": "output folder"})
    num_threads: Optional[int] = field(default=None, metadata={"help": "torch CPU threads (default: torch's)"})
    seed: int = field(default=1337, metadata={"help": "seed of every stage"})
    index: IndexSection = field(default_factory=IndexSection, metadata={"help": "indexes"})
    pretrain: PretrainSection = field(default_factory=PretrainSection, metadata={"help": "tokenizer + pretraining"})
    sft: SFTSection = field(default_factory=SFTSection, metadata={"help": "the two SFT runs"})
    rm: RMSection = field(default_factory=RMSection, metadata={"help": "reward model"})
    ppo: PPOSection = field(default_factory=PPOSection, metadata={"help": "PPO"})
    eval: EvalSection = field(default_factory=EvalSection, metadata={"help": "evaluation"})

    def __post_init__(self) -> None:
        check_range("num_threads", self.num_threads, 1)


@dataclass
class DemoContext:
    cfg: DemoConfig
    out: Path
    mode: str

    def path(self, *parts: str) -> Path:
        return self.out.joinpath(*parts)

    def stage_result(self, name: str) -> dict:
        return json.loads(self.path("stages", f"{name}.json").read_text())["result"]


def _data_dir() -> Path:
    return Path(os.environ.get("WANDAO_DATA_DIR", "data"))


# ------------------------------------------------------------------------------------------ stages


def _stage_indexes(ctx: DemoContext) -> dict:
    from indexer.index import BuildOptions, build_index
    from rag.xquad import test_paragraph_ids, xquad_corpus

    dense = "default" if ctx.cfg.index.dense else None
    out: dict[str, Any] = {}
    for name, corpus in (("scifact", "scifact"), ("xquad", xquad_corpus("all"))):
        index = build_index(corpus, ctx.path("indexes", name), BuildOptions(bm25=True, dense=dense), force=True)
        out[name] = {"documents": index.manifest["corpus"]["documents"],
                     "seconds": {k: v.get("seconds") for k, v in index.manifest["backends"].items()}}
    from indexer.data import iter_corpus

    scifact = [{"id": d["id"], "title": d.get("title", ""), "text": d["text"]} for d in iter_corpus("scifact")]
    test_ids = test_paragraph_ids()
    everything = scifact + xquad_corpus("all")
    for name, docs in (("index", everything), ("train-index", [d for d in everything if d["id"] not in test_ids])):
        index = build_index(docs, ctx.path("rag", name), BuildOptions(bm25=True), force=True)
        out[f"rag/{name}"] = {"documents": index.manifest["corpus"]["documents"]}
    ctx.path("rag", "xquad-test-ids.txt").write_text("\n".join(sorted(test_ids)) + "\n", encoding="utf-8")
    print(f"indexes: SciFact {out['scifact']['documents']} docs, XQuAD {out['xquad']['documents']} paragraphs; "
          f"evidence: {out['rag/index']['documents']} docs (eval/serving), {out['rag/train-index']['documents']} "
          f"without the {len(test_ids)} XQuAD-test paragraphs (training)")
    return out


def _stage_retrieval(ctx: DemoContext) -> dict:
    import evals

    rows: dict[str, dict] = {}
    retrievers = ("bm25", "dense", "hybrid") if ctx.cfg.index.dense else ("bm25",)
    for retriever in retrievers:
        result = evals.run("retrieval", out=ctx.path("eval", f"scifact-{retriever}"), force=True,
                           index=str(ctx.path("indexes", "scifact")), dataset="scifact", retriever=retriever, k=1000)
        rows[retriever] = {m: result.metrics.get(m) for m in ("ndcg@10", "recall@100", "mrr@10")}
    print("\nSciFact test (300 queries), query's own id removed:")
    print(f"{'retriever':<9} {'nDCG@10':>8} {'R@100':>7} {'MRR@10':>7}  anchor")
    for name, row in rows.items():
        anchor, source = ANCHORS[name]
        anchor_txt = f"{anchor:.4f} ({source})" if anchor is not None else source
        print(f"{name:<9} {row['ndcg@10']:>8.4f} {row['recall@100']:>7.4f} {row['mrr@10']:>7.4f}  {anchor_txt}")
    odqa: dict[str, dict] = {}
    for retriever in retrievers:
        result = evals.run("odqa-retrieval", out=ctx.path("eval", f"xquad-odqa-{retriever}"), force=True,
                           index=str(ctx.path("indexes", "xquad")), dataset="xquad-en:test", retriever=retriever)
        odqa[retriever] = {m: result.metrics.get(m) for m in ("top@1", "top@5", "top@20")}
    print("\nXQuAD-test (244 questions) over the 240 XQuAD paragraphs, answer in the top k (DPR has_answer):")
    for name, row in odqa.items():
        print(f"  {name:<7} " + "  ".join(f"{k} {v:.2f}" for k, v in row.items()))
    return {"scifact": rows, "xquad_odqa": odqa}


def _stage_search(ctx: DemoContext) -> dict:
    from indexer.index import open_index

    index = open_index(ctx.path("indexes", "scifact"))
    queries = ["microRNA expression in cancer", "vitamin D deficiency and bone fractures",
               "coffee consumption and heart disease"]
    retriever = "hybrid" if ctx.cfg.index.dense else "bm25"
    results = index.retrieve(queries, k=3, retriever=retriever, with_documents=True)
    shown = {}
    for query, hits in zip(queries, results.to_dicts()):
        print(f"\nquery: {query}  ({retriever})")
        for hit in hits:
            print(f"  {hit['rank']}. {hit['id']:>10}  {hit['title'][:100]}")
        shown[query] = [hit["id"] for hit in hits]
    return shown


def _stage_pretrain(ctx: DemoContext) -> dict:
    """BPE tokenizer, retrieval-augmented chunks, then pretraining; WikiText-2 test is never trained on."""
    from indexer.data import write_jsonl
    from pretrain.checkpoint import step_dir_name
    from pretrain.config import from_dict
    from pretrain.tokenizer import train_bpe_tokenizer
    from pretrain.train import PretrainConfig, run
    from rag.augment_pretrain import PretrainAugmentConfig, augment_pretrain, iter_text_documents
    from rag.xquad import xquad_corpus

    pc = ctx.cfg.pretrain
    work = ctx.path("pretrain")
    work.mkdir(parents=True, exist_ok=True)
    paragraphs = work / "xquad-train-paragraphs.jsonl"
    write_jsonl(paragraphs, ({"id": d["id"], "title": d["title"], "text": d["title"] + "\n" + d["text"]}
                             for d in xquad_corpus("train")))
    wiki_valid = _data_dir() / "wikitext-2" / "raw" / "wiki.valid.raw"
    texts = [d["title"] + "\n" + d["text"] for d in iter_text_documents(wiki_valid)]
    texts += [d["title"] + "\n" + d["text"] for d in xquad_corpus("train")]
    tokenizer = train_bpe_tokenizer(texts, pc.vocab_size)
    tokenizer.save_pretrained(str(work / "tokenizer"))
    sources = [{"path": str(wiki_valid), "name": "wikitext-2-valid"},
               {"path": str(paragraphs), "name": "xquad-train-paragraphs", "weight": 0.5}]
    ralm = None
    if pc.ralm_weight > 0 and pc.ralm_k > 0:
        ralm = augment_pretrain(PretrainAugmentConfig(
            index=str(ctx.path("rag", "train-index")), corpus=str(paragraphs), out=str(work / "ralm"),
            k=pc.ralm_k, chunk_tokens=pc.ralm_chunk_tokens, neighbour_tokens=pc.ralm_chunk_tokens,
            seq_len=pc.block_size + 1, tokenizer=str(work / "tokenizer"), force=True))
        sources.append({"path": str(work / "ralm"), "name": "xquad-train-ralm", "weight": pc.ralm_weight})
    cfg = from_dict(PretrainConfig, {
        "model": {"preset": "tiny", "n_layer": pc.n_layer, "n_head": pc.n_head, "n_embd": pc.n_embd,
                  "block_size": pc.block_size, "dropout": 0.0},
        "data": {"sources": sources, "tokenizer": str(work / "tokenizer"), "val_fraction": 0.05},
        "optim": {"name": "adamw", "lr": pc.lr, "weight_decay": 0.1},
        "schedule": {"kind": "cosine", "warmup_iters": max(1, pc.max_iters // 20), "min_lr": pc.lr / 10},
        "train": {"out_dir": str(work / "run"), "max_iters": pc.max_iters, "micro_batch_size": pc.micro_batch_size,
                  "eval_interval": max(1, pc.max_iters // 4), "eval_iters": 10, "log_interval": 25,
                  "seed": ctx.cfg.seed, "num_threads": ctx.cfg.num_threads, "keep_checkpoints": 1},
    }, source="wandao demo (pretrain)")
    summary = run(cfg)
    final = work / "final"  # the model the later stages start from
    last = work / "run" / step_dir_name(summary["steps"])  # this run's, never a folder an earlier run left
    tmp = work / ".final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(last, tmp, ignore=shutil.ignore_patterns("optimizer*", "trainer_state*", "rng*", "*.pt"))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    print(f"pretraining: validation loss {summary['final_val_loss']:.3f} after {summary['steps']} steps "
          f"({summary.get('tokens_per_s', 0):.0f} tokens/s); loss curve: {work / 'run' / 'loss.png'}")
    out = {k: summary[k] for k in ("final_val_loss", "steps", "tokens_per_s") if k in summary}
    out.update(model=str(final), parameters=summary.get("params_non_embedding"),
               ralm_chunks=(ralm or {}).get("chunks"), ralm_rows=(ralm or {}).get("rows"))
    return out


def _stage_augment(ctx: DemoContext) -> dict:
    from rag.augment import SFTAugmentConfig, augment_sft
    from rag.contamination import CheckConfig, run_check

    sc = ctx.cfg.sft
    # min_passages 0: a passage whose title alone overflows its budget (long SciFact titles) is left out
    common = dict(index=str(ctx.path("rag", "train-index")), data="xquad-en:train", template="sparrow", k=sc.k,
                  tokenizer=str(ctx.path("pretrain", "tokenizer")), passage_tokens=sc.passage_tokens,
                  total_tokens=sc.total_tokens, min_passages=0, exclude_ids=str(ctx.path("rag", "xquad-test-ids.txt")),
                  seed=ctx.cfg.seed)
    evidence = augment_sft(SFTAugmentConfig(out=str(ctx.path("rag", "xquad-sft-evidence.jsonl")), cite=True,
                                            no_evidence_fraction=0.1, distractor_fraction=0.1, **common))
    closed = augment_sft(SFTAugmentConfig(out=str(ctx.path("rag", "xquad-sft-closed-book.jsonl")),
                                          no_evidence_fraction=1.0, **common))
    with open(evidence["out"], encoding="utf-8") as f:
        first = json.loads(f.readline())
    print(f"\nSFT with evidence: {evidence['examples']} examples ({evidence.get('evidence', 0)} with evidence, "
          f"{evidence.get('distractor', 0)} distractor-only -> abstain, {evidence.get('none', 0)} without search); "
          f"closed-book control: {closed['examples']}. One example:\n")
    print(first["prompt"] + first["response"])
    findings, check = run_check(CheckConfig(eval="xquad-en:test", train=[evidence["out"], closed["out"]],
                                            index=str(ctx.path("rag", "train-index")),
                                            out=str(ctx.path("rag", "contamination.jsonl"))))
    print(f"\ncontamination check vs XQuAD-test: {json.dumps(check)}")
    for f in findings:
        if f.flagged_question or f.flagged_answer:
            print(f"  flagged {f.id} ({f.question!r}): question overlap {f.question_overlap:.2f}, answer string in "
                  f"{len(f.answer_records)} training record(s): {', '.join(f.answer_records[:2])}")
    keep = ("examples", "evidence", "distractor", "none", "out")
    return {"evidence": {k: evidence.get(k) for k in keep}, "closed_book": {k: closed.get(k) for k in keep},
            "check": check}


def _sft_run(ctx: DemoContext, name: str, train_file: str) -> dict:
    from align.sft import SFTConfig, run
    from pretrain.config import from_dict

    sc = ctx.cfg.sft
    cfg = from_dict(SFTConfig, {
        "model": {"init_from": str(ctx.path("pretrain", "final"))},
        "data": {"train": train_file, "val_fraction": 0.1, "packing": False},
        "optim": {"lr": sc.lr, "weight_decay": 0.0},
        "schedule": {"kind": "cosine", "warmup_iters": max(1, sc.max_iters // 20), "min_lr": sc.lr / 10},
        "train": {"out_dir": str(ctx.path("sft", name)), "max_iters": sc.max_iters,
                  "micro_batch_size": sc.micro_batch_size, "eval_interval": max(1, sc.max_iters // 4),
                  "eval_examples": 128, "log_interval": 25, "seed": ctx.cfg.seed, "device": "cpu",
                  "num_threads": ctx.cfg.num_threads, "keep_checkpoints": 1},
    }, source=f"wandao demo (sft {name})")
    s = run(cfg)
    print(f"SFT {name}: response loss {s['initial_val_loss']:.3f} -> {s['final_val_loss']:.3f} (val) in "
          f"{s['steps']} steps; model: {s['model_dir']}")
    return {k: s.get(k) for k in ("initial_val_loss", "final_val_loss", "steps", "train_examples", "model_dir")}


def _stage_sft(ctx: DemoContext) -> dict:
    files = ctx.stage_result("augment")
    return {"retrieval": _sft_run(ctx, "evidence", files["evidence"]["out"]),
            "closed_book": _sft_run(ctx, "closed-book", files["closed_book"]["out"])}


def _stage_rm(ctx: DemoContext) -> dict:
    from align.reward import RMConfig, run
    from pretrain.config import from_dict

    rc = ctx.cfg.rm
    cfg = from_dict(RMConfig, {
        "model": {"backbone": rc.backbone, "pooling": "mean"},
        "data": {"train": ["hh-rlhf:helpful-base", "hh-rlhf:harmless-base"],
                 "eval": ["hh-rlhf:helpful-base", "hh-rlhf:harmless-base"], "template": "sparrow",
                 "max_length": rc.max_length, "min_prompt_tokens": min(48, rc.max_length // 2),
                 "eval_limit": rc.eval_limit},
        "loss": {"kind": "pairwise", "l2": 0.001},
        "optim": {"name": "adamw", "lr": rc.lr, "weight_decay": 0.01, "beta2": 0.999},
        "schedule": {"kind": "linear", "warmup_iters": max(1, rc.max_steps // 10), "min_lr": 0.0},
        "train": {"max_steps": rc.max_steps, "batch_size": rc.batch_size, "log_interval": 10,
                  "seed": ctx.cfg.seed, "num_threads": ctx.cfg.num_threads or 0, "device": "cpu"},
        "out": str(ctx.path("rm")),
    }, source="wandao demo (rm)")
    s = run(cfg)
    per_source = {src: {k: m.get(k) for k in ("accuracy", "pairs", "ties", "ece")} for src, m in s["eval"].items()}
    pairs = sum(m["pairs"] for m in per_source.values())
    accuracy = sum(m["accuracy"] * m["pairs"] for m in per_source.values()) / max(pairs, 1)
    print("reward model: " + ", ".join(f"{src} accuracy {m['accuracy']:.3f} ({m['pairs']} test pairs)"
                                       for src, m in per_source.items()) + f" after {s['steps']} steps")
    return {"accuracy": accuracy, "pairs": pairs, "per_source": per_source, "steps": s["steps"], "model": s["out"]}


def _stage_ppo(ctx: DemoContext) -> dict:
    from align.ppo import PPOConfig, run
    from pretrain.config import from_dict

    pc, sc = ctx.cfg.ppo, ctx.cfg.sft
    cfg = from_dict(PPOConfig, {
        "policy": {"init_from": ctx.stage_result("sft")["retrieval"]["model_dir"]},
        "data": {"prompts": "xquad-en:train", "template": "sparrow", "index": str(ctx.path("rag", "train-index")),
                 "k": sc.k, "passage_tokens": sc.passage_tokens, "total_tokens": sc.total_tokens},
        "rollout": {"batch_size": pc.batch_size, "max_new_tokens": pc.max_new_tokens, "stop": ["\n"]},
        "ppo": {"epochs": 2, "minibatch_size": max(1, pc.batch_size // 2), "kl_beta": pc.kl_beta,
                "reward_norm": "running"},
        "rewards": [{"kind": "rm", "path": str(ctx.path("rm")), "weight": 1.0},
                    {"kind": "attribution", "weight": 1.0}, {"kind": "not_human", "weight": 0.5}],
        "optim": {"lr": pc.lr, "weight_decay": 0.0},
        "train": {"out_dir": str(ctx.path("ppo")), "steps": pc.steps, "device": "cpu", "seed": ctx.cfg.seed,
                  "num_threads": ctx.cfg.num_threads, "log_interval": max(1, pc.steps // 6)},
    }, source="wandao demo (ppo)")
    s = run(cfg)
    print(f"PPO: reward {s['reward_start']:.3f} -> {s['reward_end']:.3f}, KL {s['kl_start']:.2f} -> "
          f"{s['kl_end']:.2f} nats in {s['steps']} steps; curves: {ctx.path('ppo', 'curves.png')}")
    return {k: s.get(k) for k in ("reward_start", "reward_end", "kl_start", "kl_end", "steps", "model_dir")}


def _stage_eval(ctx: DemoContext) -> dict:
    import evals

    ec, sc = ctx.cfg.eval, ctx.cfg.sft
    sft = ctx.stage_result("sft")
    models = {"closed_book": sft["closed_book"]["model_dir"], "retrieval_sft": sft["retrieval"]["model_dir"],
              "retrieval_ppo": ctx.stage_result("ppo")["model_dir"]}
    qa: dict[str, dict] = {}
    for label, key, with_evidence in SYSTEMS:
        extra = dict(index=str(ctx.path("rag", "index")), k=sc.k, passage_tokens=sc.passage_tokens,
                     total_tokens=sc.total_tokens) if with_evidence else {}
        result = evals.run("qa", out=ctx.path("eval", f"qa-{key}"), force=True, dataset="xquad-en:test",
                           model=models[key], template="sparrow", max_new_tokens=ec.max_new_tokens, **extra)
        row = {"exact_match": result.metrics["exact_match"], "f1": result.metrics["f1"],
               "count": result.metrics["count"]}
        if with_evidence:
            row.update(_attribution(ctx, key, result))
        qa[key] = row
        print(f"{label:<20} EM {row['exact_match']:5.1f}  F1 {row['f1']:5.1f}" +
              (f"  abstained {row['abstained']:.3f}  attributed {row['attribution_rate']:.3f} (ALCE citation "
               f"recall {row['citation_rec']:.1f}, precision {row['citation_prec']:.1f} over answered)  answer "
               f"inside its cited passage {row['supported']:.3f}" if with_evidence else ""))
    moderation = evals.run("moderation", out=ctx.path("eval", "moderation"), force=True,
                           moderation=str(Path(__file__).resolve().parents[1] / "configs" / "serve" /
                                          "moderation.yaml"), limit=ec.moderation_limit)
    mod = {k: moderation.metrics.get(k) for k in ("leak_rate", "false_block_rate", "leaks", "stream_cases",
                                                  "input_cases", "benign_inputs", "benign_outputs")}
    mod["cases"] = (mod["stream_cases"] or 0) + (mod["input_cases"] or 0)
    print(f"moderation: leak rate {mod['leak_rate']:.4f}, false blocks {mod['false_block_rate']:.4f}")
    lm = evals.run("lm", out=ctx.path("eval", "perplexity"), force=True, model=str(ctx.path("pretrain", "final")),
                   dataset="wikitext-2", split="test", max_chars=ec.perplexity_chars)
    ppl = {k: lm.metrics.get(k) for k in ("perplexity", "bits_per_byte", "tokens")}
    print(f"perplexity of the pretrained model on WikiText-2 test (held out): {ppl['perplexity']:.1f} "
          f"({ppl['bits_per_byte']:.3f} bits/byte)")
    return {"qa": qa, "moderation": mod, "perplexity": ppl}


def _attribution(ctx: DemoContext, key: str, qa_run) -> dict:
    """ALCE citation recall/precision of the answers that do not abstain, and the attributed share of all.

    An abstention ("I could not find this in the search results.") makes no claim, so it is left out of
    the ALCE scoring (the lexical judge would otherwise find its words "results", "find" in many passages)
    and counts as not attributed in ``attribution_rate`` = (answered / all) x citation recall / 100 (a
    fraction; ``citation_rec``/``citation_prec`` keep ALCE's x100 scale).
    """
    import evals
    from indexer.data import write_jsonl
    from rag.citations import remove_citations
    from rag.templates import ABSTAIN_ANSWER

    from evals.squad import normalize_answer

    abstain = normalize_answer(ABSTAIN_ANSWER)
    rows = qa_run.per_example
    answered = [r for r in rows if normalize_answer(remove_citations(r.get("answer") or "")) not in ("", abstain)]
    scored = {"citation_rec": 0.0, "citation_prec": 0.0, "judge": None}
    if answered:
        path = ctx.path("eval", f"qa-{key}", "answered.jsonl")
        write_jsonl(path, ({"id": r["id"], "answer": r["answer"], "passages": r["passages"]} for r in answered))
        cited = evals.run("attribution", out=ctx.path("eval", f"attribution-{key}"), force=True, input=str(path))
        scored = {k: cited.metrics[k] for k in scored}
    return {**scored, "answered": len(answered), "abstained": 1 - len(answered) / max(len(rows), 1),
            "attribution_rate": scored["citation_rec"] / 100 * len(answered) / max(len(rows), 1),
            "supported": _supported_rate(rows)}


def _supported_rate(rows: list[dict]) -> float:
    """Share of answers whose cited passage contains the answer text (the demo's "evidence supports it")."""
    import re

    from evals.squad import normalize_answer

    supported = 0
    for r in rows:
        cited = [int(n) for n in re.findall(r"\[(\d+)\]", r.get("answer") or "")]
        passages = r.get("passages") or []
        pred = normalize_answer(r.get("prediction") or "")
        if pred and any(1 <= n <= len(passages) and pred in normalize_answer(passages[n - 1]["text"])
                        for n in cited):
            supported += 1
    return supported / max(len(rows), 1)


def _stage_report(ctx: DemoContext) -> dict:
    """runs/demo/report.md: the headline table, every stage's numbers, timings and plots."""
    from wandao.demo_report import write_report

    path = write_report(ctx.out, {name: ctx.stage_result(name) for name, _ in STAGES[:STAGES_BEFORE_REPORT]},
                        _timings(ctx.out), ctx.mode)
    print(f"report: {path}")
    return {"report": str(path)}


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stage_serve(ctx: DemoContext) -> dict:
    """Start `wandao serve --demo`, ask one question through the openai client, show a moderated request."""
    import subprocess
    import urllib.request

    from openai import OpenAI

    port = _free_port()
    log = open(ctx.path("serve.log"), "w")
    sc = ctx.cfg.sft  # the evidence budget the model was trained with
    server = subprocess.Popen([sys.executable, "-m", "wandao.cli", "serve", "--demo", "--demo-dir", str(ctx.out),
                               "--host", "127.0.0.1", "--port", str(port), "--k", str(sc.k),
                               "--passage-tokens", str(sc.passage_tokens), "--total-tokens", str(sc.total_tokens)],
                              stdout=log, stderr=subprocess.STDOUT,
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
                    raise RuntimeError(f"the demo server did not start; see {ctx.path('serve.log')}") from None
                time.sleep(1)
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="demo")
        model = client.models.list().data[0].id
        question = "What did the Normans do in France?"
        print(f"\nuser: {question}\nassistant (streamed): ", end="", flush=True)
        answer, citations = "", []
        for chunk in client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                                    stream=True, max_tokens=32, temperature=0.0,
                                                    extra_body={"k": ctx.cfg.sft.k}):
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
        return {"model": model, "answer": answer, "citations": [c.get("id") for c in citations],
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
    ("pretrain", _stage_pretrain),
    ("augment", _stage_augment),
    ("sft", _stage_sft),
    ("rm", _stage_rm),
    ("ppo", _stage_ppo),
    ("eval", _stage_eval),
    ("report", _stage_report),
    ("serve", _stage_serve),
]
STAGE_NAMES = [name for name, _ in STAGES]
#: What each stage reads: a stage reruns when one of these reran in the same invocation.
DEPENDS_ON: dict[str, tuple[str, ...]] = {
    "indexes": (), "retrieval": ("indexes",), "search": ("indexes",), "pretrain": ("indexes",),
    "augment": ("indexes", "pretrain"), "sft": ("pretrain", "augment"), "rm": (), "ppo": ("indexes", "sft", "rm"),
    "eval": ("indexes", "pretrain", "sft", "ppo"), "report": tuple(STAGE_NAMES[:STAGE_NAMES.index("report")]),
    "serve": ("indexes", "ppo"),
}
STAGES_BEFORE_REPORT = STAGE_NAMES.index("report")
#: The config sections each stage's output depends on (a change reruns the stage and what reads it).
SETTINGS_OF: dict[str, tuple[str, ...]] = {
    "indexes": ("index",), "retrieval": ("index",), "search": ("index",), "pretrain": ("pretrain", "seed"),
    "augment": ("sft", "seed"), "sft": ("sft", "seed"), "rm": ("rm", "seed"), "ppo": ("ppo", "seed"),
    "eval": ("eval",), "report": (), "serve": (),
}


def _stage_settings(cfg: DemoConfig, name: str) -> dict:
    data = cfg.to_dict()
    return {key: data[key] for key in SETTINGS_OF[name]}


# --------------------------------------------------------------------------------------------- run


def _timings(out: Path) -> dict[str, float]:
    """Seconds each finished stage took when it last ran (from its record)."""
    timings = {}
    for name in STAGE_NAMES:
        record = out / "stages" / f"{name}.json"
        if record.exists():
            timings[name] = json.loads(record.read_text()).get("seconds", 0.0)
    return timings


def load_preset(mode: str, overrides: dict[str, Any] | None = None, config: str | None = None) -> DemoConfig:
    """The preset for ``mode`` (quick, default, full) or ``config``, then dotted ``overrides``."""
    path = Path(config) if config else CONFIG_DIR / f"{mode}.yaml"
    if not path.exists():
        raise ConfigError(f"preset not found at {path}", "config")
    return DemoConfig.load(path, overrides)


def summarize(out: Path, minutes: float) -> dict:
    """The last line's JSON, from the stage records present (a missing stage gives nulls)."""
    def result(name: str) -> dict:
        record = out / "stages" / f"{name}.json"
        return json.loads(record.read_text())["result"] if record.exists() else {}

    retrieval, augment, rm, ev = result("retrieval"), result("augment"), result("rm"), result("eval")
    qa = ev.get("qa", {})
    check = augment.get("check", {})
    scifact = retrieval.get("scifact", {})
    return {
        "f1_closed_book": qa.get("closed_book", {}).get("f1"),
        "f1_retrieval_sft": qa.get("retrieval_sft", {}).get("f1"),
        "f1_retrieval_ppo": qa.get("retrieval_ppo", {}).get("f1"),
        "em_retrieval_sft": qa.get("retrieval_sft", {}).get("exact_match"),
        "attribution_rate": qa.get("retrieval_ppo", {}).get("attribution_rate"),
        "attribution_rate_sft": qa.get("retrieval_sft", {}).get("attribution_rate"),
        "abstained_ppo": qa.get("retrieval_ppo", {}).get("abstained"),
        "rm_accuracy": rm.get("accuracy"),
        "moderation_leaks": ev.get("moderation", {}).get("leaks"),
        "moderation_leak_rate": ev.get("moderation", {}).get("leak_rate"),
        "perplexity": ev.get("perplexity", {}).get("perplexity"),
        "contamination_overlaps": check.get("contaminated"),
        "test_paragraphs_in_training": check.get("passages_flagged"),
        "bm25_ndcg@10": scifact.get("bm25", {}).get("ndcg@10"),
        "dense_ndcg@10": scifact.get("dense", {}).get("ndcg@10"),
        "hybrid_ndcg@10": scifact.get("hybrid", {}).get("ndcg@10"),
        "pretrain_val_loss": result("pretrain").get("final_val_loss"),
        "report": str(out / "report.md") if (out / "report.md").exists() else None,
        "out": str(out),
        "minutes": minutes,
    }


def run_demo(cfg: DemoConfig, mode: str = "default", redo: set[str] | None = None, force: bool = False,
             stop_after: str | None = None) -> dict:
    """Run every stage (reusing finished ones, unless redone) and return the summary."""
    import torch

    out = Path(cfg.out)
    redo = set(redo or ())
    unknown = redo - set(STAGE_NAMES) | ({stop_after} - set(STAGE_NAMES) if stop_after else set())
    if unknown:
        raise ValueError(f"unknown stage(s) {sorted(unknown)}; stages: {', '.join(STAGE_NAMES)}")
    (out / "stages").mkdir(parents=True, exist_ok=True)
    from indexer.io import atomic_write_text

    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    ctx = DemoContext(cfg=cfg, out=out, mode=mode)
    started = time.time()
    ran: dict[str, float] = {}
    for name, stage in STAGES:
        record = out / "stages" / f"{name}.json"
        settings = _stage_settings(cfg, name)
        stale = [d for d in DEPENDS_ON[name] if d in ran]  # an input was just remade
        changed = record.exists() and json.loads(record.read_text()).get("settings") != settings
        if not (force or name in redo or stale or changed or not record.exists()):
            print(f"[{name}] reused from {record} (--redo {name} to rerun)")
        else:
            why = (f" (its input {', '.join(stale)} was remade)" if stale else
                   " (its settings changed)" if changed else "")
            print(f"\n[{name}] running{why} ...", flush=True)
            t0 = time.time()
            torch.manual_seed(cfg.seed)
            result = stage(ctx)
            ran[name] = time.time() - t0
            atomic_write_text(record, json.dumps({"result": result, "seconds": ran[name], "settings": settings},
                                                 indent=2))
        if name == stop_after:
            print(f"stopped after {name} (--stop-after); run again to resume from the next stage")
            break
    timings = _timings(out)
    print("\nstage timings (s):")
    for name, seconds in timings.items():
        print(f"  {name:<10} {seconds:8.1f}" + ("" if name in ran else "  (reused)"))
    return summarize(out, round((time.time() - started) / 60, 2))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="wandao demo", description=__doc__.split("\n\n")[0], epilog=EXAMPLE,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, add_help=False)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="the small-scale demo, ~5 minutes (configs/demo/quick.yaml)")
    mode.add_argument("--full", action="store_true", help="the headline configuration (configs/demo/full.yaml)")
    parser.add_argument("--config", default=None, help="a demo config instead of a preset")
    parser.add_argument("--redo", action="append", default=[], metavar="STAGE",
                        help=f"rerun this stage and the ones that read it (repeatable): {', '.join(STAGE_NAMES)}")
    parser.add_argument("--force", action="store_true", help="rerun every stage")
    parser.add_argument("--stop-after", default=None, metavar="STAGE", help="stop after this stage")
    parser.add_argument("-h", "--help", action="store_true")
    args, rest = parser.parse_known_args(argv)
    from pretrain.config import build_parser

    cfg_parser = build_parser(DemoConfig, "wandao demo [--quick|--full] [--redo STAGE] [--stop-after STAGE]",
                              description="Settings (dotted flags override the preset):")
    if args.help:
        parser.print_help()
        print()
        cfg_parser.print_help()
        return 0
    ns = vars(cfg_parser.parse_args(rest))
    ns.pop("config", None)
    name = "full" if args.full else "quick" if args.quick else "default"
    try:
        cfg = load_preset(name, {k: v[0] if isinstance(v, list) and len(v) == 1 else v for k, v in ns.items()},
                          args.config)
    except ConfigError as err:
        cfg_parser.error(str(err))
    summary = run_demo(cfg, mode=name, redo=set(args.redo), force=args.force, stop_after=args.stop_after)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
