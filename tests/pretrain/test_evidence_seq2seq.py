"""Evidence through the encoder: examples found from the loss mask, batches by hand, resume, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pretrain.data import DataFormatError, TokenWriter, open_tokens
from pretrain.evidence_seq2seq import EvidenceSeq2SeqSampler, find_examples

EOS, PAD = 0, 99


def _rows(tmp_path, rows, name="rows"):
    """A packed, loss-masked folder from ``rows``: lists of (tokens, mask) pairs, one list per row."""
    seq_len = len(rows[0][0])
    with TokenWriter(tmp_path / name, vocab_size=100, eos_id=EOS, seq_len=seq_len, with_loss_mask=True) as w:
        for toks, mask in rows:
            w.add(toks, mask)
    return open_tokens(tmp_path / name)


# Two rows of 8, laid out as wandao augment pretrain writes them (e = evidence, c = chunk, 0 = EOS):
#   row 0:  e e c c 0 c 0 0      the second example has no evidence; the last 0 pads the row
#   row 1:  e e e c c c 0 0
ROW0 = ([11, 12, 21, 22, EOS, 23, EOS, EOS], [0, 0, 1, 1, 0, 1, 0, 0])
ROW1 = ([31, 32, 33, 41, 42, 43, EOS, EOS], [0, 0, 0, 1, 1, 1, 0, 0])


def test_examples_by_hand(tmp_path):
    f = _rows(tmp_path, [ROW0, ROW1])
    assert find_examples(f, EOS).tolist() == [[0, 2, 4], [5, 5, 6], [8, 11, 14]]


def test_examples_are_the_same_when_scanned_in_blocks(tmp_path, monkeypatch):
    import pretrain.evidence_seq2seq as mod

    f = _rows(tmp_path, [ROW0, ROW1] * 5)
    whole = find_examples(f, EOS)
    monkeypatch.setattr(mod, "_SCAN_ROWS", 3)  # blocks of 3 rows: 3 + 3 + 3 + 1
    assert np.array_equal(find_examples(f, EOS), whole) and len(whole) == 15
    assert whole[-1].tolist() == [72, 75, 78]  # row 9 is ROW1: evidence 72..74, chunk 75..77, EOS at 78


def test_batches_hold_the_evidence_and_the_chunk(tmp_path):
    f = _rows(tmp_path, [ROW0, ROW1])
    s = EvidenceSeq2SeqSampler([f], None, batch_size=64, max_encoder_tokens=16, seed=0, eos_id=EOS, pad_id=PAD)
    assert s.tokens_length == round((5 + 2 + 7) / 3) and s.targets_length == 4
    enc, dec, targets, enc_mask = s.next_batch()
    want = {(11, 12, EOS): (21, 22, EOS), (EOS,): (23, EOS), (31, 32, 33, EOS): (41, 42, 43, EOS)}
    seen = set()
    for e, m, d, t in zip(enc.tolist(), enc_mask.tolist(), dec.tolist(), targets.tolist()):
        n = sum(m)
        assert m == [1] * n + [0] * (4 - n) and e[n:] == [PAD] * (4 - n)  # padded after the evidence
        e, t_real = tuple(e[:n]), tuple(x for x in t if x != -100)
        assert want[e] == t_real and t[len(t_real):] == [-100] * (4 - len(t_real))
        assert d[0] == PAD and d[1:len(t_real)] == list(t_real[:-1])  # shifted right behind the pad id
        seen.add(e)
    assert seen == set(want)  # 64 draws over 3 examples reach all of them
    assert enc.shape == (64, 4) and targets.shape == dec.shape == (64, 4)


def test_long_evidence_keeps_its_start(tmp_path):
    f = _rows(tmp_path, [ROW1])
    s = EvidenceSeq2SeqSampler([f], None, batch_size=2, max_encoder_tokens=3, seed=0, eos_id=EOS, pad_id=PAD)
    enc, _, targets, enc_mask = s.next_batch()
    assert enc.tolist() == [[31, 32, EOS]] * 2 and enc_mask.tolist() == [[1, 1, 1]] * 2  # 33 is cut
    assert targets.tolist() == [[41, 42, 43, EOS]] * 2


def test_state_replays_the_batches(tmp_path):
    f = _rows(tmp_path, [ROW0, ROW1] * 4)
    a = EvidenceSeq2SeqSampler([f, f], [3, 1], 5, 16, seed=1, eos_id=EOS, pad_id=PAD)
    a.next_batch()
    state = a.state_dict()
    expected = [a.next_batch() for _ in range(3)]
    b = EvidenceSeq2SeqSampler([f, f], [3, 1], 5, 16, seed=42, eos_id=EOS, pad_id=PAD)
    b.load_state_dict(state)
    for want in expected:
        assert all(torch.equal(x, y) for x, y in zip(want, b.next_batch()))


def test_errors_name_the_folder_row_and_field(tmp_path):
    unclosed = ([11, 21, 22, 5, EOS, EOS], [0, 1, 1, 0, 0, 0])  # token 5 after the chunk is not EOS
    with pytest.raises(DataFormatError, match=r"bad.*'loss_mask'.*row 1: the chunk ending at offset 3"):
        find_examples(_rows(tmp_path, [([11, 21, EOS, EOS, EOS, EOS], [0, 1, 0, 0, 0, 0]), unclosed], "bad"), EOS)
    with pytest.raises(DataFormatError, match="offset 6 is not closed"):  # a chunk running to the row's end
        find_examples(_rows(tmp_path, [([11, 21, 22, 23, 24, 25], [0, 1, 1, 1, 1, 1])], "open"), EOS)
    with TokenWriter(tmp_path / "stream", vocab_size=100, eos_id=EOS) as w:
        w.add([1, 2, 3, EOS])
    with pytest.raises(DataFormatError, match="'seq_len'.*packed rows with a loss mask"):
        find_examples(open_tokens(tmp_path / "stream"), EOS)
    with pytest.raises(DataFormatError, match="no examples"):
        EvidenceSeq2SeqSampler([_rows(tmp_path, [([1, 2, EOS], [0, 0, 0])], "empty")], None, 2, 8, 0, EOS, PAD)
