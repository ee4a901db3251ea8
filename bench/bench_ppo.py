"""PPO throughput: ``wandao ppo`` against TRL's PPO trainer, same run; plus the grounded run's held-out table.

**Throughput.** TRL removed ``PPOTrainer`` in 1.13 (huggingface/trl#7020); 1.12.0 is the last release
with it (``trl.experimental.ppo``, where huggingface/trl#4482 moved it). The dev extra's TRL is newer,
so ``make bench-ppo`` installs ``trl==1.12.0`` without dependencies into ``.venv/trl-ppo`` and only
the TRL worker puts it first on ``sys.path`` (the rest of the venv keeps its TRL).

Both trainers get:

- the same tiny policy: :func:`align.ppo.build_tiny_policy` (the 'tiny' GPT, saved as a transformers
  ``GPT2LMHeadModel``, a character tokenizer), and a frozen copy as the reference;
- the same reward model: ``GPT2ForSequenceClassification`` (``num_labels=1``) built from that folder
  with a seeded score head, scoring prompt + response token ids at the last token (TRL's
  ``get_reward``; in wandao a ``function`` reward source calls the same module on the same ids);
- the same prompts (XQuAD-train questions rendered with the sparrow template, no evidence, the same
  token ids), ``--batch`` episodes per PPO step, ``--response-length`` new tokens (sampled at
  temperature 1), ``--epochs`` PPO epochs over ``--minibatches`` minibatches (one optimizer step
  each), AdamW at the same lr, fp32 on CPU, ``--threads`` torch threads each (1 by default).

One difference is each design's own and stays: TRL's critic is a separate value model (a second
copy of the backbone), wandao's a value head on the policy's trunk (see ``align.ppo``).

Each round runs a trainer in a fresh process for ``--steps`` PPO steps; the first step warms up and
the rest are timed (TRL: between ``on_step_end`` callbacks; wandao: the per-step ``seconds`` it
logs, rollout to log). Rounds alternate (wandao, TRL, wandao, ...) and the best round of each
counts. Target >= 1.0x.

**Grounded run** (``--grounded-eval``): XQuAD-test (``rag.xquad`` split) held-out attribution and QA
F1 of a policy, evidence retrieved and rendered as the PPO config renders rollouts; see
:func:`grounded_eval`. ``bench/out/ppo-grounded-<name>.json`` files (before, after) become a section
of ``bench/out/ppo.md``.

Run: ``python bench/bench_ppo.py`` (``--quick`` for a smoke run); writes ``bench/out/ppo.md`` / ``.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import OUT_DIR, ROOT, describe_machine, machine, markdown_table, run_worker, write_outputs  # noqa: E402

TRL_PPO_VERSION = "1.12.0"
TRL_DIR = ROOT / ".venv" / "trl-ppo"
_CITATION = re.compile(r"\s*\[\d+\]")
_RM: dict = {}


# ------------------------------------------------------------------------------------ shared setup


def build_models(root: Path, seed: int = 0) -> tuple[Path, Path]:
    """The tiny policy (``root/policy``) and the reward model (``root/rm``) both trainers load."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from align.ppo import build_tiny_policy
    from indexer.datasets import resolve  # noqa: F401  (the data dir must be set)
    from rag.xquad import load_split

    texts = [r["question"] for r in load_split("train")]
    build_tiny_policy(root / "policy", texts, 256, seed)
    torch.manual_seed(seed + 1)
    rm = AutoModelForSequenceClassification.from_pretrained(str(root / "policy"), num_labels=1)
    torch.nn.init.normal_(rm.score.weight, std=0.5)  # a seeded head: rewards that vary between responses
    rm.config.pad_token_id = rm.config.pad_token_id if rm.config.pad_token_id is not None else 0
    rm.save_pretrained(str(root / "rm"))
    return root / "policy", root / "rm"


def prompt_ids(policy: Path, n: int) -> list[list[int]]:
    """The first ``n`` XQuAD-train questions rendered by the sparrow template (no evidence), as token ids."""
    from align.ppo import DataSection, load_prompt_items, render_prompts
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(policy))
    dc = DataSection(prompts="xquad-en:train", limit=n, template="sparrow")
    rows = render_prompts(load_prompt_items(dc), dc, None, tok)
    return [tok(r["prompt"], add_special_tokens=False)["input_ids"] for r in rows]


