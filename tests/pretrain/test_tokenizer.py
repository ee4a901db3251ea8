"""Tokenizers: nanoGPT's 65-symbol character vocabulary and a trained byte-level BPE, both HF-loadable."""

from __future__ import annotations

import pytest

from pretrain.tokenizer import EOS_TOKEN, PAD_TOKEN, build_char_tokenizer, load_tokenizer, train_bpe_tokenizer


def test_char_tokenizer_matches_nanogpt_vocabulary(data_dir, tmp_path):
    text = (data_dir / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    tok = build_char_tokenizer(text)
    assert len(tok) == 65  # nanoGPT: "vocab size: 65"
    stoi = {c: i for i, c in enumerate(sorted(set(text)))}  # nanoGPT's prepare.py
    sample = text[:2000]
    assert tok(sample, add_special_tokens=False)["input_ids"] == [stoi[c] for c in sample]
    assert tok.decode(tok(sample)["input_ids"]) == sample  # newlines and double spaces survive
    tok.save_pretrained(str(tmp_path / "char"))
    from transformers import AutoTokenizer

    again = AutoTokenizer.from_pretrained(str(tmp_path / "char"))
    assert again("First Citizen:\n")["input_ids"] == [18, 47, 56, 57, 58, 1, 15, 47, 58, 47, 64, 43, 52, 10, 0]


def test_char_tokenizer_special_tokens_come_after_characters():
    tok = build_char_tokenizer("ba", special_tokens=(EOS_TOKEN,))
    # 'a' -> 0, 'b' -> 1, EOS -> 2
    assert tok.get_vocab() == {"a": 0, "b": 1, EOS_TOKEN: 2}
    assert tok.eos_token_id == 2
    assert tok(f"ab{EOS_TOKEN}")["input_ids"] == [0, 1, 2]


def test_bpe_tokenizer_trains_and_round_trips(data_dir, tmp_path):
    text = (data_dir / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:200_000]
    tok = train_bpe_tokenizer([text[i:i + 5000] for i in range(0, len(text), 5000)], vocab_size=512)
    assert len(tok) == 512
    assert tok.convert_ids_to_tokens([0, 1]) == [EOS_TOKEN, PAD_TOKEN]  # special tokens take the first ids
    assert tok.eos_token_id == 0 and tok.pad_token_id == 1
    sample = "ROMEO:\nBut, soft! what light through yonder window breaks? \u00e9\u4e2d"
    ids = tok(sample)["input_ids"]
    assert len(ids) < len(sample.encode())  # merges compress common English
    assert tok.decode(ids) == sample  # byte-level: any text, no unknown token
    tok.save_pretrained(str(tmp_path / "bpe"))
    assert load_tokenizer(tmp_path / "bpe")(sample)["input_ids"] == ids


def test_bpe_vocab_too_small_is_an_error():
    with pytest.raises(ValueError, match="at least 256 byte symbols"):
        train_bpe_tokenizer(["abc"], vocab_size=100)


def test_load_tokenizer_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        load_tokenizer(tmp_path)
