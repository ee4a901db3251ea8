"""``rag.Retriever``: one retrieval API over any wandao index, with a cross-process cache and filters.

The index directory decides the backend (embedded BM25, Lucene, dense, hybrid; see
:mod:`indexer.index`); the retriever adds what augmentation needs on top:

- batched ``retrieve(queries, k)`` returning :class:`~indexer.results.Results` with the
  documents (id, title, text) filled, scores and ranks;
- an on-disk cache (SQLite, WAL mode, safe across processes) keyed by the index's corpus
  fingerprint, the retriever settings, the query and the excluded ids; a changed corpus or
  setting never reads a stale entry;
- filters: per-query excluded document ids (passed to the backend, which drops them before
  taking the top k), and a predicate over ``(query_index, document)`` such as "same source"
  (:func:`same_source`). For predicates the retriever over-fetches, then fetches deeper for the
  queries that still have fewer than ``k`` hits, until ``k`` remain or the index runs out.

Example:
    >>> r = Retriever("runs/scifact-index", cache=True)  # doctest: +SKIP
    >>> res = r.retrieve(["coffee and cancer"], k=3, exclude_ids=[{"4983"}])  # doctest: +SKIP
    >>> [(h.doc_id, h.rank, h.document["title"]) for h in res.hits(0)]  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from indexer.results import NO_DOC, Results

logger = logging.getLogger(__name__)

#: ``predicate(query_index, document) -> True`` drops the document for that query.
Predicate = Callable[[int, dict], bool]


def default_cache_dir() -> Path:
    """``$WANDAO_CACHE_DIR/retrieval``, else ``~/.cache/wandao/retrieval``."""
    base = os.environ.get("WANDAO_CACHE_DIR")
    return (Path(base) if base else Path.home() / ".cache" / "wandao") / "retrieval"


def source_of(doc: dict) -> str:
    """A document's source: its ``doc_id`` field (set on chunked passages), else the part of its id
    before ``#`` (``"doc7#3"`` → ``"doc7"``), else its id."""
    if doc.get("doc_id"):
        return str(doc["doc_id"])
    return str(doc["id"]).split("#", 1)[0]


def same_source(sources: Sequence[str | Iterable[str]], key: Callable[[dict], str] = source_of) -> Predicate:
    """A predicate dropping, for query ``i``, every document whose ``key(doc)`` is in ``sources[i]``.

    Args:
        sources: per query, one source id or a collection of them.
        key: maps a document to its source (default :func:`source_of`).

    Example:
        >>> p = same_source(["d1"])
        >>> p(0, {"id": "d1#4"}), p(0, {"id": "d2#0"})
        (True, False)
    """
    sets = [{s} if isinstance(s, str) else set(s) for s in sources]
    return lambda i, doc: key(doc) in sets[i]


class RetrievalCache:
    """Raw top-``depth`` candidates per (namespace, query, exclusions) in one SQLite file.

    An entry fetched at depth ``d`` answers any request for depth ``<= d``, and any depth at
    all when it holds fewer than ``d`` hits (the index ran out). WAL mode and a busy timeout let
    several processes read and write the same file.
    """

    def __init__(self, path: str | os.PathLike, namespace: str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.namespace = namespace
        self._local = threading.local()
        with self._conn() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS hits (key TEXT PRIMARY KEY, depth INTEGER NOT NULL, "
                         "ids TEXT NOT NULL, scores TEXT NOT NULL)")
        self.hits = self.misses = 0

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=60.0)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    def key(self, query: str, exclude: frozenset[str] | None) -> str:
        h = hashlib.sha256(self.namespace.encode())
        h.update(b"\x00q\x00" + query.encode("utf-8"))
        if exclude:
            h.update(b"\x00x\x00" + "\x00".join(sorted(exclude)).encode("utf-8"))
        return h.hexdigest()

    def get_many(self, keys: Sequence[str], depth: int) -> list[tuple[list[str], list[float]] | None]:
        out: list[tuple[list[str], list[float]] | None] = [None] * len(keys)
        conn = self._conn()
        where = {k: i for i, k in enumerate(keys)}
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            rows = conn.execute(f"SELECT key, depth, ids, scores FROM hits WHERE key IN ({','.join('?' * len(chunk))})",
                                chunk).fetchall()
            for key, d, ids, scores in rows:
                ids, scores = json.loads(ids), json.loads(scores)
                if d >= depth or len(ids) < d:
                    out[where[key]] = (ids[:depth], scores[:depth])
        found = sum(o is not None for o in out)
        self.hits += found
        self.misses += len(keys) - found
        return out

    def put_many(self, entries: Iterable[tuple[str, int, list[str], list[float]]]) -> None:
        conn = self._conn()
        with conn:
            conn.executemany("INSERT INTO hits (key, depth, ids, scores) VALUES (?, ?, ?, ?) "
                             "ON CONFLICT(key) DO UPDATE SET depth=excluded.depth, ids=excluded.ids, "
                             "scores=excluded.scores WHERE excluded.depth > hits.depth",
                             [(k, d, json.dumps(i), json.dumps(s)) for k, d, i, s in entries])

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


