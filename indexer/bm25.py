"""The embedded BM25 engine: Lucene's BM25 bit for bit, in process, with bm25s-style sparse scoring.

See :class:`BM25`.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from itertools import chain
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from indexer.analysis import Analyzer, get_analyzer
from indexer.results import NO_DOC, Results

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
FLAT_FIELD = "contents"  # Anserini's field name for title + " " + text
#: Lucene SmallFloat: 255 - longToInt4(Integer.MAX_VALUE) = 255 - 231.
NUM_FREE_VALUES = 24


# --- Lucene SmallFloat (org.apache.lucene.util.SmallFloat), vectorised ---

def _long_to_int4(i: np.ndarray) -> np.ndarray:
    i = np.asarray(i, dtype=np.int64)
    num_bits = np.frexp(i.astype(np.float64))[1].astype(np.int64)  # 64 - numberOfLeadingZeros (exact < 2**53)
    shift = num_bits - 4
    normal = (((i >> np.maximum(shift, 0)) & 0x07) | ((shift + 1) << 3))
    return np.where(num_bits < 4, i, normal)


def _int4_to_long(i: np.ndarray) -> np.ndarray:
    i = np.asarray(i, dtype=np.int64)
    bits = i & 0x07
    shift = (i >> 3) - 1
    return np.where(shift == -1, bits, (bits | 0x08) << np.maximum(shift, 0))


def int_to_byte4(lengths: np.ndarray) -> np.ndarray:
    """``SmallFloat.intToByte4``: Lucene's lossy one-byte encoding of a field length (as uint8)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if np.any(lengths < 0):
        raise ValueError("field lengths must be non-negative")
    enc = np.where(lengths < NUM_FREE_VALUES, lengths,
                   NUM_FREE_VALUES + _long_to_int4(np.maximum(lengths - NUM_FREE_VALUES, 0)))
    return enc.astype(np.uint8)


def byte4_to_int(b: np.ndarray) -> np.ndarray:
    """``SmallFloat.byte4ToInt``: the field length a norm byte stands for."""
    i = np.asarray(b, dtype=np.int64)
    return np.where(i < NUM_FREE_VALUES, i, NUM_FREE_VALUES + _int4_to_long(np.maximum(i - NUM_FREE_VALUES, 0)))


#: ``BM25Similarity.LENGTH_TABLE``: decoded length of each norm byte, as float32.
LENGTH_TABLE = byte4_to_int(np.arange(256)).astype(np.float32)


def lucene_idf(df: np.ndarray, doc_count: int) -> np.ndarray:
    """``(float) Math.log(1 + (docCount - docFreq + 0.5D) / (docFreq + 0.5D))``."""
    df = np.asarray(df, dtype=np.float64)
    return np.log(1.0 + (doc_count - df + 0.5) / (df + 0.5)).astype(np.float32)


def lucene_avgdl(sum_total_term_freq: int, doc_count: int) -> np.float32:
    """``(float) (sumTotalTermFreq / (double) docCount)``."""
    return np.float32(sum_total_term_freq / float(doc_count)) if doc_count else np.float32(1.0)


def lucene_norm_inverse(k1: float, b: float, avgdl: np.float32) -> np.ndarray:
    """``cache[i] = 1f / (k1 * ((1 - b) + b * LENGTH_TABLE[i] / avgdl))``, every step in float32."""
    f = np.float32
    k1, b = f(k1), f(b)
    return (f(1) / (k1 * ((f(1) - b) + b * LENGTH_TABLE / f(avgdl)))).astype(np.float32)


def lucene_term_scores(weight: np.ndarray | np.float32, tf: np.ndarray, norm_inverse: np.ndarray) -> np.ndarray:
    """``weight - weight / (1f + freq * normInverse)`` in float32 (Lucene ``BM25Scorer.score``)."""
    w = np.asarray(weight, dtype=np.float32)
    return (w - w / (np.float32(1) + np.asarray(tf, dtype=np.float32) * norm_inverse)).astype(np.float32)


