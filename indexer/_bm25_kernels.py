"""numba kernels of :mod:`indexer.bm25` (imported on first retrieval: numba compiles, then caches).

Scores follow Lucene ``BM25Scorer``: per term ``w - w / (1f + tf * normInverse[norm])`` in float32,
summed in float64 per field and cast to float32; fields are summed in float64 and cast again.
Top-k keeps the highest score; ties go to the smaller document id string, as Anserini's searcher
orders them (``rank[d]`` is document ``d``'s position in sorted-id order, ``by_rank`` its inverse).
"""

from __future__ import annotations

import numba as nb
import numpy as np


def set_threads(n_threads: int) -> int:
    """Use ``n_threads`` numba threads (0: all); returns the number in use."""
    n = nb.config.NUMBA_NUM_THREADS if n_threads == 0 else min(n_threads, nb.config.NUMBA_NUM_THREADS)
    nb.set_num_threads(max(1, n))
    return max(1, n)


@nb.njit(cache=True, nogil=True)
def _worse(s1, r1, s2, r2):
    return s1 < s2 or (s1 == s2 and r1 > r2)


@nb.njit(cache=True, nogil=True)
def _heap_push(hs, hd, size, k, s, d):
    """Keep the k best (score, id rank) in a min-heap whose root is the worst; returns the new size."""
    if size < k:
        i = size
        hs[i], hd[i] = s, d
        while i > 0:
            parent = (i - 1) >> 1
            if _worse(hs[i], hd[i], hs[parent], hd[parent]):
                hs[i], hs[parent] = hs[parent], hs[i]
                hd[i], hd[parent] = hd[parent], hd[i]
                i = parent
            else:
                break
        return size + 1
    if not _worse(hs[0], hd[0], s, d):
        return size
    hs[0], hd[0] = s, d
    _sift_down(hs, hd, 0, size)
    return size


@nb.njit(cache=True, nogil=True)
def _sift_down(hs, hd, i, size):
    while True:
        lo = i
        left, right = 2 * i + 1, 2 * i + 2
        if left < size and _worse(hs[left], hd[left], hs[lo], hd[lo]):
            lo = left
        if right < size and _worse(hs[right], hd[right], hs[lo], hd[lo]):
            lo = right
        if lo == i:
            return
        hs[i], hs[lo] = hs[lo], hs[i]
        hd[i], hd[lo] = hd[lo], hd[i]
        i = lo


@nb.njit(cache=True, nogil=True)
def _accumulate(indptr, docs, tfs, scores, norms, norm_inv, idf, t, boost, acc, seen, touched, nt):
    """Add one term's scores into ``acc`` (float64); returns the new count of touched docs."""
    one = np.float32(1.0)
    start, end = indptr[t], indptr[t + 1]
    if boost == one:
        for p in range(start, end):
            d = docs[p]
            if not seen[d]:
                seen[d] = True
                touched[nt] = d
                nt += 1
            acc[d] += scores[p]
    else:
        w = boost * idf[t]  # float32
        for p in range(start, end):
            d = docs[p]
            if not seen[d]:
                seen[d] = True
                touched[nt] = d
                nt += 1
            acc[d] += w - w / (one + np.float32(tfs[p]) * norm_inv[norms[d]])
    return nt


@nb.njit(cache=True, nogil=True)
def _select(q, total, seen, touched, nt, ex_indptr, ex_docs, rank, by_rank, hs, hd, out_d, out_s, k):
    """Top-k of the touched docs into row ``q``; resets the buffers."""
    for e in range(ex_indptr[q], ex_indptr[q + 1]):
        d = ex_docs[e]
        if seen[d]:
            total[d] = -np.inf
    size = 0
    for i in range(nt):
        d = touched[i]
        t = total[d]
        total[d] = 0.0
        seen[d] = False
        if t == -np.inf:
            continue
        s = np.float32(t)
        r = rank[d]
        # Most touched documents lose to a full heap's root: test that before any heap work.
        if size == k and (s < hs[0] or (s == hs[0] and r > hd[0])):
            continue
        size = _heap_push(hs, hd, size, k, s, r)
    # Pop the worst to the end: the row comes out best first.
    for j in range(size - 1, -1, -1):
        out_s[q, j], out_d[q, j] = hs[0], by_rank[hd[0]]
        size -= 1
        hs[0], hd[0] = hs[size], hd[size]
        _sift_down(hs, hd, 0, size)


@nb.njit(cache=True, nogil=True)
def _query_flat(q, indptr, docs, tfs, scores, norms, norm_inv, idf, q_indptr, q_term, q_boost,
                ex_indptr, ex_docs, rank, by_rank, acc, seen, touched, hs, hd, out_d, out_s, k):
    nt = 0
    for j in range(q_indptr[q], q_indptr[q + 1]):
        nt = _accumulate(indptr, docs, tfs, scores, norms, norm_inv, idf, q_term[j], q_boost[j],
                         acc, seen, touched, nt)
    _select(q, acc, seen, touched, nt, ex_indptr, ex_docs, rank, by_rank, hs, hd, out_d, out_s, k)