def _rm_scores(rm, seqs: list[list[int]], pad_id: int) -> list[float]:
    """The RM's score at each sequence's last token (right padding), as TRL's ``get_reward`` takes it."""
    import torch

    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    att = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        att[i, :len(s)] = 1
    with torch.no_grad():
        h = rm.transformer(input_ids=ids, attention_mask=att).last_hidden_state
        logits = rm.score(h).squeeze(-1)  # (B, T)
    last = att.sum(1) - 1
    return logits[torch.arange(len(seqs)), last].tolist()


def rm_reward(rows):
    """wandao's reward source for the benchmark: the shared RM on prompt + response ids."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if not _RM:
        path = os.environ["WANDAO_BENCH_PPO_RM"]
        _RM["model"] = AutoModelForSequenceClassification.from_pretrained(path).eval()
        _RM["tok"] = AutoTokenizer.from_pretrained(os.environ["WANDAO_BENCH_PPO_POLICY"])
    tok = _RM["tok"]
    seqs = [tok(r["prompt"], add_special_tokens=False)["input_ids"] + list(r["response_ids"] or [tok.pad_token_id])
            for r in rows]
    return _rm_scores(_RM["model"], seqs, tok.pad_token_id)


# ------------------------------------------------------------------------------------------ workers


def worker_wandao(a: argparse.Namespace) -> dict:
    from align.ppo import PPOConfig, run

    os.environ["WANDAO_BENCH_PPO_RM"], os.environ["WANDAO_BENCH_PPO_POLICY"] = a.rm, a.policy
    with tempfile.TemporaryDirectory() as tmp:
        prompts = Path(tmp) / "prompts.jsonl"
        from rag.xquad import load_split

        rows = load_split("train")[:a.n_prompts]
        prompts.write_text("".join(json.dumps({"id": r["id"], "question": r["question"]}) + "\n" for r in rows))
        cfg = PPOConfig.from_dict({
            "policy": {"init_from": a.policy},
            "data": {"prompts": str(prompts), "template": "sparrow"},
            "rollout": {"batch_size": a.batch, "max_new_tokens": a.response_length, "temperature": 1.0, "stop": []},
            "ppo": {"epochs": a.epochs, "minibatch_size": a.batch // a.minibatches, "kl_beta": 0.05,
                    "ema_beta": None},
            "rewards": [{"kind": "function", "path": "bench.bench_ppo:rm_reward"}],
            "optim": {"lr": a.lr, "weight_decay": 0.0, "grad_clip": 1.0},
            "train": {"out_dir": str(Path(tmp) / "run"), "steps": a.steps, "device": "cpu", "plot": False,
                      "seed": a.seed, "num_threads": a.threads or None},
        })
        summary = run(cfg)
        recs = [json.loads(x) for x in (Path(tmp) / "run/metrics.jsonl").read_text().splitlines() if x.strip()]
    timed = recs[1:]  # step 1 warms up
    seconds = sum(r["seconds"] for r in timed)
    return {"episodes_per_s": a.batch * len(timed) / seconds, "seconds": seconds, "timed_steps": len(timed),
            "response_length": sum(r["response_length"] for r in recs) / len(recs),
            "reward_start": summary["reward_start"], "reward_end": summary["reward_end"]}


def worker_trl(a: argparse.Namespace) -> dict:
    sys.path.insert(0, str(TRL_DIR))  # TRL 1.12.0: the last release with PPOTrainer
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import datasets
    import torch
    import trl
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    if not trl.__version__.startswith(TRL_PPO_VERSION):
        raise RuntimeError(f"TRL {trl.__version__} at {trl.__file__}; the PPO baseline needs {TRL_PPO_VERSION} in {TRL_DIR}")
    if a.threads:
        torch.set_num_threads(a.threads)
    tok = AutoTokenizer.from_pretrained(a.policy)
    tok.padding_side = "left"  # TRL's PPO generates from left-padded queries
    ctx = AutoModelForCausalLM.from_pretrained(a.policy).config.n_positions
    # wandao keeps a prompt's last (context - new tokens) tokens; TRL does not cut, so give it the same ids
    ids = [x[-(ctx - a.response_length):] for x in prompt_ids(Path(a.policy), a.n_prompts)]
    ds = datasets.Dataset.from_dict({"input_ids": ids})
    torch.manual_seed(a.seed)
    policy = AutoModelForCausalLM.from_pretrained(a.policy)
    ref = AutoModelForCausalLM.from_pretrained(a.policy)
    value = AutoModelForSequenceClassification.from_pretrained(a.policy, num_labels=1)
    torch.nn.init.zeros_(value.score.weight)  # as wandao's value head: the first values are 0
    reward = AutoModelForSequenceClassification.from_pretrained(a.rm)
    for m in (value, reward):
        m.config.pad_token_id = tok.pad_token_id
    marks: list[float] = []
    lengths: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            marks.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as tmp:
        args = PPOConfig(output_dir=tmp, per_device_train_batch_size=a.batch, gradient_accumulation_steps=1,
                         num_mini_batches=a.minibatches, num_ppo_epochs=a.epochs, total_episodes=a.batch * a.steps,
                         response_length=a.response_length, temperature=1.0, learning_rate=a.lr,
                         max_grad_norm=1.0, kl_coef=0.05, lr_scheduler_type="constant", warmup_steps=0,
                         local_rollout_forward_batch_size=a.batch, num_sample_generations=0, report_to=[],
                         use_cpu=True, save_strategy="no", logging_steps=10**6, disable_tqdm=True, seed=a.seed,
                         bf16=False, fp16=False, stop_token=None, dataset_num_proc=None)
        trainer = PPOTrainer(args=args, processing_class=tok, model=policy, ref_model=ref, reward_model=reward,
                             train_dataset=ds, value_model=value, callbacks=[Clock()])
        trainer.train()
    timed = len(marks) - 1
    seconds = marks[-1] - marks[0]
    return {"episodes_per_s": a.batch * timed / seconds, "seconds": seconds, "timed_steps": timed,
            "response_length": float(a.response_length), "trl": trl.__version__}


# ----------------------------------------------------------------------------------- grounded run


def grounded_eval(config: str, model_dir: str, dataset: str = "xquad-en:test", limit: int | None = None,
                  max_new_tokens: int | None = None) -> dict:
    """Held-out attribution and QA of ``model_dir``: ``dataset`` questions, evidence retrieved from the
    PPO config's index and rendered as its rollouts are (:func:`align.ppo.render_prompts`), greedy answers.

    Returns ``attribution`` (mean of the PPO attribution rule, :class:`align.rewards.AttributionRule`),
    ``attributed`` (the fraction it scores >= 0.75, the lexical judge's threshold), ``citing`` (answers
    with a ``[n]`` citation), ALCE ``citation_rec``/``citation_prec`` (``evals.run("attribution", ...)``,
    lexical judge) and SQuAD ``exact_match``/``f1`` (x100) of the answers without citation markers (the
    qa suite's scorer on the split's questions).
    """
    import torch

    import evals
    from align.ppo import PPOConfig, load_prompt_items, render_prompts
    from align.rewards import AttributionRule
    from evals.squad import squad_evaluate
    from pretrain.generate import GenerationConfig, generate, load_model
    from rag.retriever import Retriever

    cfg = PPOConfig.load(config)
    dc = cfg.data
    dc.prompts, dc.limit = dataset, limit
    model, tok = load_model(model_dir)
    retriever = Retriever(os.path.expandvars(dc.index), retriever=dc.retriever)
    items = load_prompt_items(dc)
    rows = render_prompts(items, dc, retriever, tok)
    gen = GenerationConfig(max_new_tokens=max_new_tokens or cfg.rollout.max_new_tokens, temperature=0.0, stop=["\n"])
    t0 = time.perf_counter()
    outs = []
    with torch.inference_mode():
        for s in range(0, len(rows), 32):
            outs += generate(model, tok, [r["prompt"] for r in rows[s:s + 32]], gen)
    gen_s = time.perf_counter() - t0
    rule = AttributionRule()
    scores = [rule.score_one(o.text, r["evidence"], r["evidence_ids"]) for o, r in zip(outs, rows)]
    answers = {r["prompt_id"]: _CITATION.sub("", o.text).strip() for o, r in zip(outs, rows)}
    golds = {it.id: list(it.answers) for it in items}
    qa = squad_evaluate(golds, answers)
    with tempfile.TemporaryDirectory() as tmp:
        cited = Path(tmp) / "cited.jsonl"
        with open(cited, "w", encoding="utf-8") as f:
            for o, r in zip(outs, rows):
                f.write(json.dumps({"id": r["prompt_id"], "answer": o.text.strip() or "-",
                                    "passages": [{"id": i, "title": p.get("title", ""), "text": p.get("text", "")}
                                                 for i, p in zip(r["evidence_ids"], r["evidence"])],
                                    "answers": golds.get(r["prompt_id"], [])}) + "\n")
        att = evals.run("attribution", out=Path(tmp) / "att", input=str(cited), judge="lexical").metrics
    examples = [{"question": r["question"], "answer": o.text, "gold": golds.get(r["prompt_id"]), "attribution": s}
                for o, r, s in list(zip(outs, rows, scores))[:8]]
    return {"ppo_run": ppo_run_summary(Path(model_dir).parent),"model": model_dir, "dataset": dataset, "questions": len(rows), "k": dc.k,
            "attribution": sum(scores) / len(scores), "attributed": sum(s >= 0.75 for s in scores) / len(scores),
            "citing": sum(bool(_CITATION.search(o.text)) for o in outs) / len(outs),
            "citation_rec": att.get("citation_rec"), "citation_prec": att.get("citation_prec"),
            "exact_match": qa["exact_match"], "f1": qa["f1"],
            "mean_answer_chars": sum(len(o.text) for o in outs) / len(outs),
            "generation_seconds": round(gen_s, 1), "examples": examples, "machine": machine()}


def ppo_run_summary(run_dir: Path) -> dict | None:
    """First-step and last-3-steps means of a ``wandao ppo`` run folder's rewards, KL, length, EOS rate."""
    metrics = run_dir / "metrics.jsonl"
    if not metrics.exists():
        return None
    recs = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
    recs = [r for r in recs if r.get("kind") == "train" and "reward" in r and "kl" in r]
    if not recs:  # not a PPO run (e.g. the SFT folder the policy came from)
        return None
    keys = [k for k in recs[0] if k == "reward" or k.startswith("reward/")] + ["kl", "response_length", "eos_rate"]
    end = recs[-3:]
    return {"run": str(run_dir), "steps": recs[-1]["step"], "seconds": round(sum(r["seconds"] for r in recs), 1),
            "start": {k: recs[0][k] for k in keys}, "end": {k: sum(r[k] for r in end) / len(end) for k in keys}}


