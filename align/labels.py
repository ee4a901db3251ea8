"""Label sheets for the feedback-only loop: export sampled candidates, import human choices or ranks.

A sheet has one row per (prompt, candidate), as JSONL or CSV (by the file's extension)::

    prompt_id, candidate, question, evidence, response, rm_score, choice, rank

``evidence`` is the rendered passages (what the model read), ``rm_score`` the reward model's score
when one was used (labellers may hide the column). A labeller fills, per prompt, **either**

- ``choice``: ``1`` on the best candidate (``0`` or blank elsewhere), **or**
- ``rank``: ``1`` for the best, ``2`` for the next, ... (distinct per prompt; blanks are unranked).

Prompts with nothing filled are unlabelled; a prompt whose candidates all have ``choice`` 0 is
rejected (none of its candidates is imitated). A compact JSONL form is accepted too, one row per prompt:
``{"prompt_id": "q7", "best": 2}`` or ``{"prompt_id": "q7", "ranks": [2, 1, 4, 3]}`` (rank per
candidate).

:func:`import_labels` rejects a malformed row with :class:`LabelError`, whose message names the
file, the row number (the line in the file; a CSV header is row 1) and the field: unknown prompt or
candidate, a choice that is not 0/1, a rank that is not a positive integer, two choices or equal
ranks for one prompt, a duplicated row, or a response that differs from the sampled one (a sheet
from another round).

Example:
    >>> export_sheet(samples, "runs/iterate/round-01/sheet.csv")     # doctest: +SKIP
    >>> labels = import_labels("labelled.csv", samples)              # doctest: +SKIP
    >>> labels["q7"].best                                            # doctest: +SKIP
    2
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from indexer.data import DataError

SHEET_FIELDS = ("prompt_id", "candidate", "question", "evidence", "response", "rm_score", "choice", "rank")


class LabelError(DataError):
    """A malformed label row: the message names the file, the row number and the field."""

    def __init__(self, path: str | os.PathLike, problem: str, row: int | None = None, field: str | None = None):
        ValueError.__init__(self, f"{path}" + (f", row {row}" if row is not None else "")
                            + (f" (field {field!r})" if field else "") + f": {problem}")
        self.path, self.line, self.field = str(path), row, field


@dataclass
class Label:
    """A prompt's human judgement: the best candidate (None: every candidate rejected with choice 0),
    and the ranks when ranks were given (1 = best)."""

    best: int | None
    ranks: list[int | None] | None = None
    row: int = 0


def _evidence_text(passages: Sequence[dict]) -> str:
    return "\n".join(f"[{i}] {p.get('title', '')}: {p.get('text', '')}" for i, p in enumerate(passages, start=1))


def sheet_rows(samples: Sequence[dict]) -> list[dict]:
    """One sheet row per candidate of every sample (``prompt_id``, ``question``, ``evidence``, ``responses``, ``rewards``)."""
    rows = []
    for s in samples:
        rewards = s.get("rewards") or [None] * len(s["responses"])
        for j, (resp, rew) in enumerate(zip(s["responses"], rewards)):
            rows.append({"prompt_id": s["prompt_id"], "candidate": j, "question": s.get("question", ""),
                         "evidence": _evidence_text(s.get("evidence") or []), "response": resp,
                         "rm_score": None if rew is None else round(float(rew), 6), "choice": "", "rank": ""})
    return rows


def export_sheet(samples: Sequence[dict], path: str | os.PathLike) -> Path:
    """Write the label sheet for ``samples`` to ``path`` (``.csv`` or ``.jsonl``), atomically."""
    from indexer.io import atomic_write_text

    path = Path(path)
    rows = sheet_rows(samples)
    if path.suffix == ".csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=SHEET_FIELDS, lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: "" if r[k] is None else r[k] for k in SHEET_FIELDS})
        atomic_write_text(path, buf.getvalue())
    elif path.suffix == ".jsonl":
        atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    else:
        raise ValueError(f"{path}: a label sheet is .csv or .jsonl")
    return path


def _read_rows(path: Path) -> Iterator[tuple[int, Any]]:
    if not path.exists():
        raise LabelError(path, "label file not found")
    if path.suffix == ".csv":
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            missing = [k for k in ("prompt_id", "candidate") if k not in (reader.fieldnames or [])]
            if missing:
                raise LabelError(path, f"the header lacks {', '.join(missing)} (expected {', '.join(SHEET_FIELDS)})", 1)
            for n, row in enumerate(reader, start=2):
                if None in row:
                    raise LabelError(path, f"{len(row[None])} more cells than the header has", n)
                yield n, row
        return
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield n, json.loads(line)
            except json.JSONDecodeError as err:
                raise LabelError(path, f"malformed JSON: {err.msg}", n) from None


def _blank(v: Any) -> bool:
    return v is None or (isinstance(v, str) and not v.strip())


def _int(v: Any, path: Path, row: int, field: str, low: int, high: int | None) -> int:
    if isinstance(v, bool):
        raise LabelError(path, f"expected an integer, got {v!r}", row, field)
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, str):
        try:
            v = int(v.strip())
        except ValueError:
            raise LabelError(path, f"expected an integer, got {v!r}", row, field) from None
    if not isinstance(v, int) or v < low or (high is not None and v > high):
        bound = f"{low}..{high}" if high is not None else f">= {low}"
        raise LabelError(path, f"got {v!r}; must be an integer in {bound}", row, field)
    return v


def _choice(v: Any, path: Path, row: int) -> int | None:
    if _blank(v):
        return None
    text = str(v).strip().lower()
    if text in ("1", "true", "x", "yes", "1.0"):
        return 1
    if text in ("0", "false", "no", "0.0"):
        return 0
    raise LabelError(path, f"got {v!r}; choice is 1 (best), 0 or blank", row, "choice")


def import_labels(path: str | os.PathLike, samples: Sequence[dict]) -> dict[str, Label]:
    """Read a filled sheet (or compact rows) for ``samples``; returns ``{prompt_id: Label}`` for labelled prompts.

    Raises:
        LabelError: a malformed row (file, row number, field).
    """
    path = Path(path)
    by_id = {s["prompt_id"]: s for s in samples}
    choices: dict[str, dict[int, tuple[int, int]]] = {}  # prompt -> candidate -> (choice, row)
    ranks: dict[str, dict[int, tuple[int, int]]] = {}
    seen: dict[tuple[str, int], int] = {}
    out: dict[str, Label] = {}
    for n, row in _read_rows(path):
        if not isinstance(row, dict):
            raise LabelError(path, "expected an object with prompt_id and candidate", n)
        pid = row.get("prompt_id")
        if _blank(pid):
            raise LabelError(path, "missing", n, "prompt_id")
        pid = str(pid)
        if pid not in by_id:
            raise LabelError(path, f"unknown prompt {pid!r} (not among this round's samples)", n, "prompt_id")
        k = len(by_id[pid]["responses"])
        if "candidate" not in row:  # compact per-prompt form
            if pid in out or pid in choices or pid in ranks:
                raise LabelError(path, f"prompt {pid!r} is labelled twice", n, "prompt_id")
            if "best" in row and not _blank(row["best"]):
                out[pid] = Label(_int(row["best"], path, n, "best", 0, k - 1), None, n)
            elif isinstance(row.get("ranks"), list):
                if len(row["ranks"]) != k:
                    raise LabelError(path, f"{len(row['ranks'])} ranks for {k} candidates", n, "ranks")
                rs = [None if _blank(r) else _int(r, path, n, "ranks", 1, k) for r in row["ranks"]]
                given = [r for r in rs if r is not None]
                if not given:
                    continue
                if len(set(given)) != len(given):
                    raise LabelError(path, f"ranks must be distinct, got {row['ranks']}", n, "ranks")
                out[pid] = Label(min(range(k), key=lambda j: rs[j] if rs[j] is not None else k + 1), rs, n)
            else:
                raise LabelError(path, "a row without candidate needs best (an index) or ranks (a list)", n, "best")
            continue
        cand = _int(row["candidate"], path, n, "candidate", 0, k - 1)
        if (pid, cand) in seen:
            raise LabelError(path, f"candidate {cand} of prompt {pid!r} appears twice (first at row {seen[pid, cand]})",
                             n, "candidate")
        seen[pid, cand] = n
        if pid in out:
            raise LabelError(path, f"prompt {pid!r} is already labelled at row {out[pid].row}", n, "prompt_id")
        if "response" in row and not _blank(row["response"]) and row["response"] != by_id[pid]["responses"][cand]:
            raise LabelError(path, f"the response differs from candidate {cand} of prompt {pid!r} as sampled "
                                   "(a sheet from another round?)", n, "response")
        c = _choice(row.get("choice"), path, n)
        r = None if _blank(row.get("rank")) else _int(row.get("rank"), path, n, "rank", 1, k)
        if c is not None and r is not None and not (c == 1) == (r == 1):
            raise LabelError(path, f"choice {c} contradicts rank {r}", n, "rank")
        if c == 1:
            prev = [j for j, (v, _) in choices.get(pid, {}).items() if v == 1]
            if prev:
                raise LabelError(path, f"prompt {pid!r} has a second choice (candidate {prev[0]} at row "
                                       f"{choices[pid][prev[0]][1]} is already chosen)", n, "choice")
        if c is not None:
            choices.setdefault(pid, {})[cand] = (c, n)
        if r is not None:
            dup = [j for j, (v, _) in ranks.get(pid, {}).items() if v == r]
            if dup:
                raise LabelError(path, f"rank {r} is given twice for prompt {pid!r} (candidate {dup[0]} at row "
                                       f"{ranks[pid][dup[0]][1]})", n, "rank")
            ranks.setdefault(pid, {})[cand] = (r, n)
    for pid in dict.fromkeys([*choices, *ranks]):
        k = len(by_id[pid]["responses"])
        chosen = [j for j, (v, _) in choices.get(pid, {}).items() if v == 1]
        rk = ranks.get(pid)
        rank_list = [rk[j][0] if j in rk else None for j in range(k)] if rk else None
        if chosen:
            out[pid] = Label(chosen[0], rank_list, choices[pid][chosen[0]][1])
        elif rk:
            best = min(rk, key=lambda j: rk[j][0])
            out[pid] = Label(best, rank_list, rk[best][1])
        else:  # only zeros: the labeller rejected every candidate; nothing of this prompt is imitated
            out[pid] = Label(None, None, min(n for _, n in choices[pid].values()))
    return out
