"""align.sft: the response-only mask token by token, packing masks, rendering, a tiny run, exact resume."""

from __future__ import annotations

import json
import random

import pytest
import torch

from align.sft import (DataSection, ModelSection, SFTConfig, SFTExample, TrainSection, collate, encode_example,
                       encode_examples, make_encoder, pack_examples, read_examples, run)
from pretrain.optim import OptimConfig, ScheduleConfig

COLORS = ["red", "blue", "green", "pink", "gray", "black", "white", "gold"]
THINGS = ["sky", "leaf", "rose", "coal", "snow", "ring", "sea", "ash", "milk", "lime", "iron", "sun"]
ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,:;?!'\"()[]-_\n#@"


def _rows(n: int, seed: int = 0, short: bool = False) -> list[dict]:
    """Rendered SFT rows (the ``wandao augment sft`` shape): the answer is the colour named in the evidence."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        thing, color = rng.choice(THINGS), rng.choice(COLORS)
        prompt = (f"User: what colour is the {thing}?\nSearch Results:\n[1] Page title: {thing}\n"
                  f"The {thing} is {color}.\n\nAssistant: ")
        if short:
            prompt = f"User: {thing}?\n[1] {thing} is {color}.\nAssistant: "
        rows.append({"id": f"r{i}", "prompt": prompt, "response": color, "evidence_ids": [f"d{i}"]})
    return rows


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A random-weight tiny wandao GPT (128 positions) with a character tokenizer (EOS, pad) as an HF folder."""
    from pretrain.model import build_model, from_preset
    from pretrain.tokenizer import build_char_tokenizer

    out = tmp_path_factory.mktemp("sft-tiny-model")
    tok = build_char_tokenizer(ALPHABET, special_tokens=("<|endoftext|>", "<|pad|>"))
    torch.manual_seed(0)
    model = build_model(from_preset("tiny", vocab_size=len(tok), block_size=128))
    model.save_pretrained(out, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    tok.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def tok(tiny_model):
    from pretrain.tokenizer import load_tokenizer

    return load_tokenizer(tiny_model)


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_mask_covers_response_and_eos_token_by_token(tok):
    enc = make_encoder(tok)
    a, b, c, d = enc("abcd")
    eos = tok.eos_token_id
    ids, mask = encode_example(enc("ab"), enc("cd"), eos, max_tokens=16)
    assert ids == [a, b, c, d, eos]
    assert mask == [0, 0, 1, 1, 1]  # prompt "ab" masked; response "cd" and EOS trained
    x, y, m = collate([(ids, mask), ([a, c, eos], [0, 1, 1])], pad_id=tok.pad_token_id)
    assert x.tolist() == [[a, b, c, d], [a, c, tok.pad_token_id, tok.pad_token_id]]
    assert y.tolist() == [[b, c, d, eos], [c, eos, tok.pad_token_id, tok.pad_token_id]]
    # predicting b (a prompt token) does not count; predicting c, d and EOS does; padding never does
    assert m.tolist() == [[0, 1, 1, 1], [1, 1, 0, 0]]


def test_truncation_cuts_prompt_from_the_left_then_response_from_the_right():
    # prompt 1..6, response 7 8, eos 0, room for 5: the prompt keeps its last 2 tokens
    assert encode_example([1, 2, 3, 4, 5, 6], [7, 8], 0, max_tokens=5, min_prompt_tokens=2) == \
        ([5, 6, 7, 8, 0], [0, 0, 1, 1, 1])
    # a response longer than the room keeps min_prompt_tokens of prompt and loses its tail (and the EOS)
    assert encode_example([1, 2, 3], [7, 8, 9, 10], 0, max_tokens=4, min_prompt_tokens=1) == \
        ([3, 7, 8, 9], [0, 1, 1, 1])


def test_rendered_rows_are_verbatim_and_masked_text_is_the_response(tmp_path, tok):
    rows = _rows(3)
    examples = read_examples(str(_write(tmp_path / "sft.jsonl", rows)))
    assert [(e.prompt, e.response, e.evidence_ids) for e in examples] == \
        [(r["prompt"], r["response"], r["evidence_ids"]) for r in rows]
    for (ids, mask), r in zip(encode_examples(examples, make_encoder(tok), tok.eos_token_id, 128, 16), rows):
        assert tok.decode([t for t, k in zip(ids, mask) if k]) == r["response"] + "<|endoftext|>"
        assert tok.decode([t for t, k in zip(ids, mask) if not k]) == r["prompt"]
        assert ids[-1] == tok.eos_token_id and mask[-1] == 1


def test_a_cut_response_learns_no_eos(tmp_path, tok):
    row = {"id": "s1", "prompt": "ab", "response": "cd", "evidence_ids": [], "eos": False}
    (ex,) = read_examples(str(_write(tmp_path / "cut.jsonl", [row])))
    ((ids, mask),) = encode_examples([ex], make_encoder(tok), tok.eos_token_id, 64, 4)
    assert ids == make_encoder(tok)("abcd") and mask == [0, 0, 1, 1]  # no EOS appended, none trained


def test_raw_qa_rows_render_with_the_template_and_mask_the_evidence(tmp_path, tok):
    from rag.templates import Example, get_template

    path = _write(tmp_path / "qa.jsonl", [{"id": "q1", "question": "what colour is the sky?", "answers": ["blue"]}])
    (ex,) = read_examples(str(path), template="sparrow")
    expected = get_template("sparrow").render(Example(question="what colour is the sky?", answer="blue"))
    assert (ex.prompt, ex.response) == (expected.prompt, expected.response)
    assert ex.prompt.startswith("User: what colour is the sky?") and ex.response == "blue"
    (ex,) = read_examples(str(path), template=None)
    assert (ex.prompt, ex.response) == ("what colour is the sky?", "blue")


def test_packing_keeps_examples_whole_and_masks_prompts_and_padding(tok):
    enc = make_encoder(tok)
    eos, pad = tok.eos_token_id, tok.pad_token_id
    exs = [encode_example(enc(p), enc(r), eos, 64) for p, r in [("ab", "c"), ("de", "f"), ("ghij", "k")]]
    rows = pack_examples(exs, 10, pad)
    g, h, i, j, k = enc("ghijk")
    a, b, c, d, e, f = enc("abcdef")
    assert rows == [([a, b, c, eos, d, e, f, eos, pad, pad], [0, 0, 1, 1, 0, 0, 1, 1, 0, 0]),
                    ([g, h, i, j, k, eos, pad, pad, pad, pad], [0, 0, 0, 0, 1, 1, 0, 0, 0, 0])]
    x, y, m = collate(rows, pad)
    # row 0 targets: b c EOS d e f EOS pad pad -> trained: c, EOS (ex 1), f, EOS (ex 2); d after EOS is a prompt token
    assert m[0].tolist() == [0, 1, 1, 0, 0, 1, 1, 0, 0]
    assert y[0].tolist() == [b, c, eos, d, e, f, eos, pad, pad]


def test_loss_ignores_prompt_targets(tiny_model, tok):
    """Changing prompt tokens' targets leaves the loss unchanged; it equals CE over the masked positions."""
    from pretrain.model import load_pretrained

    model = load_pretrained(tiny_model).eval()
    enc = make_encoder(tok)
    ids, mask = encode_example(enc("User: hi\nAssistant: "), enc("hello"), tok.eos_token_id, 64)
    x, y, m = collate([(ids, mask)], tok.pad_token_id)
    with torch.no_grad():
        logits, loss = model(x, y, loss_mask=m)
        y2 = y.masked_fill(m == 0, 5)  # scramble the prompt targets
        _, loss2 = model(x, y2, loss_mask=m)
    keep = m[0].bool()
    ref = torch.nn.functional.cross_entropy(logits[0][keep], y[0][keep])
    assert torch.allclose(loss, ref) and torch.allclose(loss, loss2)
    assert int(m.sum()) == len("hello") + 1


def _cfg(tiny_model, data, out, **train):
    t = dict(out_dir=str(out), max_iters=40, micro_batch_size=8, eval_interval=20, eval_examples=0, log_interval=10,
             device="cpu", seed=3, plot=True, num_threads=1)
    t.update(train)
    return SFTConfig(model=ModelSection(init_from=str(tiny_model)),
                     data=DataSection(train=str(data), val_fraction=0.2, max_length=96),
                     optim=OptimConfig(lr=3e-3, weight_decay=0.0),
                     schedule=ScheduleConfig(kind="cosine", warmup_iters=5, min_lr=3e-4),
                     train=TrainSection(**t))


def test_tiny_sft_lowers_response_loss_and_saves_a_transformers_folder(tmp_path, tiny_model):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = _write(tmp_path / "sft.jsonl", _rows(160))
    summary = run(_cfg(tiny_model, data, tmp_path / "run"))
    assert summary["steps"] == 40 and summary["val_examples"] > 10
    # random init: ~ln(86) = 4.45 nats per response token; 40 steps learn the colour words and EOS
    assert summary["initial_val_loss"] > 3.5
    assert summary["final_val_loss"] < 0.6 * summary["initial_val_loss"]
    before, after = load_file(str(tiny_model / "model.safetensors")), load_file(str(tmp_path / "run/model/model.safetensors"))
    assert all(not torch.equal(before[k], after[k]) for k in before), "every parameter should have changed"
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path / "run/model"))
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "run/model"))
    assert hf.config.eos_token_id == tok.eos_token_id
    records = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [0, 20, 40]
    assert (tmp_path / "run/loss.png").stat().st_size > 0 and (tmp_path / "run/summary.md").exists()


