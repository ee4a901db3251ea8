"""T5 span corruption: T5's length and count formulas, hand-built examples, exact reconstruction, resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pretrain.data import TokenWriter, open_tokens
from pretrain.span_corruption import (SpanCorruptionSampler, compute_input_and_target_lengths, corrupt_spans,
                                      noise_counts, random_spans_noise_mask, sentinel_tokens, shift_right)


@pytest.mark.parametrize("inputs_length, density, mean, expected", [
    # 568 raw: round(85.2)=85 noise, 483 kept, round(85/3)=28 spans -> 483+28+1 = 512 in, 85+28+1 = 114 out;
    # 569 raw would give 484+28+1 = 513 inputs (HF's run_t5_mlm_flax numbers for 512)
    (512, 0.15, 3.0, (568, 114)),
    # 70 raw: round(10.5)=10 noise (half to even), 60 kept, round(3.33)=3 spans -> 64 in, 14 out;
    # 71 raw: round(10.65)=11 noise, 60 kept, round(3.67)=4 spans -> 65 inputs, too many
    (64, 0.15, 3.0, (70, 14)),
    # 34 raw: round(5.1)=5 noise, 29 kept, round(1.67)=2 spans -> 32 in, 8 out; 35 raw -> 33 inputs
    (32, 0.15, 3.0, (34, 8)),
    # 23 raw: round(11.5)=12 noise, 11 kept, 4 spans -> 16 in, 17 out > 16: HF's density-0.5 hack
    # steps back to 22 raw (11 noise, 4 spans: 16 in, 16 out)
    (16, 0.5, 3.0, (22, 16)),
])
def test_input_and_target_lengths_follow_t5(inputs_length, density, mean, expected):
    assert compute_input_and_target_lengths(inputs_length, density, mean) == expected


@pytest.mark.parametrize("length, density, mean, expected", [
    (568, 0.15, 3.0, (85, 28)),  # round(85.2) = 85 noise tokens, round(28.33) = 28 spans
    (70, 0.15, 3.0, (10, 3)),  # round(10.5) = 10 (half to even, as tf.round), round(3.33) = 3
    (100, 0.3, 5.0, (30, 6)),  # 30 noise tokens, 30 / 5 = 6 spans
    (10, 0.01, 3.0, (1, 1)),  # round(0.1) = 0 -> at least one noise token, at least one span
    (4, 0.99, 1.0, (3, 1)),  # at most length - 1 noise tokens; 3 spans need 3 kept tokens, 1 is left
])
def test_noise_counts_follow_t5(length, density, mean, expected):
    assert noise_counts(length, density, mean) == expected


@pytest.mark.parametrize("length, density, mean", [(568, 0.15, 3.0), (70, 0.15, 3.0), (100, 0.3, 5.0), (34, 0.15, 3.0)])
def test_noise_mask_has_t5s_noise_and_span_counts(length, density, mean):
    num_noise, num_spans = noise_counts(length, density, mean)
    g = torch.Generator().manual_seed(0)
    masks = torch.stack([random_spans_noise_mask(length, density, mean, g) for _ in range(200)])
    assert masks.shape == (200, length)
    assert (masks.sum(1) == num_noise).all()
    starts = masks & ~torch.nn.functional.pad(masks[:, :-1], (1, 0), value=False)
    assert (starts.sum(1) == num_spans).all()
    assert not masks[:, 0].any() and masks[:, -1].all()  # non-noise first, noise last (no random roll)
    assert len({tuple(m.tolist()) for m in masks}) > 50  # random boundaries (length 34 has 4 x 28 = 112 masks)


def test_corrupt_spans_by_hand():
    #            pos:  0    1    2    3    4    5    6    7    8    9
    tokens = torch.tensor([[100, 101, 102, 103, 104, 105, 106, 107, 108, 109]])
    noise = torch.tensor([[0, 0, 1, 1, 0, 0, 0, 1, 0, 1]], dtype=torch.bool)
    sentinels, eos = torch.tensor([50, 51, 52, 53]), 1
    inputs, targets = corrupt_spans(tokens, noise, sentinels, eos)
    # noise spans [102 103], [107], [109] become sentinels 50, 51, 52 in the inputs, then EOS
    assert inputs.tolist() == [[100, 101, 50, 104, 105, 106, 51, 108, 52, 1]]
    # the targets: each sentinel, then the tokens it replaced, then EOS
    assert targets.tolist() == [[50, 102, 103, 51, 107, 52, 109, 1]]
    # decoder inputs: the targets shifted right behind the start token (pad, as T5)
    assert shift_right(targets, 7).tolist() == [[7, 50, 102, 103, 51, 107, 52, 109]]


def test_paper_example():
    """Raffel et al. 2020, Figure 2: 'Thank you <X> me to your party <Y> week.'"""
    words = "Thank you for inviting me to your party last week .".split()
    vocab = {w: i + 10 for i, w in enumerate(words)}
    tokens = torch.tensor([[vocab[w] for w in words]])
    noise = torch.tensor([[w in ("for", "inviting", "last") for w in words]])
    inputs, targets = corrupt_spans(tokens, noise, torch.tensor([0, 1, 2]), eos_id=9)
    names = {**{i: w for w, i in vocab.items()}, 0: "<X>", 1: "<Y>", 2: "<Z>", 9: "</s>"}
    assert " ".join(names[i] for i in inputs[0].tolist()) == "Thank you <X> me to your party <Y> week . </s>"
    # the paper's targets; the last kept span ('week .') gets the closing sentinel <Z>
    assert " ".join(names[i] for i in targets[0].tolist()) == "<X> for inviting <Y> last <Z> </s>"


def _reconstruct(inputs: list[int], targets: list[int], sentinel_ids: list[int], eos: int) -> list[int]:
    """Put each sentinel's target span back in its place in the inputs (both end with EOS)."""
    assert inputs[-1] == eos and targets[-1] == eos
    spans, current = {}, None
    for t in targets[:-1]:
        if t in sentinel_ids:
            current = t
            spans[current] = []
        else:
            spans[current].append(t)
    out = []
    for t in inputs[:-1]:
        out.extend(spans[t] if t in sentinel_ids else [t])
    return out


