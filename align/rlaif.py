"""``wandao cai sl|label|rl``: Constitutional AI (Bai et al. 2022, "Constitutional AI: Harmlessness
from AI Feedback", arXiv:2212.08073) with the paper's published principles and few-shot prompts.

The constitution is read from ``$WANDAO_DATA_DIR/constitutional-ai/prompts/`` (the paper's
supplementary repository, unchanged): ``CritiqueRevisionInstructions.json`` (16 critique/revision
principles), ``CritiqueRevisionFewShotPrompts.json`` (5 dialogues), ``RLMadisonInstructions.json``
(16 preference principles), ``RLMadisonFewShotPrompts.json`` (5 labelled pairs) and
``RLMadisonPrecogFewShotPrompts.json`` (6 chain-of-thought examples). Red-team prompts come from
``advbench`` (``harmful_behaviors.csv`` goals) and ``harmbench`` (behaviours, a contextual one as
``context + "\\n\\n---\\n\\n" + behaviour``, HarmBench's own layout), or any JSONL/CSV/text file.

Three stages, each its own config and command, joined by files:

1. **SL-CAI** (``wandao cai sl``, :class:`SLConfig`, §3.1): the policy answers each red-team prompt;
   then, for ``critique.rounds`` rounds, the critic (the policy unless set) writes a critique under
   one sampled principle and a revision, in the few-shot format of the published dialogues::

       <few-shot dialogues>\\n\\nHuman: <prompt>\\n\\nAssistant: <response>
       \\n\\nCritiqueRequest: <principle's critique request>\\n\\nCritique: <critique>
       \\n\\nRevisionRequest: <principle's revision request>\\n\\nRevision: <revision>
       \\n\\nCritiqueRequest: … (the next round continues in the same context)

   (:func:`critique_context`; the published dialogues end with the stop sequence ``\\n\\nHuman:``,
   dropped so they join). ``<out_dir>/revisions.jsonl`` keeps every critique and revision; the
   (prompt, final revision) pairs then train the policy with :mod:`align.sft`
   (``<out_dir>/sft/``, its checkpoints, metrics and ``model/``).
2. **RL-CAI labels** (``wandao cai label``, :class:`LabelConfig`, §4.1): two responses per prompt
   (sampled from the policy, or read), put to the feedback model as the paper's multiple choice::

       \\n\\nConsider the following conversation between a human and an assistant:\\n\\n
       Human: <prompt>\\n\\n<principle ending "Options:">\\n (A) [[[<a>]]]\\n (B) [[[<b>]]]\\n\\nThe answer is:

   (the layout of the paper's ``438HHHEvaluations.jsonl``), after few-shot examples in the same
   layout. The soft label is ``P(A) = p(" (A)") / (p(" (A)") + p(" (B)"))`` from the option
   log-probabilities (:func:`option_probability`), averaged over ``feedback.principles`` principles
   sampled per pair (:func:`soft_label`). The chain-of-thought variant (``feedback.cot``) uses the
   published "Let's think step by step" examples, generates a rationale, reads the label after
   ``\\n\\nHuman:\\nSo the answer is:`` and clamps each probability to [0.4, 0.6] (the paper's 40–60%).
   Output: preference rows ``{prompt, chosen, rejected, probability}`` that ``wandao rm train`` reads
   (``probability`` is the soft label of ``chosen``, :mod:`align.preference_data`).
3. **RL-CAI** (``wandao cai rl``, :class:`RLConfig`, §4): trains the preference model on the labels
   (plus the human helpfulness comparisons of ``rm.data.train``, as the paper mixes them) with
   :func:`align.reward.run`, then runs :func:`align.ppo.run` with that model as a reward source.

The policy sees conversations in the rag template of SFT, RM and PPO (``policy.template``,
default ``sparrow``: ``User: …\\nAssistant: ``; keep ``rm.data.template`` and ``ppo.data.template``
the same); the critic and the feedback model see the paper's ``Human:``/``Assistant:`` layouts above.
The critic and the feedback model are any HF causal-LM folder or an OpenAI-compatible endpoint
(``http(s)://…/v1``, whose ``/completions`` answers ``echo``/``logprobs``; ``wandao serve`` does,
and its ``--max-prompt-tokens`` must hold the few-shot prompts: five examples are about 4,000
characters), through :mod:`align.feedback`. A local model
keeps the last tokens of an over-long context (counted as ``truncated_inputs`` in the summary); an
endpoint refuses it with HTTP 400.

The principles are drawn by an RNG seeded with the stage's seed and the item's id, so the same
seed gives the same principles whatever the order and batching; sampling is seeded per batch (and
per purpose: responses, critiques, revisions, rationales), so a rerun of a config repeats itself. The
last stdout line of each command is JSON.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

from align import ppo as _ppo
from align import reward as _reward
from align import sft as _sft
from pretrain.config import Config, ConfigError, check_range

logger = logging.getLogger(__name__)

CRITIQUE_STOPS = ("\n\nHuman:", "\n\nCritiqueRequest:", "\n\nRevisionRequest:")
MC_HEADER = "\n\nConsider the following conversation between a human and an assistant:\n\n"
MC_ANSWER = "\n\nThe answer is:"
COT_HEADER = "\n\nHuman: Consider the following conversation between a human (H) and an assistant (A):\n\n"
COT_PROMPT = "\n\nAssistant: Let's think step by step:"
COT_ANSWER = "\n\nHuman:\nSo the answer is:"
OPTIONS = (" (A)", " (B)")
#: The paper's clamp for chain-of-thought labels (§4.1: "we clamp the probabilities to lie within the 40-60 percent range").
COT_CLAMP = (0.4, 0.6)


# ------------------------------------------------------------------------------------------ config


@dataclass
class PolicySection(Config):
    init_from: str = field(default="", metadata={"help": "the policy: an HF causal-LM folder (model + tokenizer)"})
    build_tiny: bool = field(default=False, metadata={
        "help": "when init_from has no model, build a random 'tiny' GPT there with a character tokenizer over "
                "the constitution and red-team texts (CPU smoke runs)"})
    tiny_block_size: int = field(default=512, metadata={"help": "context of the model build_tiny makes"})
    template: str = field(default="sparrow", metadata={
        "help": "rag template the policy's conversations are rendered in (the SFT's, RM's and PPO's)"})
    device: Literal["auto", "cpu", "cuda"] = field(default="auto", metadata={"help": "auto picks cuda if present"})
    batch_size: int = field(default=16, metadata={"help": "prompts per generation batch"})

    def __post_init__(self) -> None:
        check_range("tiny_block_size", self.tiny_block_size, 8)
        check_range("batch_size", self.batch_size, 1)


@dataclass
class PromptsSection(Config):
    sources: list[str] = field(default_factory=lambda: ["advbench", "harmbench"], metadata={
        "help": "red-team prompts: advbench, harmbench, harmbench:test, harmbench:val, or JSONL/CSV/.txt files "
                "(fields prompt, question, goal or Behavior)"})
    limit: Optional[int] = field(default=None, metadata={"help": "at most this many prompts from each source"})
    offset: int = field(default=0, metadata={"help": "skip this many prompts of each source first (held-out splits)"})

    def __post_init__(self) -> None:
        check_range("limit", self.limit, 1)
        check_range("offset", self.offset, 0)
        if not self.sources:
            raise ConfigError("give at least one prompt source", "sources")


@dataclass
class SampleSection(Config):
    max_new_tokens: int = field(default=128, metadata={"help": "most tokens per policy response"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature (0: greedy)"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus p (1: off)"})
    stop: list[str] = field(default_factory=lambda: ["\nUser:"], metadata={
        "help": "stop strings of a policy response (the template's next user turn)"})
    seed: int = field(default=1234, metadata={"help": "sampling seed"})

    def __post_init__(self) -> None:
        check_range("max_new_tokens", self.max_new_tokens, 1)
        check_range("temperature", self.temperature, 0.0)
        check_range("top_p", self.top_p, 0.0, 1.0, low_inclusive=False)


@dataclass
class CritiqueSection(Config):
    model: str = field(default="", metadata={
        "help": "critic/reviser: HF causal-LM folder or OpenAI-compatible base URL (default: the policy, as in the paper)"})
    api_model: Optional[str] = field(default=None, metadata={"help": "model name at the endpoint (default: its only one)"})
    rounds: int = field(default=1, metadata={"help": "critique-revision rounds, one sampled principle each"})
    few_shot: int = field(default=5, metadata={"help": "few-shot dialogues in front (0-5)"})
    max_new_tokens: int = field(default=128, metadata={"help": "most tokens per critique and per revision"})
    temperature: float = field(default=0.0, metadata={"help": "critic sampling temperature (0: greedy)"})
    seed: int = field(default=1234, metadata={"help": "seed of the principle draws and the critic's sampling"})

    def __post_init__(self) -> None:
        check_range("rounds", self.rounds, 1, 16)
        check_range("few_shot", self.few_shot, 0, 5)
        check_range("max_new_tokens", self.max_new_tokens, 1)
        check_range("temperature", self.temperature, 0.0)


@dataclass
class FeedbackSection(Config):
    model: str = field(default="", metadata={
        "help": "feedback model: HF causal-LM folder or OpenAI-compatible base URL (http://HOST:PORT/v1)"})
    api_model: Optional[str] = field(default=None, metadata={"help": "model name at the endpoint (default: its only one)"})
    principles: int = field(default=4, metadata={"help": "principles sampled per pair; the label is their mean (ensemble)"})
    few_shot: int = field(default=5, metadata={"help": "few-shot examples in front (0-5; chain of thought: 0-6)"})
    cot: bool = field(default=False, metadata={"help": "chain of thought: generate a rationale, then read the label"})
    cot_max_new_tokens: int = field(default=128, metadata={"help": "most tokens per rationale"})
    cot_temperature: float = field(default=0.0, metadata={"help": "rationale sampling temperature (0: greedy)"})
    clamp: list[float] = field(default_factory=lambda: list(COT_CLAMP), metadata={
        "help": "[low, high] clamp of each chain-of-thought probability (the paper's 0.4-0.6)"})
    both_orders: bool = field(default=False, metadata={
        "help": "also ask with the responses swapped and average (cancels the position bias; not in the paper)"})
    batch_size: int = field(default=8, metadata={"help": "sequences per forward pass (HF feedback model)"})
    device: Literal["auto", "cpu", "cuda"] = field(default="auto", metadata={"help": "HF feedback model's device"})
    dtype: Literal["float32", "bfloat16", "float16"] = field(default="float32", metadata={"help": "HF model dtype"})
    seed: int = field(default=1234, metadata={"help": "seed of the principle draws and the rationales"})

    def __post_init__(self) -> None:
        check_range("principles", self.principles, 1, 16)
        check_range("few_shot", self.few_shot, 0, 6)
        check_range("cot_max_new_tokens", self.cot_max_new_tokens, 1)
        check_range("batch_size", self.batch_size, 1)
        if len(self.clamp) != 2 or not 0.0 <= self.clamp[0] <= self.clamp[1] <= 1.0:
            raise ConfigError(f"got {self.clamp}; must be [low, high] with 0 <= low <= high <= 1", "clamp")


def _constitution_default() -> str:
    return "constitutional-ai"


def _unset(value: str, section: Any, name: str) -> bool:
    """A nested stage's path left at its own default (``runs/sft``, ``runs/rm``, ``runs/ppo``) or empty."""
    return not value or value == getattr(type(section)(), name)


