"""The trainer end to end on a tiny model: loss drops, accumulation equivalence, exact resume, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pretrain.metrics import read_metrics
from pretrain.train import PretrainConfig, main, run


@pytest.fixture(autouse=True)
def _one_thread():
    # Two cores shared by several jobs: one thread avoids OpenMP spin-waiting and is faster for tiny models.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("token-cache")


def _cfg(out_dir, cache, data_dir, **overrides) -> PretrainConfig:
    base = {
        "model.preset": "tiny", "model.block_size": "16",
        "data.sources": [{"path": str(data_dir / "tinyshakespeare" / "input.txt")}],
        "data.cache_dir": str(cache),
        "optim.lr": "3e-3", "schedule.warmup_iters": "2", "schedule.min_lr": "3e-4",
        "train.out_dir": str(out_dir), "train.max_iters": "20", "train.micro_batch_size": "8",
        "train.eval_interval": "1000", "train.eval_iters": "4", "train.log_interval": "1", "train.plot": "false",
    }
    base.update(overrides)
    return PretrainConfig.load(None, base)


def _train_losses(out_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(out_dir / "metrics.jsonl") if r["kind"] == "train"}


def test_loss_drops_and_every_parameter_changes(tmp_path, cache, data_dir):
    from pretrain.model import build_model, from_preset, load_pretrained

    summary = run(_cfg(tmp_path / "run", cache, data_dir, **{"train.max_iters": "40", "train.plot": "true"}))
    evals = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "eval"]
    assert evals[0]["step"] == 0 and evals[-1]["step"] == 40
    # A fresh char model starts near ln(65) = 4.17; 40 steps of this seeded run reach 3.43 (2026-11-27).
    assert evals[0]["val_loss"] == pytest.approx(4.17, abs=0.1)
    assert summary["final_val_loss"] == pytest.approx(3.43, abs=0.1)
    assert summary["final_val_loss"] < evals[0]["val_loss"] - 0.6
    assert summary["steps"] == 40 and summary["out_dir"] == str(tmp_path / "run")
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000
    record = next(r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "train")
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "mfu", "peak_mem_mb"} <= set(record)

    torch.manual_seed(1337)  # the trainer's seed: the same initial weights
    init = build_model(from_preset("tiny", vocab_size=65, block_size=16)).state_dict()
    final = load_pretrained(tmp_path / "run" / "step-00000040").state_dict()
    unchanged = [k for k in init if torch.equal(init[k], final[k])]
    assert unchanged == []


def test_checkpoint_loads_in_transformers(tmp_path, cache, data_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run(_cfg(tmp_path / "run", cache, data_dir, **{"train.max_iters": "2"}))
    ckpt = tmp_path / "run" / "step-00000002"
    assert {"model.safetensors", "config.json", "tokenizer.json", "optimizer.pt", "trainer_state.pt"} <= {
        p.name for p in ckpt.iterdir()}
    hf = AutoModelForCausalLM.from_pretrained(str(ckpt))
    tok = AutoTokenizer.from_pretrained(str(ckpt))
    assert hf.config.vocab_size == len(tok) == 65


def test_grad_accumulation_matches_one_big_batch(tmp_path, cache, data_dir):
    """micro-batch 8 x 1 step == micro-batch 1 x 8 accumulation (same windows, same update)."""
    from pretrain.model import load_pretrained

    common = {"train.max_iters": "3", "optim.grad_clip": "0"}
    run(_cfg(tmp_path / "big", cache, data_dir, **common))
    run(_cfg(tmp_path / "acc", cache, data_dir, **common, **{"train.micro_batch_size": "1",
                                                              "train.grad_accum_steps": "8"}))
    big, acc = _train_losses(tmp_path / "big"), _train_losses(tmp_path / "acc")
    assert big.keys() == acc.keys() == {0, 1, 2}
    for step in big:  # the logged loss is the mean over the 8 sequences either way
        assert acc[step] == pytest.approx(big[step], abs=1e-5)
    a = load_pretrained(tmp_path / "big" / "step-00000003").state_dict()
    b = load_pretrained(tmp_path / "acc" / "step-00000003").state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=2e-5, rtol=1e-4)


def test_resume_is_exact(tmp_path, cache, data_dir):
    """A run stopped at step 10 and resumed gives bit-identical losses to an uninterrupted one."""
    from pretrain.model import load_pretrained

    extra = {"train.max_iters": "20", "train.checkpoint_interval": "10", "train.keep_checkpoints": "0",
             "model.dropout": "0.1"}  # dropout: the torch RNG state must be restored too
    run(_cfg(tmp_path / "full", cache, data_dir, **extra))
    resumed = run(_cfg(tmp_path / "resumed", cache, data_dir, **extra,
                       **{"train.resume": str(tmp_path / "full" / "step-00000010")}))
    full, again = _train_losses(tmp_path / "full"), _train_losses(tmp_path / "resumed")
    assert sorted(again) == list(range(10, 20))
    assert [again[s] for s in range(10, 20)] == [full[s] for s in range(10, 20)]  # exact equality
    assert resumed["steps_this_run"] == 10
    a = load_pretrained(tmp_path / "full" / "step-00000020").state_dict()
    b = load_pretrained(tmp_path / "resumed" / "step-00000020").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_loss_masked_token_folder(tmp_path, data_dir):
    """The rag augmenter's format: packed rows with a loss mask over the evidence prefix."""
    from pretrain.data import TokenWriter
    from pretrain.tokenizer import build_char_tokenizer

    text = (data_dir / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:20000]
    tok = build_char_tokenizer(text)
    tok.save_pretrained(str(tmp_path / "tok"))
    ids = np.asarray(tok(text)["input_ids"])
    seq = 17
    with TokenWriter(tmp_path / "rag", len(tok), None, seq_len=seq, with_loss_mask=True) as w:
        for r in range(len(ids) // seq):
            w.add(ids[r * seq:(r + 1) * seq], loss_mask=[0] * 6 + [1] * (seq - 6))
    summary = run(_cfg(tmp_path / "run", tmp_path / "cache", data_dir, **{
        "data.sources": [{"path": str(tmp_path / "rag")}], "data.tokenizer": str(tmp_path / "tok"),
        "train.max_iters": "5"}))
    assert summary["final_val_loss"] is not None and summary["steps"] == 5


def test_cli_last_line_is_json(tmp_path, cache, data_dir, capsys):
    code = main(["--config", "configs/pretrain/tiny.yaml", "--train.out_dir", str(tmp_path / "cli"),
                 "--train.max_iters", "3", "--train.eval_iters", "2", "--data.cache_dir", str(cache),
                 "--model.block_size", "16", "--train.plot", "false"])
    assert code == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"final_val_loss", "steps", "tokens_per_s", "out_dir"} <= set(last)
    assert last["steps"] == 3 and last["out_dir"] == str(tmp_path / "cli")
    saved = (tmp_path / "cli" / "config.yaml").read_text()
    assert "max_iters: 3" in saved


