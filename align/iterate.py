"""``wandao iterate``: the feedback-only loop, best-of-n / rejection-sampling SFT without RL.

Expert iteration (Anthony et al. 2017), ReST (Gulcehre et al. 2023, "Reinforced Self-Training"),
RAFT (Dong et al. 2023) and Llama 2's rejection-sampling fine-tuning (Touvron et al. 2023, sec.
3.2.3) share one loop, read here top to bottom:

1. set up: prompts (any :mod:`rag.data` row shape or a registered split), their evidence retrieved
   once through :class:`rag.Retriever` and rendered with the SFT template (budgets counted with the
   policy's tokenizer), a train / held-out split by a hash of the prompt id;
2. round 0: measure the initial policy;
3. per round: **sample** ``n`` responses per train prompt from the current policy
   (:func:`pretrain.generate.generate`: batched, KV-cached, seeded); **score** them with the reward
   (an RM folder through :func:`align.reward.score`, a built-in programmatic reward, or any
   ``module:function``); **select** the best per prompt by reward, by human labels imported from
   a sheet (:mod:`align.labels`), or both (labels where a prompt has them, the reward elsewhere),
   optionally dropping prompts whose best reward is below ``select.min_reward`` (ReST's filter);
   **improve**: SFT (:func:`align.sft.run`) on the selected responses, from the current policy
   (expert iteration) or from the initial one on everything selected so far (ReST);
4. report per round on the held-out prompts: the mean reward of the greedy output, the mean
   response length (tokens), and the KL to the initial policy: a sampled estimate
   ``E_{y~π}[log π(y|x) − log π0(y|x)]`` (``kl_samples`` responses per prompt at temperature 1, summed
   over response tokens, EOS included), and the best-of-n analytic value ``log n − (n−1)/n``
   (Stiennon et al. 2020, appendix G.3; an upper bound, Beirami et al. 2024), which applies to
   round 1 only: the round-1 policy imitates best-of-n samples of the initial policy; later rounds
   compose selections and have no closed form (null there).

Everything lands in ``out_dir``: ``round-XX/`` (samples, selected rows, the SFT run and its
``model/``), ``metrics.jsonl`` (one record per round), ``report.md`` (the table), ``config.yaml``.
A finished round is reused when the command runs again, so a run stopped for labelling (exit
code 3 after writing ``round-XX/sheet.csv``) continues where it stopped once ``select.labels``
points at the filled sheet (``{round}`` in the path is replaced by the round number).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import logging
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Sequence

from pretrain.config import Config, ConfigError, check_range

logger = logging.getLogger(__name__)

BUILTIN_REWARDS = ("evidence_overlap",)


# ------------------------------------------------------------------------------------------ config


@dataclass
class DataSection(Config):
    prompts: str = field(default="", metadata={
        "help": "prompts: QA/prompt/chat/hh-rlhf JSONL(.gz)/parquet or a registered split (xquad-en:train); "
                "raw rows, rendered here"})
    heldout: Optional[str] = field(default=None, metadata={
        "help": "held-out prompts for the per-round report (default: heldout_fraction of prompts by id hash)"})
    heldout_fraction: float = field(default=0.2, metadata={"help": "held-out fraction when heldout is not given"})
    limit: Optional[int] = field(default=None, metadata={"help": "read at most this many prompts"})
    heldout_limit: Optional[int] = field(default=None, metadata={"help": "evaluate at most this many held-out prompts"})
    template: str = field(default="sparrow", metadata={"help": "rag evidence template (the SFT's and the RM's)"})
    index: Optional[str] = field(default=None, metadata={"help": "index folder for evidence (default: no evidence)"})
    retriever: Optional[str] = field(default=None, metadata={"help": "bm25|lucene|dense|hybrid (default: the index's)"})
    k: int = field(default=3, metadata={"help": "passages per prompt"})
    passage_tokens: int = field(default=160, metadata={"help": "token budget per passage block"})
    total_tokens: int = field(default=512, metadata={"help": "token budget for all passage blocks"})

    def __post_init__(self) -> None:
        check_range("heldout_fraction", self.heldout_fraction, 0.0, 0.9)
        check_range("k", self.k, 1)
        check_range("limit", self.limit, 1)
        check_range("heldout_limit", self.heldout_limit, 1)


@dataclass
class SampleSection(Config):
    n: int = field(default=4, metadata={"help": "responses sampled per prompt (the n of best-of-n)"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature"})
    top_k: int = field(default=0, metadata={"help": "top-k (0: off)"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus p (1: off)"})
    max_new_tokens: int = field(default=48, metadata={"help": "most tokens per response"})
    stop: list[str] = field(default_factory=lambda: ["\nUser:"], metadata={"help": "stop strings"})
    batch_size: int = field(default=64, metadata={"help": "sequences per generation batch"})
    kl_samples: int = field(default=2, metadata={"help": "samples per held-out prompt for the sampled KL estimate"})

    def __post_init__(self) -> None:
        check_range("n", self.n, 1)
        check_range("temperature", self.temperature, 0.0)
        check_range("max_new_tokens", self.max_new_tokens, 1)
        check_range("batch_size", self.batch_size, 1)
        check_range("kl_samples", self.kl_samples, 0)


@dataclass
class SelectSection(Config):
    by: Literal["rm", "labels", "both"] = field(default="rm", metadata={
        "help": "rm: highest reward; labels: the human choice; both: labels where given, the reward elsewhere"})
    reward: str = field(default="", metadata={
        "help": "an RM folder (wandao rm train), a built-in reward (evidence_overlap) or module:function "
                "taking rows {question, history, evidence, response} and returning floats"})
    labels: Optional[str] = field(default=None, metadata={
        "help": "filled label sheet (.csv/.jsonl); {round} is replaced by the round number"})
    sheet_format: Literal["csv", "jsonl"] = field(default="csv", metadata={"help": "format of exported label sheets"})
    min_reward: Optional[float] = field(default=None, metadata={
        "help": "drop prompts whose best response scores below this (ReST's threshold; human choices are kept)"})
    batch_size: int = field(default=64, metadata={"help": "sequences per RM forward"})
    reward_head: Optional[str] = field(default=None, metadata={
        "help": "the objective head to score with, for an RM folder trained with model.heads (e.g. helpful)"})

    def __post_init__(self) -> None:
        check_range("batch_size", self.batch_size, 1)


@dataclass
class ImproveSection(Config):
    start: Literal["current", "initial"] = field(default="current", metadata={
        "help": "current: fine-tune the latest policy on this round's selection (expert iteration); "
                "initial: fine-tune the initial policy on every round's selection so far (ReST)"})
    max_iters: int = field(default=50, metadata={"help": "SFT steps per round"})
    micro_batch_size: int = field(default=8, metadata={"help": "rows per SFT forward"})
    lr: float = field(default=1e-4, metadata={"help": "SFT peak learning rate"})
    warmup_iters: int = field(default=5, metadata={"help": "SFT warmup steps"})
    max_length: Optional[int] = field(default=None, metadata={"help": "tokens per SFT row (default: the context)"})
    packing: bool = field(default=False, metadata={"help": "pack SFT rows"})

    def __post_init__(self) -> None:
        check_range("max_iters", self.max_iters, 1)
        check_range("micro_batch_size", self.micro_batch_size, 1)
        check_range("lr", self.lr, 0.0, low_inclusive=False)


@dataclass
class IterateConfig(Config):
    """``wandao iterate``'s config: sections map to dotted flags (``--sample.n 8``)."""

    policy: str = field(default="", metadata={"help": "the initial policy: an HF causal-LM folder (model + tokenizer)"})
    rounds: int = field(default=2, metadata={"help": "sample → select → SFT rounds"})
    out_dir: str = field(default="runs/iterate", metadata={"help": "run folder"})
    seed: int = field(default=1234, metadata={"help": "seed for sampling and SFT"})
    device: Literal["auto", "cpu", "cuda"] = field(default="auto", metadata={"help": "auto picks cuda if present"})
    num_threads: Optional[int] = field(default=None, metadata={"help": "torch.set_num_threads (CPU)"})
    data: DataSection = field(default_factory=DataSection, metadata={"help": "prompts and evidence"})
    sample: SampleSection = field(default_factory=SampleSection, metadata={"help": "sampling"})
    select: SelectSection = field(default_factory=SelectSection, metadata={"help": "selection"})
    improve: ImproveSection = field(default_factory=ImproveSection, metadata={"help": "the SFT step"})

    def __post_init__(self) -> None:
        check_range("rounds", self.rounds, 1)
        check_range("num_threads", self.num_threads, 1)
        if self.select.by != "labels" and not self.select.reward:  # labels alone need no reward
            raise ConfigError("is required for select.by rm/both (an RM folder, evidence_overlap or module:function)",
                              "select.reward")


