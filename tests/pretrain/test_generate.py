"""pretrain.generate: the KV-cached loop against transformers' own generate, batching, sampling, stops."""

import pytest
import torch

from pretrain.generate import Detokenizer, GenerationConfig, StopMatcher, generate, load_model, stream

TEXTS = ["The quick brown fox jumps over the lazy dog.", "User: who wrote the song?\nAssistant: Nobody knows.",
         "To be, or not to be, that is the question.", "café naïve 北京 東京 ünïcödé"]


def _random_model(out, preset: str, block_size: int, **token_ids: str):
    """A random-weight wandao model saved as an HF folder with a BPE tokenizer, loaded back with load_model;
    ``token_ids`` name the tokenizer attribute each config id takes (``pad_token_id="pad_token_id"``)."""
    from pretrain.model import build_model, from_preset
    from pretrain.tokenizer import train_bpe_tokenizer

    tok = train_bpe_tokenizer(TEXTS * 5, vocab_size=300, min_frequency=1)
    torch.manual_seed(0)
    model = build_model(from_preset(preset, vocab_size=len(tok), block_size=block_size))
    model.save_pretrained(out, **{key: getattr(tok, attr) for key, attr in token_ids.items()})
    tok.save_pretrained(out)
    return load_model(out)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random-weight wandao GPT (tiny preset, 128 positions) saved as an HF folder with a BPE tokenizer."""
    return _random_model(tmp_path_factory.mktemp("tiny-gen"), "tiny", 128, eos_token_id="eos_token_id",
                         bos_token_id="eos_token_id", pad_token_id="pad_token_id")


def test_greedy_matches_transformers_generate(tiny):
    model, tok = tiny
    prompt = "User: who wrote the song?\nAssistant:"
    cfg = GenerationConfig(max_new_tokens=12, temperature=0.0, eos_token_id=-1)  # no EOS: exactly 12 tokens
    ours = generate(model, tok, [prompt], cfg)[0]
    ids = torch.tensor([tok(prompt)["input_ids"]])
    ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                         eos_token_id=None, pad_token_id=tok.pad_token_id)[0, ids.shape[1]:].tolist()
    assert ours.token_ids == ref
    assert ours.finish_reason == "length" and len(ours.token_ids) == 12
    assert ours.text == tok.decode(ref, skip_special_tokens=True)


def test_batched_left_padding_equals_one_at_a_time(tiny):
    model, tok = tiny
    prompts = ["The quick", "To be, or not to be, that is", "User:"]
    cfg = GenerationConfig(max_new_tokens=8, temperature=0.0, eos_token_id=-1)
    batched = generate(model, tok, prompts, cfg)
    for p, g in zip(prompts, batched):
        assert generate(model, tok, [p], cfg)[0].token_ids == g.token_ids


def test_stream_pieces_join_to_the_full_text_and_seed_is_reproducible(tiny):
    model, tok = tiny
    cfg = GenerationConfig(max_new_tokens=16, temperature=1.0, top_k=50, top_p=0.9, seed=7, eos_token_id=-1)
    events = list(stream(model, tok, "café", cfg))
    assert len(events) == 16 and events[-1].finish_reason == "length"
    assert all(e.finish_reason is None for e in events[:-1])
    full = generate(model, tok, ["café"], cfg)[0]
    assert "".join(e.text for e in events) == full.text  # same seed, same draw
    assert [e.token_id for e in events] == full.token_ids


def test_top_k_one_is_greedy(tiny):
    model, tok = tiny
    greedy = generate(model, tok, ["The"], GenerationConfig(max_new_tokens=6, temperature=0.0, eos_token_id=-1))
    topk1 = generate(model, tok, ["The"], GenerationConfig(max_new_tokens=6, temperature=2.0, top_k=1, seed=3,
                                                          eos_token_id=-1))
    assert greedy[0].token_ids == topk1[0].token_ids


def test_eos_and_cancel(tiny):
    model, tok = tiny
    cfg = GenerationConfig(max_new_tokens=5, temperature=0.0, eos_token_id=-1)
    first = generate(model, tok, ["The"], cfg)[0].token_ids[0]
    # the first greedy token declared EOS: the row stops at once with no text
    g = generate(model, tok, ["The"], GenerationConfig(max_new_tokens=5, temperature=0.0, eos_token_id=first))[0]
    assert g.finish_reason == "stop" and g.token_ids == [] and g.text == ""
    calls = []
    events = list(stream(model, tok, "The", GenerationConfig(max_new_tokens=50, temperature=0.0, eos_token_id=-1),
                         should_stop=lambda: calls.append(1) or len(calls) >= 3))
    assert len(events) == 3 and events[-1].finish_reason == "cancelled"


def test_stop_matcher_holds_back_prefixes_and_cuts():
    m = StopMatcher(["\nUser:"])
    # row: piece fed -> text released
    assert m.feed("Hello") == "Hello"
    assert m.feed(" there\nUs") == " there"          # "\nUs" could become "\nUser:"
    assert m.feed("ually") == "\nUsually"            # it did not
    assert m.feed(" fine.\nUser: next") == " fine." and m.stopped


def test_stop_string_in_generation(tiny):
    model, tok = tiny
    cfg = GenerationConfig(max_new_tokens=12, temperature=0.0, eos_token_id=-1)
    full = generate(model, tok, ["The"], cfg)[0].text
    assert len(full) > 4
    stop = full[2:4]
    g = generate(model, tok, ["The"], GenerationConfig(max_new_tokens=12, temperature=0.0, eos_token_id=-1,
                                                       stop=[stop]))[0]
    assert g.finish_reason == "stop" and g.text == full[:full.find(stop)]


def test_detokenizer_never_emits_half_characters(tiny):
    _, tok = tiny
    text = "北京 東京 ünïcödé"
    d = Detokenizer(tok)
    pieces = [d.add(i) for i in tok(text)["input_ids"]] + [d.flush()]
    assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces)


def test_prompt_longer_than_context(tiny):
    model, tok = tiny
    long = "The quick brown fox " * 100
    with pytest.raises(ValueError, match="at most"):
        generate(model, tok, [long], GenerationConfig(max_new_tokens=4, truncate="error"))
    g = generate(model, tok, [long], GenerationConfig(max_new_tokens=4, temperature=0.0, eos_token_id=-1))[0]
    assert g.prompt_tokens == 128 - 4 and len(g.token_ids) == 4


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory):
    """A random-weight wandao T5 (tiny-t5 preset) saved as an HF folder: load_model gives a seq2seq model."""
    return _random_model(tmp_path_factory.mktemp("tiny-t5-gen"), "tiny-t5", 64, eos_token_id="eos_token_id",
                         pad_token_id="pad_token_id", decoder_start_token_id="pad_token_id")


def test_encoder_decoder_greedy_matches_transformers_generate_in_a_padded_batch(tiny_t5):
    model, tok = tiny_t5
    assert model.config.is_encoder_decoder
    prompts = ["User: who wrote the song?\nAssistant:", "The quick brown fox", "To be, or not to be, that is"]
    cfg = GenerationConfig(max_new_tokens=10, temperature=0.0, eos_token_id=-1)  # exactly 10 tokens each
    ours = generate(model, tok, prompts, cfg)  # one batch, encoder rows right-padded
    for prompt, got in zip(prompts, ours):
        ids = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]])
        ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, do_sample=False,
                             eos_token_id=None, min_new_tokens=10)[0, 1:].tolist()  # after decoder_start
        assert got.token_ids == ref and got.finish_reason == "length"
        assert got.text == tok.decode(ref, skip_special_tokens=True)
