"""trec_eval semantics: our wrapper against direct pytrec_eval, hand-computed nDCG, run files, significance."""

import math

import numpy as np
import pytest
import pytrec_eval

from evals.trec import cut_run, evaluate_run, paired_tests, read_run, write_run
from indexer.data import DataError

QRELS = {
    "q1": {"d1": 2, "d2": 1, "d5": 1, "d9": 0},
    "q2": {"d11": 1},
    "q3": {"a": 1},
    "q4": {"d1": 1},  # judged but never retrieved: scores 0 (trec_eval -c)
}
RUN = {
    "q1": {"d3": 3.0, "d1": 2.5, "d2": 2.0, "d4": 1.0, "d5": 0.5},
    "q2": {f"d{i}": 20.0 - i for i in range(1, 13)},  # d11 is at rank 11
    "q3": {"a": 1.0, "b": 1.0, "c": 0.5},  # tie: trec_eval breaks it by doc id descending -> b before a
    "q9": {"d1": 1.0},  # not judged: ignored
}


def test_matches_direct_pytrec_eval_per_query():
    agg, per = evaluate_run(QRELS, RUN, ["ndcg@10", "recall@100", "map", "ndcg@3"])
    direct = pytrec_eval.RelevanceEvaluator(QRELS, {"ndcg_cut.10", "ndcg_cut.3", "recall.100", "map"}).evaluate(RUN)
    for q in ("q1", "q2", "q3"):
        assert per[q]["ndcg@10"] == pytest.approx(direct[q]["ndcg_cut_10"], abs=1e-12)
        assert per[q]["ndcg@3"] == pytest.approx(direct[q]["ndcg_cut_3"], abs=1e-12)
        assert per[q]["recall@100"] == pytest.approx(direct[q]["recall_100"], abs=1e-12)
        assert per[q]["map"] == pytest.approx(direct[q]["map"], abs=1e-12)
    assert per["q4"] == {"ndcg@10": 0.0, "recall@100": 0.0, "map": 0.0, "ndcg@3": 0.0}
    assert "q9" not in per and agg["queries"] == 4
    assert agg["ndcg@10"] == pytest.approx(sum(direct[q]["ndcg_cut_10"] for q in ("q1", "q2", "q3")) / 4)


def test_ndcg_at_3_by_hand():
    # q1 ranking: d3 (rel 0), d1 (rel 2), d2 (rel 1). trec_eval gain = grade, discount log2(rank + 1):
    #   DCG@3  = 0/log2(2) + 2/log2(3) + 1/log2(4)            = 1.261860 + 0.5 = 1.761860
    #   IDCG@3 = 2/log2(2) + 1/log2(3) + 1/log2(4) (2, 1, 1)  = 2 + 0.630930 + 0.5 = 3.130930
    #   nDCG@3 = 1.761860 / 3.130930 = 0.562727
    _, per = evaluate_run(QRELS, RUN, ["ndcg@3"])
    assert per["q1"]["ndcg@3"] == pytest.approx(0.562727, abs=1e-6)
    assert per["q1"]["ndcg@3"] == pytest.approx((2 / math.log2(3) + 0.5) / (2 + 1 / math.log2(3) + 0.5))


def test_mrr_at_10_is_recip_rank_on_the_run_cut_at_10():
    _, per = evaluate_run(QRELS, RUN, ["mrr@10", "recall@1000"])
    assert per["q1"]["mrr@10"] == 0.5          # first relevant (d1) at rank 2
    assert per["q2"]["mrr@10"] == 0.0          # d11 at rank 11: outside the cut (uncut recip_rank is 1/11)
    assert per["q3"]["mrr@10"] == 0.5          # tie a/b broken by doc id descending: b, then a
    direct = pytrec_eval.RelevanceEvaluator(QRELS, {"recip_rank"}).evaluate(RUN)
    assert direct["q2"]["recip_rank"] == pytest.approx(1 / 11)
    top10 = {q: dict(sorted(d.items(), key=lambda kv: -kv[1])[:10]) for q, d in RUN.items() if q != "q3"}
    cut = pytrec_eval.RelevanceEvaluator(QRELS, {"recip_rank"}).evaluate(top10)
    assert per["q2"]["mrr@10"] == cut["q2"]["recip_rank"]
    assert list(cut_run({"q": {"a": 1.0, "b": 1.0, "c": 2.0}}, 2)["q"]) == ["c", "b"]


def test_run_file_round_trip_and_errors(tmp_path):
    path = tmp_path / "run.trec"
    write_run(path, RUN, tag="t")
    first = path.read_text().splitlines()[0]
    assert first == "q1 Q0 d3 1 3.000000 t"
    assert read_run(path) == {q: {d: pytest.approx(s, abs=1e-6) for d, s in docs.items()} for q, docs in RUN.items()}
    bad = tmp_path / "bad.trec"
    bad.write_text("q1 Q0 d1 1 2.0 t\nq1 Q0 d2 2 high t\n")
    with pytest.raises(DataError, match=r"bad.trec, line 2 \(field 'score'\)"):
        read_run(bad)
    bad.write_text("q1 Q0 d1 1 2.0\n")
    with pytest.raises(DataError, match="line 1.*6 columns"):
        read_run(bad)


def test_paired_tests():
    from scipy import stats

    rng = np.random.default_rng(1)
    a = {f"q{i}": float(v) for i, v in enumerate(rng.uniform(0, 1, 50))}
    b_better = {q: min(1.0, v + 0.2) for q, v in a.items()}
    out = paired_tests(a, b_better, n_permutations=2000, seed=3)
    x = np.array([a[q] for q in sorted(a)])
    y = np.array([b_better[q] for q in sorted(a)])
    assert out["p_ttest"] == pytest.approx(stats.ttest_rel(y, x).pvalue)
    assert out["delta"] > 0.1 and out["p_randomization"] == pytest.approx(1 / 2001)  # never exceeded
    assert paired_tests(a, b_better, n_permutations=2000, seed=3) == out  # deterministic with the seed
    noise = {q: v + rng.normal(0, 0.01) for q, v in a.items()}
    same = paired_tests(a, noise, n_permutations=2000, seed=3)
    assert same["p_randomization"] > 0.05 and same["p_ttest"] > 0.05
    # identical systems: nothing to test, p = 1
    assert paired_tests(a, a)["p_randomization"] == 1.0 and paired_tests(a, a)["p_ttest"] == 1.0