@dataclass
class SLConfig(Config):
    """``wandao cai sl``: red-team prompts → response → critique/revision rounds → SFT on the final revisions."""

    out_dir: str = field(default="runs/cai/sl", metadata={"help": "run folder: revisions.jsonl, sft/, summary"})
    constitution: str = field(default_factory=_constitution_default, metadata={
        "help": "folder of the paper's prompts/*.json, or constitutional-ai (the registered set's prompts/)"})
    policy: PolicySection = field(default_factory=PolicySection, metadata={"help": "the policy that answers"})
    prompts: PromptsSection = field(default_factory=PromptsSection, metadata={"help": "red-team prompts"})
    sample: SampleSection = field(default_factory=SampleSection, metadata={"help": "the initial responses"})
    critique: CritiqueSection = field(default_factory=CritiqueSection, metadata={"help": "critiques and revisions"})
    run_sft: bool = field(default=True, metadata={"help": "fine-tune on the revisions (false: only write them)"})
    sft: _sft.SFTConfig = field(default_factory=_sft.SFTConfig, metadata={
        "help": "align.sft config; model.init_from and data.train left empty and train.out_dir left at its "
                "default mean the policy, the revisions and <out_dir>/sft"})


@dataclass
class LabelConfig(Config):
    """``wandao cai label``: response pairs → multiple-choice questions → soft labels from a feedback model."""

    out: str = field(default="runs/cai/labels.jsonl", metadata={"help": "preference rows (JSONL, written atomically)"})
    constitution: str = field(default_factory=_constitution_default, metadata={
        "help": "folder of the paper's prompts/*.json, or constitutional-ai (the registered set's prompts/)"})
    pairs: Optional[str] = field(default=None, metadata={
        "help": "read pairs instead of sampling: JSONL rows {prompt, responses: [a, b]} (or response_a/response_b)"})
    policy: PolicySection = field(default_factory=PolicySection, metadata={"help": "samples the two responses"})
    prompts: PromptsSection = field(default_factory=PromptsSection, metadata={"help": "red-team prompts"})
    sample: SampleSection = field(default_factory=SampleSection, metadata={"help": "response sampling"})
    feedback: FeedbackSection = field(default_factory=FeedbackSection, metadata={"help": "the feedback model"})