def test_cli_names_an_empty_source_in_one_line(tmp_path, cache, capsys):
    """A source with no text stops the run with the file named in one line, not a traceback."""
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    code = main(["--config", "configs/pretrain/tiny.yaml", "--train.out_dir", str(tmp_path / "cli"),
                 "--data.sources", json.dumps([{"path": str(empty)}]), "--data.cache_dir", str(cache)])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("wandao pretrain: ") and str(empty) in err[-1] and "no text" in err[-1]


def test_bpe_mixture_of_two_sources(tmp_path, data_dir, caplog):
    """Byte-level BPE trained on the training parts of two sources, sampled 3:1, with the epochs report."""
    import logging

    from transformers import AutoTokenizer

    # The first 100k characters of each keep BPE training to a second or two.
    wiki, shakespeare = tmp_path / "wiki.txt", tmp_path / "shakespeare.txt"
    wiki.write_text((data_dir / "wikitext-2" / "raw" / "wiki.valid.raw").read_text(encoding="utf-8")[:100_000])
    shakespeare.write_text((data_dir / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:100_000])
    caplog.set_level(logging.INFO, logger="pretrain.train")
    summary = run(_cfg(tmp_path / "mix", tmp_path / "cache", data_dir, **{
        "data.sources": [{"path": str(shakespeare), "weight": 3, "name": "shakespeare"},
                         {"path": str(wiki), "weight": 1, "name": "wikitext"}],
        "data.tokenizer": "bpe", "data.vocab_size": "512", "model.vocab_size": "512", "train.max_iters": "4"}))
    assert summary["steps"] == 4 and summary["final_val_loss"] < 6.5  # ln(512) = 6.24 at init
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "mix" / "tokenizer"))
    assert len(tok) == 512 and tok.eos_token == "<|endoftext|>"
    report = [r.getMessage() for r in caplog.records if r.getMessage().startswith("data ")]
    assert [line.split()[1] for line in report] == ["shakespeare", "wikitext"]
    assert "weight 0.750" in report[0] and "weight 0.250" in report[1]


