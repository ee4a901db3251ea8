"""The document store inside an index: the corpus as JSONL plus byte offsets, memory-mapped.

Retrievers return ids and scores; the docstore turns ids back into ``{"id", "title", "text"}``
without loading the corpus into memory.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
from pathlib import Path
from typing import Iterable

import numpy as np

DOCS_FILE = "docs.jsonl"
OFFSETS_FILE = "offsets.npy"


class DocStore:
    """Random access to documents by id or by internal row number.

    Example:
        >>> store = DocStore(Path("my-index/docstore"))  # doctest: +SKIP
        >>> store.get(["d1"])[0]["title"]  # doctest: +SKIP
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.offsets = np.load(self.folder / OFFSETS_FILE, mmap_mode="r", allow_pickle=False)
        self._file = open(self.folder / DOCS_FILE, "rb")
        size = os.fstat(self._file.fileno()).st_size
        self._mm = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        self._row_of: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def row(self, i: int) -> dict:
        start, end = int(self.offsets[i]), int(self.offsets[i + 1])
        return json.loads(self._mm[start:end])

    def _index(self) -> dict[str, int]:
        if self._row_of is None:
            self._row_of = {self.row(i)["id"]: i for i in range(len(self))}
        return self._row_of

    def __contains__(self, doc_id: str) -> bool:
        return doc_id in self._index()

    def get(self, ids: Iterable[str]) -> list[dict]:
        """Documents for ``ids`` in order; unknown ids raise ``KeyError`` naming the id."""
        index = self._index()
        out = []
        for doc_id in ids:
            if doc_id not in index:
                raise KeyError(f"document id {doc_id!r} is not in {self.folder}")
            out.append(self.row(index[doc_id]))
        return out

    def __iter__(self):
        for i in range(len(self)):
            yield self.row(i)

    def close(self) -> None:
        if isinstance(self._mm, mmap.mmap):
            self._mm.close()
        self._file.close()


def write_docstore(folder: Path, docs: Iterable[dict], append_from: Path | None = None) -> tuple[int, str]:
    """Write ``docs`` (after the documents of an existing store ``append_from``) into ``folder``.

    Returns ``(count, fingerprint)``: the fingerprint is a SHA-256 over ids, titles and texts in
    order, so appending documents changes it deterministically.
    """
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    offsets = [0]
    with open(folder / DOCS_FILE, "wb") as out:
        sources: list[Iterable[dict]] = []
        if append_from is not None:
            sources.append(DocStore(append_from))
        sources.append(docs)
        for source in sources:
            for doc in source:
                record = {"id": doc["id"], "title": doc.get("title", ""), "text": doc.get("text", "")}
                for key in ("doc_id", "start", "end", "metadata"):
                    if key in doc:
                        record[key] = doc[key]
                line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
                out.write(line)
                offsets.append(offsets[-1] + len(line))
                for part in (record["id"], record["title"], record["text"]):
                    digest.update(part.encode("utf-8"))
                    digest.update(b"\x00")
    np.save(folder / OFFSETS_FILE, np.asarray(offsets, dtype=np.int64), allow_pickle=False)
    return len(offsets) - 1, digest.hexdigest()