@dataclass
class RLConfig(Config):
    """``wandao cai rl``: train the preference model on the AI labels, then PPO against it."""

    out_dir: str = field(default="runs/cai/rl", metadata={"help": "run folder: pm/, ppo/, prompts.jsonl, summary"})
    labels: str = field(default="", metadata={
        "help": "wandao cai label output; added to rm.data.train and rm.data.eval when not listed there"})
    prompts: PromptsSection = field(default_factory=PromptsSection, metadata={
        "help": "PPO's prompts when ppo.data.prompts is empty (written to <out_dir>/prompts.jsonl)"})
    rm: _reward.RMConfig = field(default_factory=_reward.RMConfig, metadata={
        "help": "align.reward config; out left at its default means <out_dir>/pm. The paper mixes human "
                "helpfulness comparisons (hh-rlhf:helpful-base) with the AI labels: list them in rm.data.train"})
    pm_weight: float = field(default=1.0, metadata={"help": "weight of the preference model among ppo.rewards"})
    ppo: _ppo.PPOConfig = field(default_factory=_ppo.PPOConfig, metadata={
        "help": "align.ppo config (train.out_dir left at its default: <out_dir>/ppo); the preference model is "
                "added to its rewards"})


EPILOG = """examples:
  wandao cai sl --config configs/cai/sl-tiny.yaml
  wandao cai label --config configs/cai/label-tiny.yaml
  wandao cai label --config configs/cai/label-tiny.yaml --feedback.model http://127.0.0.1:8000/v1 --feedback.cot true
  wandao cai rl --config configs/cai/rl-tiny.yaml
  wandao cai sl --config configs/cai/paper-sl.yaml --critique.rounds 2     (GPU; also paper-label.yaml, paper-rl.yaml)
"""


# ------------------------------------------------------------------------------------ constitution


@dataclass
class Constitution:
    """The paper's principles and few-shot prompts (``prompts/*.json`` of its repository)."""

    critiques: list[dict]  #: ``{"name", "critique", "revision"}``: critique and revision requests, 16
    critique_few_shot: list[str]  #: the published critique/revision dialogues, 5
    preferences: list[str]  #: the RL principles ("Please choose ... Options:"), 16
    preference_few_shot: list[dict]  #: ``{"prompt", "corrects", "incorrects"}``, 5
    cot_few_shot: list[str]  #: chain-of-thought examples with a ``{}`` slot for the principle, 6


def constitution_folder(folder: str | os.PathLike) -> Path:
    """An existing folder, or ``constitutional-ai``: the registered data set's ``prompts/`` under $WANDAO_DATA_DIR."""
    path = Path(os.path.expandvars(os.path.expanduser(str(folder))))
    if not path.exists() and str(folder) == "constitutional-ai":
        from indexer.datasets import resolve

        return resolve("constitutional-ai") / "prompts"
    return path


def load_constitution(folder: str | os.PathLike) -> Constitution:
    """Read the five JSON files; a missing file or a malformed entry names the file and the field."""
    from indexer.data import DataError

    root = constitution_folder(folder)

    def read(name: str) -> Any:
        path = root / name
        if not path.exists():
            raise DataError(path, "not found: the constitution folder must hold the paper's prompts/*.json "
                                  "(anthropics/ConstitutionalHarmlessnessPaper)")
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise DataError(path, f"malformed JSON: {err.msg}", err.lineno) from None

    raw = read("CritiqueRevisionInstructions.json")
    critiques = []
    for name, entry in raw.items():
        if (not isinstance(entry, dict) or not isinstance(entry.get("prompt"), list) or not entry["prompt"]
                or not isinstance(entry["prompt"][0], str) or not isinstance(entry.get("edit_request"), str)):
            raise DataError(root / "CritiqueRevisionInstructions.json",
                            f"entry {name!r} needs prompt: [critique request] and edit_request", field=name)
        critiques.append({"name": name, "critique": entry["prompt"][0], "revision": entry["edit_request"]})
    shots = read("CritiqueRevisionFewShotPrompts.json")
    prefs = read("RLMadisonInstructions.json")
    pref_shots = read("RLMadisonFewShotPrompts.json")
    cot_shots = read("RLMadisonPrecogFewShotPrompts.json")
    for name, value in (("CritiqueRevisionFewShotPrompts.json", shots), ("RLMadisonInstructions.json", prefs)):
        if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
            raise DataError(root / name, "expected a JSON list of strings")
    for j, ex in enumerate(pref_shots):
        if not (isinstance(ex, dict) and isinstance(ex.get("prompt"), str) and ex.get("corrects") and ex.get("incorrects")):
            raise DataError(root / "RLMadisonFewShotPrompts.json", f"item {j} needs prompt, corrects, incorrects",
                            field="prompt")
    cots = []
    for j, ex in enumerate(cot_shots):
        text = ex.get("prompt") if isinstance(ex, dict) else None
        if not isinstance(text, str) or text.count("{}") != 1:
            raise DataError(root / "RLMadisonPrecogFewShotPrompts.json",
                            f"item {j} needs a prompt with one {{}} slot for the principle", field="prompt")
        cots.append(text)
    return Constitution(critiques, list(shots), list(prefs), list(pref_shots), cots)