class _Field:
    """Postings of one field, term-major (CSC): ``docs[indptr[t]:indptr[t+1]]`` hold term ``t``."""

    __slots__ = ("indptr", "docs", "tfs", "norms", "sum_ttf", "doc_count", "scores", "norm_inverse", "idf")

    def __init__(self, n_terms: int = 0) -> None:
        self.indptr = np.zeros(n_terms + 1, dtype=np.int64)
        self.docs = np.zeros(0, dtype=np.int32)
        self.tfs = np.zeros(0, dtype=np.int32)
        self.norms = np.zeros(0, dtype=np.uint8)
        self.sum_ttf = 0
        self.doc_count = 0
        self.scores = np.zeros(0, dtype=np.float32)
        self.norm_inverse = np.zeros(256, dtype=np.float32)
        self.idf = np.zeros(n_terms, dtype=np.float32)

    def derive(self, k1: float, b: float) -> None:
        """Recompute idf, normInverse and the boost-1 score of every posting from the statistics."""
        avgdl = lucene_avgdl(self.sum_ttf, self.doc_count)
        self.norm_inverse = lucene_norm_inverse(k1, b, avgdl)
        df = np.diff(self.indptr)
        self.idf = lucene_idf(df, self.doc_count)
        weight = np.repeat(self.idf, df)  # (n_postings,)
        self.scores = lucene_term_scores(weight, self.tfs, self.norm_inverse[self.norms[self.docs]])