def grounded_section() -> list[str]:
    """The Markdown section of the grounded run from ``bench/out/ppo-grounded-*.json`` (and its run summary)."""
    files = sorted(OUT_DIR.glob("ppo-grounded-*.json"), key=lambda p: json.loads(p.read_text()).get("order", 0))
    if not files:
        return []
    rows = []
    for p in files:
        r = json.loads(p.read_text())
        rows.append({"name": p.stem.removeprefix("ppo-grounded-"), **r,
                     "attribution": 100 * r["attribution"], "attributed": 100 * r["attributed"],
                     "citing": 100 * r["citing"]})
    m = json.loads(files[-1].read_text())["machine"]
    md = ["## Retrieval-grounded PPO run: held-out attribution and QA (XQuAD-test)", "",
          f"Policy answers greedily to the {rows[0]['questions']} XQuAD-test questions (rag.xquad split by article), "
          f"k={rows[0]['k']} BM25 passages rendered as in the PPO rollouts. Attribution rule = the PPO reward's "
          "attribution check (mean; 'attributed': share scoring >= 0.75); ALCE citation recall/precision with the "
          "lexical judge; SQuAD EM/F1 ×100 without citation markers.", "",
          markdown_table(rows, [("name", "policy", 0), ("model", "folder", 0), ("attribution", "attribution rule %", 1),
                                ("attributed", "attributed %", 1), ("citing", "citing %", 1),
                                ("citation_rec", "ALCE cit. recall", 1), ("citation_prec", "ALCE cit. precision", 1),
                                ("exact_match", "EM", 2), ("f1", "F1", 2), ("mean_answer_chars", "answer chars", 1)]),
          "", f"Machine: {describe_machine(m)}.", ""]
    shown = set()
    for r in rows:
        ppo = r.get("ppo_run")
        if not ppo or ppo["run"] in shown:  # the policy and its EMA come from one run: one table
            continue
        shown.add(ppo["run"])
        md += [f"PPO run behind '{r['name']}' ({ppo['run']}): {ppo['steps']} steps in {ppo['seconds']:.0f} s of steps; "
               "first step → mean of the last 3 (training prompts, sampled at temperature 1):", "",
               markdown_table([{"metric": k, "start": v, "end": ppo["end"][k]} for k, v in ppo["start"].items()],
                              [("metric", "metric", 0), ("start", "step 1", 3), ("end", "last 3 steps", 3)]), ""]
    notes = OUT_DIR / "ppo-grounded-notes.txt"  # .txt: collect.py gathers every .md
    if notes.exists():  # what the numbers mean, written by whoever ran it
        md += [notes.read_text(encoding="utf-8").strip(), ""]
    return md