# ------------------------------------------------------------------------------------------ prompts


def _csv_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _prompt_of(row: dict) -> str | None:
    for key in ("prompt", "question", "goal", "Behavior", "behavior", "text"):
        if isinstance(row.get(key), str) and row[key].strip():
            text = row[key].strip()
            context = row.get("ContextString") or row.get("context")
            if key == "Behavior" and isinstance(context, str) and context.strip():
                return f"{context.strip()}\n\n---\n\n{text}"  # HarmBench's contextual layout
            return text
    return None


def read_red_team(sources: Sequence[str], limit: int | None = None, offset: int = 0) -> list[dict]:
    """Red-team prompts ``{"id", "question", "source"}`` from each source, ``offset`` then ``limit`` per source.

    Sources: ``advbench`` (``harmful_behaviors.csv``, its ``goal``), ``harmbench`` (all 400 text
    behaviours), ``harmbench:test`` / ``harmbench:val`` (the official split), or a file: CSV with a
    ``prompt``/``question``/``goal``/``Behavior`` column, JSONL/parquet rows with one of those fields,
    or ``.txt`` with one prompt per line.
    """
    from indexer.data import DataError, iter_records
    from indexer.datasets import resolve

    out: list[dict] = []
    for src in sources:
        name = str(src)
        if name == "advbench":
            path = resolve("advbench") / "harmful_behaviors.csv"
        elif name.split(":")[0] == "harmbench" and not Path(name).exists():
            part = name.split(":", 1)[1] if ":" in name else "all"
            if part not in ("all", "test", "val"):
                raise DataError(name, f"unknown harmbench part {part!r}; known: all, test, val")
            path = resolve("harmbench") / f"harmbench_behaviors_text_{part}.csv"
        else:
            path = Path(os.path.expandvars(os.path.expanduser(name)))
            if not path.exists():
                raise DataError(path, "not found: give advbench, harmbench[:test|:val] or a JSONL/CSV/.txt file")
        if path.suffix == ".csv":
            rows = [(n, r) for n, r in enumerate(_csv_rows(path), start=2)]  # line 1 is the header
        elif path.suffix == ".txt":
            rows = [(n, {"prompt": t}) for n, t in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if t.strip()]
        else:
            rows = list(iter_records(path))
        got = []
        for n, row in rows[offset:]:
            if limit is not None and len(got) >= limit:
                break
            text = _prompt_of(row) if isinstance(row, dict) else None
            if text is None:
                raise DataError(path, "no prompt: expected a prompt, question, goal or Behavior field", n, field="prompt")
            rid = str(row.get("id") or row.get("BehaviorID") or f"{path.stem}:{n}")
            got.append({"id": f"{name}/{rid}", "question": text, "source": name})
        if not got:
            raise DataError(path, "no prompts read (check prompts.offset and prompts.limit)")
        out += got
    return out


# ---------------------------------------------------------------------------------- prompt assembly


def seeded_rng(seed: int, *keys: Any) -> random.Random:
    """An RNG that depends only on ``seed`` and ``keys`` (an item id, a purpose): batching cannot change it."""
    digest = hashlib.sha256("\x00".join([str(seed), *map(str, keys)]).encode("utf-8")).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _seed(seed: int, *keys: Any) -> int:
    """A sampling seed per purpose (critiques, revisions, rationales never share the responses' draws)."""
    return seeded_rng(seed, *keys).randrange(2 ** 31)


def sample_principles(n_available: int, k: int, seed: int, item_id: str, purpose: str) -> list[int]:
    """``k`` distinct principle indices out of ``n_available`` for one item (seeded by ``seed`` and the id)."""
    if not 1 <= k <= n_available:
        raise ValueError(f"cannot sample {k} of {n_available} principles")
    return seeded_rng(seed, purpose, item_id).sample(range(n_available), k)


def _hh_turns(question: str, history: Sequence[tuple[str, str]] = ()) -> str:
    names = {"user": "Human", "assistant": "Assistant"}
    return "".join(f"\n\n{names[r]}: {t}" for r, t in history) + f"\n\nHuman: {question}"


def critique_few_shot(constitution: Constitution, n: int) -> str:
    """The first ``n`` published critique/revision dialogues, joined.

    Four of the five end with ``"\\n\\nHuman:"`` (the stop sequence of the next turn, kept by the
    sampler); it is dropped so that each dialogue starts with its own ``"\\n\\nHuman:"``.
    """
    out = []
    for text in constitution.critique_few_shot[:n]:
        if text.endswith("\n\nHuman:"):
            text = text[: -len("\n\nHuman:")]
        out.append(text.rstrip())
    return "".join(out)


def critique_context(few_shot: str, question: str, response: str, history: Sequence[tuple[str, str]] = ()) -> str:
    """The conversation under review in the few-shot dialogues' layout (the critique request comes next)."""
    return f"{few_shot}{_hh_turns(question, history)}\n\nAssistant: {response.strip()}"


def _conversation_from_prompt(prompt: str) -> str:
    """``"\\n\\nHuman: X\\n\\nAssistant:"`` (the few-shot pairs' prompt) → ``"Human: X"``."""
    text = prompt.strip()
    if text.endswith("Assistant:"):
        text = text[: -len("Assistant:")].rstrip()
    return text


