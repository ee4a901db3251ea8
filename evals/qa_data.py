"""Readers for SQuAD-style QA sets: JSONL lines ``{"id", "question", "answers": {"text": [...]}, ...}``
(``title``/``context`` optional) or the official SQuAD v1.1 JSON (``data → paragraphs → qas``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from indexer.data import DataError, iter_jsonl


def qa_path(source: str | os.PathLike) -> Path:
    """Resolve a registered name (``xquad-en``), folder or file to a SQuAD-style file."""
    from indexer.datasets import resolve

    name = str(source)
    if ":" in name and not Path(name).exists():  # a split name: the file it is drawn from
        return qa_path(name.split(":", 1)[0])
    path = resolve(source)
    if path.is_dir():
        found = sorted(path.glob("*.jsonl")) or sorted(path.glob("*.json"))
        if not found:
            raise DataError(path, "no SQuAD-style .jsonl or .json file in this folder")
        return found[0]
    return path


def _answers(obj: dict, path: Path, line: int | None) -> list[str]:
    ans = obj.get("answers")
    if isinstance(ans, dict):
        ans = ans.get("text")
    elif isinstance(ans, list) and ans and isinstance(ans[0], dict):
        ans = [a.get("text") for a in ans]
    if not isinstance(ans, list) or not ans or not all(isinstance(a, str) for a in ans):
        raise DataError(path, "expected a non-empty list of answer strings", line, field="answers.text")
    return ans


def _split_rows(name: str) -> list[dict] | None:
    """Rows of a registered QA split (``xquad-en:test``), or None when ``name`` is not one."""
    from rag.data import SPLITS

    if name not in SPLITS or Path(name).exists():
        return None
    if not name.startswith("xquad-en:"):
        raise DataError(name, "not a QA split: the qa suites read SQuAD-style splits (xquad-en:train|test|all)")
    from rag.xquad import load_split

    return [{"id": str(r["id"]), "question": r["question"], "answers": list(r["answers"]), "title": r["title"],
             "context": r.get("context", "")} for r in load_split(name.split(":", 1)[1])]


def load_qa(source: str | os.PathLike) -> list[dict]:
    """Read QA examples as ``{"id", "question", "answers", "title", "context"}``.

    ``source`` is a registered split (``xquad-en:test``: rag's article-level split, the one the
    contamination check and the training sets use), a registered name, a folder or a file.

    Raises:
        DataError: a missing id/question/answers field or a repeated id, naming file and line.
    """
    split_rows = _split_rows(str(source))
    if split_rows is not None:
        return split_rows
    path = qa_path(source)
    rows: list[dict] = []
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise DataError(path, f"malformed JSON: {err.msg}", err.lineno) from None
        for article in data.get("data", []):
            for para in article.get("paragraphs", []):
                for qa in para.get("qas", []):
                    rows.append({"id": str(qa["id"]), "question": qa["question"],
                                 "answers": _answers(qa, path, None), "title": article.get("title", ""),
                                 "context": para.get("context", "")})
    else:
        for line, obj in iter_jsonl(path):
            for key in ("id", "question"):
                if not isinstance(obj.get(key), (str, int)):
                    raise DataError(path, f"missing {key}", line, field=key)
            rows.append({"id": str(obj["id"]), "question": str(obj["question"]),
                         "answers": _answers(obj, path, line), "title": obj.get("title", ""),
                         "context": obj.get("context", ""), "_line": line})
    seen: set[str] = set()
    for r in rows:
        if r["id"] in seen:
            raise DataError(path, f"question id {r['id']!r} appears twice", r.get("_line"), field="id")
        seen.add(r["id"])
        r.pop("_line", None)
    if not rows:
        raise DataError(path, "no questions found")
    return rows