EPILOG = """examples:
  wandao iterate --config configs/iterate/xquad-bon.yaml
  wandao iterate --config configs/iterate/xquad-bon.yaml --rounds 1 --sample.n 8
  wandao iterate --config configs/iterate/xquad-labels.yaml       # stops with exit code 3 and a sheet to fill
  wandao iterate --config configs/iterate/xquad-labels.yaml --select.labels runs/iterate/xquad-labels/labels-{round}.csv
"""


class NeedsLabels(Exception):
    """A round needs human labels: the sheet was written; rerun with ``select.labels``."""

    def __init__(self, sheet: Path, round_: int):
        super().__init__(f"round {round_} needs labels: fill {sheet} (choice or rank per prompt) and rerun with "
                         f"--select.labels {sheet.parent.parent / 'labels-{round}'}{sheet.suffix}")
        self.sheet, self.round = sheet, round_


# ----------------------------------------------------------------------------------------- rewards


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def evidence_overlap(rows: Sequence[dict]) -> list[float]:
    """A programmatic reward: the fraction of the response's words that occur in its evidence (0 when empty).

    A grounding proxy in the spirit of token-overlap attribution scores (e.g. the "K-Precision" of
    Adlakha et al. 2023): words the evidence does not contain are counted against the response.

    Example:
        >>> evidence_overlap([{"response": "Denver won", "evidence": [{"title": "SB50", "text": "Denver won."}]},
        ...                   {"response": "Paris", "evidence": [{"title": "", "text": "Denver won."}]}])
        [1.0, 0.0]
    """
    out = []
    for r in rows:
        words = _words(r["response"])
        vocab = set(_words(" ".join(p.get("title", "") + " " + p.get("text", "") for p in r.get("evidence") or [])))
        out.append(sum(w in vocab for w in words) / len(words) if words else 0.0)
    return out


