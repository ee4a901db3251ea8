"""Reward-model losses and metrics, against hand-computed values."""

import math

import pytest
import torch

from align.losses import (LLAMA2_MARGIN_LARGE, comparison_mask, expected_calibration_error, kwise_loss, pair_counts,
                          pairwise_loss, reward_l2, strength_to_margin)


def _nls(x: float) -> float:
    """-log σ(x) by hand."""
    return math.log1p(math.exp(-x))


def test_pairwise_loss_by_hand():
    rc, rr = torch.tensor([2.0, 0.0, -1.0]), torch.tensor([1.0, 0.0, 1.0])
    expected = [_nls(1.0), _nls(0.0), _nls(-2.0)]  # diffs 1, 0 (= log 2), -2
    torch.testing.assert_close(pairwise_loss(rc, rr, reduction="none"), torch.tensor(expected))
    torch.testing.assert_close(pairwise_loss(rc, rr), torch.tensor(sum(expected) / 3))


def test_kwise_equals_mean_of_its_pairwise_losses():
    r = torch.tensor([[1.5, 0.2, -0.3, 0.9]])  # K=4, listed best first
    ranks = torch.tensor([[0, 1, 2, 3]])
    # C(4,2) = 6 comparisons: (0,1) (0,2) (0,3) (1,2) (1,3) (2,3); diffs 1.3 1.8 0.6 0.5 -0.7 -1.2
    by_hand = sum(_nls(d) for d in (1.3, 1.8, 0.6, 0.5, -0.7, -1.2)) / 6
    torch.testing.assert_close(kwise_loss(r, ranks), torch.tensor(by_hand))
    i, j = zip(*[(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)])
    torch.testing.assert_close(kwise_loss(r, ranks), pairwise_loss(r[0, list(i)], r[0, list(j)]))


def test_kwise_averages_per_prompt_then_over_prompts():
    # Row 0: K=3 (3 pairs); row 1: K=2 padded (1 pair). InstructGPT weighs each prompt once.
    r = torch.tensor([[1.0, 0.0, -1.0], [0.5, 1.5, 99.0]])
    ranks = torch.tensor([[0, 1, 2], [0, 1, -1]])
    row0 = (_nls(1.0) + _nls(2.0) + _nls(1.0)) / 3
    row1 = _nls(-1.0)  # the padded reward (99) is ignored
    torch.testing.assert_close(kwise_loss(r, ranks, reduction="none"), torch.tensor([row0, row1]))
    torch.testing.assert_close(kwise_loss(r, ranks), torch.tensor((row0 + row1) / 2))


def test_kwise_reduces_to_pairwise_at_k2():
    g = torch.Generator().manual_seed(0)
    r = torch.randn(8, 2, generator=g)
    ranks = torch.tensor([[0, 1]] * 8)
    torch.testing.assert_close(kwise_loss(r, ranks), pairwise_loss(r[:, 0], r[:, 1]))
    # order of listing does not matter, only the ranks do
    torch.testing.assert_close(kwise_loss(r.flip(1), ranks.flip(1)), pairwise_loss(r[:, 0], r[:, 1]))


def test_kwise_is_invariant_to_a_constant_shift():
    g = torch.Generator().manual_seed(1)
    r = torch.randn(4, 5, generator=g)
    ranks = torch.stack([torch.randperm(5, generator=g) for _ in range(4)])
    torch.testing.assert_close(kwise_loss(r + 7.25, ranks), kwise_loss(r, ranks))
    # but the L2 term is not: it is what pins the level
    assert float(reward_l2(r + 7.25)) > float(reward_l2(r))


def test_ties_are_not_compared_and_all_tied_rows_are_an_error():
    ranks = torch.tensor([[0, 0, 1]])  # responses 0 and 1 tie, both beat 2
    mask = comparison_mask(ranks)[0]
    assert mask.nonzero().tolist() == [[0, 2], [1, 2]]
    r = torch.tensor([[3.0, -5.0, 0.0]])
    torch.testing.assert_close(kwise_loss(r, ranks), torch.tensor((_nls(3.0) + _nls(-5.0)) / 2))
    with pytest.raises(ValueError, match="no comparison"):
        kwise_loss(r, torch.tensor([[1, 1, -1]]))