@pytest.fixture()
def stream(tmp_path):
    # A token stream over ids 0..59 with EOS (id 60) between documents, as write_documents produces.
    rng = np.random.default_rng(0)
    ids = []
    for _ in range(200):
        ids += rng.integers(0, 60, size=rng.integers(5, 40)).tolist() + [60]
    with TokenWriter(tmp_path / "tok", vocab_size=70, eos_id=60) as w:
        w.add(ids)
    return open_tokens(tmp_path / "tok"), np.asarray(ids)


def _sampler(stream_file, seed=0, **kw):
    args = dict(batch_size=6, input_length=32, seed=seed, sentinel_ids=list(range(69, 61, -1)), eos_id=60,
                pad_id=61)
    args.update(kw)
    return SpanCorruptionSampler([stream_file], None, **args)


def test_sampler_reconstructs_the_raw_windows_exactly(stream):
    tf, ids = stream
    s = _sampler(tf)
    assert (s.tokens_length, s.targets_length) == (34, 8)
    sentinels = list(range(69, 61, -1))
    for _ in range(20):
        enc, dec, labels, enc_mask = s.next_batch()
        assert enc_mask is None  # every row fills the encoder exactly: nothing to mask
        assert enc.shape == (6, 32) and labels.shape == dec.shape == (6, 8)
        assert (dec[:, 0] == 61).all() and torch.equal(dec[:, 1:], labels[:, :-1])
        for row_in, row_out in zip(enc.tolist(), labels.tolist()):
            raw = _reconstruct(row_in, row_out, sentinels, eos=60)
            assert len(raw) == 34
            # the window occurs in the stream: find it (documents' EOS ids stay ordinary tokens)
            starts = np.flatnonzero(ids[:len(ids) - 33] == raw[0])
            assert any(ids[i:i + 34].tolist() == raw for i in starts)


def test_sentinels_come_in_order(stream):
    tf, _ = stream
    s = _sampler(tf, input_length=64)  # 70 raw tokens: 3 spans per row
    sentinels = list(range(69, 61, -1))  # <extra_id_0> = 69, <extra_id_1> = 68, ... (T5's order)
    enc, _, labels, _ = s.next_batch()
    for row in enc.tolist() + labels.tolist():
        assert [t for t in row if t in sentinels] == sentinels[:3]
    assert (labels[:, 0] == 69).all()  # the targets open with <extra_id_0>


def test_sampler_state_replays_windows_and_masks(stream):
    tf, _ = stream
    a = _sampler(tf, seed=5)
    a.next_batch()
    state = a.state_dict()
    expected = [a.next_batch() for _ in range(3)]
    b = _sampler(tf, seed=99)
    b.load_state_dict(state)
    for want in expected:
        got = b.next_batch()
        assert all(torch.equal(x, y) for x, y in zip(want[:3], got[:3]))


def test_errors_name_the_problem(stream, tmp_path):
    tf, _ = stream
    with pytest.raises(ValueError, match="only 1 sentinel"):
        _sampler(tf, input_length=64, sentinel_ids=[69])
    with TokenWriter(tmp_path / "packed", vocab_size=70, eos_id=60, seq_len=35) as w:
        w.add(np.arange(70) % 60)
    with pytest.raises(ValueError, match="token streams"):
        _sampler(open_tokens(tmp_path / "packed"))
    assert sentinel_tokens(3) == ["<extra_id_0>", "<extra_id_1>", "<extra_id_2>"]