def build_reward(spec: str, device: str = "cpu", batch_size: int = 64,
                 head: Optional[str] = None) -> Callable[[Sequence[dict]], list[float]]:
    """``rows -> rewards`` from an RM folder (``head``: its objective head), a built-in name or ``module:function``."""
    if not spec:
        raise ConfigError("no reward given", "select.reward")
    path = Path(os.path.expandvars(os.path.expanduser(spec)))
    if head is not None and (spec in BUILTIN_REWARDS or not path.is_dir()):
        raise ConfigError(f"is for an RM folder with objective heads; {spec!r} is not an RM folder",
                          "select.reward_head")
    if spec in BUILTIN_REWARDS:
        return globals()[spec]
    if path.is_dir():
        from align.reward import load_reward_model, score

        try:
            rm = load_reward_model(path, device, head)
        except ValueError as err:
            raise ConfigError(str(err), "select.reward_head") from None
        if rm.needs_head:
            raise ConfigError(f"{path}: this RM has heads {', '.join(rm.heads)}; name one", "select.reward_head")
        return lambda rows: [float(v) for v in score(rm, list(rows), batch_size, device)]
    if ":" in spec:
        module, name = spec.split(":", 1)
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as err:
            raise ConfigError(f"cannot import {spec!r}: {err}", "select.reward") from None
    raise ConfigError(f"got {spec!r}: not an RM folder, a built-in ({', '.join(BUILTIN_REWARDS)}) or module:function",
                      "select.reward")


# -------------------------------------------------------------------------------------------- data


def _unit(tag: str, key: str) -> float:
    return int.from_bytes(hashlib.sha256(f"{tag}\x00{key}".encode()).digest()[:8], "big") / 2**64


def _parsed_record(row: dict, line: int, path: str, default_template: str) -> dict:
    """A prompt already rendered by ``wandao augment`` (sft or rl output): used verbatim; the
    question and evidence (for the reward) are parsed back with the row's template."""
    from indexer.data import DataError
    from rag.templates import TemplateParseError, get_template

    if not isinstance(row["prompt"], str):
        raise DataError(path, "prompt must be a string", line, field="prompt")
    name = str(row.get("template") or default_template).split("@")[0]
    try:
        parsed = get_template(name).parse(row["prompt"], row.get("response") or "")
    except (TemplateParseError, KeyError, ValueError) as err:
        raise DataError(path, f"cannot parse the rendered prompt with template {name!r}: {err}", line,
                        field="prompt") from None
    ids = [str(i) for i in row.get("evidence_ids") or []]
    return {"prompt_id": str(row.get("id", line)), "question": parsed.question,
            "history": [list(t) for t in parsed.history], "prompt": row["prompt"],
            "evidence": [{"id": d, "title": p.title, "text": p.text} for d, p in zip(ids, parsed.passages)],
            "evidence_ids": ids}


