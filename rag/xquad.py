"""XQuAD-en as a QA set and a corpus: a deterministic train/test split by article.

The split rule (version 1): rank the distinct article titles by ``sha256("xquad-split-v1:" + title)``
(hex digest, ascending); the first ``round(0.2 * n_articles)`` go to **test**, the rest to
**train**. Every paragraph and question follows its article, so no test paragraph (nor any
paragraph of a test article) is ever in train. On the mirrored XQuAD-en (48 articles, 240
paragraphs, 1,190 questions) this puts 10 articles, 50 paragraphs and 244 questions (20.5%) in test.

Paragraph ids are ``xquad:<title>:<n>``, ``n`` counting that article's distinct contexts from 0
in file order; question ids are XQuAD's own.

Example:
    >>> train = load_split("train")  # doctest: +SKIP
    >>> train[0]["question"], train[0]["answers"][0], train[0]["paragraph_id"]  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from indexer.data import DataError, iter_jsonl

SPLIT_VERSION = 1
TEST_FRACTION = 0.2
SPLITS = ("train", "test", "all")


def _rank_key(title: str) -> str:
    return hashlib.sha256(f"xquad-split-v{SPLIT_VERSION}:{title}".encode("utf-8")).hexdigest()


def test_titles(titles: set[str] | list[str], test_fraction: float = TEST_FRACTION) -> set[str]:
    """The article titles that go to test (the rule in the module docstring)."""
    ranked = sorted(set(titles), key=_rank_key)
    return set(ranked[:round(test_fraction * len(ranked))])


test_titles.__test__ = False  # not a pytest test


def _default_path() -> Path:
    from indexer.datasets import resolve

    return resolve("xquad-en") / "xquad.en.jsonl"


def load_xquad(path: str | os.PathLike | None = None) -> list[dict]:
    """All XQuAD questions as ``{"id", "title", "context", "question", "answers", "paragraph_id", "split"}``.

    ``answers`` is the list of answer strings. Bad lines raise :class:`DataError` naming file,
    line and field.
    """
    path = Path(path) if path is not None else _default_path()
    rows, para_ids = [], {}
    per_title: dict[str, int] = {}
    for line, obj in iter_jsonl(path):
        for key in ("id", "title", "context", "question", "answers"):
            if key not in obj:
                raise DataError(path, "missing field", line, field=key)
        answers = obj["answers"]
        texts = answers.get("text") if isinstance(answers, dict) else answers
        if not isinstance(texts, list) or not texts or not all(isinstance(a, str) for a in texts):
            raise DataError(path, "answers must be {'text': [str, ...]} or a list of strings", line, field="answers")
        key = (obj["title"], obj["context"])
        if key not in para_ids:
            n = per_title.get(obj["title"], 0)
            per_title[obj["title"]] = n + 1
            para_ids[key] = f"xquad:{obj['title']}:{n}"
        rows.append({"id": str(obj["id"]), "title": obj["title"], "context": obj["context"],
                     "question": obj["question"], "answers": texts, "paragraph_id": para_ids[key]})
    if not rows:
        raise DataError(path, "no questions found")
    test = test_titles({r["title"] for r in rows})
    for r in rows:
        r["split"] = "test" if r["title"] in test else "train"
    return rows


def load_split(split: str, path: str | os.PathLike | None = None) -> list[dict]:
    """Questions of ``split`` (``train``, ``test`` or ``all``), see :func:`load_xquad`."""
    if split not in SPLITS:
        raise ValueError(f"XQuAD split must be one of {', '.join(SPLITS)}, got {split!r}")
    rows = load_xquad(path)
    return rows if split == "all" else [r for r in rows if r["split"] == split]


def xquad_corpus(split: str = "all", path: str | os.PathLike | None = None) -> list[dict]:
    """XQuAD paragraphs as a corpus: one ``{"id", "title", "text"}`` per distinct paragraph.

    The title is the article title with underscores as spaces (``Super_Bowl_50`` → ``Super Bowl 50``).
    """
    seen: dict[str, dict] = {}
    for r in load_split(split, path):
        if r["paragraph_id"] not in seen:
            seen[r["paragraph_id"]] = {"id": r["paragraph_id"], "title": r["title"].replace("_", " "),
                                       "text": r["context"], "metadata": {"split": r["split"]}}
    return list(seen.values())


def test_paragraph_ids(path: str | os.PathLike | None = None) -> set[str]:
    """Ids of the test-split paragraphs (to exclude from retrieval when building train data)."""
    return {d["id"] for d in xquad_corpus("test", path)}


test_paragraph_ids.__test__ = False  # not a pytest test
