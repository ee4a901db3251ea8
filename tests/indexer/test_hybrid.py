"""Fusion on hand-computed examples, and (slow) SciFact hybrid >= the best single retriever."""

from __future__ import annotations

import numpy as np
import pytest

from indexer.hybrid import HybridRetriever, fuse, minmax_fusion, reciprocal_rank_fusion
from indexer.results import NO_DOC, Results

# Two runs for two queries. Query 0: bm25 ranks d1 > d2 > d3, dense ranks d3 > d1 > d4.
BM25 = Results.from_lists([["d1", "d2", "d3"], ["x"]], [[12.0, 8.0, 4.0], [3.0]])
DENSE = Results.from_lists([["d3", "d1", "d4"], []], [[0.9, 0.7, 0.6], []], k=3)


def test_rrf_hand_computed():
    fused = reciprocal_rank_fusion([BM25, DENSE], k=4, rrf_k=60)
    # d1: 1/61 + 1/62 = 0.0325224   (rank 1 in bm25, rank 2 in dense)
    # d3: 1/63 + 1/61 = 0.0322664   (rank 3, rank 1)
    # d2: 1/62        = 0.0161290
    # d4: 1/63        = 0.0158730
    assert fused.ids[0].tolist() == ["d1", "d3", "d2", "d4"]
    np.testing.assert_allclose(fused.scores[0], [1 / 61 + 1 / 62, 1 / 63 + 1 / 61, 1 / 62, 1 / 63], rtol=1e-6)
    # query 1: only bm25 has a hit; the rest is padding
    assert fused.ids[1].tolist() == ["x", NO_DOC, NO_DOC, NO_DOC]
    np.testing.assert_allclose(fused.scores[1, 0], 1 / 61, rtol=1e-6)
    assert np.all(np.isneginf(fused.scores[1, 1:]))


def test_rrf_constant_and_weights():
    # rrf_k=0: d1 = 1/1 + 1/2 = 1.5, d3 = 1/3 + 1/1 = 1.3333, d2 = 1/2, d4 = 1/3
    fused = reciprocal_rank_fusion([BM25, DENSE], k=2, rrf_k=0)
    assert fused.ids[0].tolist() == ["d1", "d3"]
    np.testing.assert_allclose(fused.scores[0], [1.5, 4 / 3], rtol=1e-6)
    # dense weighted 3x, rrf_k=0: d3 = 1/3 + 3/1 = 3.3333, d1 = 1/1 + 3/2 = 2.5, d4 = 3/3 = 1.0, d2 = 0.5
    fused = reciprocal_rank_fusion([BM25, DENSE], k=4, rrf_k=0, weights=[1, 3])
    assert fused.ids[0].tolist() == ["d3", "d1", "d4", "d2"]
    np.testing.assert_allclose(fused.scores[0], [10 / 3, 2.5, 1.0, 0.5], rtol=1e-6)


def test_minmax_hand_computed():
    fused = minmax_fusion([BM25, DENSE], k=4)
    # bm25 normalised: d1 (12-4)/8 = 1, d2 (8-4)/8 = 0.5, d3 0
    # dense normalised: d3 (0.9-0.6)/0.3 = 1, d1 (0.7-0.6)/0.3 = 1/3, d4 0
    # sums: d1 4/3, d3 1, d2 0.5, d4 0
    assert fused.ids[0].tolist() == ["d1", "d3", "d2", "d4"]
    np.testing.assert_allclose(fused.scores[0], [4 / 3, 1.0, 0.5, 0.0], rtol=1e-5)
    # a list with one hit (max == min) normalises to 1
    assert fused.ids[1, 0] == "x" and fused.scores[1, 0] == pytest.approx(1.0)
    # weights 0.2 / 0.8: d1 0.2 + 0.8/3 = 0.46667, d3 0.8, d2 0.1, d4 0
    fused = minmax_fusion([BM25, DENSE], k=4, weights=[0.2, 0.8])
    assert fused.ids[0].tolist() == ["d3", "d1", "d2", "d4"]
    np.testing.assert_allclose(fused.scores[0], [0.8, 0.2 + 0.8 / 3, 0.1, 0.0], rtol=1e-5)


def test_ties_break_by_id_and_three_lists():
    a = Results.from_lists([["b", "a"]], [[1.0, 0.5]])
    b = Results.from_lists([["a", "b"]], [[1.0, 0.5]])
    c = Results.from_lists([["c"]], [[7.0]])
    # a and b both get 1/61 + 1/62 -> tie, broken by id; c gets 1/61
    fused = fuse([a, b, c], k=3, method="rrf")
    assert fused.ids[0].tolist() == ["a", "b", "c"]


def test_errors():
    with pytest.raises(ValueError, match="same queries"):
        reciprocal_rank_fusion([BM25, Results.from_lists([["d1"]], [[1.0]])])
    with pytest.raises(ValueError, match="weights"):
        minmax_fusion([BM25, DENSE], weights=[1.0])
    with pytest.raises(ValueError, match="--fusion"):
        fuse([BM25, DENSE], method="borda")
    with pytest.raises(ValueError, match="at least two"):
        HybridRetriever([object()])


class FixedRun:
    """A retriever over a fixed run, keeping the top k like any engine."""

    def __init__(self, results):
        self.results = results
        self.asked = []

    def retrieve(self, queries, k, exclude=None):
        self.asked.append(k)
        rows = [[h for h in self.results.hits(i) if not exclude or h.doc_id not in (exclude[i] or ())][:k]
                for i in range(len(queries))]
        return Results.from_lists([[h.doc_id for h in r] for r in rows], [[h.score for h in r] for r in rows], k=k)


def test_hybrid_retriever_asks_each_retriever_for_depth():
    a, b = FixedRun(BM25), FixedRun(DENSE)
    fused = HybridRetriever([a, b], depth=50).retrieve(["q0", "q1"], k=2, exclude=[{"d1"}, None])
    assert a.asked == [50] and b.asked == [50]
    # without d1: d3 = 1/62 + 1/61 (bm25 rank 2, dense rank 1), d2 = 1/61
    assert fused.ids[0].tolist() == ["d3", "d2"]


@pytest.mark.slow
def test_scifact_hybrid_at_least_best_single(data_dir, tmp_path):
    """RRF(BM25, MiniLM) on the SciFact test split >= max(BM25, dense) nDCG@10 (query's own id removed)."""
    import pytrec_eval

    from indexer.bm25 import BM25 as Engine
    from indexer.data import beir_paths, load_qrels, load_queries, read_corpus
    from indexer.dense import DenseIndex

    docs = read_corpus("scifact")
    _, qpath, rpath = beir_paths("scifact")
    queries, qrels = load_queries(qpath), load_qrels(rpath)
    qids = [q for q in queries if q in qrels]
    texts, exclude = [queries[q] for q in qids], [{q} for q in qids]
    bm25 = Engine()
    bm25.index(docs)
    dense = DenseIndex.build(docs, tmp_path / "dense", show_progress=False)
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut_10"})

    def ndcg(res):
        return float(np.mean([v["ndcg_cut_10"] for v in evaluator.evaluate(res.to_run(qids)).values()]))

    runs = [bm25.retrieve(texts, k=1000, exclude=exclude), dense.retrieve(texts, k=1000, exclude=exclude)]
    singles = [ndcg(r) for r in runs]
    fused = ndcg(reciprocal_rank_fusion(runs, k=1000))
    assert fused >= max(singles), (fused, singles)