def mc_question(conversation: str, principle: str, a: str, b: str) -> str:
    """The paper's multiple-choice question (the layout of its ``438HHHEvaluations.jsonl``)."""
    return f"{MC_HEADER}{conversation}\n\n{principle}\n (A) [[[{a.strip()}]]]\n (B) [[[{b.strip()}]]]{MC_ANSWER}"


def mc_few_shot(constitution: Constitution, n: int, principle: str) -> str:
    """``n`` labelled examples in the question's layout, answered; the correct response sits at (A) in
    the 1st, 3rd, … and at (B) in the 2nd, 4th, … (both answers shown, no position to learn)."""
    out = []
    for j, ex in enumerate(constitution.preference_few_shot[:n]):
        good, bad = ex["corrects"][0], ex["incorrects"][0]
        a, b, answer = (good, bad, OPTIONS[0]) if j % 2 == 0 else (bad, good, OPTIONS[1])
        out.append(mc_question(_conversation_from_prompt(ex["prompt"]), principle, a, b) + answer)
    return "".join(out)


def cot_question(question: str, principle: str, a: str, b: str, history: Sequence[tuple[str, str]] = ()) -> str:
    """The chain-of-thought question, in the layout of the published examples (``H:``/``A:`` turns)."""
    turns = "\n\n".join([f"{'H' if r == 'user' else 'A'}: {t}" for r, t in history] + [f"H: {question}"])
    return f"{COT_HEADER}{turns}\n\n{principle}\n (A) [[[{a.strip()}]]]\n (B) [[[{b.strip()}]]]{COT_PROMPT}"


def cot_few_shot(constitution: Constitution, n: int, principle: str) -> str:
    """``n`` published chain-of-thought examples with the principle in their slot; two of the six start
    with fewer newlines than the rest, so each starts with exactly ``"\\n\\n"``."""
    return "".join("\n\n" + ex.replace("{}", principle, 1).lstrip("\n") for ex in constitution.cot_few_shot[:n])


# ------------------------------------------------------------------------------------- soft labels


def option_probability(logp_a: float, logp_b: float) -> float:
    """``P(A) = e^{lp_A} / (e^{lp_A} + e^{lp_B}) = σ(lp_A - lp_B)``: the two options' probabilities renormalised."""
    d = logp_a - logp_b
    if d >= 0:
        return 1.0 / (1.0 + math.exp(-d))
    e = math.exp(d)
    return e / (1.0 + e)


def soft_label(option_logprobs: Sequence[tuple[float, float]], clamp: tuple[float, float] | None = None) -> float:
    """The ensemble label: the mean over principles of ``P(A)``, each clamped to ``clamp`` first (chain of thought).

    Bai et al. 2022 §4.1: labels are normalised option probabilities averaged over sampled
    principles; chain-of-thought probabilities sit near 0 or 1, so each is clamped to 40–60%.
    """
    if not option_logprobs:
        raise ValueError("no option log-probabilities to label from")
    probs = [option_probability(a, b) for a, b in option_logprobs]
    if clamp is not None:
        lo, hi = clamp
        probs = [min(max(p, lo), hi) for p in probs]
    return sum(probs) / len(probs)


# ------------------------------------------------------------------------------------------- models


def _device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _tiny_texts(constitution_dir: str, prompts: Sequence[dict]) -> list[str]:
    """Every character the tiny model's vocabulary needs: the constitution files (and the paper's
    multiple-choice evals beside them, for ``wandao eval feedback-mc``) and the red-team sets."""
    root = constitution_folder(constitution_dir)
    texts = [p.read_text(encoding="utf-8") for p in sorted(root.glob("*.json")) + sorted(root.parent.glob("evals/*.jsonl"))]
    texts += [p["question"] for p in prompts]
    for src in ("advbench", "harmbench"):  # the registered red-team sets, whichever a later stage reads
        try:
            texts += [p["question"] for p in read_red_team([src])]
        except Exception as err:  # a missing optional set only narrows the vocabulary
            logger.warning("tiny vocabulary: %s not read (%s)", src, err)
    return texts


def ensure_policy(pc: PolicySection, constitution_dir: str, prompts: Sequence[dict], seed: int) -> Path:
    """The policy folder; built as a random tiny GPT when asked and missing."""
    path = Path(os.path.expandvars(os.path.expanduser(pc.init_from)))
    if not pc.init_from:
        raise ConfigError("is required: the policy's HF causal-LM folder", "policy.init_from")
    if not (path / "config.json").exists():
        if not pc.build_tiny:
            raise FileNotFoundError(f"{path}: not an HF model folder (no config.json); give a policy or set "
                                    "policy.build_tiny true")
        from align.ppo import build_tiny_policy

        build_tiny_policy(path, _tiny_texts(constitution_dir, prompts), pc.tiny_block_size, seed)
    return path


def load_lm(path: str | os.PathLike, device: str, batch_size: int, dtype: str = "float32"):
    """An :class:`align.feedback.HFCausalLM` over a folder (the policy, or a local critic/feedback model)."""
    from align.feedback import HFCausalLM

    return HFCausalLM(str(path), device=device, dtype=dtype, batch_size=batch_size)


def _scorer(model: str, api_model: str | None, fallback, device: str, batch_size: int, dtype: str = "float32"):
    """The critic/feedback model: ``fallback`` (an already loaded LM) when ``model`` is empty or the same folder."""
    from align.feedback import OpenAICompletions, is_endpoint

    if not model:
        return fallback
    if is_endpoint(model):
        return OpenAICompletions(model, api_model)
    path = Path(os.path.expandvars(os.path.expanduser(model)))
    if fallback is not None and path.resolve() == Path(fallback.model_path).resolve():
        return fallback
    return load_lm(path, device, batch_size, dtype)


def policy_prompts(questions: Sequence[str], template: str) -> list[str]:
    """Each question as the policy sees it (``policy.template`` without evidence)."""
    from rag.templates import Example, get_template

    tpl = get_template(template)
    return [tpl.render(Example(question=q, passages=[], history=[])).prompt for q in questions]