def _t5_cfg(out_dir, cache, data_dir, **overrides) -> PretrainConfig:
    # tiny-t5 (2+2 layers x 32) reading 32 encoder tokens: 34 raw tokens, 5 masked in 2 spans, 8 targets
    return _cfg(out_dir, cache, data_dir, **{"model.preset": "tiny-t5", "model.block_size": "32", **overrides})


def test_t5_span_corruption_lowers_val_loss(tmp_path, cache, data_dir):
    from pretrain.span_corruption import sentinel_tokens

    summary = run(_t5_cfg(tmp_path / "t5", cache, data_dir, **{"train.max_iters": "100", "train.eval_interval": "50"}))
    evals = [r for r in read_metrics(tmp_path / "t5" / "metrics.jsonl") if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [0, 50, 100]
    # 65 characters + EOS + pad + 100 sentinels = 167 tokens: a fresh model starts near ln(167) = 5.12
    assert evals[0]["val_loss"] == pytest.approx(np.log(167), abs=0.05)
    # 100 steps of this seeded run reach 3.86 target loss (2026-12-06)
    assert summary["final_val_loss"] == pytest.approx(3.86, abs=0.1)
    assert summary["final_val_loss"] < evals[1]["val_loss"] < evals[0]["val_loss"] - 0.8
    assert summary["final_val_ppl"] == pytest.approx(np.exp(summary["final_val_loss"]))
    assert summary["arch"] == "t5" and summary["steps"] == 100
    assert summary["tokens"] == 100 * 8 * 34  # steps x rows x raw tokens per row
    train = [r for r in read_metrics(tmp_path / "t5" / "metrics.jsonl") if r["kind"] == "train"]
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "mfu", "peak_mem_mb"} <= set(train[0])
    # the saved tokenizer carries the sentinels, EOS and pad the span corruption used
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tmp_path / "t5" / "step-00000100"))
    assert len(tok) == 167 and tok.eos_token == "<|endoftext|>" and tok.pad_token == "<|pad|>"
    assert tok.convert_tokens_to_ids(sentinel_tokens(100)) == list(range(67, 167))
    assert tok.convert_tokens_to_ids(["\n", " ", "z"]) == [0, 1, 64]  # nanoGPT's character ids are kept


def test_t5_resume_is_exact(tmp_path, cache, data_dir):
    from pretrain.model import load_pretrained

    extra = {"train.max_iters": "12", "train.checkpoint_interval": "6", "train.keep_checkpoints": "0",
             "model.dropout": "0.1"}
    run(_t5_cfg(tmp_path / "full", cache, data_dir, **extra))
    resumed = run(_t5_cfg(tmp_path / "resumed", cache, data_dir, **extra,
                          **{"train.resume": str(tmp_path / "full" / "step-00000006")}))
    full, again = _train_losses(tmp_path / "full"), _train_losses(tmp_path / "resumed")
    assert sorted(again) == list(range(6, 12))
    assert [again[s] for s in range(6, 12)] == [full[s] for s in range(6, 12)]  # exact equality
    assert resumed["steps_this_run"] == 6 and resumed["arch"] == "t5"
    a = load_pretrained(tmp_path / "full" / "step-00000012").state_dict()
    b = load_pretrained(tmp_path / "resumed" / "step-00000012").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_t5_checkpoint_loads_in_transformers_with_the_same_logits(tmp_path, cache, data_dir):
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    from pretrain.data import open_tokens
    from pretrain.model import load_pretrained
    from pretrain.span_corruption import SpanCorruptionSampler, sentinel_tokens

    run(_t5_cfg(tmp_path / "t5", cache, data_dir, **{"train.max_iters": "5"}))
    ckpt = tmp_path / "t5" / "step-00000005"
    hf = T5ForConditionalGeneration.from_pretrained(str(ckpt)).eval()
    tok = AutoTokenizer.from_pretrained(str(ckpt))
    assert hf.config.decoder_start_token_id == hf.config.pad_token_id == tok.pad_token_id
    assert hf.config.eos_token_id == tok.eos_token_id and hf.config.vocab_size == len(tok)
    ours = load_pretrained(ckpt).eval()
    val = next(p for p in cache.glob("*/val") if open_tokens(p).meta["vocab_size"] == len(tok))  # this run's
    sampler = SpanCorruptionSampler([open_tokens(val)], None, 4, 32, 0, tok.convert_tokens_to_ids(sentinel_tokens(100)),
                                    tok.eos_token_id, tok.pad_token_id)
    enc, dec, labels, _ = sampler.next_batch()
    with torch.no_grad():
        out = hf(input_ids=enc, decoder_input_ids=dec, labels=labels)
        logits, loss = ours(dec, labels, enc_idx=enc)
    torch.testing.assert_close(logits, out.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss, out.loss, atol=1e-6, rtol=1e-6)


