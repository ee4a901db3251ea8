"""Indexes for wandao: embedded BM25 (Lucene-exact, no JVM), Lucene through pyserini,
dense (sentence-transformers + faiss), hybrid fusion, and Elasticsearch.

Every backend returns the same :class:`~indexer.results.Results`. Heavy dependencies
(the JVM, faiss, torch, elasticsearch) are imported only when a backend is used.

An index is a directory with a ``manifest.json``; see :mod:`indexer.index`.
"""

from indexer.data import DataError, beir_paths, iter_corpus, load_qrels, load_queries, read_corpus
from indexer.results import NO_DOC, Hit, Results

__all__ = ["DataError", "Hit", "NO_DOC", "Results", "beir_paths", "iter_corpus", "load_qrels", "load_queries",
           "read_corpus", "open_index", "build_index"]


def open_index(path, **kwargs):
    """Open an index directory (lazy import of :mod:`indexer.index`)."""
    from indexer.index import open_index as _open

    return _open(path, **kwargs)


def build_index(*args, **kwargs):
    """Build an index directory (lazy import of :mod:`indexer.index`)."""
    from indexer.index import build_index as _build

    return _build(*args, **kwargs)
