"""``wandao ppo``: PPO with retrieval in the loop (InstructGPT's recipe, Sparrow's evidence and rules).

Read top to bottom, one PPO step is:

1. **prompts**: ``rollout.batch_size`` rows drawn by a step-seeded RNG (so a resumed run draws the
   same ones); raw rows get their evidence retrieved *now* through :class:`rag.Retriever` and are
   rendered with the template the SFT and the RM used (:func:`align.sft.render_items`); rows
   already rendered by ``wandao augment rl`` are used verbatim;
2. **rollout**: :func:`pretrain.generate.generate` samples one response per prompt (KV cache,
   step-seeded). A response that ends with EOS keeps EOS as its last action; one cut at
   ``max_new_tokens`` can be charged ``rollout.missing_eos_penalty``;
3. **reward**: the weighted sum of the reward sources (:mod:`align.rewards`), each logged as
   ``reward/<name>``; optionally normalised (batch whitening or running moments);
4. **score the rollout** without gradients: log-probabilities of the taken tokens under the policy
   (old) and the frozen reference, and the critic's values. The critic is a scalar value head on
   the policy's last hidden state (a shared trunk; the head starts at zero, so the first values are 0;
   InstructGPT instead initialises a separate value model from the RM);
5. **advantages**: per-token rewards ``−β·kl_t`` plus the score on the last action
   (:func:`align.rl_utils.kl_penalized_rewards`), GAE (γ = 1, λ = 0.95 by default), masked
   whitening of the advantages;
6. **update**: ``ppo.epochs`` passes over shuffled minibatches of the clipped policy loss plus
   ``vf_coef`` times the clipped value loss, plus ``ptx_coef`` times the LM loss on pretraining
   text (PPO-ptx); clip the gradient norm, step, then the EMA copy of the actor;
7. **KL controller** update (fixed or Ziegler's adaptive), **log**, **checkpoint**.

Only response tokens are actions: the prompt, and with it every evidence token, is context. The
action mask is 1 on positions whose next token is a response token (EOS included), 0 elsewhere,
and every loss and statistic is a masked mean over it.

Every blocking step (retrieval + rendering, generation, reward scoring) runs in a daemon thread
with a deadline (``train.step_timeout_s``): a stuck rollout raises :class:`StepTimeout` naming the
step instead of hanging the run (the stuck thread is abandoned).

Outputs in ``train.out_dir``: ``config.yaml``, ``metrics.jsonl`` (one ``train`` record per step),
``curves.png``, ``summary.md``, ``rollouts.jsonl`` (two sample rollouts per step: prompt with its
evidence, response, rewards), ``step-XXXXXXXX/`` checkpoints (policy as an HF folder + value
head, optimizer, EMA, KL controller, reward moments, RNG), ``model/`` (final policy) and
``model-ema/``. The last stdout line is JSON with ``reward_start``, ``reward_end``, ``kl_end``,
``steps`` (``*_start``: the first step's rollouts; ``*_end``: the mean of the last
``train.end_window`` steps).

Backends: plain torch (``train.backend torch``), or DeepSpeed ZeRO 0-3 (``train.backend deepspeed``,
``deepspeed.zero_stage``, ``deepspeed.offload_optimizer``, ``deepspeed.extra``) through
:mod:`pretrain.train`'s engine wrapper and checkpoint writer (the same ones pretrain and SFT use);
one process on CPU (gloo) without a launcher, or ``deepspeed``/``torchrun`` for several ranks.
Under DeepSpeed:

- the actor-critic is the engine's module; an optimizer step is one minibatch (DeepSpeed's
  micro-batch = ``ppo.minibatch_size``, no accumulation), clipped by DeepSpeed at ``optim.grad_clip``;
- **ZeRO-3 generation**: every forward of a ZeRO-3 module all-gathers its shards, so token-by-token
  decoding gathers the model once per token, and ranks whose responses stop at different lengths
  wait on each other (the hang of TRL#1051/#1618). The rollout therefore runs on the module with
  its parameters gathered once and ZeRO's hooks removed (:func:`unwrapped_for_generation`, as TRL's
  ``unwrap_model_for_generation``); scoring and the update go through the engine;
- the frozen reference has no optimizer: a plain module on every rank (cast to bf16 with the policy);
- the EMA of the actor is kept per rank for its own ZeRO-3 shard (no gathers), and swapped into the
  shards to save ``model-ema/``;
- each rank draws its own prompts and samples (rank 0 draws the single-process run's); rank 0 logs
  its own rollouts' metrics; checkpoints hold DeepSpeed's sharded states under ``deepspeed/`` plus
  the gathered HF policy, and resume through the engine (``trainer_state_rank<r>.pt`` per rank).

On one rank, ZeRO-2 and ZeRO-3 reproduce the plain-torch losses (tests/align/test_ppo.py).
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import random
import sys
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Sequence

from pretrain.config import Config, ConfigError, check_choice, check_range
from pretrain.optim import OptimConfig, ScheduleConfig
from pretrain.train import DeepSpeedConfig

logger = logging.getLogger(__name__)

REWARD_KINDS = ("rm", "attribution", "not_human", "blocklist", "target_token", "function")


# ------------------------------------------------------------------------------------------ config


@dataclass
class PolicySection(Config):
    init_from: str = field(default="", metadata={"help": "the initial policy: an HF causal-LM folder (model + tokenizer)"})
    reference: Optional[str] = field(default=None, metadata={"help": "the frozen reference (default: init_from)"})
    build_tiny: bool = field(default=False, metadata={
        "help": "when init_from has no model, build one there: the 'tiny' preset with a character tokenizer "
                "over the prompts' characters (for the reference run)"})
    tiny_block_size: int = field(default=128, metadata={"help": "context of the model build_tiny makes"})

    def __post_init__(self) -> None:
        check_range("tiny_block_size", self.tiny_block_size, 8)


@dataclass
class DataSection(Config):
    prompts: str = field(default="", metadata={
        "help": "prompts: QA/prompt/chat/hh-rlhf JSONL(.gz)/parquet, a registered split (xquad-en:train), "
                "or wandao augment rl output (rendered prompts, used verbatim)"})
    limit: Optional[int] = field(default=None, metadata={"help": "read at most this many prompts"})
    template: str = field(default="sparrow", metadata={"help": "rag evidence template (the SFT's and the RM's)"})
    index: Optional[str] = field(default=None, metadata={"help": "index folder to retrieve evidence from (none: no evidence)"})
    retriever: Optional[str] = field(default=None, metadata={"help": "bm25|lucene|dense|hybrid (default: the index's)"})
    k: int = field(default=3, metadata={"help": "passages per prompt"})
    passage_tokens: int = field(default=160, metadata={"help": "token budget per passage block"})
    total_tokens: int = field(default=512, metadata={"help": "token budget for all passage blocks"})
    max_prompt_tokens: Optional[int] = field(default=None, metadata={
        "help": "keep the last this many prompt tokens (default: the context minus max_new_tokens)"})

    def __post_init__(self) -> None:
        check_range("limit", self.limit, 1)
        check_range("k", self.k, 1)
        check_range("max_prompt_tokens", self.max_prompt_tokens, 1)


@dataclass
class RolloutSection(Config):
    batch_size: int = field(default=16, metadata={"help": "prompts (episodes) per PPO step"})
    max_new_tokens: int = field(default=32, metadata={"help": "most tokens per response"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature (PPO assumes 1)"})
    top_k: int = field(default=0, metadata={"help": "top-k (0: off)"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus p (1: off)"})
    stop: list[str] = field(default_factory=lambda: ["\nUser:"], metadata={"help": "stop strings"})
    missing_eos_penalty: Optional[float] = field(default=None, metadata={
        "help": "subtract this from the score of a response cut at max_new_tokens without EOS (TRL's)"})

    def __post_init__(self) -> None:
        check_range("batch_size", self.batch_size, 1)
        check_range("max_new_tokens", self.max_new_tokens, 1)
        check_range("temperature", self.temperature, 0.0, low_inclusive=False)


@dataclass
class PPOSection(Config):
    epochs: int = field(default=4, metadata={"help": "passes over each rollout batch"})
    minibatch_size: int = field(default=8, metadata={"help": "episodes per optimizer step"})
    clip: float = field(default=0.2, metadata={"help": "policy ratio clip ε"})
    vf_clip: float = field(default=0.2, metadata={"help": "value clip around the rollout's values"})
    vf_coef: float = field(default=0.1, metadata={"help": "value loss weight"})
    gamma: float = field(default=1.0, metadata={"help": "GAE discount γ (1: InstructGPT's no discount)"})
    lam: float = field(default=0.95, metadata={"help": "GAE λ"})
    kl_beta: float = field(default=0.02, metadata={"help": "per-token KL penalty β (InstructGPT: 0.02)"})
    kl_estimator: Literal["k1", "k2", "k3"] = field(default="k1", metadata={
        "help": "per-token KL estimator in the reward (Schulman 2020)"})
    kl_adaptive: bool = field(default=False, metadata={"help": "Ziegler et al.'s adaptive β"})
    kl_target: float = field(default=6.0, metadata={"help": "adaptive KL: target KL per sequence (nats)"})
    kl_horizon: float = field(default=10000.0, metadata={"help": "adaptive KL: horizon (episodes)"})
    reward_norm: Literal["none", "batch", "running"] = field(default="none", metadata={
        "help": "score normalisation: none, batch whitening, or running mean/std over all rollouts"})
    whiten_advantages: bool = field(default=True, metadata={"help": "whiten advantages over the batch's actions"})
    ptx_coef: float = field(default=0.0, metadata={"help": "PPO-ptx γ (InstructGPT: 27.8); 0: off"})
    ptx_data: Optional[str] = field(default=None, metadata={"help": "pretraining text for PPO-ptx (.txt or JSONL with text)"})
    ptx_batch_size: int = field(default=4, metadata={"help": "pretraining windows per minibatch"})
    ptx_tokens: int = field(default=64, metadata={"help": "tokens per pretraining window"})
    ema_beta: Optional[float] = field(default=0.992, metadata={"help": "EMA of the actor (null: off)"})

    def __post_init__(self) -> None:
        check_range("epochs", self.epochs, 1)
        check_range("minibatch_size", self.minibatch_size, 1)
        check_range("clip", self.clip, 0.0, low_inclusive=False)
        check_range("gamma", self.gamma, 0.0, 1.0)
        check_range("lam", self.lam, 0.0, 1.0)
        check_range("kl_beta", self.kl_beta, 0.0)
        check_range("ptx_coef", self.ptx_coef, 0.0)
        check_range("ema_beta", self.ema_beta, 0.0, 1.0)
        if self.ptx_coef > 0 and not self.ptx_data:
            raise ConfigError("is required when ppo.ptx_coef > 0", "ppo.ptx_data")


@dataclass
class RewardSpec(Config):
    kind: str = field(default="", metadata={"help": "rm | attribution | not_human | blocklist | target_token | function"})
    name: Optional[str] = field(default=None, metadata={"help": "logged as reward/<name> (default: kind)"})
    weight: float = field(default=1.0, metadata={"help": "weight in the sum"})
    path: str = field(default="", metadata={"help": "rm: RM folder; blocklist: a terms file; function: module:function"})
    terms: list[str] = field(default_factory=list, metadata={"help": "blocklist terms"})
    token: str = field(default="", metadata={"help": "target_token: the token (one token of the policy's tokenizer)"})
    require_citation: bool = field(default=True, metadata={
        "help": "attribution: a sentence citing nothing is unsupported (ALCE); false: an answer without markers is "
                "judged against every passage shown"})
    malformed_penalty: float = field(default=0.0, metadata={
        "help": "attribution: a malformed answer (bad or out-of-range markers, no content words, citation debris, "
                "a copied passage) scores minus this"})
    head: Optional[str] = field(default=None, metadata={
        "help": "rm: the objective head to read (an RM trained with model.heads, e.g. helpful or harmless)"})

    def __post_init__(self) -> None:
        check_choice("kind", self.kind, REWARD_KINDS)
        if self.head is not None and self.kind != "rm":
            raise ConfigError(f"is for kind rm (an RM with objective heads), not {self.kind}", "head")


@dataclass
class TrainSection(Config):
    out_dir: str = field(default="runs/ppo", metadata={"help": "run folder"})
    steps: int = field(default=100, metadata={"help": "PPO steps (rollout + update)"})
    seed: int = field(default=1234, metadata={"help": "seed of prompts, sampling and minibatches"})
    device: Literal["auto", "cpu", "cuda"] = field(default="auto", metadata={"help": "auto picks cuda if present"})
    dtype: Literal["auto", "float32", "bfloat16"] = field(default="auto", metadata={
        "help": "bfloat16: DeepSpeed's bf16 (deepspeed backend) or autocast (torch backend), CUDA only; "
                "auto = bfloat16 on GPUs that support it, float32 on CPU"})
    backend: Literal["torch", "deepspeed"] = field(default="torch", metadata={
        "help": "plain torch, or DeepSpeed ZeRO (stage in deepspeed.zero_stage) through pretrain.train's engine"})
    num_threads: Optional[int] = field(default=None, metadata={"help": "torch.set_num_threads (CPU)"})
    log_interval: int = field(default=1, metadata={"help": "log a line every this many steps"})
    save_interval: int = field(default=0, metadata={"help": "checkpoint every this many steps (0: at the end only)"})
    keep_checkpoints: int = field(default=2, metadata={"help": "newest checkpoints kept (0: all)"})
    resume: Optional[str] = field(default=None, metadata={"help": "auto | a step-XXXXXXXX folder | a run folder"})
    step_timeout_s: float = field(default=600.0, metadata={
        "help": "deadline in seconds for each blocking step (retrieval, generation, reward)"})
    end_window: int = field(default=3, metadata={"help": "reward_end/kl_end average the last this many steps"})
    plot: bool = field(default=True, metadata={"help": "write curves.png"})

    def __post_init__(self) -> None:
        check_range("steps", self.steps, 1)
        check_range("log_interval", self.log_interval, 1)
        check_range("save_interval", self.save_interval, 0)
        check_range("step_timeout_s", self.step_timeout_s, 0.0, low_inclusive=False)
        check_range("end_window", self.end_window, 1)
        check_range("num_threads", self.num_threads, 1)


@dataclass
class ExpectSection(Config):
    reward_end_min: Optional[float] = field(default=None, metadata={"help": "regression check: reward_end >= this"})
    kl_end_max: Optional[float] = field(default=None, metadata={"help": "regression check: kl_end <= this"})


def _ppo_optim() -> OptimConfig:
    return OptimConfig(lr=1e-5, weight_decay=0.0, beta2=0.95, grad_clip=1.0, impl="foreach")


def _ppo_schedule() -> ScheduleConfig:
    return ScheduleConfig(kind="constant", warmup_iters=0)


@dataclass
class PPOConfig(Config):
    """``wandao ppo``'s config: sections map to dotted flags (``--ppo.kl_beta 0.05``)."""

    policy: PolicySection = field(default_factory=PolicySection, metadata={"help": "policy and reference"})
    data: DataSection = field(default_factory=DataSection, metadata={"help": "prompts and evidence"})
    rollout: RolloutSection = field(default_factory=RolloutSection, metadata={"help": "sampling"})
    ppo: PPOSection = field(default_factory=PPOSection, metadata={"help": "the PPO update"})
    rewards: list[RewardSpec] = field(default_factory=list, metadata={"help": "reward sources (weighted sum)"})
    optim: OptimConfig = field(default_factory=_ppo_optim, metadata={"help": "optimizer (actor + value head)"})
    schedule: ScheduleConfig = field(default_factory=_ppo_schedule, metadata={"help": "learning-rate schedule"})
    train: TrainSection = field(default_factory=TrainSection, metadata={"help": "loop, checkpoints, timeouts"})
    expect: ExpectSection = field(default_factory=ExpectSection, metadata={"help": "expected ranges (reference runs)"})
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig, metadata={
        "help": "DeepSpeed backend (train.backend deepspeed): ZeRO stage, offload, extra keys"})

    def __post_init__(self) -> None:
        if self.ppo.minibatch_size > self.rollout.batch_size:
            raise ConfigError(f"got {self.ppo.minibatch_size}; must be <= rollout.batch_size={self.rollout.batch_size}",
                              "ppo.minibatch_size")