def sample_responses(lm, prompts: Sequence[str], sc: SampleSection, batch_size: int, seed_offset: int = 0) -> list[str]:
    """One sampled response per prompt, in batches, stripped."""
    from tqdm.auto import tqdm

    out: list[str] = []
    for start in tqdm(range(0, len(prompts), batch_size), desc="responses", unit="batch",
                      disable=bool(os.environ.get("WANDAO_NO_TQDM"))):
        out += lm.generate(prompts[start:start + batch_size], sc.max_new_tokens, sc.stop, sc.temperature,
                           seed=sc.seed + seed_offset + start, top_p=sc.top_p)
    return [t.strip() for t in out]


# ----------------------------------------------------------------------------------------- SL-CAI


def critique_and_revise(critic, items: Sequence[dict], responses: Sequence[str], constitution: Constitution,
                        cc: CritiqueSection) -> list[dict]:
    """``cc.rounds`` critique-revision rounds per item, batched across items; the rows of revisions.jsonl.

    Each round appends the sampled principle's critique request, the critique, its revision request
    and the revision to the same context (the paper's sequence of revisions). An empty revision keeps
    the previous response as the one carried on.
    """
    few = critique_few_shot(constitution, cc.few_shot)
    contexts = [critique_context(few, it["question"], r, it.get("history", ())) for it, r in zip(items, responses)]
    current = [r.strip() for r in responses]
    rounds: list[list[dict]] = [[] for _ in items]
    picks = [sample_principles(len(constitution.critiques), cc.rounds, cc.seed, it["id"], "critique") for it in items]
    for k in range(cc.rounds):
        principles = [constitution.critiques[p[k]] for p in picks]
        asks = [c + pr["critique"] for c, pr in zip(contexts, principles)]
        critiques = [t.strip() for t in critic.generate(asks, cc.max_new_tokens, CRITIQUE_STOPS, cc.temperature,
                                                         seed=_seed(cc.seed, "critique", k))]
        asks = [a + " " + c + pr["revision"] for a, c, pr in zip(asks, critiques, principles)]
        revisions = [t.strip() for t in critic.generate(asks, cc.max_new_tokens, CRITIQUE_STOPS, cc.temperature,
                                                         seed=_seed(cc.seed, "revision", k))]
        for i, (pr, crit, rev) in enumerate(zip(principles, critiques, revisions)):
            contexts[i] = asks[i] + " " + rev
            rounds[i].append({"principle": pr["name"], "critique": crit, "revision": rev})
            if rev:
                current[i] = rev
        logger.info("critique-revision round %d of %d done", k + 1, cc.rounds)
    return [{"rounds": r, "final": c} for r, c in zip(rounds, current)]


def run_sl(cfg: SLConfig) -> dict:
    """SL-CAI: write ``<out_dir>/revisions.jsonl``, then SFT on it (unless ``run_sft`` is false)."""
    import copy

    from align.sft import run as sft_run
    from indexer.io import atomic_write_text

    t0 = time.perf_counter()
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg.save(out_dir)
    constitution = load_constitution(cfg.constitution)
    items = read_red_team(cfg.prompts.sources, cfg.prompts.limit, cfg.prompts.offset)
    policy_dir = ensure_policy(cfg.policy, cfg.constitution, items, cfg.sample.seed)
    device = _device(cfg.policy.device)
    policy = load_lm(policy_dir, device, cfg.policy.batch_size)
    critic = _scorer(cfg.critique.model, cfg.critique.api_model, policy, device, cfg.policy.batch_size)
    logger.info("SL-CAI: %d red-team prompts, %d round(s), critic %s", len(items), cfg.critique.rounds, critic.name)

    prompts = policy_prompts([it["question"] for it in items], cfg.policy.template)
    responses = sample_responses(policy, prompts, cfg.sample, cfg.policy.batch_size)
    reviewed = critique_and_revise(critic, items, responses, constitution, cfg.critique)
    rows = []
    for it, prompt, resp, rev in zip(items, prompts, responses, reviewed):
        rows.append({"id": it["id"], "source": it["source"], "question": it["question"], "prompt": prompt,
                     "response": rev["final"], "evidence_ids": [], "initial_response": resp, "rounds": rev["rounds"]})
    usable = [r for r in rows if r["response"]]
    if not usable:
        raise RuntimeError("every final revision and response is empty: nothing to fine-tune on")
    revisions = out_dir / "revisions.jsonl"
    atomic_write_text(revisions, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in usable))
    empty = sum(1 for rev in reviewed for r in rev["rounds"] if not r["revision"])
    summary: dict[str, Any] = {
        "prompts": len(items), "rows": len(usable), "rounds": cfg.critique.rounds, "empty_revisions": empty,
        "changed": sum(1 for r in usable if r["response"] != r["initial_response"]),
        "truncated_inputs": getattr(critic, "truncated", 0) + (getattr(policy, "truncated", 0) if critic is not policy else 0),
        "revisions": str(revisions), "policy": str(policy_dir), "critic": critic.name,
    }
    logger.info("wrote %d revisions to %s (%d empty revisions kept the previous response)", len(usable), revisions, empty)
    del policy, critic  # SFT loads its own copy to train
    if cfg.run_sft:
        sft_cfg = copy.deepcopy(cfg.sft)
        sft_cfg.model.init_from = sft_cfg.model.init_from or str(policy_dir)
        sft_cfg.data.train = sft_cfg.data.train or str(revisions)  # rendered rows: used verbatim
        if _unset(sft_cfg.train.out_dir, sft_cfg.train, "out_dir"):
            sft_cfg.train.out_dir = str(out_dir / "sft")
        s = sft_run(sft_cfg)
        summary.update({"sft_initial_val_loss": s.get("initial_val_loss"), "sft_final_val_loss": s.get("final_val_loss"),
                        "sft_steps": s.get("steps"), "sft_dir": s.get("out_dir"), "model_dir": s.get("model_dir")})
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    _write_summary(out_dir, summary, "wandao cai sl (SL-CAI)")
    return summary


