"""Token folders, packing with EOS, the nanoGPT split, mixtures and the resumable sampler."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pretrain.data import (BatchSampler, DataFormatError, PreparedSource, TokenWriter, mixture_report, open_tokens,
                           prepare_source, write_documents)
from pretrain.tokenizer import EOS_TOKEN, build_char_tokenizer


def test_token_folder_round_trip_and_dtype(tmp_path):
    with TokenWriter(tmp_path / "small", vocab_size=100, eos_id=0) as w:
        w.add([5, 6, 7])
        w.add([0, 99])
    tf = open_tokens(tmp_path / "small")
    assert tf.tokens.dtype == np.uint16 and isinstance(tf.tokens, np.memmap)
    assert tf.tokens.tolist() == [5, 6, 7, 0, 99]
    assert tf.meta["num_tokens"] == 5 and tf.meta["num_documents"] == 2 and tf.loss_mask is None
    with TokenWriter(tmp_path / "big", vocab_size=70000, eos_id=None) as w:
        w.add([69999])
    assert open_tokens(tmp_path / "big").tokens.dtype == np.uint32  # ids above 65535 need 32 bits


def test_writer_rejects_out_of_vocab_and_leaves_nothing(tmp_path):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        with TokenWriter(tmp_path / "bad", vocab_size=10, eos_id=None) as w:
            w.add([3, 10])
    assert not (tmp_path / "bad").exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # the temporary folder is gone too


def test_meta_mismatch_names_the_field(tmp_path):
    with TokenWriter(tmp_path / "t", vocab_size=10, eos_id=None) as w:
        w.add([1, 2, 3, 4])
    meta = json.loads((tmp_path / "t" / "meta.json").read_text())
    meta["num_tokens"] = 5
    (tmp_path / "t" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataFormatError, match=r"tokens\.bin \(field 'num_tokens'\): 8 bytes"):
        open_tokens(tmp_path / "t")


def test_packing_separates_documents_with_eos(tmp_path):
    tok = build_char_tokenizer("abc", special_tokens=(EOS_TOKEN,))  # a=0 b=1 c=2 EOS=3
    write_documents(["ab", "c", "abc"], tok, tmp_path / "packed", eos_id=3, seq_len=4)
    tf = open_tokens(tmp_path / "packed")
    # stream: a b EOS c EOS a b c EOS  (9 tokens) -> two rows of 4, one token dropped
    assert tf.tokens.tolist() == [0, 1, 3, 2, 3, 0, 1, 2]
    assert tf.num_rows == 2 and tf.meta["dropped_tokens"] == 1 and tf.meta["num_documents"] == 3


def test_char_split_matches_nanogpt(data_dir, tmp_path):
    path = data_dir / "tinyshakespeare" / "input.txt"
    tok = build_char_tokenizer(path.read_text(encoding="utf-8"))
    src = prepare_source(path, tok, tmp_path, val_fraction=0.1)
    # nanoGPT's prepare.py: "train has 1,003,854 tokens", "val has 111,540 tokens"
    assert src.train.meta["num_tokens"] == 1_003_854
    assert src.val.meta["num_tokens"] == 111_540
    again = prepare_source(path, tok, tmp_path, val_fraction=0.1)  # reused from the cache
    assert again.train.folder == src.train.folder


def test_jsonl_source_errors_name_line_and_field(tmp_path):
    bad = tmp_path / "docs.jsonl"
    bad.write_text('{"text": "ab"}\n{"body": "c"}\n')
    tok = build_char_tokenizer("abc")
    with pytest.raises(DataFormatError, match=r"docs\.jsonl, line 2 \(field 'text'\)"):
        prepare_source(bad, tok, tmp_path / "cache", val_fraction=0.0)


def _stream(tmp_path, name, values):
    with TokenWriter(tmp_path / name, vocab_size=1000, eos_id=None) as w:
        w.add(values)
    return open_tokens(tmp_path / name)


def test_sampler_windows_are_shifted_slices_and_resume_exactly(tmp_path):
    tf = _stream(tmp_path, "s", np.arange(500))
    s = BatchSampler([tf], None, batch_size=4, block_size=8, seed=3)
    x, y, m = s.next_batch()
    assert x.shape == (4, 8) and m is None
    assert torch.equal(y, x + 1)  # y is x shifted by one token
    assert torch.equal(x[:, 1:] - x[:, :-1], torch.ones(4, 7, dtype=torch.long))  # contiguous windows
    state = s.state_dict()
    expected = [s.next_batch()[0] for _ in range(3)]
    fresh = BatchSampler([tf], None, batch_size=4, block_size=8, seed=99)
    fresh.load_state_dict(state)
    assert all(torch.equal(a, fresh.next_batch()[0]) for a in expected)


def test_mixture_draws_by_weight(tmp_path):
    a = _stream(tmp_path, "a", np.arange(0, 300))  # values < 300
    b = _stream(tmp_path, "b", np.arange(500, 800))  # values >= 500
    s = BatchSampler([a, b], [3.0, 1.0], batch_size=64, block_size=4, seed=0)
    rows = torch.cat([s.next_batch()[0] for _ in range(50)])
    frac_a = (rows[:, 0] < 300).float().mean().item()
    assert abs(frac_a - 0.75) < 0.03  # 3200 draws: std of the fraction is 0.008


def test_packed_rows_with_loss_mask(tmp_path):
    # two rows of seq_len 5: evidence prefix (mask 0) then text (mask 1)
    with TokenWriter(tmp_path / "rag", vocab_size=50, eos_id=0, seq_len=5, with_loss_mask=True) as w:
        w.add([10, 11, 12, 13, 14], loss_mask=[0, 0, 1, 1, 1])
        w.add([20, 21, 22, 23, 24], loss_mask=[0, 0, 0, 1, 1])
    tf = open_tokens(tmp_path / "rag")
    s = BatchSampler([tf], None, batch_size=16, block_size=4, seed=0)
    x, y, m = s.next_batch()
    for row in range(16):
        if x[row, 0] == 10:  # targets 11..14 with mask of tokens 11..14
            assert y[row].tolist() == [11, 12, 13, 14] and m[row].tolist() == [0, 1, 1, 1]
        else:
            assert y[row].tolist() == [21, 22, 23, 24] and m[row].tolist() == [0, 0, 1, 1]
    with pytest.raises(DataFormatError, match="block_size \\+ 1"):
        BatchSampler([tf], None, batch_size=2, block_size=8, seed=0)


def test_mixture_report_epochs(tmp_path):
    a = PreparedSource("a", 3.0, _stream(tmp_path, "a", np.arange(1000)), None)
    b = PreparedSource("b", 1.0, _stream(tmp_path, "b", np.arange(100)), None)
    rows = mixture_report([a, b], tokens_per_step=40, steps=100)  # 4000 tokens drawn
    # a: 0.75 * 4000 = 3000 tokens over 1000 -> 3 epochs; b: 0.25 * 4000 = 1000 over 100 -> 10 epochs
    assert [(r["source"], r["weight"], r["tokens_seen"], r["epochs"]) for r in rows] == [
        ("a", 0.75, 3000, 3.0), ("b", 0.25, 1000, 10.0)]


def test_jsonl_documents_split_by_count_and_eos(tmp_path):
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(f'{{"text": "{t}"}}\n' for t in ["ab", "ba", "abc", "c", "cab", "a", "b", "cc", "ac", "bb"]))
    tok = build_char_tokenizer("abc", special_tokens=(EOS_TOKEN,))  # a=0 b=1 c=2 EOS=3
    src = prepare_source(docs, tok, tmp_path / "cache", val_fraction=0.2)
    # 10 documents: the first 8 train, the last 2 ("ac", "bb") validate; EOS closes each document
    assert src.train.meta["num_documents"] == 8
    assert src.val.tokens.tolist() == [0, 2, 3, 1, 1, 3]
    assert src.train.tokens.tolist()[:6] == [0, 1, 3, 1, 0, 3]