# --------------------------------------------------------------------------------------------- main


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=32, help="episodes (prompts) per PPO step, both trainers")
    p.add_argument("--response-length", type=int, default=16, help="new tokens per response")
    p.add_argument("--epochs", type=int, default=4, help="PPO epochs per step")
    p.add_argument("--minibatches", type=int, default=4, help="minibatches (optimizer steps) per epoch")
    p.add_argument("--steps", type=int, default=6, help="PPO steps per round (the first warms up)")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best of each counts")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-prompts", type=int, default=256)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads in each trainer (0: torch's default); 1 by default because 2-thread runs on "
                        "the shared 2-core machines swung 80x with other jobs' load (2026-12-05)")
    p.add_argument("--quick", action="store_true", help="1 round of 3 steps (smoke)")
    p.add_argument("--worker", choices=("wandao", "trl"), help=argparse.SUPPRESS)
    p.add_argument("--policy", help=argparse.SUPPRESS)
    p.add_argument("--rm", help=argparse.SUPPRESS)
    p.add_argument("--grounded-eval", action="store_true",
                   help="only evaluate --model on XQuAD-test with --config's retrieval (bench/out/ppo-grounded-NAME.json)")
    p.add_argument("--config", help="with --grounded-eval: the wandao ppo config")
    p.add_argument("--model", help="with --grounded-eval: the policy folder")
    p.add_argument("--name", help="with --grounded-eval: before | after | ...")
    p.add_argument("--order", type=int, default=0, help="with --grounded-eval: row order in the table")
    p.add_argument("--limit", type=int, default=None, help="with --grounded-eval: at most this many questions")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("WANDAO_NO_TQDM", "1")
    if args.worker:
        res = worker_wandao(args) if args.worker == "wandao" else worker_trl(args)
        print(json.dumps(res), flush=True)
        return 0
    if args.grounded_eval:
        if not (args.config and args.model and args.name):
            p.error("--grounded-eval needs --config, --model and --name")
        from indexer.io import atomic_write_text

        res = {**grounded_eval(args.config, args.model, limit=args.limit), "order": args.order}
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        atomic_write_text(OUT_DIR / f"ppo-grounded-{args.name}.json", json.dumps(res, indent=2) + "\n")
        print(json.dumps({k: v for k, v in res.items() if k not in ("examples", "machine")}))
        return 0
    if args.quick:
        args.rounds, args.steps = 1, 3
    if args.batch % args.minibatches:
        p.error("--batch must be a multiple of --minibatches (TRL's rule)")
    if not (TRL_DIR / "trl").is_dir():
        print(f"TRL {TRL_PPO_VERSION} (the last with PPOTrainer) is not in {TRL_DIR}; install it with\n"
              f"  {sys.executable} -m pip install --no-deps --target {TRL_DIR} trl=={TRL_PPO_VERSION}", file=sys.stderr)
        return 2
    import torch
    import transformers

    info = machine()
    print(describe_machine(info), flush=True)
    results: dict[str, list[dict]] = {"wandao": [], "trl": []}
    with tempfile.TemporaryDirectory() as tmp:
        policy, rm = build_models(Path(tmp))
        common = ["--policy", str(policy), "--rm", str(rm), "--batch", str(args.batch), "--response-length",
                  str(args.response_length), "--epochs", str(args.epochs), "--minibatches", str(args.minibatches),
                  "--steps", str(args.steps), "--lr", str(args.lr), "--seed", str(args.seed),
                  "--n-prompts", str(args.n_prompts), "--threads", str(args.threads)]
        for r in range(args.rounds):
            for name in ("wandao", "trl"):
                res = run_worker([str(Path(__file__).resolve()), "--worker", name, *common], timeout=1800)
                res["load_avg_1m"] = round(os.getloadavg()[0], 2)
                results[name].append(res)
                print(f"round {r + 1} {name:<7} {res['episodes_per_s']:.2f} episodes/s ({res['timed_steps']} steps in "
                      f"{res['seconds']:.1f} s, mean response {res['response_length']:.1f} tokens, "
                      f"load {res['load_avg_1m']})", flush=True)
    best = {k: max(v, key=lambda x: x["episodes_per_s"]) for k, v in results.items()}
    ratio = best["wandao"]["episodes_per_s"] / best["trl"]["episodes_per_s"]
    table = markdown_table([
        {"trainer": "wandao ppo (value head on the policy trunk)", "eps": best["wandao"]["episodes_per_s"],
         "len": best["wandao"]["response_length"], "ratio": ratio},
        {"trainer": f"TRL {TRL_PPO_VERSION} trl.experimental.ppo.PPOTrainer (separate value model)",
         "eps": best["trl"]["episodes_per_s"], "len": best["trl"]["response_length"], "ratio": 1.0},
    ], [("trainer", "trainer", 0), ("eps", "episodes/s (best round)", 2), ("len", "mean response tokens (TRL: the cap)", 1),
        ("ratio", "× TRL", 2)])
    print(table)
    print(f"wandao / TRL = {ratio:.2f}x (target >= 1.0x)", flush=True)
    loads = ", ".join(f"{x['load_avg_1m']}" for v in results.values() for x in v)
    md = ["# PPO (issue 8)", "",
          f"Machine: {describe_machine(info)}; torch {torch.__version__}, transformers {transformers.__version__}.", "",
          "## Throughput against TRL's PPO trainer (same run)", "",
          f"The 'tiny' GPT (character tokenizer) as policy and frozen reference; a tiny GPT-2 sequence classifier as "
          f"reward model for both; XQuAD-train questions (sparrow template, no evidence) as prompts; {args.batch} "
          f"episodes per step, {args.response_length} new tokens sampled at temperature 1, {args.epochs} PPO epochs × "
          f"{args.minibatches} minibatches (one optimizer step each), AdamW lr {args.lr}, clip 1.0, fp32 CPU, "
          f"{args.threads or 'torch default'} torch thread(s) each. "
          f"{args.steps} steps per round, the first untimed; best of {args.rounds} alternating rounds (load average "
          f"after each round: {loads}). TRL {TRL_PPO_VERSION} is the last release with PPOTrainer "
          "(removed by huggingface/trl#7020); its critic is a separate value model, wandao's a value head.", "",
          table, "", f"**wandao / TRL = {ratio:.2f}×** (target ≥ 1.0×).", ""]
    md += grounded_section()
    payload = {"machine": info, "settings": vars(args), "torch": torch.__version__,
               "transformers": transformers.__version__, "trl": TRL_PPO_VERSION, "rounds": results, "best": best,
               "ratio": ratio}
    write_outputs("ppo", "\n".join(md), payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