def test_resume_is_exact(tmp_path, tiny_model, capsys):
    from safetensors.torch import load_file

    data = _write(tmp_path / "sft.jsonl", _rows(48))
    kw = dict(max_iters=8, eval_interval=4, micro_batch_size=4, plot=False)
    # the uninterrupted run goes through the command line: dotted flags, last stdout line JSON
    from align.sft import main

    flags = ["--model.init_from", str(tiny_model), "--data.train", str(data), "--data.val_fraction", "0.2",
             "--data.max_length", "96", "--optim.lr", "3e-3", "--optim.weight_decay", "0",
             "--schedule.warmup_iters", "5", "--schedule.min_lr", "3e-4", "--train.out_dir", str(tmp_path / "straight"),
             "--train.max_iters", "8", "--train.eval_interval", "4", "--train.micro_batch_size", "4",
             "--train.eval_examples", "0", "--train.log_interval", "10", "--train.device", "cpu", "--train.seed", "3",
             "--train.plot", "false", "--train.num_threads", "1"]
    assert main(flags) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["steps"] == 8 and last["out_dir"] == str(tmp_path / "straight") and last["final_val_loss"] > 0
    run(_cfg(tiny_model, data, tmp_path / "halves", checkpoint_interval=4, **{**kw, "max_iters": 4}))
    # second half: the schedule must be the 8-step one, so resume with max_iters 8 from step 4
    cfg = _cfg(tiny_model, data, tmp_path / "halves", resume="auto", **kw)
    cfg.schedule = ScheduleConfig(kind="cosine", warmup_iters=5, min_lr=3e-4)
    run(cfg)
    a = load_file(str(tmp_path / "straight/model/model.safetensors"))
    b = load_file(str(tmp_path / "halves/model/model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_packed_run_trains(tmp_path, tiny_model):
    data = _write(tmp_path / "sft.jsonl", _rows(60, short=True))  # ~40 tokens each: 3 fit a row of 128
    cfg = _cfg(tiny_model, data, tmp_path / "packed", max_iters=6, eval_interval=6, micro_batch_size=2, plot=False)
    cfg.data.packing, cfg.data.max_length = True, 127
    summary = run(cfg)
    assert summary["packing"] and summary["train_rows"] < summary["train_examples"]
    assert summary["final_val_loss"] < summary["initial_val_loss"]


def test_prompt_loss_learns_every_training_token_but_validates_on_the_response(tmp_path, tiny_model, tok):
    from align.sft import build_rows

    rows = _rows(40, short=True)
    data = _write(tmp_path / "sft.jsonl", rows)
    cfg = _cfg(tiny_model, data, tmp_path / "pl", max_iters=1, eval_interval=1, micro_batch_size=2, plot=False)
    cfg.data.val_fraction = 0.25
    base_train, base_val, base_stats = build_rows(cfg, tok, 127)
    cfg.data.prompt_loss = True
    train, val, stats = build_rows(cfg, tok, 127)
    assert [ids for ids, _ in train] == [ids for ids, _ in base_train] and val == base_val
    assert all(mask == [1] * len(ids) for ids, mask in train)
    # every token but each row's first is a target: the response tokens plus the prompt tokens after the first
    assert stats["loss_tokens"] == sum(len(ids) - 1 for ids, _ in train) > base_stats["loss_tokens"]
    assert base_stats["loss_tokens"] == base_stats["response_tokens"] == stats["response_tokens"]


def test_bad_rows_name_file_line_and_field(tmp_path, tok):
    from indexer.data import DataError

    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(_rows(1)[0]) + "\n" + json.dumps({"id": "x", "prompt": 3, "response": "a",
                                                                 "evidence_ids": []}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl, line 2 \(field 'prompt'\)"):
        read_examples(str(path))
    ex = [SFTExample("u1", "café", "ok")]
    with pytest.raises(DataError, match="u1"):
        encode_examples(ex, make_encoder(tok), tok.eos_token_id, 64, 4)
    (ids, _), = encode_examples(ex, make_encoder(tok, "drop"), tok.eos_token_id, 64, 4)
    assert tok.decode(ids[:-1]) == "cafok"


@pytest.mark.slow
def test_deepspeed_zero2_sft_runs_on_cpu_and_resumes(tmp_path, tiny_model):
    """DeepSpeed ZeRO-2 through the config passthrough (gloo on CPU; the first run JIT-builds DeepSpeed's
    shared-memory op, about two minutes). A subprocess: the process group would outlive the test."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (pip install 'wandao[deepspeed]')")
    data = _write(tmp_path / "sft.jsonl", _rows(64))
    base = [sys.executable, "-m", "align.sft", "--model.init_from", str(tiny_model), "--data.train", str(data),
            "--data.max_length", "96", "--optim.lr", "3e-3", "--train.backend", "deepspeed",
            "--deepspeed.zero_stage", "2", "--train.device", "cpu", "--train.out_dir", str(tmp_path / "ds"),
            "--train.eval_interval", "3", "--train.grad_accum_steps", "2", "--train.micro_batch_size", "4",
            "--train.num_threads", "1", "--train.plot", "false", "--train.checkpoint_interval", "3"]
    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ, MASTER_PORT="29573")
    first = subprocess.run(base + ["--train.max_iters", "6"], cwd=repo, env=env, capture_output=True, text=True,
                           timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    s1 = json.loads(first.stdout.strip().splitlines()[-1])
    assert s1["backend"] == "deepspeed-zero2" and s1["final_val_loss"] < s1["initial_val_loss"]
    assert (tmp_path / "ds/step-00000006/deepspeed/state").is_dir()
    second = subprocess.run(base + ["--train.max_iters", "8", "--train.resume", "auto"], cwd=repo, env=env,
                            capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    s2 = json.loads(second.stdout.strip().splitlines()[-1])
    assert s2["steps"] == 8 and s2["steps_this_run"] == 2


def test_other_hf_families_train_through_transformers(tmp_path):
    """A family wandao's modules do not cover (OPT) runs as the plain transformers model and saves as one."""
    from transformers import AutoModelForCausalLM, OPTConfig, OPTForCausalLM

    from align.sft import load_policy
    from pretrain.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer(ALPHABET, special_tokens=("<|endoftext|>", "<|pad|>"))
    torch.manual_seed(0)
    cfg = OPTConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=2,
                    max_position_embeddings=128, word_embed_proj_dim=32, eos_token_id=tok.eos_token_id,
                    pad_token_id=tok.pad_token_id, bos_token_id=tok.eos_token_id)
    OPTForCausalLM(cfg).save_pretrained(tmp_path / "opt")
    tok.save_pretrained(str(tmp_path / "opt"))
    assert not hasattr(load_policy(tmp_path / "opt"), "cfg")  # not converted to a wandao module
    data = _write(tmp_path / "sft.jsonl", _rows(64))
    summary = run(_cfg(tmp_path / "opt", data, tmp_path / "run", max_iters=10, eval_interval=10, plot=False))
    assert summary["final_val_loss"] < summary["initial_val_loss"] - 0.3  # measured 4.46 -> 3.72
    assert type(AutoModelForCausalLM.from_pretrained(summary["model_dir"])).__name__ == "OPTForCausalLM"