class BM25:
    """Lucene/Anserini BM25 (``BM25Similarity``), reproduced bit for bit in float32, with no JVM.

    Scoring (Robertson & Zaragoza 2009, "The Probabilistic Relevance Framework: BM25 and Beyond",
    in the form of Lucene >= 8 ``org.apache.lucene.search.similarities.BM25Similarity``, which drops
    the constant ``(k1 + 1)`` factor)::

        idf(t)        = (float) ln(1 + (docCount - df + 0.5) / (df + 0.5))            (double, then float)
        avgdl         = (float) (sumTotalTermFreq / (double) docCount)
        normInverse[i]= 1f / (k1 * ((1 - b) + b * LENGTH_TABLE[i] / avgdl))             (float32)
        score(t, d)   = w - w / (1f + tf * normInverse[norm(d)]),  w = boost * idf(t)   (float32)
        score(q, d)   = (float) sum_t score(t, d)                                        (summed in double)

    ``docCount`` counts documents with at least one token in the field and ``sumTotalTermFreq`` the
    tokens after stopword removal. ``norm(d)`` is Lucene's lossy one-byte length,
    ``SmallFloat.intToByte4(length)``, decoded with ``SmallFloat.byte4ToInt`` into ``LENGTH_TABLE``
    (``org.apache.lucene.util.SmallFloat``: 24 exact small values, then 4-bit-mantissa floats). A query's
    repeated terms become one clause with ``boost = count`` (Anserini's ``BagOfWordsQueryGenerator``).
    In multifield mode each field has its own statistics and norms, and a document's score is
    ``(float) sum_f (float) sum_t score_f(t, d)`` with ``boost = weight_f * count`` (Anserini's
    ``-fields contents=1.0 title=1.0``). Ties go to the lower internal doc number (insertion order),
    as in Lucene; only documents that match at least one query term are returned.

    Storage is term-major (CSC) postings: int32 doc numbers, int32 term frequencies, and float32
    scores for boost 1 (boost != 1 is recomputed exactly from tf and norm). Scores are derived data,
    so :meth:`add` appends postings, updates the statistics and re-derives every score, giving
    exactly what a full rebuild gives.

    Args:
        k1, b: BM25 parameters (Anserini's defaults 0.9 and 0.4).
        analyzer: an :class:`~indexer.analysis.Analyzer`, a name or a manifest dict;
            default: ``lucene-english-v1`` (Anserini's ``DefaultEnglishAnalyzer``).
        multifield: index ``title`` and ``text`` as separate fields instead of one flat
            ``title + " " + text`` field (Anserini's BEIR "flat" collection).
        field_weights: per-field weights in multifield mode.

    Example:
        >>> bm25 = BM25().index([{"id": "d1", "title": "", "text": "the cat sat on the mat"},
        ...                      {"id": "d2", "title": "Dogs", "text": "dogs chase cats"}])
        >>> r = bm25.retrieve(["cats and dogs"], k=2)
        >>> r.ids[0].tolist(), r.scores[0].tolist()  # doctest: +ELLIPSIS
        (['d2', 'd1'], [...])
    """

    def __init__(self, k1: float = 0.9, b: float = 0.4, analyzer: "Analyzer | str | dict | None" = None,
                 multifield: bool = False, field_weights: dict[str, float] | None = None) -> None:
        if not (k1 >= 0):
            raise ValueError(f"k1 must be >= 0, got {k1}")
        if not (0 <= b <= 1):
            raise ValueError(f"b must be in [0, 1], got {b}")
        self.k1, self.b = float(k1), float(b)
        self.analyzer = get_analyzer(analyzer)
        self.multifield = bool(multifield)
        if self.multifield:
            weights = {"text": 1.0, "title": 1.0, **(field_weights or {})}
            unknown = set(weights) - {"text", "title"}
            if unknown:
                raise ValueError(f"unknown fields in field_weights: {sorted(unknown)}; use 'title' and 'text'")
            self.field_weights = {f: float(weights[f]) for f in ("text", "title")}
        else:
            if field_weights and set(field_weights) != {FLAT_FIELD}:
                raise ValueError("field_weights needs multifield=True (flat mode has the single field "
                                 f"{FLAT_FIELD!r})")
            self.field_weights = {FLAT_FIELD: float((field_weights or {}).get(FLAT_FIELD, 1.0))}
        self.vocab: dict[str, int] = {}
        self.terms: list[str] = []
        self.ids: list[str] = []
        self._id_set: set[str] = set()
        self.fields = {f: _Field() for f in self.field_weights}
        self._raw2tid: dict[str, int] = {}  # raw token -> term id (-1: dropped); a cache, not saved
        self._id_array: np.ndarray | None = None

    # --- indexing ---

    @property
    def n_docs(self) -> int:
        return len(self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def index(self, docs: Iterable[dict] | Sequence[str], ids: Sequence[str] | None = None,
              show_progress: bool = False) -> "BM25":
        """Index documents from scratch (drops what was indexed before). See :meth:`add`."""
        self.__init__(self.k1, self.b, self.analyzer, self.multifield,
                      self.field_weights if self.multifield else None)
        return self.add(docs, ids=ids, show_progress=show_progress)

    def add(self, docs: Iterable[dict] | Sequence[str], ids: Sequence[str] | None = None,
            show_progress: bool = False, batch_size: int = 50_000) -> "BM25":
        """Append documents: only the new ones are analyzed; statistics and scores are re-derived.

        Args:
            docs: dicts with ``id``, ``title`` and ``text`` (the :func:`indexer.data.iter_corpus`
                shape), or plain strings (then ``ids`` gives the ids, default ``"0"``, ``"1"``, ...).
            ids: ids for plain-string documents.

        Raises:
            ValueError: a repeated or empty document id, or a document without text fields.
        """
        from tqdm.auto import tqdm

        t0 = time.perf_counter()
        batch: list[dict] = []
        bar = tqdm(desc="bm25 index", unit="doc", disable=not show_progress)
        start = self.n_docs
        n_added = 0
        for i, doc in enumerate(docs):
            if isinstance(doc, str):
                doc_id = str(ids[i]) if ids is not None else str(start + i)
                doc = {"id": doc_id, "title": "", "text": doc}
            elif not isinstance(doc, dict):
                raise ValueError(f"document {i}: expected a dict with id/title/text or a string, "
                                 f"got {type(doc).__name__}")
            batch.append(doc)
            if len(batch) >= batch_size:
                n_added += self._add_batch(batch)
                bar.update(len(batch))
                batch = []
        if batch:
            n_added += self._add_batch(batch)
            bar.update(len(batch))
        bar.close()
        for field in self.fields.values():
            field.derive(self.k1, self.b)
        self._id_array = None
        logger.info("bm25: added %d documents (%d total, %d terms) in %.2fs", n_added, self.n_docs,
                    len(self.terms), time.perf_counter() - t0)
        return self

    def _field_texts(self, batch: list[dict]) -> dict[str, list[str]]:
        def get(doc: dict, key: str, i: int) -> str:
            value = doc.get(key) or ""
            if not isinstance(value, str):
                raise ValueError(f"document {doc.get('id', i)!r}: field {key!r} must be a string, "
                                 f"got {type(value).__name__}")
            return value

        for i, doc in enumerate(batch):
            if "text" not in doc and "title" not in doc:
                raise ValueError(f"document {doc.get('id', i)!r}: no 'title' or 'text' field")
        if self.multifield:
            return {"text": [get(d, "text", i) for i, d in enumerate(batch)],
                    "title": [get(d, "title", i) for i, d in enumerate(batch)]}
        out = []
        for i, d in enumerate(batch):
            title, text = get(d, "title", i), get(d, "text", i)
            out.append(f"{title} {text}")  # Anserini's BEIR flat "contents": title + " " + text
        return {FLAT_FIELD: out}

    def _grow_vocab(self, raw_stream: Iterable[str]) -> None:
        """Analyze raw tokens not seen before, in first-occurrence order, giving new terms the next ids
        (deterministic: the same corpus always gets the same vocabulary, batched or not)."""
        cache, normalize, vocab, terms = self._raw2tid, self.analyzer.normalize, self.vocab, self.terms
        for raw in dict.fromkeys(raw_stream):
            if raw in cache:
                continue
            term = normalize(raw)
            if term is None:
                cache[raw] = -1
                continue
            tid = vocab.get(term)
            if tid is None:
                tid = vocab[term] = len(terms)
                terms.append(term)
            cache[raw] = tid

    def _term_ids(self, raw_tokens: list[str]) -> np.ndarray:
        """Term ids of raw tokens (-1 for dropped ones); C-speed dict lookups."""
        try:
            tids = list(map(self._raw2tid.__getitem__, raw_tokens))
        except KeyError:
            self._grow_vocab(raw_tokens)
            tids = list(map(self._raw2tid.__getitem__, raw_tokens))
        return np.array(tids, dtype=np.int32)

    def _add_batch(self, batch: list[dict]) -> int:
        new_ids = []
        for i, doc in enumerate(batch):
            doc_id = doc.get("id")
            if doc_id is None or str(doc_id) == "":
                raise ValueError(f"document {self.n_docs + i}: missing or empty 'id'")
            doc_id = str(doc_id)
            if doc_id in self._id_set:
                raise ValueError(f"duplicate document id {doc_id!r}")
            self._id_set.add(doc_id)
            new_ids.append(doc_id)
        texts = self._field_texts(batch)
        base, n = self.n_docs, len(batch)
        tokenize = self.analyzer.tokenize
        raw = {name: [tokenize(t) for t in field_texts] for name, field_texts in texts.items()}
        if len(raw) > 1:  # new terms get ids in document order, fields interleaved per document
            self._grow_vocab(chain.from_iterable(chain.from_iterable(per_doc) for per_doc in zip(*raw.values())))
        for name, raw_lists in raw.items():
            lens = np.fromiter(map(len, raw_lists), dtype=np.int64, count=n)
            tids = self._term_ids(list(chain.from_iterable(raw_lists)))
            doc_of = np.repeat(np.arange(n, dtype=np.int64), lens)
            keep = tids >= 0
            tids, doc_of = tids[keep].astype(np.int64), doc_of[keep]
            lengths = np.bincount(doc_of, minlength=n)  # tokens after stopword removal
            # (term, doc) pairs with their counts, sorted by term then doc: the new postings.
            keys, tf = np.unique(tids * n + doc_of, return_counts=True)
            self._append_postings(self.fields[name], keys // n, (keys % n + base).astype(np.int32),
                                  tf.astype(np.int32), lengths)
        self.ids.extend(new_ids)
        return n

    def _append_postings(self, field: _Field, terms: np.ndarray, docs: np.ndarray, tfs: np.ndarray,
                         lengths: np.ndarray) -> None:
        n_terms = len(self.terms)
        old_df = np.diff(field.indptr)
        old_df = np.concatenate([old_df, np.zeros(n_terms - len(old_df), dtype=np.int64)])
        new_df = np.bincount(terms, minlength=n_terms)
        indptr = np.zeros(n_terms + 1, dtype=np.int64)
        np.cumsum(old_df + new_df, out=indptr[1:])
        total = int(indptr[-1])
        out_docs = np.empty(total, dtype=np.int32)
        out_tfs = np.empty(total, dtype=np.int32)
        # Old postings of term t go first (lower doc numbers), then the new ones.
        df_before = np.diff(field.indptr)  # over the old vocabulary
        n_old = len(field.docs)
        old_rank = np.arange(n_old, dtype=np.int64) - np.repeat(field.indptr[:-1], df_before)
        pos_old = np.repeat(indptr[:len(df_before)], df_before) + old_rank
        out_docs[pos_old], out_tfs[pos_old] = field.docs, field.tfs
        new_rank = np.arange(len(terms), dtype=np.int64) - np.repeat(np.cumsum(new_df) - new_df, new_df)
        pos_new = np.repeat(indptr[:-1] + old_df, new_df) + new_rank
        out_docs[pos_new], out_tfs[pos_new] = docs, tfs
        field.indptr, field.docs, field.tfs = indptr, out_docs, out_tfs
        field.norms = np.concatenate([np.asarray(field.norms), int_to_byte4(lengths)])
        field.sum_ttf += int(lengths.sum())
        field.doc_count += int(np.count_nonzero(lengths))

    # --- retrieval ---

    def _doc_numbers(self) -> dict[str, int]:
        self._lookups()
        return self._numbers

    def _lookups(self) -> None:
        """Id array, id -> doc number, and the id-order tie-break ranks (rebuilt after ``add``)."""
        if self._id_array is not None and len(self._id_array) == self.n_docs + 1:
            return
        self._id_array = np.array(self.ids + [NO_DOC])  # index -1 -> padding
        self._numbers = {d: i for i, d in enumerate(self.ids)}
        # Anserini orders equal scores by document id string; numpy's unicode sort is code-point
        # order, which equals Java's String.compareTo for ids without supplementary characters.
        self._by_rank = np.argsort(self._id_array[:-1], kind="stable").astype(np.int32)
        self._rank = np.empty(self.n_docs, dtype=np.int32)
        self._rank[self._by_rank] = np.arange(self.n_docs, dtype=np.int32)

    def _encode_queries(self, queries: Sequence[str] | Sequence[Sequence[str]]):
        """Flatten queries into (indptr, field index, term id, boost) arrays for the kernel."""
        # Field weights as the float32 values Lucene's BoostQuery holds. A float32 weight times a
        # small integer count is exact in float64, so rounding the product to float32 once (in
        # np.array below) equals Lucene's float32 multiplication, without per-term numpy scalars.
        weights = [float(np.float32(self.field_weights[name])) for name in self.fields]
        vocab = self.vocab
        analyze = self.analyzer.analyze
        q_indptr = [0]
        q_field: list[int] = []
        q_term: list[int] = []
        q_boost: list[float] = []
        for q in queries:
            if isinstance(q, str):
                terms = analyze(q)
            elif isinstance(q, (list, tuple)) and all(isinstance(t, str) for t in q):
                terms = q
            else:
                raise ValueError(f"each query must be a string or a list of term strings, got {type(q).__name__}")
            counts: dict[int, int] = {}  # term id -> count, in first-occurrence order
            for term in terms:
                tid = vocab.get(term)
                if tid is not None:
                    counts[tid] = counts.get(tid, 0) + 1
            for fi, fw in enumerate(weights):
                q_field.extend([fi] * len(counts))
                q_term.extend(counts)
                q_boost.extend([fw * c for c in counts.values()])  # BoostQuery(field) x BoostQuery(count)
            q_indptr.append(len(q_term))
        return (np.array(q_indptr, dtype=np.int64), np.array(q_field, dtype=np.int32),
                np.array(q_term, dtype=np.int32), np.array(q_boost, dtype=np.float32))

    def retrieve(self, queries: Sequence[str] | Sequence[Sequence[str]], k: int = 10, n_threads: int = 0,
                 exclude: Sequence[Iterable[str]] | None = None) -> Results:
        """Top-``k`` documents for each query.

        Args:
            queries: query strings (analyzed with the index's analyzer) or lists of already
                analyzed terms.
            k: hits per query; rows with fewer matching documents are padded (``""``, ``-inf``).
            n_threads: threads for the batched numba kernel; 0 means all cores.
            exclude: per query, document ids to leave out (Anserini's ``-removeQuery`` passes
                ``[{qid} for qid in query_ids]``).

        Returns:
            :class:`~indexer.results.Results` with ids ``(n_queries, k)`` and float32 scores.

        Raises:
            ValueError: an empty query list, ``k < 1``, a malformed query, or ``exclude`` of the
                wrong length.
        """
        if isinstance(queries, str):
            raise ValueError("queries must be a list of strings, not a single string; wrap it: [query]")
        queries = list(queries)
        if not queries:
            raise ValueError("queries is empty: pass at least one query")
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if not isinstance(n_threads, (int, np.integer)) or n_threads < 0:
            raise ValueError(f"n_threads must be >= 0 (0 = all cores), got {n_threads!r}")
        if exclude is not None and len(exclude) != len(queries):
            raise ValueError(f"exclude has {len(exclude)} entries for {len(queries)} queries")
        k = int(k)
        q_indptr, q_field, q_term, q_boost = self._encode_queries(queries)
        ex_indptr = np.zeros(len(queries) + 1, dtype=np.int64)
        ex_docs = np.zeros(0, dtype=np.int32)
        if exclude is not None:
            numbers = self._doc_numbers()
            rows = [[numbers[d] for d in ex if d in numbers] for ex in exclude]
            ex_indptr[1:] = np.cumsum([len(r) for r in rows])
            ex_docs = np.array(list(chain.from_iterable(rows)), dtype=np.int32)
        self._lookups()
        doc_idx, scores = self._search(q_indptr, q_field, q_term, q_boost, ex_indptr, ex_docs, k, n_threads)
        return Results(self._id_array[doc_idx], scores)

    def _search(self, q_indptr, q_field, q_term, q_boost, ex_indptr, ex_docs, k, n_threads):
        from indexer import _bm25_kernels as kern

        fields = list(self.fields.values())
        indptrs = tuple(np.asarray(f.indptr) for f in fields)
        n_queries = len(q_indptr) - 1
        threads = kern.set_threads(n_threads)
        n_chunks = max(1, min(threads, n_queries))
        if len(fields) == 1:
            f = fields[0]
            args = (np.asarray(f.indptr), np.asarray(f.docs), np.asarray(f.tfs), np.asarray(f.scores),
                    np.asarray(f.norms), f.norm_inverse, f.idf, q_indptr, q_term, q_boost, ex_indptr, ex_docs,
                    self._rank, self._by_rank, self.n_docs, k)
            if n_chunks == 1:  # one query or one thread: skip the thread pool's wake-up
                return kern.search_flat_serial(*args)
            return kern.search_flat(*args, n_chunks)
        f0, f1 = fields
        return kern.search_two_fields(
            np.asarray(f0.indptr), np.asarray(f0.docs), np.asarray(f0.tfs), np.asarray(f0.scores),
            np.asarray(f0.norms), f0.norm_inverse, f0.idf,
            np.asarray(f1.indptr), np.asarray(f1.docs), np.asarray(f1.tfs), np.asarray(f1.scores),
            np.asarray(f1.norms), f1.norm_inverse, f1.idf,
            q_indptr, q_field, q_term, q_boost, ex_indptr, ex_docs, self._rank, self._by_rank, self.n_docs, k,
            n_chunks)

    # --- persistence ---

    def to_manifest(self) -> dict:
        """The parameters and statistics that identify this index (also written by :meth:`save`)."""
        return {
            "format": "wandao-bm25", "format_version": FORMAT_VERSION,
            "similarity": "lucene-bm25", "k1": self.k1, "b": self.b,
            "analyzer": self.analyzer.to_dict(), "multifield": self.multifield,
            "field_weights": self.field_weights, "n_docs": self.n_docs, "n_terms": len(self.terms),
            "fields": {name: {"sum_total_term_freq": f.sum_ttf, "doc_count": f.doc_count,
                              "n_postings": int(len(f.docs))} for name, f in self.fields.items()},
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the index to the folder ``path``: ``.npy`` arrays and ``.json``, no pickle.

        Each file is written to a temporary name and renamed; ``bm25.json`` goes last.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)

        def write_npy(name: str, arr: np.ndarray) -> None:
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=path)
            with os.fdopen(fd, "wb") as fh:
                np.save(fh, np.ascontiguousarray(arr), allow_pickle=False)
            os.replace(tmp, path / name)

        def write_json(name: str, obj) -> None:
            from indexer.io import atomic_write_text

            atomic_write_text(path / name, json.dumps(obj, ensure_ascii=False, separators=(",", ":")))

        write_json("vocab.json", self.terms)
        write_json("ids.json", self.ids)
        for name, f in self.fields.items():
            for part in ("indptr", "docs", "tfs", "scores", "norms"):
                write_npy(f"{name}.{part}.npy", getattr(f, part))
        write_json("bm25.json", self.to_manifest())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, mmap: bool = True) -> "BM25":
        """Load an index written by :meth:`save`; arrays are memory-mapped when ``mmap``.

        Raises:
            FileNotFoundError / ValueError: a missing file or an unknown format, naming the file.
        """
        path = Path(path)
        meta_path = path / "bm25.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"{meta_path} not found: not a wandao BM25 index folder")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != "wandao-bm25" or meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{meta_path}: unsupported format {meta.get('format')!r} "
                             f"version {meta.get('format_version')!r} (expected wandao-bm25 v{FORMAT_VERSION})")
        self = cls(meta["k1"], meta["b"], meta["analyzer"], meta["multifield"],
                   meta["field_weights"] if meta["multifield"] else None)
        self.terms = json.loads((path / "vocab.json").read_text())
        self.vocab = {t: i for i, t in enumerate(self.terms)}
        self.ids = json.loads((path / "ids.json").read_text())
        self._id_set = set(self.ids)
        mode = "r" if mmap else None
        for name, stats in meta["fields"].items():
            f = self.fields[name]
            for part in ("indptr", "docs", "tfs", "scores", "norms"):
                file = path / f"{name}.{part}.npy"
                if not file.exists():
                    raise FileNotFoundError(f"{file} not found: the index folder is incomplete")
                setattr(f, part, np.load(file, mmap_mode=mode, allow_pickle=False))
            f.sum_ttf, f.doc_count = int(stats["sum_total_term_freq"]), int(stats["doc_count"])
            f.norm_inverse = lucene_norm_inverse(self.k1, self.b, lucene_avgdl(f.sum_ttf, f.doc_count))
            f.idf = lucene_idf(np.diff(np.asarray(f.indptr)), f.doc_count)
        if len(self.ids) != meta["n_docs"] or len(self.terms) != meta["n_terms"]:
            raise ValueError(f"{meta_path}: {meta['n_docs']} docs / {meta['n_terms']} terms recorded, "
                             f"found {len(self.ids)} ids / {len(self.terms)} terms")
        return self