def load_prompts(cfg: IterateConfig, tokenizer) -> tuple[list[dict], list[dict]]:
    """(train, held-out) prompt records: ``prompt_id``, ``question``, ``history``, ``prompt`` (rendered,
    evidence included), ``evidence`` (``id``, ``title``, ``text``), ``evidence_ids``.

    Raw rows (QA, prompt, chat, hh-rlhf, registered splits) are rendered here with ``data.template``
    and evidence from ``data.index``; rows already rendered by ``wandao augment`` (``prompt`` plus
    ``evidence_ids``) are used verbatim.
    """
    from align.sft import _source_rows, render_items
    from rag.data import row_to_item

    dc = cfg.data
    retriever = None
    if dc.index:
        from rag.retriever import Retriever

        retriever = Retriever(os.path.expandvars(dc.index), retriever=dc.retriever)

    def read(source: str, limit: int | None) -> list[dict]:
        rows, path = _source_rows(os.path.expandvars(source))
        out: list[Any] = []
        for line, row in rows:
            if limit is not None and len(out) >= limit:
                break
            if isinstance(row, dict) and "prompt" in row and "evidence_ids" in row:
                out.append(_parsed_record(row, line, path, dc.template))
            else:
                out.append(row_to_item(row, path, line))
        pending = [it for it in out if not isinstance(it, dict)]
        if pending:
            rendered = iter(render_items(pending, dc.template, retriever, dc.k, tokenizer, dc.passage_tokens,
                                         dc.total_tokens, with_answers=False))
            out = [it if isinstance(it, dict) else _record(it, next(rendered)) for it in out]
        return out

    items = read(dc.prompts, dc.limit)
    if dc.heldout:
        train, held = items, read(dc.heldout, dc.heldout_limit)
    else:
        train = [it for it in items if _unit("iterate-heldout", it["prompt_id"]) >= dc.heldout_fraction]
        held = [it for it in items if _unit("iterate-heldout", it["prompt_id"]) < dc.heldout_fraction]
        held = held[: dc.heldout_limit]
    if not train:
        raise ConfigError(f"no training prompts left after holding out {dc.heldout_fraction}", "data.heldout_fraction")
    ids = [p["prompt_id"] for p in train + held]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ConfigError(f"prompt id {dup!r} occurs twice; prompt rows need unique ids", "data.prompts")
    return train, held


def _record(item, rendered) -> dict:
    return {"prompt_id": item.id, "question": item.question, "history": [list(t) for t in item.history],
            "prompt": rendered.prompt, "evidence": rendered.passages, "evidence_ids": list(rendered.evidence_ids)}


def reward_rows(prompts: Sequence[dict], responses: Sequence[str]) -> list[dict]:
    """The reward's input rows: question, history and evidence as the RM's template renders them."""
    return [{"question": p["question"], "prompt": p["question"], "history": p["history"], "evidence": p["evidence"],
             "response": r} for p, r in zip(prompts, responses)]


# -------------------------------------------------------------------------------------- generation


def _gen_config(sc: SampleSection, temperature: float, seed: int):
    from pretrain.generate import GenerationConfig

    return GenerationConfig(max_new_tokens=sc.max_new_tokens, temperature=temperature,
                            top_k=sc.top_k if temperature > 0 else 0, top_p=sc.top_p if temperature > 0 else 1.0,
                            seed=seed, stop=list(sc.stop))


def sample_responses(model, tokenizer, prompts: Sequence[str], n: int, sc: SampleSection, temperature: float,
                     seed: int) -> list[list[Any]]:
    """``n`` generations per prompt (``pretrain.generate.Generation``), in batches of ``sc.batch_size``."""
    from pretrain.generate import generate

    flat = [p for p in prompts for _ in range(n)]
    gens = []
    with _quiet_truncation(model, tokenizer, prompts, sc.max_new_tokens):
        for b, start in enumerate(range(0, len(flat), sc.batch_size)):
            gens += generate(model, tokenizer, flat[start:start + sc.batch_size], _gen_config(sc, temperature, seed + b))
    return [gens[i * n:(i + 1) * n] for i in range(len(prompts))]


@contextlib.contextmanager
def _quiet_truncation(model, tokenizer, prompts: Sequence[str], max_new_tokens: int):
    """One warning for all prompts cut on the left to fit the context, instead of one per generated row."""
    from pretrain.generate import context_length

    gen_logger = logging.getLogger("pretrain.generate")
    room = (context_length(model) or 10**9) - max_new_tokens
    cut = sum(len(ids) > room for ids in tokenizer(list(prompts), add_special_tokens=False)["input_ids"])
    if cut:
        logger.warning("%d of %d prompts are longer than the %d tokens the context leaves: their oldest tokens are "
                       "cut (the answer turn and the nearest evidence stay)", cut, len(prompts), room)
    level = gen_logger.level
    gen_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        gen_logger.setLevel(level)