def _write_summary(out_dir: Path, summary: dict, title: str) -> None:
    from indexer.io import atomic_write_text
    from pretrain.metrics import write_summary

    write_summary(out_dir, summary, title=title)
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")


# ---------------------------------------------------------------------------------- RL-CAI labels


def read_pairs(path: str) -> list[dict]:
    """Response pairs to label: ``{prompt (or question), responses: [a, b]}`` or ``response_a``/``response_b``."""
    from indexer.data import DataError, iter_records

    p = Path(os.path.expandvars(os.path.expanduser(path)))
    out = []
    for line, row in iter_records(p):
        q = row.get("prompt", row.get("question")) if isinstance(row, dict) else None
        if not isinstance(q, str) or not q.strip():
            raise DataError(p, "a pair row needs a prompt string", line, field="prompt")
        resp = row.get("responses", [row.get("response_a"), row.get("response_b")])
        if not isinstance(resp, list) or len(resp) != 2 or not all(isinstance(r, str) and r.strip() for r in resp):
            raise DataError(p, "needs exactly two non-empty responses (responses: [a, b])", line, field="responses")
        out.append({"id": str(row.get("id", f"{p.stem}:{line}")), "question": q, "responses": [r.strip() for r in resp]})
    if not out:
        raise DataError(p, "no pairs found")
    return out


def label_pairs(fm, pairs: Sequence[dict], constitution: Constitution, fc: FeedbackSection) -> list[dict]:
    """Soft labels for ``pairs`` (``{"id", "question", "responses": [a, b]}``) from the feedback model ``fm``.

    Returns per pair ``{"p_a", "principles", "per_principle", "cot"?}`` where ``p_a`` is the ensemble
    probability that response ``a`` is the better one.
    """
    clamp = tuple(fc.clamp) if fc.cot else None
    jobs = []  # (pair index, principle index, swapped)
    for i, pr in enumerate(pairs):
        for k in sample_principles(len(constitution.preferences), fc.principles, fc.seed, pr["id"], "label"):
            jobs.append((i, k, False))
            if fc.both_orders:
                jobs.append((i, k, True))
    questions = []
    for i, k, swapped in jobs:
        a, b = pairs[i]["responses"][::-1] if swapped else pairs[i]["responses"]
        principle = constitution.preferences[k]
        if fc.cot:
            questions.append(cot_few_shot(constitution, fc.few_shot, principle)
                             + cot_question(pairs[i]["question"], principle, a, b, pairs[i].get("history", ())))
        else:
            questions.append(mc_few_shot(constitution, fc.few_shot, principle) + mc_question(
                _hh_turns(pairs[i]["question"], pairs[i].get("history", ())).lstrip("\n"), principle, a, b))
    rationales: list[str] = []
    if fc.cot:
        # one rationale per question; ends where the published examples' rationales end (the next Human turn)
        rationales = fm.generate(questions, fc.cot_max_new_tokens, ("\n\nHuman:",), fc.cot_temperature,
                                 seed=_seed(fc.seed, "rationale"))
        questions = [q + r.rstrip() + COT_ANSWER for q, r in zip(questions, rationales)]
    lps = fm.loglikelihood([(q, opt) for q in questions for opt in OPTIONS])
    per_pair: list[dict] = [{"principles": [], "per_principle": [], "cot": []} for _ in pairs]
    for j, (i, k, swapped) in enumerate(jobs):
        la, lb = lps[2 * j], lps[2 * j + 1]
        if swapped:  # option A showed response b
            la, lb = lb, la
        rec = per_pair[i]
        rec["principles"].append(k)
        rec["per_principle"].append(option_probability(la, lb))
        rec.setdefault("logprobs", []).append((la, lb))
        if fc.cot:
            rec["cot"].append(rationales[j].strip())
    for rec in per_pair:
        rec["p_a"] = soft_label(rec.pop("logprobs"), clamp)
        if not fc.cot:
            del rec["cot"]
    return per_pair


def run_label(cfg: LabelConfig) -> dict:
    """RL-CAI labels: write ``cfg.out`` (preference rows with soft labels)."""
    from indexer.io import atomic_write_text

    t0 = time.perf_counter()
    constitution = load_constitution(cfg.constitution)
    fc = cfg.feedback
    if not fc.model:
        raise ConfigError("is required: an HF causal-LM folder or an OpenAI-compatible base URL", "feedback.model")
    if fc.few_shot > (len(constitution.cot_few_shot) if fc.cot else len(constitution.preference_few_shot)):
        raise ConfigError(f"got {fc.few_shot}; the constitution has {len(constitution.preference_few_shot)} "
                          f"(chain of thought: {len(constitution.cot_few_shot)})", "feedback.few_shot")
    device = _device(cfg.policy.device)
    policy = None
    if cfg.pairs:
        pairs = read_pairs(cfg.pairs)
    else:
        items = read_red_team(cfg.prompts.sources, cfg.prompts.limit, cfg.prompts.offset)
        policy_dir = ensure_policy(cfg.policy, cfg.constitution, items, cfg.sample.seed)
        policy = load_lm(policy_dir, device, cfg.policy.batch_size)
        prompts = policy_prompts([it["question"] for it in items], cfg.policy.template)
        # each prompt twice in one batch: two independent samples from one generator
        doubled = [p for p in prompts for _ in range(2)]
        sampled = sample_responses(policy, doubled, cfg.sample, cfg.policy.batch_size)
        pairs = [{"id": it["id"], "question": it["question"], "responses": sampled[2 * i: 2 * i + 2]}
                 for i, it in enumerate(items)]
    kept = [p for p in pairs if p["responses"][0] != p["responses"][1] and all(p["responses"])]
    skipped = len(pairs) - len(kept)
    if not kept:
        raise RuntimeError("every pair has two identical (or empty) responses: nothing to label")
    fm = _scorer(fc.model, fc.api_model, policy, _device(fc.device), fc.batch_size, fc.dtype)
    logger.info("labelling %d pairs with %s (%d principles each%s)", len(kept), fm.name, fc.principles,
                ", chain of thought" if fc.cot else "")
    labels = label_pairs(fm, kept, constitution, fc)
    rows = []
    for pr, lab in zip(kept, labels):
        a, b = pr["responses"]
        p = lab["p_a"]
        chosen, rejected, prob = (a, b, p) if p >= 0.5 else (b, a, 1.0 - p)
        rows.append({"id": pr["id"], "prompt": pr["question"], "chosen": chosen, "rejected": rejected,
                     "probability": prob, "p_a": p, "responses": [a, b],
                     "principles": [constitution.preferences[k].strip() for k in lab["principles"]],
                     "per_principle": lab["per_principle"], **({"cot": lab["cot"]} if "cot" in lab else {})})
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    cfg.save(out.parent, f"{out.stem}.config")  # beside the labels: what produced them
    p_as = [r["p_a"] for r in rows]
    summary = {"out": str(out), "rows": len(rows), "skipped_identical": skipped, "feedback": fm.name,
               "principles": fc.principles, "cot": fc.cot,
               "mean_confidence": sum(abs(p - 0.5) for p in p_as) / len(p_as),  # 0: undecided, 0.5: certain
               "first_preferred": sum(p > 0.5 for p in p_as) / len(p_as),  # position/sample-order bias check
               "truncated_inputs": getattr(fm, "truncated", 0), "seconds": round(time.perf_counter() - t0, 1)}
    atomic_write_text(out.parent / f"{out.stem}.summary.json", json.dumps(summary, indent=2) + "\n")
    logger.info("wrote %d labelled pairs to %s", len(rows), out)
    return summary