def test_kwise_gradient_flows_to_every_valid_reward_only():
    r = torch.tensor([[0.3, 0.1, 0.7]], requires_grad=True)
    kwise_loss(r, torch.tensor([[0, 1, -1]])).backward()
    g = r.grad[0]
    assert g[0] < 0 < g[1] and g[2] == 0  # chosen pushed up, rejected down, padding untouched


def test_margin_shapes_and_values():
    r = torch.tensor([[1.0, 0.0, -1.0]])
    ranks = torch.tensor([[0, 1, 2]])
    margins = torch.zeros(1, 3, 3)
    margins[0, 0, 1], margins[0, 0, 2], margins[0, 1, 2] = 1.0, 0.5, 2.0
    # Llama 2: -log σ(r_w - r_l - m): diffs become 1-1=0, 2-0.5=1.5, 1-2=-1
    expected = (_nls(0.0) + _nls(1.5) + _nls(-1.0)) / 3
    torch.testing.assert_close(kwise_loss(r, ranks, margins), torch.tensor(expected))
    # a margin only ever raises the loss of a pair (the chosen reward must win by more)
    assert float(kwise_loss(r, ranks, margins)) > float(kwise_loss(r, ranks))
    # margins on padded or reversed entries are ignored
    margins[0, 1, 0] = margins[0, 2, 0] = 100.0
    torch.testing.assert_close(kwise_loss(r, ranks, margins), torch.tensor(expected))
    # pairwise margin broadcasts per pair
    torch.testing.assert_close(pairwise_loss(torch.tensor([1.0, 1.0]), torch.tensor([0.0, 0.0]),
                                             torch.tensor([1.0, 0.0]), reduction="none"),
                               torch.tensor([_nls(0.0), _nls(1.0)]))


def test_strength_to_margin():
    assert strength_to_margin("significantly better") == 1.0  # Llama 2 Table 28, small
    assert strength_to_margin("Slightly_Better") == pytest.approx(1 / 3)  # case and separators ignored
    assert strength_to_margin("better", table=LLAMA2_MARGIN_LARGE) == 2.0
    assert strength_to_margin("negligibly-better", scale=5.0) == 0.0
    assert strength_to_margin(None) == 0.0
    assert strength_to_margin(3, scale=0.5) == 1.5  # numbers: scale x strength
    assert strength_to_margin("2", kind="linear", scale=0.25) == 0.5
    assert strength_to_margin("better", kind="none") == 0.0
    with pytest.raises(ValueError, match="known: .*slightly better"):
        strength_to_margin("much better")
    with pytest.raises(ValueError, match="numeric"):
        strength_to_margin("better", kind="linear")


def test_accuracy_counts_ties_separately():
    rc = [2.0, 1.0, 0.5, 0.0, 3.0]
    rr = [1.0, 1.0, 0.7, 0.0, -1.0]
    # pair 1: correct; 2: tie; 3: wrong; 4: tie; 5: correct
    c = pair_counts(rc, rr)
    assert (c["pairs"], c["correct"], c["ties"]) == (5, 2, 2)
    assert c["accuracy"] == pytest.approx(2 / 5)
    assert c["accuracy_ties_half"] == pytest.approx(3 / 5)
    assert c["mean_margin"] == pytest.approx((1.0 + 0.0 - 0.2 + 0.0 + 4.0) / 5)
    # a tolerance turns near-ties into ties
    assert pair_counts([1.0], [0.99], tie_tol=0.05)["ties"] == 1