def sequence_logprobs(model, prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]],
                      batch_size: int = 32) -> list[float]:
    """``log p(response | prompt)`` summed over response tokens, by teacher forcing (right-padded batches)."""
    import torch

    out: list[float] = []
    device = next(model.parameters()).device
    with torch.inference_mode():
        for start in range(0, len(prompt_ids), batch_size):
            ps, rs = prompt_ids[start:start + batch_size], response_ids[start:start + batch_size]
            seqs = [list(p) + list(r) for p, r in zip(ps, rs)]
            T = max(len(s) for s in seqs)
            ids = torch.zeros((len(seqs), T), dtype=torch.long)
            att = torch.zeros((len(seqs), T), dtype=torch.long)
            for i, s in enumerate(seqs):
                ids[i, :len(s)] = torch.tensor(s)
                att[i, :len(s)] = 1
            logp = model(input_ids=ids.to(device), attention_mask=att.to(device)).logits.float().log_softmax(-1)
            for i, (p, r) in enumerate(zip(ps, rs)):
                if not r:
                    out.append(0.0)
                    continue
                pos = torch.arange(len(p) - 1, len(p) + len(r) - 1, device=device)  # logits predicting response
                out.append(float(logp[i, pos, torch.tensor(list(r), device=device)].sum()))
    return out


def kl_estimate(policy, ref, tokenizer, prompts: Sequence[str], sc: SampleSection, seed: int) -> float | None:
    """Monte-Carlo ``KL(π || π0) ≈ mean_y [log π(y|x) − log π0(y|x)]`` with ``y ~ π`` at temperature 1.

    Samples use no stop strings and no top-k/top-p, so ``y`` comes from the distribution whose
    log-probabilities are summed (EOS included when the row ended with it).
    """
    from pretrain.generate import encode_prompts, eos_ids, generate

    if sc.kl_samples == 0 or not prompts:
        return None
    plain = SampleSection(n=sc.kl_samples, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=sc.max_new_tokens,
                          stop=[], batch_size=sc.batch_size, kl_samples=sc.kl_samples)
    flat = [p for p in prompts for _ in range(sc.kl_samples)]
    eos = eos_ids(policy, tokenizer, _gen_config(plain, 1.0, seed))
    p_ids, r_ids = [], []
    for b, start in enumerate(range(0, len(flat), sc.batch_size)):
        chunk = flat[start:start + sc.batch_size]
        gcfg = _gen_config(plain, 1.0, seed + b)
        p_ids += encode_prompts(policy, tokenizer, chunk, gcfg)
        for g in generate(policy, tokenizer, chunk, gcfg):
            r_ids.append(list(g.token_ids) + ([min(eos)] if g.finish_reason == "stop" and eos else []))
    lp = sequence_logprobs(policy, p_ids, r_ids)
    lq = sequence_logprobs(ref, p_ids, r_ids)
    return float(sum(a - b for a, b in zip(lp, lq)) / len(lp))


def bon_kl(n: int) -> float:
    """Best-of-n's KL to its base policy, ``log n − (n−1)/n`` (Stiennon et al. 2020; an upper bound, Beirami et al. 2024).

    Example:
        >>> round(bon_kl(4), 4)
        0.6363
    """
    return math.log(n) - (n - 1) / n


# -------------------------------------------------------------------------------------- the report


def evaluate_policy(policy_dir: Path, ref, held: Sequence[dict], reward: Callable | None, cfg: IterateConfig,
                    round_: int, device: str) -> dict:
    """Greedy outputs on the held-out prompts: mean reward and length; and the sampled KL to ``ref``."""
    from pretrain.generate import load_model

    model, tok = load_model(policy_dir, device)
    prompts = [p["prompt"] for p in held]
    greedy = [g[0] for g in sample_responses(model, tok, prompts, 1, cfg.sample, 0.0, cfg.seed)]
    texts = [g.text for g in greedy]
    rewards = reward(reward_rows(held, texts)) if reward is not None else None
    with _quiet_truncation(model, tok, prompts, cfg.sample.max_new_tokens):
        kl = 0.0 if round_ == 0 else kl_estimate(model, ref, tok, prompts, cfg.sample, cfg.seed + 7919 * (round_ + 1))
    rec = {
        "round": round_,
        "heldout_reward": sum(rewards) / len(rewards) if rewards else None,
        "heldout_length": sum(len(g.token_ids) for g in greedy) / max(1, len(greedy)),
        "kl_sampled": kl,
        "kl_bon_analytic": bon_kl(cfg.sample.n) if round_ == 1 else (0.0 if round_ == 0 else None),
        "heldout_prompts": len(held),
        "example": {"prompt_id": held[0]["prompt_id"], "response": texts[0]} if held else None,
    }
    return rec