# ----------------------------------------------------------------------------------------- RL-CAI


def run_rl(cfg: RLConfig) -> dict:
    """RL-CAI: train the preference model (``align.reward``), then PPO against it (``align.ppo``)."""
    import copy

    from align.ppo import RewardSpec
    from align.ppo import run as ppo_run
    from align.reward import run as rm_run
    from indexer.data import DataError
    from indexer.io import atomic_write_text

    t0 = time.perf_counter()
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg.save(out_dir)
    if not cfg.labels:
        raise ConfigError("is required: the wandao cai label output", "labels")
    labels = os.path.expandvars(os.path.expanduser(cfg.labels))
    if not Path(labels).exists():
        raise DataError(labels, "not found: run wandao cai label first")
    rm_cfg = copy.deepcopy(cfg.rm)
    for part in (rm_cfg.data.train, rm_cfg.data.eval):
        if labels not in [os.path.expandvars(s) for s in part]:
            part.insert(0, labels)
    if _unset(rm_cfg.out, rm_cfg, "out"):
        rm_cfg.out = str(out_dir / "pm")
    logger.info("RL-CAI: preference model on %s", ", ".join(rm_cfg.data.train))
    rm_summary = rm_run(rm_cfg)

    ppo_cfg = copy.deepcopy(cfg.ppo)
    if _unset(ppo_cfg.train.out_dir, ppo_cfg.train, "out_dir"):
        ppo_cfg.train.out_dir = str(out_dir / "ppo")
    if not ppo_cfg.data.prompts:
        items = read_red_team(cfg.prompts.sources, cfg.prompts.limit, cfg.prompts.offset)
        prompts_file = out_dir / "prompts.jsonl"
        atomic_write_text(prompts_file, "".join(json.dumps({"id": it["id"], "prompt": it["question"]}, ensure_ascii=False)
                                                + "\n" for it in items))
        ppo_cfg.data.prompts = str(prompts_file)
    pm = str(Path(rm_cfg.out))
    if not any(r.kind == "rm" and Path(os.path.expandvars(r.path)) == Path(pm) for r in ppo_cfg.rewards):
        ppo_cfg.rewards = [RewardSpec(kind="rm", name="cai_pm", weight=cfg.pm_weight, path=pm)] + list(ppo_cfg.rewards)
    ppo_summary = ppo_run(ppo_cfg)
    ev = rm_summary.get("eval", {}).get(labels, {})
    summary = {"pm": pm, "pm_steps": rm_summary.get("steps"), "pm_label_accuracy": ev.get("accuracy"),
               "pm_label_pairs": ev.get("pairs"), "ppo_dir": ppo_cfg.train.out_dir,
               **{k: ppo_summary.get(k) for k in ("reward_start", "reward_end", "kl_end", "steps", "model_dir")},
               "seconds": round(time.perf_counter() - t0, 1)}
    _write_summary(out_dir, summary, "wandao cai rl (RL-CAI)")
    return summary


# ----------------------------------------------------------------------------------------------- CLI

STAGES = {
    "sl": (SLConfig, run_sl, "SL-CAI: critique and revise red-team responses with the paper's principles, then SFT"),
    "label": (LabelConfig, run_label, "RL-CAI labels: soft preference labels from a feedback model (multiple choice)"),
    "rl": (RLConfig, run_rl, "RL-CAI: train the preference model on the AI labels, then PPO against it"),
}


def main(argv: list[str] | None = None) -> int:
    """``wandao cai sl|label|rl --config FILE.yaml [--section.key value ...]``; the last stdout line is JSON."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in STAGES:
        usage = ("usage: wandao cai {sl,label,rl} --config FILE.yaml [--section.key VALUE ...]"
                 "   (wandao cai <stage> --help)\n\n"
                 + "\n".join(f"  {name:<6} {summary}" for name, (_, _, summary) in STAGES.items()) + "\n\n" + EPILOG)
        helped = bool(argv) and argv[0] in ("-h", "--help")
        print(usage, file=sys.stdout if helped else sys.stderr)
        return 0 if helped else 2
    stage, rest = argv[0], argv[1:]
    cls, fn, summary_line = STAGES[stage]
    cfg = cls.parse(rest, prog=f"wandao cai {stage}", description=summary_line + ".", epilog=EPILOG)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=os.environ.get("WANDAO_LOG_LEVEL", "INFO"),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from indexer.data import DataError

    try:
        summary = fn(cfg)
    except (ConfigError, DataError, FileNotFoundError, RuntimeError) as err:
        print(f"wandao cai {stage}: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