def test_t5_bpe_tokenizer_counts_the_sentinels_in_its_vocabulary(tmp_path, data_dir):
    from transformers import AutoTokenizer

    from pretrain.span_corruption import sentinel_tokens

    text = tmp_path / "shakespeare.txt"
    text.write_text((data_dir / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:100_000])
    summary = run(_t5_cfg(tmp_path / "bpe", tmp_path / "cache", data_dir, **{
        "data.sources": [{"path": str(text)}], "data.tokenizer": "bpe", "data.vocab_size": "512",
        "model.vocab_size": "512", "span_corruption.num_sentinels": "20", "train.max_iters": "3"}))
    assert summary["steps"] == 3 and summary["final_val_loss"] < np.log(512) + 0.05
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "bpe" / "tokenizer"))
    # EOS and pad take ids 0 and 1, the 20 sentinels 2..21, merges the rest up to 512
    assert len(tok) == 512 and (tok.eos_token_id, tok.pad_token_id) == (0, 1)
    assert tok.convert_tokens_to_ids(sentinel_tokens(20)) == list(range(2, 22))


def _evidence_rows(tmp_path, n_examples=3000, seed=0):
    """A wandao augment pretrain folder where the evidence decides the chunk: the evidence holds 3 of 16
    letters (twice each, shuffled) and the chunk is 6 letters drawn from those 3. Reading the evidence
    the loss per target token can reach 6/7 x ln(3) = 0.94 (EOS is certain); without it, 6/7 x ln(16) = 2.38."""
    from pretrain.data import TokenWriter
    from pretrain.tokenizer import EOS_TOKEN, PAD_TOKEN, build_char_tokenizer

    tmp_path.mkdir(parents=True, exist_ok=True)
    tok = build_char_tokenizer("abcdefghijklmnop", special_tokens=(EOS_TOKEN, PAD_TOKEN))
    tok.save_pretrained(str(tmp_path / "tok"))
    eos = tok.eos_token_id
    rng = np.random.default_rng(seed)
    with TokenWriter(tmp_path / "rows", vocab_size=len(tok), eos_id=eos, seq_len=33, with_loss_mask=True) as w:
        for _ in range(n_examples // 2):  # two 13-token examples per 33-token row, the tail padded with EOS
            for _ in range(2):
                letters = rng.choice(16, size=3, replace=False)
                evidence, chunk = rng.permutation(np.repeat(letters, 2)), rng.choice(letters, size=6)
                w.add([*evidence, *chunk, eos], [0] * 6 + [1] * 6 + [0])
            w.add([eos] * 7, [0] * 7, documents=0)
    return tmp_path / "rows", tmp_path / "tok"


def test_t5_reads_augmented_rows_through_the_encoder(tmp_path, cache, data_dir):
    from pretrain.data import open_tokens
    from pretrain.evidence_seq2seq import EvidenceSeq2SeqSampler
    from pretrain.model import load_pretrained
    from pretrain.tokenizer import load_tokenizer

    rows, tok_dir = _evidence_rows(tmp_path)
    summary = run(_t5_cfg(tmp_path / "t5", cache, data_dir, **{
        "data.sources": [{"path": str(rows)}], "data.tokenizer": str(tok_dir), "data.val_fraction": "0.1",
        # Sentinels are span corruption's; this run has none to predict, and 100 unused logits to push down
        # would slow it (150 steps: 3.10 with 100, 2.38 with 2). A flat lr keeps 300 steps enough.
        "span_corruption.num_sentinels": "2", "schedule.min_lr": "3e-3",
        "train.max_iters": "300", "train.micro_batch_size": "16", "train.eval_interval": "300"}))
    assert summary["arch"] == "t5" and summary["steps"] == 300
    assert summary["tokens"] == 300 * 16 * 13  # a row consumes one example: 6 evidence + 6 chunk + EOS
    evals = [r for r in read_metrics(tmp_path / "t5" / "metrics.jsonl") if r["kind"] == "eval"]
    # 16 letters + EOS + pad + 2 sentinels: a fresh model starts near ln(20) = 3.00 per target token
    assert evals[0]["val_loss"] == pytest.approx(np.log(20), abs=0.05)
    # The evidence is read through cross-attention: held-out rows scored with their own evidence, and with
    # another example's. A model that ignored the encoder would score the same on both (at best 2.38).
    model, tok = load_pretrained(tmp_path / "t5" / "step-00000300").eval(), load_tokenizer(tmp_path / "t5" / "step-00000300")
    heldout, _ = _evidence_rows(tmp_path / "heldout", n_examples=200, seed=1)
    enc, dec, targets, enc_mask = EvidenceSeq2SeqSampler([open_tokens(heldout)], None, 64, 32, 0, tok.eos_token_id,
                                                         tok.pad_token_id).next_batch()
    with torch.no_grad():
        matched = model(dec, targets, enc_idx=enc, enc_mask=enc_mask)[1].item()
        shuffled = model(dec, targets, enc_idx=enc.roll(1, 0), enc_mask=enc_mask.roll(1, 0))[1].item()
    assert matched == pytest.approx(summary["final_val_loss"], abs=0.15)
    # This seeded run: matched 1.63, shuffled 2.86 (2026-12-07). Below 2.38 no encoder-blind model can go.
    assert matched == pytest.approx(1.63, abs=0.15)
    assert matched < 2.38 - 0.5 and shuffled > 2.38


def test_t5_refuses_streams_and_augmented_rows_together(tmp_path, cache, data_dir):
    from pretrain.config import ConfigError

    rows, tok_dir = _evidence_rows(tmp_path, n_examples=40)
    text = tmp_path / "letters.txt"
    text.write_text("abcdefghijklmnop" * 50)
    with pytest.raises(ConfigError, match=r"data.sources.*not both in one run.*rows \(rows\).*\(stream\)"):
        run(_t5_cfg(tmp_path / "t5", cache, data_dir, **{
            "data.sources": [{"path": str(rows)}, {"path": str(text)}], "data.tokenizer": str(tok_dir)}))


def test_t5_refuses_rows_whose_eos_is_not_the_tokenizers(tmp_path, cache, data_dir):
    from pretrain.config import ConfigError
    from pretrain.tokenizer import EOS_TOKEN, PAD_TOKEN, build_char_tokenizer

    rows, _ = _evidence_rows(tmp_path, n_examples=40)  # letters 0-15, then EOS 16: chunks closed by 16
    swapped = build_char_tokenizer("abcdefghijklmnop", special_tokens=(PAD_TOKEN, EOS_TOKEN))  # EOS is 17
    swapped.save_pretrained(str(tmp_path / "swapped"))
    with pytest.raises(ConfigError, match=r"rows closes its chunks with id 16 \(<\|pad\|>\) but the tokenizer's "
                                          r"EOS is <\|endoftext\|> \(17\); train with the tokenizer the rows"):
        run(_t5_cfg(tmp_path / "t5", cache, data_dir, **{
            "data.sources": [{"path": str(rows)}], "data.tokenizer": str(tmp_path / "swapped")}))


def test_t5_takes_the_rows_eos_when_its_tokenizer_has_none(tmp_path, cache, data_dir):
    """Rows augmented with the default MiniLM WordPiece close chunks with [SEP]; that tokenizer has no EOS."""
    from indexer.encode import default_model_path
    from pretrain.data import TokenWriter
    from pretrain.tokenizer import load_tokenizer

    minilm = load_tokenizer("minilm")
    assert minilm.get_vocab() == load_tokenizer(default_model_path()).get_vocab()
    assert minilm.eos_token is None
    sep = minilm.convert_tokens_to_ids("[SEP]")
    ids = minilm("the cat sat on the mat", add_special_tokens=False)["input_ids"]  # 6 word pieces
    with TokenWriter(tmp_path / "rows", vocab_size=len(minilm), eos_id=sep, seq_len=14, with_loss_mask=True) as w:
        for _ in range(40):
            w.add([*ids, *ids[:3], sep], [0] * 6 + [1] * 3 + [0])
            w.add([sep] * 4, [0] * 4, documents=0)
    summary = run(_t5_cfg(tmp_path / "t5", cache, data_dir, **{
        "data.sources": [{"path": str(tmp_path / "rows")}], "data.tokenizer": "minilm",
        "train.max_iters": "2", "train.eval_iters": "1"}))
    saved = load_tokenizer(Path(summary["out_dir"]) / "step-00000002")
    assert saved.eos_token == "[SEP]" and saved.eos_token_id == sep  # not a new <|endoftext|> appended
    assert len(saved) == len(minilm) + 100  # the 100 sentinels; the pad is MiniLM's own [PAD]