def write_report(out_dir: Path, records: Sequence[dict], cfg: IterateConfig) -> Path:
    """``metrics.jsonl`` (one record per round) and ``report.md`` (the table), both atomic."""
    from indexer.io import atomic_write_text

    atomic_write_text(out_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in records))

    def f(v, spec=".4f"):
        return "—" if v is None else format(v, spec)

    lines = [f"# wandao iterate: {cfg.rounds} round(s) of best-of-{cfg.sample.n}, select by {cfg.select.by}", "",
             f"Policy `{cfg.policy}`; reward `{cfg.select.reward or '(labels only)'}`; held-out prompts: "
             f"{records[0]['heldout_prompts'] if records else 0}.", "",
             "| round | held-out reward (greedy) | KL to initial (sampled) | KL best-of-n (analytic) | length (tokens) "
             "| train prompts | selected | mean best reward | labelled |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in records:
        lines.append(f"| {r['round']} | {f(r['heldout_reward'])} | {f(r['kl_sampled'])} | {f(r['kl_bon_analytic'])} "
                     f"| {f(r['heldout_length'], '.1f')} | {r.get('train_prompts', '—')} | {r.get('selected', '—')} "
                     f"| {f(r.get('selected_reward'))} | {r.get('labelled', '—')} |")
    lines += ["", "KL (sampled): mean over held-out samples at temperature 1 of log π(y|x) − log π0(y|x), summed over "
              "response tokens. KL (analytic): log n − (n−1)/n, round 1 only (best-of-n of the initial policy).", ""]
    path = out_dir / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path


# -------------------------------------------------------------------------------------------- main


def _select(samples: Sequence[dict], by: str, labels: dict | None, min_reward: float | None) -> tuple[list[dict], dict]:
    """The chosen (prompt, response) per sample, and counts."""
    chosen, stats = [], {"labelled": 0, "rejected_by_label": 0, "below_min_reward": 0, "label_rm_agree": 0}
    for s in samples:
        rewards = s.get("rewards")
        label = (labels or {}).get(s["prompt_id"])
        if label is not None and by in ("labels", "both"):
            stats["labelled"] += 1
            if label.best is None:
                stats["rejected_by_label"] += 1
                continue
            j = label.best
            if rewards is not None:
                stats["label_rm_agree"] += int(max(range(len(rewards)), key=rewards.__getitem__) == j)
        elif by == "labels":
            continue  # unlabelled prompt: nothing to imitate
        else:
            j = max(range(len(rewards)), key=rewards.__getitem__)  # the first of equal bests
        if min_reward is not None and rewards is not None and label is None and rewards[j] < min_reward:
            stats["below_min_reward"] += 1
            continue
        chosen.append({"id": s["prompt_id"], "prompt": s["prompt"], "response": s["responses"][j],
                       "evidence_ids": s["evidence_ids"], "candidate": j,
                       # a response cut at max_new_tokens did not end: SFT learns no EOS after it
                       "eos": bool((s.get("finished") or [True] * len(s["responses"]))[j]),
                       "reward": None if rewards is None else rewards[j]})
    return chosen, stats


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    from indexer.io import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def run(cfg: IterateConfig) -> dict[str, Any]:
    """Run the rounds (reusing finished ones); returns the summary (printed as the last line by :func:`main`)."""
    import torch

    from align import labels as labels_lib
    from align import sft as sft_lib
    from pretrain.generate import load_model
    from pretrain.optim import OptimConfig, ScheduleConfig

    if not cfg.policy:
        raise ConfigError("is required: the initial policy's HF folder", "policy")
    if not cfg.data.prompts:
        raise ConfigError("is required", "data.prompts")
    t_start = time.perf_counter()
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg.save(out_dir)
    initial = Path(os.path.expandvars(os.path.expanduser(cfg.policy)))

    # -- set up: reference policy, prompts with evidence, reward
    ref, tokenizer = load_model(initial, device)
    train_prompts, held = load_prompts(cfg, tokenizer)
    reward = (build_reward(cfg.select.reward, device, cfg.select.batch_size, cfg.select.reward_head)
              if cfg.select.reward else None)
    logger.info("iterate: %d train prompts, %d held-out, n=%d, %d round(s), select by %s", len(train_prompts),
                len(held), cfg.sample.n, cfg.rounds, cfg.select.by)

    def measured(round_: int, policy_dir: Path, extra: dict) -> dict:
        done = out_dir / f"round-{round_:02d}" / "done.json"
        if done.exists():
            return json.loads(done.read_text())
        with torch.no_grad():
            rec = {**evaluate_policy(policy_dir, ref, held, reward, cfg, round_, device), **extra,
                   "policy": str(policy_dir)}
        from indexer.io import atomic_write_text

        atomic_write_text(done, json.dumps(rec, indent=2) + "\n")
        logger.info("round %d: held-out reward %s, KL %s, length %.1f", round_, rec["heldout_reward"],
                    rec["kl_sampled"], rec["heldout_length"])
        return rec

    records = [measured(0, initial, {})]
    write_report(out_dir, records, cfg)
    policy = initial
    selected_so_far: list[dict] = []
    for r in range(1, cfg.rounds + 1):
        rdir = out_dir / f"round-{r:02d}"
        rdir.mkdir(exist_ok=True)
        model_dir = rdir / "sft" / "model"
        if (rdir / "done.json").exists() and (model_dir / "config.json").exists():
            records.append(json.loads((rdir / "done.json").read_text()))
            selected_so_far += _read_jsonl(rdir / "selected.jsonl")
            policy = model_dir
            logger.info("round %d: reused from %s", r, rdir)
            continue

        # -- sample n responses per prompt from the current policy (reused when already sampled)
        samples_path = rdir / "samples.jsonl"
        if samples_path.exists():
            samples = _read_jsonl(samples_path)
        else:
            model, tok = load_model(policy, device)
            gens = sample_responses(model, tok, [p["prompt"] for p in train_prompts], cfg.sample.n, cfg.sample,
                                    cfg.sample.temperature, cfg.seed + 1000 * r)
            del model
            samples = [{**p, "responses": [g.text for g in gs], "lengths": [len(g.token_ids) for g in gs],
                        "finished": [g.finish_reason != "length" for g in gs]}
                       for p, gs in zip(train_prompts, gens)]
            # -- score
            if reward is not None:
                flat = reward(reward_rows([s for s in samples for _ in s["responses"]],
                                          [t for s in samples for t in s["responses"]]))
                for i, s in enumerate(samples):
                    s["rewards"] = [float(v) for v in flat[i * cfg.sample.n:(i + 1) * cfg.sample.n]]
            _write_jsonl(samples_path, samples)

        # -- select
        labels = None
        if cfg.select.by in ("labels", "both"):
            path = Path(cfg.select.labels.replace("{round}", f"{r:02d}")) if cfg.select.labels else None
            if path is None or not path.exists():
                sheet = labels_lib.export_sheet(samples, rdir / f"sheet.{cfg.select.sheet_format}")
                write_report(out_dir, records, cfg)
                raise NeedsLabels(sheet, r)
            labels = labels_lib.import_labels(path, samples)
        chosen, stats = _select(samples, cfg.select.by, labels, cfg.select.min_reward)
        if not chosen:
            raise ValueError(f"round {r}: nothing selected ({stats}); lower select.min_reward or label more prompts")
        _write_jsonl(rdir / "selected.jsonl", chosen)
        selected_so_far += chosen

        # -- improve: SFT on the selection
        if cfg.improve.start == "initial":
            _write_jsonl(rdir / "sft-data.jsonl", selected_so_far)
            start, data = initial, rdir / "sft-data.jsonl"
        else:
            start, data = policy, rdir / "selected.jsonl"
        ic = cfg.improve
        sft_cfg = sft_lib.SFTConfig(
            model=sft_lib.ModelSection(init_from=str(start)),
            data=sft_lib.DataSection(train=str(data), val_fraction=0.0, template=None, max_length=ic.max_length,
                                     packing=ic.packing),
            optim=OptimConfig(lr=ic.lr, weight_decay=0.0),
            schedule=ScheduleConfig(kind="cosine", warmup_iters=ic.warmup_iters, min_lr=ic.lr / 10),
            train=sft_lib.TrainSection(out_dir=str(rdir / "sft"), max_iters=ic.max_iters,
                                       micro_batch_size=ic.micro_batch_size, eval_interval=ic.max_iters,
                                       eval_examples=64, log_interval=max(1, ic.max_iters // 5), seed=cfg.seed + r,
                                       device=device, num_threads=cfg.num_threads, keep_checkpoints=1,
                                       save_final=False, plot=True),
        )
        sft_summary = sft_lib.run(sft_cfg)
        policy = Path(sft_summary["model_dir"])
        sampled_rewards = [v for s in samples for v in (s.get("rewards") or [])]
        extra = {"train_prompts": len(samples), "selected": len(chosen), **stats,
                 "sample_reward": sum(sampled_rewards) / len(sampled_rewards) if sampled_rewards else None,
                 "selected_reward": (sum(c["reward"] for c in chosen if c["reward"] is not None)
                                     / max(1, sum(c["reward"] is not None for c in chosen)))
                 if reward is not None else None,
                 "sample_length": sum(sum(s["lengths"]) for s in samples) / max(1, sum(len(s["lengths"]) for s in samples)),
                 "sft_final_loss": sft_summary["final_train_loss"]}
        records.append(measured(r, policy, extra))
        write_report(out_dir, records, cfg)

    report = write_report(out_dir, records, cfg)
    first, last = records[0], records[-1]
    summary = {"rounds": cfg.rounds, "initial_heldout_reward": first["heldout_reward"],
               "final_heldout_reward": last["heldout_reward"], "final_kl_sampled": last["kl_sampled"],
               "kl_bon_analytic_round1": bon_kl(cfg.sample.n), "final_length": last["heldout_length"],
               "policy": str(policy), "report": str(report), "out_dir": str(out_dir),
               "seconds": round(time.perf_counter() - t_start, 1)}
    return summary


# ---------------------------------------------------------------------------------------------- demo


def iterate_demo(workdir: str | os.PathLike, model_dir: str | os.PathLike, sft_file: str | os.PathLike,
                 rm_dir: str | os.PathLike | None = None, prompts: int = 48, n: int = 4, seed: int = 1234) -> dict:
    """``make demo``'s best-of-n round: sample ``n`` responses per XQuAD-train prompt (the augmented SFT
    file's rendered prompts, evidence included), keep the best by the reward, SFT on them, report.

    Args:
        workdir: the demo folder; the run goes to ``<workdir>/iterate``.
        model_dir: the policy (e.g. the SFT stage's ``model/``).
        sft_file: ``wandao augment sft`` JSONL; its rows with evidence are the prompts.
        rm_dir: a reward-model folder; default: the programmatic ``evidence_overlap`` reward.

    Returns:
        ``{"heldout_reward_before", "heldout_reward_after", "kl_sampled", "kl_bon_analytic",
        "length_before", "length_after", "selected", "sample_reward", "selected_reward", "seconds", "report"}``.
    """
    t0 = time.perf_counter()
    work = Path(workdir) / "iterate"
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    with open(sft_file, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if row.get("mode", "evidence") == "evidence" and row.get("evidence_ids"):
                rows.append({k: row[k] for k in ("id", "prompt", "evidence_ids", "template") if k in row})
            if len(rows) >= prompts:
                break
    prompt_file = work / "prompts.jsonl"
    _write_jsonl(prompt_file, rows)
    cfg = IterateConfig(
        policy=str(model_dir), rounds=1, out_dir=str(work), seed=seed, device="cpu", num_threads=1,
        data=DataSection(prompts=str(prompt_file), heldout_fraction=0.25, template="sparrow"),
        sample=SampleSection(n=n, temperature=1.0, max_new_tokens=24, batch_size=64, kl_samples=2),
        select=SelectSection(by="rm", reward=str(rm_dir) if rm_dir else "evidence_overlap"),
        improve=ImproveSection(max_iters=20, micro_batch_size=8, lr=3e-4, warmup_iters=3),
    )
    summary = run(cfg)
    first = json.loads((work / "round-00" / "done.json").read_text())
    last = json.loads((work / f"round-{cfg.rounds:02d}" / "done.json").read_text())
    out = {"heldout_reward_before": first["heldout_reward"], "heldout_reward_after": last["heldout_reward"],
           "kl_sampled": last["kl_sampled"], "kl_bon_analytic": bon_kl(n),
           "length_before": first["heldout_length"], "length_after": last["heldout_length"],
           "selected": last.get("selected"), "sample_reward": last.get("sample_reward"),
           "selected_reward": last.get("selected_reward"), "seconds": round(time.perf_counter() - t0, 1),
           "report": summary["report"]}
    print(f"\nbest-of-{n} round ({cfg.select.reward}): held-out greedy reward {out['heldout_reward_before']:.3f} -> "
          f"{out['heldout_reward_after']:.3f}; sampled {out['sample_reward']:.3f}, selected "
          f"{out['selected_reward']:.3f}; KL to the initial policy {out['kl_sampled']:.3f} sampled, "
          f"{out['kl_bon_analytic']:.3f} best-of-{n} analytic; report {out['report']}")
    return out


# ----------------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    """``wandao iterate --config FILE.yaml [--section.key value ...]``; the last stdout line is JSON."""
    argv = sys.argv[1:] if argv is None else argv
    cfg = IterateConfig.parse(argv, prog="wandao iterate",
                              description="Best-of-n / rejection-sampling SFT with evidence (ReST, expert iteration).",
                              epilog=EPILOG)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=os.environ.get("WANDAO_LOG_LEVEL", "INFO"),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from indexer.data import DataError

    try:
        summary = run(cfg)
    except NeedsLabels as err:
        print(f"wandao iterate: {err}", file=sys.stderr)
        print(json.dumps({"status": "needs_labels", "round": err.round, "sheet": str(err.sheet)}), flush=True)
        return 3
    except (ConfigError, DataError, FileNotFoundError) as err:
        print(f"wandao iterate: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