@nb.njit(parallel=True, cache=True)
def search_flat(indptr, docs, tfs, scores, norms, norm_inv, idf, q_indptr, q_term, q_boost,
                ex_indptr, ex_docs, rank, by_rank, n_docs, k, n_chunks):
    nq = len(q_indptr) - 1
    out_d = np.full((nq, k), -1, np.int32)
    out_s = np.full((nq, k), -np.inf, np.float32)
    chunk = (nq + n_chunks - 1) // n_chunks
    for c in nb.prange(n_chunks):
        acc = np.zeros(n_docs, np.float64)
        seen = np.zeros(n_docs, np.bool_)
        touched = np.empty(n_docs, np.int32)
        hs = np.empty(k, np.float32)
        hd = np.empty(k, np.int32)
        for q in range(c * chunk, min(nq, (c + 1) * chunk)):
            _query_flat(q, indptr, docs, tfs, scores, norms, norm_inv, idf, q_indptr, q_term, q_boost,
                        ex_indptr, ex_docs, rank, by_rank, acc, seen, touched, hs, hd, out_d, out_s, k)
    return out_d, out_s


@nb.njit(cache=True, nogil=True)
def search_flat_serial(indptr, docs, tfs, scores, norms, norm_inv, idf, q_indptr, q_term, q_boost,
                       ex_indptr, ex_docs, rank, by_rank, n_docs, k):
    """One thread, no parallel region: waking numba's thread pool costs more than a small batch."""
    nq = len(q_indptr) - 1
    out_d = np.full((nq, k), -1, np.int32)
    out_s = np.full((nq, k), -np.inf, np.float32)
    acc = np.zeros(n_docs, np.float64)
    seen = np.zeros(n_docs, np.bool_)
    touched = np.empty(n_docs, np.int32)
    hs = np.empty(k, np.float32)
    hd = np.empty(k, np.int32)
    for q in range(nq):
        _query_flat(q, indptr, docs, tfs, scores, norms, norm_inv, idf, q_indptr, q_term, q_boost,
                    ex_indptr, ex_docs, rank, by_rank, acc, seen, touched, hs, hd, out_d, out_s, k)
    return out_d, out_s


@nb.njit(parallel=True, cache=True)
def search_two_fields(indptr0, docs0, tfs0, scores0, norms0, norm_inv0, idf0,
                      indptr1, docs1, tfs1, scores1, norms1, norm_inv1, idf1,
                      q_indptr, q_field, q_term, q_boost, ex_indptr, ex_docs, rank, by_rank, n_docs, k, n_chunks):
    nq = len(q_indptr) - 1
    out_d = np.full((nq, k), -1, np.int32)
    out_s = np.full((nq, k), -np.inf, np.float32)
    chunk = (nq + n_chunks - 1) // n_chunks
    for c in nb.prange(n_chunks):
        acc0 = np.zeros(n_docs, np.float64)
        acc1 = np.zeros(n_docs, np.float64)
        seen0 = np.zeros(n_docs, np.bool_)
        seen1 = np.zeros(n_docs, np.bool_)
        seen = np.zeros(n_docs, np.bool_)
        touched0 = np.empty(n_docs, np.int32)
        touched1 = np.empty(n_docs, np.int32)
        touched = np.empty(n_docs, np.int32)
        hs = np.empty(k, np.float32)
        hd = np.empty(k, np.int32)
        for q in range(c * chunk, min(nq, (c + 1) * chunk)):
            n0 = 0
            n1 = 0
            for j in range(q_indptr[q], q_indptr[q + 1]):
                if q_field[j] == 0:
                    n0 = _accumulate(indptr0, docs0, tfs0, scores0, norms0, norm_inv0, idf0, q_term[j],
                                     q_boost[j], acc0, seen0, touched0, n0)
                else:
                    n1 = _accumulate(indptr1, docs1, tfs1, scores1, norms1, norm_inv1, idf1, q_term[j],
                                     q_boost[j], acc1, seen1, touched1, n1)
            # Each field query's score is cast to float; the outer disjunction sums them in double.
            nt = 0
            for i in range(n0):
                d = touched0[i]
                acc0[d] = np.float64(np.float32(acc0[d]))
                seen[d] = True
                touched[nt] = d
                nt += 1
                seen0[d] = False
            for i in range(n1):
                d = touched1[i]
                acc0[d] += np.float64(np.float32(acc1[d]))
                acc1[d] = 0.0
                seen1[d] = False
                if not seen[d]:
                    seen[d] = True
                    touched[nt] = d
                    nt += 1
            _select(q, acc0, seen, touched, nt, ex_indptr, ex_docs, rank, by_rank, hs, hd, out_d, out_s, k)
    return out_d, out_s