def test_ece_hand_example():
    # diffs → p = σ(d): d=0 → 0.5; d=ln 3 → 0.75; d=-ln 3 → 0.25 (a wrong, confident pair)
    rc = [0.0, math.log(3), 0.0]
    rr = [0.0, 0.0, math.log(3)]
    # symmetrised items (p, 1) and (1-p, 0):
    #   pair 1: (0.5, 1), (0.5, 0)  → bin 5: mean p 0.5, outcome 0.5 → gap 0
    #   pair 2: (0.75, 1), (0.25, 0) and pair 3: (0.25, 1), (0.75, 0)
    #   bin 7: {0.75 (1), 0.75 (0)} → mean p 0.75, outcome 0.5 → gap 0.25, weight 2/6
    #   bin 2: {0.25 (0), 0.25 (1)} → mean p 0.25, outcome 0.5 → gap 0.25, weight 2/6
    assert expected_calibration_error(rc, rr) == pytest.approx(2 / 6 * 0.25 * 2)
    # a perfectly separated, confident RM: p ≈ 1 for every pair → items (1, 1) and (0, 0) → ECE ≈ 0
    assert expected_calibration_error([50.0] * 4, [0.0] * 4) == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(expected_calibration_error([], []))


def test_soft_label_loss_is_the_cross_entropy_of_sigmoid_against_p():
    # rewards (1, 0) with p = 0.8 that the first is preferred; d = 1:
    #   -[0.8 log σ(1) + 0.2 log σ(-1)] = 0.8 * 0.3132617 + 0.2 * 1.3132617 = 0.5132617  (= -log σ(d) + (1-p) d)
    r = torch.tensor([[1.0, 0.0]])
    ranks = torch.tensor([[0, 1]])
    p = torch.tensor([[[1.0, 0.8], [1.0, 1.0]]])  # read at [0, 0, 1]: response 0 over response 1
    assert kwise_loss(r, ranks, targets=p).item() == pytest.approx(0.5132617, abs=1e-6)
    # p = 1 is the hard label; p = 0.5 is minimised at d = 0 (loss log 2 there)
    assert kwise_loss(r, ranks, targets=torch.ones(1, 2, 2)).item() == pytest.approx(pairwise_loss(r[:, 0], r[:, 1]).item())
    half = torch.full((1, 2, 2), 0.5)
    assert kwise_loss(torch.zeros(1, 2), ranks, targets=half).item() == pytest.approx(math.log(2))
    d = torch.tensor(0.3, requires_grad=True)
    kwise_loss(torch.stack([d, torch.tensor(0.0)])[None], ranks, targets=half).backward()
    assert d.grad.item() == pytest.approx(torch.sigmoid(torch.tensor(0.3)).item() - 0.5)  # σ(d) - p


def test_soft_labels_are_read_from_pair_rows_and_survive_grouping(tmp_path):
    from align.preference_data import group_rankings, row_from_record
    from indexer.data import DataError

    row = row_from_record({"prompt": "Hi?", "chosen": "Hello!", "rejected": "Go away.", "probability": 0.7}, "x.jsonl", 3)
    assert row.probabilities == {(0, 1): 0.7} and row.pairs()[0].probabilities == {(0, 1): 0.7}
    with pytest.raises(DataError, match=r"x\.jsonl.*line 4.*probability"):
        row_from_record({"prompt": "Hi?", "chosen": "a", "rejected": "b", "probability": 1.5}, "x.jsonl", 4)
    # three pairs of one prompt forming a total order a > b > c merge into one K=3 row, labels carried
    recs = [("a", "b", 0.9), ("b", "c", 0.6), ("a", "c", 0.8)]
    rows = [row_from_record({"prompt": "Q", "chosen": c, "rejected": r, "probability": p}, "x.jsonl", n)
            for n, (c, r, p) in enumerate(recs, 1)]
    merged, stats = group_rankings(rows)
    assert stats["groups_merged"] == 1 and merged[0].responses == ["a", "b", "c"]
    assert merged[0].probabilities == {(0, 1): 0.9, (1, 2): 0.6, (0, 2): 0.8}