EPILOG = """examples:
  wandao ppo --config configs/ppo/reference.yaml
  wandao ppo --config configs/ppo/reference.yaml --out runs/ppo/ref2 --train.steps 20
  wandao ppo --config configs/ppo/xquad-rm-attribution.yaml --ppo.kl_adaptive true
  wandao ppo --config configs/ppo/reference.yaml --train.backend deepspeed --deepspeed.zero_stage 3
  deepspeed --num_gpus 2 $(which wandao) ppo --config configs/ppo/reference.yaml --train.backend deepspeed
"""


# ----------------------------------------------------------------------------------------- timeouts


class StepTimeout(TimeoutError):
    """A blocking step (retrieval, generation, reward) did not finish within ``train.step_timeout_s``."""


def call_with_timeout(fn: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Run ``fn()`` in a daemon thread; return its value, re-raise its error, or raise :class:`StepTimeout`.

    A daemon thread is abandoned on timeout (Python cannot kill it) and does not block exit.
    """
    box: queue.Queue = queue.Queue(maxsize=1)

    def work() -> None:
        try:
            box.put((True, fn()))
        except BaseException as err:  # re-raised in the caller
            box.put((False, err))

    threading.Thread(target=work, name=f"ppo-{what}", daemon=True).start()
    try:
        ok, value = box.get(timeout=timeout_s)
    except queue.Empty:
        raise StepTimeout(f"{what} did not finish within {timeout_s:g}s (train.step_timeout_s)") from None
    if not ok:
        raise value
    return value


# -------------------------------------------------------------------------------------------- model


def _actor_critic_class():
    import torch

    class ActorCritic(torch.nn.Module):
        """An HF causal LM (the actor) with a scalar value head on its last hidden state (the critic)."""

        def __init__(self, hf) -> None:
            super().__init__()
            self.hf = hf
            hidden = hf.get_input_embeddings().weight.shape[1]
            self.value_head = torch.nn.Linear(hidden, 1)
            torch.nn.init.zeros_(self.value_head.weight)
            torch.nn.init.zeros_(self.value_head.bias)

        def forward(self, ids, attention_mask):
            out = self.hf(input_ids=ids, attention_mask=attention_mask, output_hidden_states=True)
            values = self.value_head(out.hidden_states[-1].to(self.value_head.weight.dtype)).squeeze(-1)  # (B, T)
            return out.logits, values

    return ActorCritic


def build_tiny_policy(out: Path, texts: Sequence[str], block_size: int, seed: int) -> None:
    """A random 'tiny'-preset GPT with a character tokenizer over ``texts`` (+ printable ASCII), saved to ``out``."""
    import string

    import torch

    from pretrain.checkpoint import atomic_folder
    from pretrain.model import build_model, from_preset
    from pretrain.tokenizer import EOS_TOKEN, PAD_TOKEN, build_char_tokenizer

    chars = set(string.printable) | set("".join(texts))
    tok = build_char_tokenizer("".join(sorted(chars)), special_tokens=(EOS_TOKEN, PAD_TOKEN))
    torch.manual_seed(seed)
    model = build_model(from_preset("tiny", vocab_size=len(tok), block_size=block_size))
    with atomic_folder(out) as tmp:
        model.save_pretrained(tmp, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                              bos_token_id=tok.eos_token_id)
        tok.save_pretrained(str(tmp))
    logger.info("built a tiny policy at %s (vocab %d, context %d)", out, len(tok), block_size)


def _load_hf(path: str | os.PathLike, device: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path)).to(device)


# ---------------------------------------------------------------------------------------- DeepSpeed


@contextmanager
def gathered(params: Sequence[Any], zero3: bool):
    """Under ZeRO-3, every rank holds the full ``params`` inside the block (read-only: changes are not
    written back); otherwise a no-op."""
    if not zero3:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(params), modifier_rank=None):
        yield


@contextmanager
def unwrapped_for_generation(engine: Any, zero3: bool):
    """Make the engine's module a plain module with full parameters for the rollout (ZeRO-3).

    Under ZeRO-3 each parameter lives in shards and the module's hooks all-gather it at every
    forward: token-by-token decoding would gather the whole model once per token, and ranks whose
    responses end at different lengths would wait on each other's gathers forever (the hang of
    TRL#1051/#1618). So gather once, drop the hooks for the rollout and put them back after it (the
    fix TRL's ``unwrap_model_for_generation`` and DeepSpeed-Chat's hybrid engine apply). ZeRO-0/1/2
    keep full parameters on every rank: nothing to do.
    """
    if not zero3:
        yield
        return
    offload = engine.optimizer.parameter_offload  # DeepSpeedZeRoOffload: owns the ZeRO-3 module hooks
    with gathered(engine.module.parameters(), True):
        for param in offload.module.parameters(recurse=True):
            param.ds_active_sub_modules.clear()
        for hook in offload.forward_hooks + offload.backward_hooks:
            hook.remove()
        offload.forward_hooks, offload.backward_hooks = [], []
        try:
            yield
        finally:
            offload._register_deepspeed_module(offload.module)  # re-adds the hooks, invalidates the trace


# --------------------------------------------------------------------------------------------- data


def load_prompt_items(dc: DataSection) -> list[Any]:
    """Prompt rows: :class:`rag.data.QAItem` (rendered per rollout) or parsed ``wandao augment rl`` records (dicts)."""
    from align.iterate import _parsed_record
    from align.sft import _source_rows
    from rag.data import row_to_item

    rows, path = _source_rows(os.path.expandvars(dc.prompts))
    out: list[Any] = []
    for line, row in rows:
        if dc.limit is not None and len(out) >= dc.limit:
            break
        if isinstance(row, dict) and "prompt" in row and "evidence_ids" in row:
            out.append(_parsed_record(row, line, path, dc.template))
        else:
            out.append(row_to_item(row, path, line))
    if not out:
        from indexer.data import DataError

        raise DataError(path, "no prompt rows")
    return out


def render_prompts(items: Sequence[Any], dc: DataSection, retriever: Any, tokenizer: Any) -> list[dict]:
    """Prompt records (``prompt``, ``question``, ``history``, ``evidence``, ``evidence_ids``): evidence
    retrieved now for raw rows, rendered with ``dc.template``."""
    from align.sft import render_items

    pending = [it for it in items if not isinstance(it, dict)]
    rendered = iter(render_items(pending, dc.template, retriever, dc.k, tokenizer, dc.passage_tokens,
                                 dc.total_tokens, with_answers=False) if pending else [])
    out = []
    for it in items:
        if isinstance(it, dict):
            out.append(it)
            continue
        r = next(rendered)
        out.append({"prompt_id": it.id, "question": it.question, "history": [list(t) for t in it.history],
                    "prompt": r.prompt, "evidence": r.passages, "evidence_ids": list(r.evidence_ids)})
    return out


def read_ptx_tokens(path: str, tokenizer) -> list[int]:
    """Pretraining text for PPO-ptx: a ``.txt`` file, or JSONL/parquet rows with ``text``; EOS between documents."""
    p = os.path.expandvars(os.path.expanduser(path))
    if p.endswith(".txt"):
        docs = [Path(p).read_text(encoding="utf-8")]
    else:
        from indexer.data import DataError, iter_records

        docs = []
        for line, row in iter_records(p):
            if not isinstance(row.get("text"), str):
                raise DataError(p, "each row needs a text string", line, field="text")
            docs.append(row["text"])
    ids: list[int] = []
    for d in docs:
        ids += tokenizer(d, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return ids



@dataclass
class Rollout:
    """One sampled response: ``text`` (stop string excluded), ``token_ids`` (EOS excluded), ``actions``
    (the tokens the policy emitted: ``token_ids`` plus EOS when it ended with EOS), ``finish_reason``."""

    text: str
    token_ids: list[int]
    actions: list[int]
    finish_reason: str


def sample(model, tokenizer, prompt_ids: Sequence[Sequence[int]], cfg: Any) -> list[Rollout]:
    """Sample one response per prompt from the given prompt ids with :func:`pretrain.generate.decode_steps`
    (the loop :func:`pretrain.generate.generate` runs), keeping whether each row ended with EOS."""
    from pretrain.generate import decode_steps, eos_ids

    eos = eos_ids(model, tokenizer, cfg)
    texts: list[list[str]] = [[] for _ in prompt_ids]
    ids: list[list[int]] = [[] for _ in prompt_ids]
    acts: list[list[int]] = [[] for _ in prompt_ids]
    reasons = ["length"] * len(prompt_ids)
    for events in decode_steps(model, tokenizer, [], cfg, prompt_ids=prompt_ids):
        for b, ev in enumerate(events):
            if ev is None:
                continue
            if ev.token_id is not None:
                acts[b].append(ev.token_id)
                if not (ev.finish_reason == "stop" and ev.token_id in eos):
                    ids[b].append(ev.token_id)
            texts[b].append(ev.text)
            if ev.finish_reason:
                reasons[b] = ev.finish_reason
    return [Rollout("".join(t), i, a, r) for t, i, a, r in zip(texts, ids, acts, reasons)]


# ----------------------------------------------------------------------------------- batch + losses


def make_batch(prompt_ids: Sequence[Sequence[int]], action_ids: Sequence[Sequence[int]], pad_id: int,
               device: str = "cpu") -> dict:
    """Right-padded ``prompt + actions`` rows and the action mask over next-token positions.

    Returns ``ids`` (B, T), ``attention_mask`` (B, T), ``targets`` (B, T−1) = ``ids[:, 1:]`` and
    ``action_mask`` (B, T−1): 1 where the target is a response token. The prompt (evidence
    included) is context: its positions have mask 0.
    """
    import torch

    seqs = [list(p) + list(a) for p, a in zip(prompt_ids, action_ids)]
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    att = torch.zeros((len(seqs), T), dtype=torch.long)
    act = torch.zeros((len(seqs), T - 1), dtype=torch.float32)
    for i, (p, a) in enumerate(zip(prompt_ids, action_ids)):
        n = len(p) + len(a)
        ids[i, :n] = torch.tensor(seqs[i], dtype=torch.long)
        att[i, :n] = 1
        act[i, len(p) - 1:len(p) - 1 + len(a)] = 1.0  # logits at t predict token t+1
    return {"ids": ids.to(device), "attention_mask": att.to(device), "targets": ids[:, 1:].to(device),
            "action_mask": act.to(device)}


def token_logprobs(logits, targets):
    """``log softmax(logits)[target]`` per position: logits (B, T, V) for positions predicting targets (B, T)."""
    return logits.float().log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def forward_scores(model, batch: dict) -> tuple[Any, Any, Any]:
    """``(logprobs (B, T−1), values (B, T−1), logits (B, T−1, V))`` of the taken tokens."""
    logits, values = model(batch["ids"], batch["attention_mask"])
    logits = logits[:, :-1]
    return token_logprobs(logits, batch["targets"]), values[:, :-1].float(), logits


def ppo_losses(model, batch: dict, old_logp, old_values, advantages, returns, clip: float, vf_clip: float,
               vf_coef: float) -> tuple[Any, dict]:
    """Clipped policy loss + ``vf_coef`` · clipped value loss over ``batch['action_mask']``; stats detached."""
    import torch

    from align.rl_utils import clipped_policy_loss, clipped_value_loss, entropy_from_logits, masked_mean

    mask = batch["action_mask"]
    logp, values, logits = forward_scores(model, batch)
    pg_loss, pg_stats = clipped_policy_loss(logp, old_logp, advantages, mask, clip)
    vf_loss, vf_stats = clipped_value_loss(values, old_values, returns, mask, vf_clip)
    with torch.no_grad():
        entropy = masked_mean(entropy_from_logits(logits.float()), mask)
    return pg_loss + vf_coef * vf_loss, {"pg_loss": pg_loss.detach(), "vf_loss": vf_loss.detach(), "entropy": entropy,
                                         **pg_stats, **vf_stats}


def ptx_loss(model, tokens: "Any", rows: int, width: int, generator) -> Any:
    """Mean next-token NLL on ``rows`` random windows of ``width + 1`` pretraining tokens.

    ``model`` is the actor-critic or its DeepSpeed engine (called as a whole, so ZeRO-3's hooks run).
    """
    import torch
    import torch.nn.functional as F

    n = tokens.numel() - width - 1
    if n < 1:
        raise ValueError(f"PPO-ptx data has {tokens.numel()} tokens; ppo.ptx_tokens={width} needs more")
    starts = torch.randint(0, n, (rows,), generator=generator)
    x = torch.stack([tokens[s:s + width + 1] for s in starts.tolist()]).to(next(model.parameters()).device)
    logits, _ = model(x[:, :-1], torch.ones_like(x[:, :-1]))
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), x[:, 1:].reshape(-1))


# ----------------------------------------------------------------------------------------- plotting


PLOTTED = ("reward", "kl", "entropy", "clipfrac", "value_error", "response_length", "eos_rate", "beta")


def plot_curves(metrics_path: Path, png: Path) -> Path:
    """One panel per metric of :data:`PLOTTED` (plus ``reward/<source>`` on the reward panel)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pretrain.metrics import read_metrics

    recs = [r for r in read_metrics(metrics_path) if r.get("kind") == "train"]
    fig, axes = plt.subplots(2, 4, figsize=(14, 6), dpi=100)
    steps = [r["step"] for r in recs]
    for ax, name in zip(axes.flat, PLOTTED):
        ax.plot(steps, [r.get(name) for r in recs], lw=1.2, label=name)
        if name == "reward":
            for key in sorted({k for r in recs for k in r if k.startswith("reward/")}):
                ax.plot(steps, [r.get(key) for r in recs], lw=0.8, alpha=0.7, label=key)
            ax.legend(fontsize=7)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = png.with_name(f".{png.stem}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, png)
    return png


# --------------------------------------------------------------------------------------------- main


def run(cfg: PPOConfig) -> dict[str, Any]:
    """Train as ``cfg`` says; returns the summary (printed as the last line by :func:`main`)."""
    import torch

    from align.rewards import CompositeReward, build_source
    from align.rl_utils import (AdaptiveKLController, FixedKLController, RunningMoments, ema_update, gae,
                                kl_penalized_rewards, masked_mean, masked_whiten, ptx_mix)
    from pretrain import checkpoint as ckpt
    from pretrain import metrics as metrics_lib
    from pretrain.generate import GenerationConfig, context_length
    from pretrain.optim import LRSchedule, build_optimizer, clip_grad_norm, set_lr
    from pretrain.tokenizer import load_tokenizer
    from pretrain.train import _autocast, _deepspeed_engine, _deepspeed_save, setup_runtime

    tc, pc, rc, dc = cfg.train, cfg.ppo, cfg.rollout, cfg.data
    if not cfg.policy.init_from:
        raise ConfigError("is required: the HF causal-LM folder to start from", "policy.init_from")
    if not dc.prompts:
        raise ConfigError("is required: the prompts", "data.prompts")
    if not cfg.rewards:
        raise ConfigError("needs at least one reward source", "rewards")
    use_ds = tc.backend == "deepspeed"
    device, dtype, (rank, _, world) = setup_runtime(tc)  # starts the process group for deepspeed
    master = rank == 0
    zero3 = use_ds and cfg.deepspeed.zero_stage == 3
    out_dir = Path(tc.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    resume_from = ckpt.resolve_resume(tc.resume, out_dir)
    if master:
        cfg.save(out_dir)
    t_start = time.perf_counter()

    # -- prompts, policy, reference, critic, rewards
    items = load_prompt_items(dc)
    init_from = Path(os.path.expandvars(os.path.expanduser(cfg.policy.init_from)))
    retriever = None
    if dc.index:
        from rag.retriever import Retriever

        retriever = Retriever(os.path.expandvars(dc.index), retriever=dc.retriever)
    if world > 1 and not master:  # rank 0 builds the tiny policy the others load
        torch.distributed.barrier()
    if master and not (init_from / "config.json").exists():
        if not cfg.policy.build_tiny:
            raise FileNotFoundError(f"{init_from}: not an HF model folder (no config.json); give a policy "
                                    "(wandao sft output) or set policy.build_tiny true")
        texts = [r["prompt"] for r in render_prompts(items, dc, retriever, None)]  # the vocabulary's characters
        build_tiny_policy(init_from, texts, cfg.policy.tiny_block_size, tc.seed)
    if world > 1 and master:
        torch.distributed.barrier()
    tokenizer = load_tokenizer(init_from)
    if tokenizer.eos_token_id is None:
        raise ConfigError(f"the tokenizer of {init_from} has no EOS token: responses need one to end", "policy.init_from")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos_id = int(tokenizer.eos_token_id)
    torch.manual_seed(tc.seed)
    ActorCritic = _actor_critic_class()
    model = ActorCritic(_load_hf(resume_from if resume_from is not None else init_from, device)).to(device)
    ref = _load_hf(os.path.expandvars(cfg.policy.reference) if cfg.policy.reference else init_from, device)
    ref.eval().requires_grad_(False)  # frozen, no optimizer: a plain module on every rank, also under ZeRO-3
    ctx = context_length(model.hf) or 10**9
    max_prompt = dc.max_prompt_tokens or (ctx - rc.max_new_tokens)
    if max_prompt < 1 or max_prompt + rc.max_new_tokens > ctx:
        raise ConfigError(f"prompt ({max_prompt}) + max_new_tokens ({rc.max_new_tokens}) must fit the context "
                          f"of {ctx} tokens", "data.max_prompt_tokens")
    reward_fn = CompositeReward([build_source(s.kind, s.name, s.weight, s.path, s.terms, s.token, tokenizer,
                                              s.require_citation, device, malformed_penalty=s.malformed_penalty,
                                              head=s.head)
                               for s in cfg.rewards])
    ptx_tokens = None
    if pc.ptx_coef > 0:
        ptx_tokens = torch.tensor(read_ptx_tokens(pc.ptx_data, tokenizer), dtype=torch.long)

    # -- optimizer, backend, EMA, controllers; resume
    optimizer = build_optimizer(model, cfg.optim, device)
    schedule = LRSchedule(cfg.optim.lr, cfg.schedule, tc.steps)
    engine = None
    if use_ds:
        # one optimizer step per minibatch: DeepSpeed's micro-batch is the minibatch, no accumulation
        engine = _deepspeed_engine(model, optimizer, cfg, device, dtype, micro_batch_size=pc.minibatch_size,
                                   grad_accum_steps=1)
        optimizer = engine.optimizer
        if engine.bfloat16_enabled():  # the reference scores in the policy's precision
            ref.to(torch.bfloat16)
    # ZeRO-3 partitions a parameter unless it is under stage3_param_persistence_threshold elements; a
    # partitioned one holds no data outside a forward (its shard is p.ds_tensor)
    zero3_partitioned = sum(p.data.numel() == 0 for p in model.parameters()) if zero3 else None
    if zero3 and master:
        logger.info("ZeRO-3: %d of %d parameter tensors partitioned across %d rank(s)", zero3_partitioned,
                    len(list(model.parameters())), world)
    actor = engine if use_ds else model  # what forwards call: the engine runs ZeRO's hooks
    # bf16 autocast: torch backend on CUDA with train.dtype bfloat16 (DeepSpeed casts the module itself)
    amp = _autocast(device, dtype) if not use_ds else nullcontext()

    def ema_targets() -> list:
        # Under ZeRO-3 each rank keeps the EMA of its own shard (ds_tensor): no gathers, memory sharded too.
        return [p.ds_tensor for p in model.hf.parameters()] if zero3 else list(model.hf.parameters())

    ema = [t.detach().clone() for t in ema_targets()] if pc.ema_beta is not None else None
    kl_ctl = (AdaptiveKLController(pc.kl_beta, pc.kl_target, pc.kl_horizon) if pc.kl_adaptive
              else FixedKLController(pc.kl_beta))
    moments = RunningMoments()
    history: list[dict] = []
    start_step = 0
    if resume_from is not None:
        state = ckpt.load_trainer_state(resume_from)
        start_step = int(state["step"])
        if use_ds:  # the engine's checkpoint holds the module (value head included) and the optimizer
            engine.load_checkpoint(str(resume_from / "deepspeed"), tag="state", load_lr_scheduler_states=False)
            rank_state = resume_from / f"trainer_state_rank{rank}.pt"
            if rank and rank_state.exists():  # ranks differ in their EMA shard and RNG
                state = torch.load(rank_state, map_location="cpu", weights_only=False)
        else:
            optimizer.load_state_dict(ckpt.load_optimizer_state(resume_from))
            model.value_head.load_state_dict(state["value_head"])
        if ema is not None and state.get("ema") is not None:
            for e, v in zip(ema, state["ema"]):
                e.copy_(v)
        kl_ctl.load_state_dict(state["kl_ctl"])
        moments.load_state_dict(state["moments"])
        history = list(state["history"])
        ckpt.set_rng_state(state["rng"])
        logger.info("resumed from %s at step %d", resume_from, start_step)
    metrics = metrics_lib.MetricsLogger(out_dir, False, start_step + 1 if resume_from else None, enabled=master)
    samples = out_dir / "rollouts.jsonl"
    if master and samples.exists():  # keep only the steps before the one this run starts at
        kept = [x for x in samples.read_text(encoding="utf-8").splitlines() if x and json.loads(x)["step"] <= start_step]
        samples.write_text("".join(x + "\n" for x in kept), encoding="utf-8")

    def save(step: int) -> Path:
        with gathered(model.value_head.parameters(), zero3):
            value_head = {k: v.detach().clone() for k, v in model.value_head.state_dict().items()}
        trainer_state = {"step": step, "value_head": value_head, "ema": ema,
                         "kl_ctl": kl_ctl.state_dict(), "moments": moments.state_dict(), "history": history,
                         "rng": ckpt.rng_state()}
        readable = {k: history[-1].get(k) for k in ("reward", "kl")} if history else {}
        if use_ds:  # every rank writes its shards; rank 0 the HF policy (gathered under ZeRO-3)
            _deepspeed_save(engine, model, out_dir, step, trainer_state, readable, tokenizer, cfg, rank, world,
                            save_model=lambda d: model.hf.save_pretrained(str(d)))
            return out_dir / ckpt.step_dir_name(step)
        return ckpt.save_checkpoint(out_dir, step, lambda p: model.hf.save_pretrained(str(p)), optimizer.state_dict(),
                                    trainer_state, readable, tokenizer, cfg, tc.keep_checkpoints)

    gen_base = GenerationConfig(max_new_tokens=rc.max_new_tokens, temperature=rc.temperature, top_k=rc.top_k,
                                top_p=rc.top_p, stop=list(rc.stop), eos_token_id=eos_id)
    mb = pc.minibatch_size
    step = start_step
    for step in range(start_step + 1, tc.steps + 1):
        t0 = time.perf_counter()
        lr = schedule(step - 1)
        set_lr(optimizer, lr)

        # -- 1. prompts: a step-seeded draw; evidence retrieved and rendered now
        seed = tc.seed + 10_007 * rank  # each rank its own prompts and samples (rank 0: the single-process run's)
        rng = random.Random(seed * 1_000_003 + step)
        batch_items = [items[rng.randrange(len(items))] for _ in range(rc.batch_size)]
        prompts = call_with_timeout(lambda: render_prompts(batch_items, dc, retriever, tokenizer), tc.step_timeout_s,
                                    "retrieval")
        prompt_ids = [tokenizer(p["prompt"], add_special_tokens=False)["input_ids"][-max_prompt:] or [eos_id]
                      for p in prompts]

        # -- 2. rollout (no grad: decode_steps runs under inference_mode)
        model.eval()
        gcfg = GenerationConfig(**{**gen_base.__dict__, "seed": seed * 7919 + step})
        with unwrapped_for_generation(engine, zero3):  # sampling runs in its own thread: no autocast
            gens = call_with_timeout(lambda: sample(model.hf, tokenizer, prompt_ids, gcfg), tc.step_timeout_s,
                                     "generation")
        actions, rows, ended = [], [], []
        for p, g in zip(prompts, gens):
            ended.append(g.finish_reason == "stop")
            actions.append(g.actions)
            rows.append({**p, "response": g.text, "response_ids": list(g.token_ids), "finished": ended[-1]})
        keep = [i for i, a in enumerate(actions) if a]  # an empty action list has nothing to learn from
        if not keep:
            raise RuntimeError(f"step {step}: every response was empty")

        # -- 3. reward
        scores_list, parts = call_with_timeout(lambda: reward_fn(rows), tc.step_timeout_s, "reward")
        raw = torch.tensor(scores_list, dtype=torch.float32)
        scores = raw.clone()
        if rc.missing_eos_penalty is not None:
            scores -= rc.missing_eos_penalty * torch.tensor([0.0 if e else 1.0 for e in ended])
        if pc.reward_norm == "batch" and len(scores) > 1:
            scores = (scores - scores.mean()) / (scores.std() + 1e-8)
        elif pc.reward_norm == "running":
            moments.update(scores)
            scores = moments.normalize(scores)

        # -- 4. score the rollout: old log-probs, reference log-probs, values
        batch = make_batch([prompt_ids[i] for i in keep], [actions[i] for i in keep], pad_id, device)
        scores = scores[keep].to(device)
        mask = batch["action_mask"]
        with torch.no_grad(), amp:
            old_logp, old_values, _ = forward_scores(actor, batch)
            ref_logits = ref(input_ids=batch["ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
            ref_logp = token_logprobs(ref_logits, batch["targets"])
            # -- 5. per-token KL-penalised rewards, GAE, advantage whitening
            beta = kl_ctl.beta
            token_rewards, kl = kl_penalized_rewards(scores, old_logp, ref_logp, mask, beta, pc.kl_estimator)
            old_values = old_values * mask
            advantages, returns = gae(token_rewards, old_values, mask, pc.gamma, pc.lam)
            if pc.whiten_advantages:
                advantages = masked_whiten(advantages, mask)
            kl_seq = ((old_logp - ref_logp) * mask).sum(-1)  # logged KL: k1 summed over each response

        # -- 6. PPO epochs over shuffled minibatches. The model stays in eval mode (no dropout), so the
        # first epoch's ratio is exactly 1 and log-probs match the rollout's (TRL and DeepSpeed-Chat do the same).
        gen = torch.Generator().manual_seed(tc.seed * 31 + step)
        n = len(keep)
        sums: dict[str, float] = {}
        count = 0
        for _ in range(pc.epochs):
            order = torch.randperm(n, generator=gen).tolist()
            for s in range(0, n, mb):
                idx = torch.tensor(order[s:s + mb], device=device)
                sub = {k: v[idx] for k, v in batch.items()}
                with amp:
                    loss, stats = ppo_losses(actor, sub, old_logp[idx], old_values[idx], advantages[idx],
                                             returns[idx], pc.clip, pc.vf_clip, pc.vf_coef)
                    ptx = (ptx_loss(actor, ptx_tokens, pc.ptx_batch_size, pc.ptx_tokens, gen)
                           if ptx_tokens is not None else None)
                    loss = ptx_mix(loss, ptx, pc.ptx_coef)
                if use_ds:
                    engine.backward(loss)
                    engine.step()  # clips (gradient_clipping = optim.grad_clip), steps, zeroes the gradients
                    gnorm = engine.get_global_grad_norm() if cfg.optim.grad_clip > 0 else None
                else:
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    gnorm = clip_grad_norm(model.parameters(), cfg.optim.grad_clip) if cfg.optim.grad_clip > 0 else None
                    optimizer.step()
                if ema is not None:
                    ema_update(ema, ema_targets(), pc.ema_beta)
                # sync point: .item() once per minibatch on a handful of scalars (tiny next to the forward)
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                if ptx is not None:
                    sums["ptx_loss"] = sums.get("ptx_loss", 0.0) + float(ptx.detach())
                if gnorm is not None:
                    sums["grad_norm"] = sums.get("grad_norm", 0.0) + float(gnorm)
                count += 1

        # -- 7. KL controller, log, checkpoint
        kl_mean = float(kl_seq.mean())
        kl_ctl.update(kl_mean, n)
        lengths = [len(g.token_ids) for g in gens]
        rec = {"reward": float(raw.mean()), **{f"reward/{k}": sum(v) / len(v) for k, v in parts.items()},
               "score": float(scores.mean()), "kl": kl_mean, "sqrt_kl": math.sqrt(max(kl_mean, 0.0)),
               "kl_token": float(masked_mean(kl, mask)), "beta": beta,
               **{k: v / max(count, 1) for k, v in sums.items()},
               "response_length": sum(lengths) / len(lengths),
               "eos_rate": sum(ended) / len(ended),  # ended by EOS or a stop string (not cut at max_new_tokens)
               "lr": lr, "episodes": rc.batch_size, "seconds": time.perf_counter() - t0}
        rec["episodes_per_s"] = rc.batch_size / rec["seconds"]
        history.append({"step": step, "reward": rec["reward"], "kl": kl_mean})
        with open(out_dir / "rollouts.jsonl", "a", encoding="utf-8") if master else nullcontext() as f:
            for r, total in list(zip(rows, scores_list))[:2] if master else []:  # a few samples per step, to read
                f.write(json.dumps({"step": step, "prompt_id": r.get("prompt_id"), "prompt": r["prompt"],
                                    "evidence_ids": r.get("evidence_ids"), "response": r["response"],
                                    "reward": total, **{f"reward/{k}": v[rows.index(r)] for k, v in parts.items()}})
                        + "\n")
        metrics.log(step, "train", **rec)
        if master and (step % tc.log_interval == 0 or step == tc.steps):
            logger.info("step %d: reward %.4f kl %.3f entropy %.3f clipfrac %.3f value_err %.4f len %.1f eos %.2f "
                        "(%.1f episodes/s)", step, rec["reward"], kl_mean, rec.get("entropy", float("nan")),
                        rec.get("clipfrac", float("nan")), rec.get("value_error", float("nan")),
                        rec["response_length"], rec["eos_rate"], rec["episodes_per_s"])
        if tc.save_interval and step % tc.save_interval == 0 and step < tc.steps:
            save(step)

    metrics.close()
    last = save(step) if step > start_step else ckpt.latest_checkpoint(out_dir)
    from align.sft import save_hf_folder

    with gathered(model.hf.parameters(), zero3):
        if master:
            save_hf_folder(model.hf, tokenizer, out_dir / "model")
    if ema is not None:  # swap the EMA in (under ZeRO-3: into the shards, then gather), save, swap back
        with torch.no_grad():
            targets = ema_targets()
            backup = [t.detach().clone() for t in targets]
            for t, e in zip(targets, ema):
                t.copy_(e)
            with gathered(model.hf.parameters(), zero3):
                if master:
                    save_hf_folder(model.hf, tokenizer, out_dir / "model-ema")
            for t, b in zip(targets, backup):
                t.copy_(b)
    window = history[-tc.end_window:]
    summary = {
        "reward_start": history[0]["reward"] if history else None,
        "reward_end": sum(h["reward"] for h in window) / len(window) if window else None,
        "kl_start": history[0]["kl"] if history else None,
        "kl_end": sum(h["kl"] for h in window) / len(window) if window else None,
        "steps": step,
        "episodes": step * rc.batch_size,
        "beta_end": kl_ctl.beta,
        "backend": tc.backend + (f"-zero{cfg.deepspeed.zero_stage}" if use_ds else ""),
        **({"zero3_partitioned_params": zero3_partitioned} if zero3 else {}),
        "checkpoint": str(last) if last else None,
        "model_dir": str(out_dir / "model"),
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    exp = cfg.expect
    if exp.reward_end_min is not None or exp.kl_end_max is not None:
        summary["expect_ok"] = bool((exp.reward_end_min is None or summary["reward_end"] >= exp.reward_end_min)
                                    and (exp.kl_end_max is None or summary["kl_end"] <= exp.kl_end_max))
    if master:
        if tc.plot:
            plot_curves(out_dir / "metrics.jsonl", out_dir / "curves.png")
        metrics_lib.write_summary(out_dir, summary, title="wandao ppo run")
    return summary


def main(argv: list[str] | None = None) -> int:
    """``wandao ppo --config FILE.yaml [--out DIR] [--section.key value ...]``; the last stdout line is JSON."""
    argv = list(sys.argv[1:] if argv is None else argv)
    argv = [a for a in argv if not a.startswith("--local_rank")]  # the deepspeed launcher's flag (LOCAL_RANK says it)
    out = None
    for i, a in enumerate(argv):  # --out DIR is shorthand for --train.out_dir DIR
        if a == "--out" and i + 1 < len(argv):
            out = argv[i + 1]
            argv = argv[:i] + argv[i + 2:]
            break
        if a.startswith("--out="):
            out = a.split("=", 1)[1]
            argv = argv[:i] + argv[i + 1:]
            break
    if out is not None:
        argv += ["--train.out_dir", out]
    cfg = PPOConfig.parse(argv, prog="wandao ppo",
                          description="PPO with retrieval in the loop: policy, frozen reference, value head, "
                                      "weighted reward sources; the last stdout line is JSON.",
                          epilog=EPILOG)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=os.environ.get("WANDAO_LOG_LEVEL", "INFO"),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from indexer.data import DataError

    try:
        summary = run(cfg)
    except (ConfigError, DataError, FileNotFoundError, StepTimeout, ValueError) as err:
        print(f"wandao ppo: {err}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", 0)) == 0:
        print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