class Retriever:
    """Batched retrieval over an index directory, with documents, a cache and filters.

    Args:
        index: an index directory (or an opened :class:`indexer.index.Index`).
        retriever: ``bm25``, ``lucene``, ``dense`` or ``hybrid``; default: the index's default.
        cache: ``False``/``None`` for none, ``True`` for :func:`default_cache_dir`, or a directory.
        batch_size: queries per backend call.
        overfetch: with a predicate, first fetch ``ceil(k * overfetch)`` candidates per query.
        progress: show a tqdm bar over batches (also disabled by ``WANDAO_NO_PROGRESS=1``).
        search_options: passed to ``Index.retrieve`` (``fusion``, ``rrf_k``, ``weights``,
            ``depth``, ``n_threads``) and part of the cache key.

    Example:
        >>> r = Retriever("runs/xquad-index")  # doctest: +SKIP
        >>> r.retrieve(["Who won Super Bowl 50?"], k=2).to_dicts()[0][0]["title"]  # doctest: +SKIP
        'Super Bowl 50'
    """

    def __init__(self, index: Any, retriever: str | None = None, cache: bool | str | os.PathLike | None = None,
                 batch_size: int = 256, overfetch: float = 2.0, progress: bool = False, **search_options: Any):
        if isinstance(index, (str, os.PathLike)):
            from indexer import open_index

            index = open_index(index)
        self.index = index
        self.retriever = retriever or index.default_retriever()
        self.search_options = {k: v for k, v in search_options.items() if v is not None}
        self.batch_size = batch_size
        self.overfetch = max(1.0, overfetch)
        self.progress = progress
        self.settings = {"retriever": self.retriever,
                         **{k: v for k, v in self.search_options.items() if k != "n_threads"}}
        self.cache: RetrievalCache | None = None
        if cache:
            folder = default_cache_dir() if cache is True else Path(cache)
            namespace = json.dumps({"fingerprint": self.fingerprint, **self.settings}, sort_keys=True, default=str)
            self.cache = RetrievalCache(folder / f"{self.fingerprint[:16]}.sqlite", namespace)
        self._docs: dict[str, dict] = {}

    @property
    def fingerprint(self) -> str:
        return self.index.manifest["corpus"]["fingerprint"]

    def __len__(self) -> int:
        return len(self.index.docstore)

    def documents(self, ids: Sequence[str]) -> list[dict]:
        """Documents by id (kept in memory once read)."""
        missing = [i for i in dict.fromkeys(ids) if i not in self._docs]
        if missing:
            for doc in self.index.docstore.get(missing):
                self._docs[doc["id"]] = doc
            if len(self._docs) > 200_000:  # bound memory on huge runs
                self._docs = {i: self._docs[i] for i in ids if i in self._docs}
        return [self._docs[i] for i in ids]

    def _raw(self, queries: list[str], depth: int, excludes: list[frozenset[str] | None]) -> list[tuple[list, list]]:
        """Top-``depth`` (ids, scores) per query after id exclusion, from the cache or the backend."""
        keys = [self.cache.key(q, e) for q, e in zip(queries, excludes)] if self.cache else None
        got = self.cache.get_many(keys, depth) if self.cache else [None] * len(queries)
        todo = [i for i, g in enumerate(got) if g is None]
        if todo:
            # no exclusions at all: pass None, so the backend skips its id-to-number mapping
            exclude = [set(excludes[i] or ()) for i in todo] if any(excludes[i] for i in todo) else None
            res = self.index.retrieve([queries[i] for i in todo], k=depth, retriever=self.retriever,
                                      exclude=exclude, **self.search_options)
            fresh = []
            for row, (ids, scores) in enumerate(zip(res.ids.tolist(), res.scores.tolist())):
                n = ids.index(NO_DOC) if NO_DOC in ids else len(ids)  # padding is at the end of a row
                i = todo[row]
                got[i] = (ids[:n], scores[:n])
                if self.cache:
                    fresh.append((keys[i], depth, *got[i]))
            if self.cache:
                self.cache.put_many(fresh)
        return got  # type: ignore[return-value]

    def retrieve(self, queries: Sequence[str], k: int = 10,
                 exclude_ids: Sequence[Iterable[str] | None] | Iterable[str] | None = None,
                 exclude: Predicate | None = None, with_documents: bool = True) -> Results:
        """Top ``k`` documents per query, after the filters.

        Args:
            queries: query strings.
            k: hits per query (rows with fewer matching documents are padded, see ``Results``).
            exclude_ids: ids to drop: one collection for every query, or one per query.
            exclude: ``predicate(query_index, doc)``; ``True`` drops the document.
            with_documents: fill ``Results.documents``.

        Returns:
            :class:`~indexer.results.Results` with ``documents`` (``id``, ``title``, ``text`` and
            any other stored fields) aligned with the hits.
        """
        if isinstance(queries, str):
            raise TypeError("queries must be a list of strings, not one string")
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        queries = list(queries)
        excludes = self._normalise_excludes(exclude_ids, len(queries))
        n_docs = len(self.index.docstore)
        ids_out: list[list[str]] = [[] for _ in queries]
        scores_out: list[list[float]] = [[] for _ in queries]
        from tqdm.auto import tqdm

        starts = range(0, len(queries), self.batch_size)
        bar = tqdm(starts, desc="retrieve", unit="batch", disable=not self.progress or _no_progress())
        for start in bar:
            batch = list(range(start, min(start + self.batch_size, len(queries))))
            depth = k if exclude is None else min(n_docs, math.ceil(k * self.overfetch))
            pending = batch
            while pending:
                raw = self._raw([queries[i] for i in pending], depth, [excludes[i] for i in pending])
                retry = []
                for i, (ids, scores) in zip(pending, raw):
                    if exclude is None:
                        ids_out[i], scores_out[i] = ids[:k], scores[:k]
                        continue
                    docs = self.documents(ids)
                    keep = [j for j, d in enumerate(docs) if not exclude(i, d)]
                    if len(keep) >= k or len(ids) < depth or depth >= n_docs:
                        ids_out[i] = [ids[j] for j in keep[:k]]
                        scores_out[i] = [scores[j] for j in keep[:k]]
                    else:
                        retry.append(i)
                pending = retry
                depth = min(n_docs, depth * 4)
        res = Results.from_lists(ids_out, scores_out, k=k)
        if with_documents:
            res.documents = [self.documents(row) for row in ids_out]
        return res

    @staticmethod
    def _normalise_excludes(exclude_ids, n: int) -> list[frozenset[str] | None]:
        if exclude_ids is None:
            return [None] * n
        items = list(exclude_ids) if not isinstance(exclude_ids, (set, frozenset)) else [exclude_ids]
        if isinstance(exclude_ids, (set, frozenset)) or (items and all(isinstance(x, str) for x in items)):
            shared = frozenset(exclude_ids) or None
            return [shared] * n
        if len(items) != n:
            raise ValueError(f"exclude_ids has {len(items)} entries for {n} queries")
        return [frozenset(x) if x else None for x in items]

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()


def _no_progress() -> bool:
    return os.environ.get("WANDAO_NO_PROGRESS", "") not in ("", "0")
