"""Preference data for reward models: ranked rows, readers, the prompt-hash split, K-wise grouping.

A :class:`PreferenceRow` holds one prompt (question, chat history, optional evidence passages) and
K >= 2 responses with a rank each (lower is better, equal ranks are ties), plus an optional
preference strength per comparison (Llama 2's "significantly better" … "negligibly better", or a
number), which :func:`align.losses.strength_to_margin` turns into a margin.

Accepted input rows (JSONL, JSONL.gz, parquet or an HF dataset folder; first match wins):

- hh-rlhf transcripts: ``{"chosen": "\\n\\nHuman: …\\n\\nAssistant: …", "rejected": "…"}``. The prompt
  is the longest common prefix of the two transcripts, cut back to its last ``\\n\\nAssistant: ``;
  each response is the rest of its transcript. (Splitting each transcript at its own last
  ``Assistant:`` is wrong for 17 of the 7,415 test pairs: their responses contain ``Human:`` or
  ``Assistant:`` turns of their own, so the two prompts would differ.) The HHH evaluations of
  Askell et al. 2021 (``text_correct``/``text_incorrect``) are read the same way.
- pairs: ``{"prompt": str, "chosen": str, "rejected": str, "strength": label|number, "probability": p}``
  where the optional ``probability`` in [0, 1] is a soft label, the probability that ``chosen`` is
  preferred (Constitutional AI's feedback-model labels, ``wandao cai label``);
- ranked: ``{"prompt": str, "responses": [str, …], "ranks": [int, …], "strengths": [[i, j, s], …]}``
  where ``ranks`` defaults to the listed order and ``strengths`` names comparisons by index
  (``i`` ranked above ``j``);
- optional in both: ``history`` (``[[role, text], …]``, role ``user``/``assistant``), ``evidence``
  (``[{"id", "title", "text"}, …]``) and ``id``.

Registered names: ``hh-rlhf:helpful-base``, ``hh-rlhf:harmless-base``,
``hh-rlhf:helpful-rejection-sampled`` (the test files) and ``hhh-evals`` (Askell et al.'s 438
comparisons, shipped with the constitutional-ai set). Bad rows raise
:class:`~indexer.data.DataError` naming the file, line and field.

Example:
    >>> row = row_from_record({"prompt": "Hi?", "chosen": "Hello!", "rejected": "Go away."}, "x.jsonl", 1)
    >>> row.responses, row.ranks
    (['Hello!', 'Go away.'], [0, 1])
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from indexer.data import DataError, iter_records

logger = logging.getLogger(__name__)

HH_SUBSETS = ("helpful-base", "harmless-base", "helpful-rejection-sampled")
_ASSISTANT = "\n\nAssistant: "


@dataclass
class PreferenceRow:
    """One prompt with K >= 2 ranked responses.

    Attributes:
        id: the row's id (``<source>:<line>`` when the input has none).
        question: the last user message.
        responses: the K responses.
        ranks: one rank per response; lower is better, equal ranks are ties (not compared).
        history: earlier turns as ``(role, text)``.
        evidence: retrieved passages ``{"id", "title", "text"}`` rendered with the template.
        strengths: ``{(i, j): strength}`` for comparisons where response ``i`` beats ``j``.
        probabilities: ``{(i, j): p}`` soft labels: the probability that ``i`` is preferred over ``j``.
        source, line: where the row came from (for error messages and grouping).
    """

    id: str
    question: str
    responses: list[str]
    ranks: list[int]
    history: list[tuple[str, str]] = field(default_factory=list)
    evidence: list[dict] = field(default_factory=list)
    strengths: dict[tuple[int, int], str | float] = field(default_factory=dict)
    source: str = ""
    line: int = 0
    probabilities: dict[tuple[int, int], float] = field(default_factory=dict)

    @property
    def k(self) -> int:
        return len(self.responses)

    def prompt_key(self) -> str:
        """The text that identifies the prompt (history, question and evidence ids) for splits and grouping."""
        parts = [f"{role}: {text}" for role, text in self.history] + [f"user: {self.question}"]
        parts += [f"evidence: {p.get('id', '')}" for p in self.evidence]
        return "\n".join(parts)

    def comparisons(self) -> list[tuple[int, int]]:
        """Every ``(i, j)`` with response ``i`` ranked above ``j``, in index order."""
        return [(i, j) for i, j in itertools.permutations(range(self.k), 2) if self.ranks[i] < self.ranks[j]]

    def pairs(self) -> list["PreferenceRow"]:
        """This row as C(K,2) two-response rows (``chosen`` first), one per comparison, strengths kept."""
        out = []
        for i, j in self.comparisons():
            strength = {(0, 1): self.strengths[(i, j)]} if (i, j) in self.strengths else {}
            prob = {(0, 1): self.probabilities[(i, j)]} if (i, j) in self.probabilities else {}
            out.append(PreferenceRow(f"{self.id}:{i}>{j}", self.question, [self.responses[i], self.responses[j]],
                                     [0, 1], list(self.history), list(self.evidence), strength, self.source,
                                     self.line, prob))
        return out


# ----------------------------------------------------------------------------------- parsing


def _hh_turns(text: str) -> list[tuple[str, str]]:
    from rag.data import parse_hh_transcript  # the one hh-rlhf transcript parser (rag owns it)

    return parse_hh_transcript(text)


def split_hh_pair(chosen: str, rejected: str) -> tuple[str, str, str]:
    """``(prompt, chosen_response, rejected_response)`` of two hh-rlhf transcripts.

    The prompt is the longest common prefix cut back to its last ``"\\n\\nAssistant: "`` (kept in the
    prompt); the responses are the remainders, stripped.

    Raises:
        ValueError: the transcripts share no ``Assistant:`` turn header.

    Example:
        >>> split_hh_pair("\\n\\nHuman: Hi\\n\\nAssistant: Hello", "\\n\\nHuman: Hi\\n\\nAssistant: Go")
        ('\\n\\nHuman: Hi\\n\\nAssistant: ', 'Hello', 'Go')
    """
    n = len(os.path.commonprefix([chosen, rejected]))
    # The header may end inside the common prefix or exactly at it ("...Assistant: " + response).
    cut = chosen.rfind(_ASSISTANT, 0, n)
    if cut < 0:
        raise ValueError("the two transcripts share no '\\n\\nAssistant: ' turn")
    end = cut + len(_ASSISTANT)
    return chosen[:end], chosen[end:].strip(), rejected[end:].strip()


def _prompt_turns(prompt: str, path, line: int, fld: str) -> tuple[str, list[tuple[str, str]]]:
    try:
        turns = _hh_turns(prompt[: -len(_ASSISTANT)])
    except ValueError as err:
        raise DataError(path, str(err), line, field=fld) from None
    if not turns or turns[-1][0] != "user":
        raise DataError(path, "no Human turn before the final Assistant turn", line, field=fld)
    return turns[-1][1], list(turns[:-1])


def _str_field(record: dict, key: str, path, line: int) -> str:
    if key not in record:
        raise DataError(path, f"is missing (must be a string; the row has {sorted(record)})", line, field=key)
    value = record[key]
    if not isinstance(value, str):
        raise DataError(path, f"must be a string, got {type(value).__name__}", line, field=key)
    if not value.strip():
        raise DataError(path, "must not be empty", line, field=key)
    return value


def _check_strength(value, path, line: int, fld: str):
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise DataError(path, f"strength must be a label or a number, got {value!r}", line, field=fld)
    return value


def row_from_record(record: dict, path: str | os.PathLike, line: int, row_id: str | None = None) -> PreferenceRow:
    """Map one input record to a :class:`PreferenceRow` (shapes in the module docstring)."""
    if not isinstance(record, dict):
        raise DataError(path, f"a row must be a JSON object, got {type(record).__name__}", line)
    rid = row_id or next((str(record[k]) for k in ("id", "_id") if record.get(k) not in (None, "")),
                         f"{Path(str(path)).name}:{line}")
    strengths: dict[tuple[int, int], str | float] = {}
    probabilities: dict[tuple[int, int], float] = {}
    if "text_correct" in record:  # Askell et al.'s HHH evaluations: their `prompt` is a multiple-choice wrapper
        hh_keys: tuple[str, str] | None = ("text_correct", "text_incorrect")
    elif "chosen" in record and "prompt" not in record and "question" not in record:
        hh_keys = ("chosen", "rejected")
    else:
        hh_keys = None
    if hh_keys is not None:
        c_key, r_key = hh_keys
        chosen, rejected = _str_field(record, c_key, path, line), _str_field(record, r_key, path, line)
        try:
            prompt, resp_c, resp_r = split_hh_pair(chosen, rejected)
        except ValueError as err:
            raise DataError(path, f"{err} (expected '\\n\\nHuman: …\\n\\nAssistant: …' transcripts)", line,
                            field=r_key) from None
        question, history = _prompt_turns(prompt, path, line, c_key)
        # Empty final turns occur in hh-rlhf (an empty reply is a real, usually rejected, response).
        responses, ranks = [resp_c, resp_r], [0, 1]
    else:
        q_key = "prompt" if "prompt" in record else "question" if "question" in record else None
        if q_key is None:
            raise DataError(path, "no prompt: expected prompt (or question) with chosen/rejected or responses, "
                                  "or hh-rlhf chosen/rejected transcripts", line, field="prompt")
        question = _str_field(record, q_key, path, line)
        history = _read_history(record.get("history"), path, line)
        if "responses" in record:
            responses = record["responses"]
            if not isinstance(responses, list) or len(responses) < 2:
                raise DataError(path, "must be a list of at least 2 strings", line, field="responses")
            for j, r in enumerate(responses):
                if not isinstance(r, str) or not r.strip():
                    raise DataError(path, f"response {j} must be a non-empty string", line, field="responses")
            ranks = record.get("ranks", list(range(len(responses))))
            if (not isinstance(ranks, list) or len(ranks) != len(responses)
                    or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in ranks)):
                raise DataError(path, f"must be a list of {len(responses)} non-negative integers (lower is better)",
                                line, field="ranks")
            if len(set(ranks)) < 2:
                raise DataError(path, "all responses tie: nothing to compare", line, field="ranks")
            for t, item in enumerate(record.get("strengths") or []):
                if not isinstance(item, list) or len(item) != 3 or not all(
                        isinstance(x, int) and not isinstance(x, bool) for x in item[:2]):
                    raise DataError(path, f"entry {t} must be [better_index, worse_index, strength]", line,
                                    field="strengths")
                i, j, s = item
                if not (0 <= i < len(responses) and 0 <= j < len(responses)) or not ranks[i] < ranks[j]:
                    raise DataError(path, f"entry {t}: response {i} is not ranked above response {j}", line,
                                    field="strengths")
                strengths[(i, j)] = _check_strength(s, path, line, "strengths")
        elif "chosen" in record:
            responses = [_str_field(record, "chosen", path, line), _str_field(record, "rejected", path, line)]
            ranks = [0, 1]
            if record.get("strength") is not None:
                strengths[(0, 1)] = _check_strength(record["strength"], path, line, "strength")
            if record.get("probability") is not None:
                p = record["probability"]
                if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= float(p) <= 1.0:
                    raise DataError(path, f"must be a number in [0, 1] (the probability that chosen is preferred), "
                                          f"got {p!r}", line, field="probability")
                probabilities[(0, 1)] = float(p)
        else:
            raise DataError(path, "no responses: expected chosen and rejected, or responses", line,
                            field="chosen")
    evidence = _read_evidence(record.get("evidence"), path, line)
    return PreferenceRow(rid, question, list(responses), list(ranks), history, evidence, strengths,
                         str(path), line, probabilities)


def _read_history(value, path, line: int) -> list[tuple[str, str]]:
    if value is None:
        return []
    out = []
    if not isinstance(value, list):
        raise DataError(path, "history must be a list of [role, text]", line, field="history")
    for j, turn in enumerate(value):
        if isinstance(turn, dict):
            turn = [turn.get("role"), turn.get("content")]
        if (not isinstance(turn, (list, tuple)) or len(turn) != 2 or turn[0] not in ("user", "assistant")
                or not isinstance(turn[1], str)):
            raise DataError(path, f"turn {j} must be [user|assistant, text]", line, field="history")
        out.append((turn[0], turn[1]))
    return out


def _read_evidence(value, path, line: int) -> list[dict]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise DataError(path, "evidence must be a list of {id, title, text}", line, field="evidence")
    out = []
    for j, p in enumerate(value):
        if not isinstance(p, dict) or not isinstance(p.get("text"), str):
            raise DataError(path, f"passage {j} must be an object with a text string", line, field="evidence")
        out.append({"id": str(p.get("id", p.get("_id", j))), "title": str(p.get("title") or ""), "text": p["text"]})
    return out


# ----------------------------------------------------------------------------------- sources


def source_path(source: str | os.PathLike) -> Path:
    """A registered name (``hh-rlhf:helpful-base``, ``hhh-evals``) or an existing path, as a path."""
    name = str(source)
    path = Path(name).expanduser()
    if path.exists():
        return path
    from indexer.datasets import resolve

    if name.startswith("hh-rlhf:"):
        subset = name.split(":", 1)[1]
        if subset not in HH_SUBSETS:
            raise DataError(name, f"unknown hh-rlhf subset {subset!r}; known: {', '.join(HH_SUBSETS)}")
        return resolve("hh-rlhf") / subset / "test.jsonl.gz"
    if name == "hhh-evals":
        return resolve("constitutional-ai") / "evals" / "438HHHEvaluations.jsonl"
    raise DataError(name, "not found: give a JSONL(.gz)/parquet file, an HF dataset folder, or one of "
                          f"{', '.join('hh-rlhf:' + s for s in HH_SUBSETS)}, hhh-evals")


def read_preferences(source: str | os.PathLike, split: str | None = None, limit: int | None = None) -> list[PreferenceRow]:
    """Read every row of ``source`` (see :func:`source_path`); ``split`` picks an HF dataset split.

    Raises:
        DataError: a bad row (file, line, field), a missing file, or no rows at all.
    """
    path = source_path(source)
    rows = []
    for line, record in iter_records(path, split):
        rows.append(row_from_record(record, path, line))
        if limit is not None and len(rows) >= limit:
            break
    if not rows:
        raise DataError(path, "no rows found")
    return rows


# ------------------------------------------------------------------------------ split, group


def prompt_bucket(key: str, salt: str = "wandao-rm") -> float:
    """A stable number in ``[0, 1)`` from the SHA-1 of ``salt + key`` (same on every machine and run)."""
    digest = hashlib.sha1(f"{salt}\x00{key}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64


def split_by_prompt(rows: Sequence[PreferenceRow], split: str, test_fraction: float = 0.2,
                    salt: str = "wandao-rm") -> list[PreferenceRow]:
    """The deterministic ``train`` (80%) / ``test`` (20%) part by a hash of the prompt, or ``all``.

    Rows that share a prompt always land on the same side, so no prompt is in both.
    """
    if split == "all":
        return list(rows)
    if split not in ("train", "test"):
        raise ValueError(f"split must be train, test or all, got {split!r}")
    want_test = split == "test"
    return [r for r in rows if (prompt_bucket(r.prompt_key(), salt) < test_fraction) == want_test]


def group_rankings(rows: Iterable[PreferenceRow]) -> tuple[list[PreferenceRow], dict[str, int]]:
    """Merge rows that share a prompt into one ranked row when their comparisons give a total order.

    The pairs of one prompt are merged when the responses they mention, ordered by wins, are
    consistent with every pair (a strict order; no cycle) and every pair of those responses was
    compared, so the merged row's C(K,2) comparisons are exactly the input pairs. Otherwise the
    rows are kept as they were. Strengths carry over.

    Returns:
        ``(rows, stats)`` with stats ``{"input_rows", "prompts", "groups_merged", "rows_out", "k_max",
        "k_histogram"}`` (histogram as ``{"2": n, "3": n, …}``).
    """
    rows = list(rows)
    by_prompt: dict[str, list[PreferenceRow]] = defaultdict(list)
    for r in rows:
        by_prompt[r.prompt_key()].append(r)
    out: list[PreferenceRow] = []
    merged = 0
    for key, group in by_prompt.items():
        if len(group) == 1:
            out.append(group[0])
            continue
        ranked = _merge_group(group)
        if ranked is None:
            out.extend(group)
        else:
            merged += 1
            out.append(ranked)
    hist: dict[str, int] = defaultdict(int)
    for r in out:
        hist[str(r.k)] += 1
    stats = {"input_rows": len(rows), "prompts": len(by_prompt), "groups_merged": merged, "rows_out": len(out),
             "k_max": max((r.k for r in out), default=0), "k_histogram": dict(sorted(hist.items()))}
    return out, stats


def merge_group_stats(a: dict, b: dict) -> dict:
    """The :func:`group_rankings` stats of two disjoint row sets, as if counted together."""
    hist: dict[str, int] = defaultdict(int)
    for stats in (a, b):
        for k, n in stats["k_histogram"].items():
            hist[k] += n
    out = {key: a[key] + b[key] for key in ("input_rows", "prompts", "groups_merged", "rows_out")}
    out["k_max"] = max(a["k_max"], b["k_max"])
    out["k_histogram"] = dict(sorted(hist.items(), key=lambda kv: int(kv[0])))
    return out


def _merge_group(group: list[PreferenceRow]) -> PreferenceRow | None:
    texts: list[str] = []
    index: dict[str, int] = {}
    beats: set[tuple[int, int]] = set()
    strengths: dict[tuple[int, int], str | float] = {}
    probabilities: dict[tuple[int, int], float] = {}
    for r in group:
        ids = []
        for resp in r.responses:
            if resp not in index:
                index[resp] = len(texts)
                texts.append(resp)
            ids.append(index[resp])
        for i, j in r.comparisons():
            a, b = ids[i], ids[j]
            if a == b or (b, a) in beats:
                return None  # the same text on both sides, or a contradiction
            beats.add((a, b))
            if (i, j) in r.strengths:
                strengths[(a, b)] = r.strengths[(i, j)]
            if (i, j) in r.probabilities:
                probabilities[(a, b)] = r.probabilities[(i, j)]
    k = len(texts)
    if k < 3 or len(beats) != k * (k - 1) // 2:
        return None  # not every pair was compared: no total order to train K-wise on
    wins = [sum(1 for a, _ in beats if a == i) for i in range(k)]
    order = sorted(range(k), key=lambda i: -wins[i])
    rank = {i: pos for pos, i in enumerate(order)}
    if any(rank[a] > rank[b] for a, b in beats):
        return None  # a cycle
    first = group[0]
    return PreferenceRow(first.id + f"+{len(group) - 1}", first.question, [texts[i] for i in order],
                         list(range(k)), first.history, first.evidence,
                         {(rank[a], rank[b]): s for (a, b), s in strengths.items()}, first.source, first.line,
                         {(rank[a], rank[b]): p for (a, b), p in probabilities.items()})


def expand_to_pairs(rows: Iterable[PreferenceRow]) -> list[PreferenceRow]:
    """Every row as two-response rows (one per comparison): the pairwise view of the same data."""
    return [p for r in rows for p in (r.pairs() if r.k > 2 or r.ranks != [0, 1] else [r])]
