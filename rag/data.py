"""Reading augmentation inputs: registered splits, JSONL / HF datasets of QA, SFT, chat and RL rows.

Every input row becomes a :class:`QAItem`. Accepted row shapes (first match wins):

- chat: ``messages: [{"role": "user"|"assistant"|"system", "content": str}, ...]``; the last
  assistant message is the response, the user message before it the question, earlier turns
  the history (an RL prompt may end with a user message and have no response);
- SFT: ``prompt`` plus ``response`` (or ``completion``/``chosen``/``answer``);
- QA: ``question`` plus ``answers`` (list of strings, or SQuAD's ``{"text": [...]}``) or ``answer``;
- hh-rlhf: ``chosen`` holding a ``\\n\\nHuman: … \\n\\nAssistant: …`` transcript; the prompt is
  everything before the final assistant turn.

Registered split names work wherever a path does: ``xquad-en:train``, ``xquad-en:test``,
``xquad-en:all`` (the article split of :mod:`rag.xquad`) and ``hh-rlhf:<subset>`` (its test
file). Bad rows raise :class:`~indexer.data.DataError` naming the file, line and field.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from indexer.data import DataError, iter_records


@dataclass
class QAItem:
    """One augmentation input.

    Attributes:
        id: the row's ``id`` (or ``_id``/``qid``), else ``"<line>"``.
        question: the last user message.
        answer: the target response ('' when there is none).
        answers: every accepted answer (for distractor choice and contamination checks).
        history: earlier turns as ``(role, text)``.
        query: the search query (a ``query_field`` value), else None (the question is used).
        gold_ids: ids of documents known to hold the answer (XQuAD's paragraph id).
        extra: the remaining input fields, carried to the output.
    """

    id: str
    question: str
    answer: str = ""
    answers: list[str] = field(default_factory=list)
    history: list[tuple[str, str]] = field(default_factory=list)
    query: str | None = None
    gold_ids: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)


_HH_TURN = re.compile(r"\n\n(Human|Assistant): ")


def parse_hh_transcript(text: str) -> list[tuple[str, str]]:
    """``"\\n\\nHuman: a\\n\\nAssistant: b"`` → ``[("user", "a"), ("assistant", "b")]``.

    Example:
        >>> parse_hh_transcript("\\n\\nHuman: Hi\\n\\nAssistant: Hello")
        [('user', 'Hi'), ('assistant', 'Hello')]
    """
    parts = _HH_TURN.split(text)
    if parts[0].strip():
        raise ValueError(f"transcript does not start with a Human/Assistant turn: {parts[0][:60]!r}")
    return [("user" if parts[j] == "Human" else "assistant", parts[j + 1].strip()) for j in range(1, len(parts), 2)]


def _turns_to_item(row_id: str, turns: list[tuple[str, str]], path, line, fld: str) -> QAItem:
    if turns and turns[-1][0] == "assistant":
        response, turns = turns[-1][1], turns[:-1]
    else:
        response = ""
    if not turns or turns[-1][0] != "user":
        raise DataError(path, "no user message before the response", line, field=fld)
    return QAItem(row_id, turns[-1][1], response, [response] if response else [], list(turns[:-1]))


def row_to_item(row: dict, path: str | os.PathLike, line: int, query_field: str | None = None) -> QAItem:
    """Map one input row to a :class:`QAItem` (shapes in the module docstring)."""
    row_id = next((str(row[k]) for k in ("id", "_id", "qid") if row.get(k) not in (None, "")), str(line))
    if "messages" in row:
        msgs = row["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise DataError(path, "messages must be a non-empty list of {role, content}", line, field="messages")
        turns = []
        for j, m in enumerate(msgs):
            if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in (
                    "user", "assistant", "system"):
                raise DataError(path, f"message {j} must be {{'role': user|assistant|system, 'content': str}}",
                                line, field="messages")
            if m["role"] != "system":
                turns.append((m["role"], m["content"]))
        item = _turns_to_item(row_id, turns, path, line, "messages")
    elif "prompt" in row:
        if not isinstance(row["prompt"], str):
            raise DataError(path, "prompt must be a string", line, field="prompt")
        resp_key = next((k for k in ("response", "completion", "chosen", "answer") if k in row), None)
        response = row.get(resp_key, "") if resp_key else ""
        if not isinstance(response, str):
            raise DataError(path, "response must be a string", line, field=resp_key)
        item = QAItem(row_id, row["prompt"], response, [response] if response else [])
    elif "question" in row:
        if not isinstance(row["question"], str):
            raise DataError(path, "question must be a string", line, field="question")
        answers = row.get("answers", row.get("answer", []))
        if isinstance(answers, dict):
            answers = answers.get("text", [])
        if isinstance(answers, str):
            answers = [answers]
        if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
            raise DataError(path, "answers must be a string, a list of strings or {'text': [...]}", line,
                            field="answers")
        item = QAItem(row_id, row["question"], answers[0] if answers else "", list(answers))
    elif "chosen" in row:
        try:
            turns = parse_hh_transcript(row["chosen"])
        except (ValueError, TypeError) as err:
            raise DataError(path, str(err), line, field="chosen") from None
        item = _turns_to_item(row_id, turns, path, line, "chosen")
    else:
        raise DataError(path, "no input text: expected messages, prompt, question or chosen", line, field="prompt")
    if query_field:
        if not isinstance(row.get(query_field), str):
            raise DataError(path, f"query field {query_field!r} is missing or not a string", line, field=query_field)
        item.query = row[query_field]
    gold = row.get("gold_ids", row.get("paragraph_id", row.get("positive_ids")))
    if isinstance(gold, str):
        gold = [gold]
    item.gold_ids = [str(g) for g in gold] if isinstance(gold, list) else []
    used = {"id", "_id", "qid", "messages", "prompt", "response", "completion", "chosen", "answer", "answers",
            "question", "gold_ids", "paragraph_id", "positive_ids"}
    item.extra = {k: v for k, v in row.items() if k not in used and k != query_field}
    return item


def _xquad_split(split: str) -> Callable[[], Iterator[tuple[int, dict]]]:
    def rows() -> Iterator[tuple[int, dict]]:
        from rag.xquad import load_split

        for i, r in enumerate(load_split(split), start=1):
            yield i, {"id": r["id"], "question": r["question"], "answers": r["answers"],
                      "paragraph_id": r["paragraph_id"], "title": r["title"]}

    return rows


def _hh_split(subset: str) -> Callable[[], Iterator[tuple[int, dict]]]:
    def rows() -> Iterator[tuple[int, dict]]:
        from indexer.datasets import resolve

        path = resolve("hh-rlhf") / subset / "test.jsonl.gz"
        for line, row in iter_records(path):
            yield line, {"id": f"hh-{subset}-{line}", **row}

    return rows


#: Registered split names → row iterators. Other commands (evals, align) resolve names here too.
SPLITS: dict[str, Callable[[], Iterator[tuple[int, dict]]]] = {
    "xquad-en:train": _xquad_split("train"),
    "xquad-en:test": _xquad_split("test"),
    "xquad-en:all": _xquad_split("all"),
    "hh-rlhf:helpful-base": _hh_split("helpful-base"),
    "hh-rlhf:harmless-base": _hh_split("harmless-base"),
    "hh-rlhf:helpful-rejection-sampled": _hh_split("helpful-rejection-sampled"),
}


def iter_items(source: str | os.PathLike, query_field: str | None = None,
               split: str | None = None) -> Iterator[QAItem]:
    """Stream :class:`QAItem` from a registered split name, a JSONL(.gz)/parquet file or an HF dataset.

    Example:
        >>> next(iter_items("xquad-en:test")).gold_ids  # doctest: +SKIP
        ['xquad:...:0']
    """
    name = str(source)
    if name in SPLITS and not Path(name).exists():
        rows, path = SPLITS[name](), name
    else:
        if not Path(name).exists() and ":" not in name:
            raise DataError(name, f"not found: give a JSONL/parquet file, an HF dataset folder or a registered "
                                  f"split ({', '.join(SPLITS)})")
        rows, path = iter_records(name, split), name
    seen = 0
    for line, row in rows:
        seen += 1
        yield row_to_item(row, path, line, query_field)
    if not seen:
        raise DataError(path, "no rows found")


def load_id_list(path: str | os.PathLike) -> set[str]:
    """Ids from a file: one per line (blank lines and ``#`` comments skipped), or JSONL with ``id``/``_id``."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, "id list not found")
    out: set[str] = set()
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("{"):
                import json

                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(path, f"malformed JSON: {err.msg}", line_no) from None
                value = obj.get("id", obj.get("_id"))
                if value is None:
                    raise DataError(path, "JSON line has no id", line_no, field="id")
                out.add(str(value))
            else:
                out.add(line.split("\t")[0].split()[0])
    return out
