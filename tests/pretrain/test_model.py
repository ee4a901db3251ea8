"""wandao's models: forward/backward for every preset, logits equal to the transformers classes both
ways (our save -> transformers load, transformers save -> our load), loss masking, FLOPs."""

import json

import pytest
import torch
import torch.nn.functional as F

from pretrain.model import ModelConfig, build_model, from_preset, hf_config_dict, list_presets, load_pretrained

transformers = pytest.importorskip("transformers")

# float32 on CPU; the same math in a different op order differs by a few ulps.
TOL = dict(rtol=1e-5, atol=1e-5)


def _perturb(model, seed=0):
    """Random weights away from init (norm gains, biases, zero-init pieces included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_forward_backward(name):
    big = not name.startswith(("tiny", "nanogpt", "shakespeare"))
    # big presets keep their width and heads but get 1 block and a 512 vocabulary, to stay fast
    cfg = from_preset(name, **({"n_layer": 1, "n_dec_layer": 1, "vocab_size": 512} if big else {}))
    torch.manual_seed(0)
    model = build_model(cfg)
    idx = torch.randint(0, cfg.vocab_size, (2, 8))
    extra = {"enc_idx": torch.randint(0, cfg.vocab_size, (2, 5))} if cfg.arch == "t5" else {}
    targets = torch.randint(0, cfg.vocab_size, (2, 8))  # not idx: tied embeddings favour the input token
    logits, loss = model(idx, targets, **extra)
    assert logits.shape == (2, 8, cfg.vocab_size)
    # at init the loss is near log(V): the logits start small
    assert abs(loss.item() - torch.log(torch.tensor(float(cfg.vocab_size))).item()) < 1.0
    loss.backward()
    for n, p in model.named_parameters():
        assert p.grad is not None, n


def _variants():
    yield "gpt-tied", from_preset("tiny")
    yield "gpt-nobias-untied-tanh", from_preset("tiny", bias=False, tie_embeddings=False, mlp="gelu_tanh")
    yield "anchor", from_preset("nanogpt-shakespeare-char")
    yield "llama", from_preset("tiny-llama")
    yield "llama-gqa", from_preset("tiny-gqa")
    yield "llama-mqa-tied-bias", from_preset("tiny-mqa", tie_embeddings=True, bias=True)
    yield "llama-headdim", from_preset("tiny-llama", head_dim=12, rope_theta=500.0)
    yield "neox-parallel", from_preset("tiny-neox")
    yield "neox-sequential-fullrope", from_preset("tiny-neox", parallel_block=False, rotary_pct=1.0)
    yield "neox-nobias-tied", from_preset("tiny-neox", bias=False, tie_embeddings=True)
    yield "t5-gated", from_preset("tiny-t5")
    yield "t5-relu", from_preset("tiny-t5", mlp="relu", n_dec_layer=3)


@pytest.mark.parametrize("label, cfg", list(_variants()), ids=[v[0] for v in _variants()])
def test_saved_folder_loads_in_transformers_with_equal_logits(tmp_path, label, cfg):
    torch.manual_seed(0)
    model = _perturb(build_model(cfg))
    if not cfg.bias and cfg.arch in ("gpt", "neox"):  # bias=False must stay bias-free
        assert not any(n.endswith("c_attn.bias") or n.endswith("query_key_value.bias") for n, _ in model.named_parameters())
    idx = torch.randint(0, cfg.vocab_size, (2, 16))
    out = tmp_path / "hf"
    model.save_pretrained(out)
    assert {p.name for p in out.iterdir()} == {"config.json", "generation_config.json", "model.safetensors"}
    with torch.no_grad():
        if cfg.arch == "t5":
            enc = torch.randint(1, cfg.vocab_size, (2, 12))
            enc_mask = torch.ones_like(enc)
            enc_mask[1, 9:] = 0  # padded evidence in the second row
            hf = transformers.AutoModelForSeq2SeqLM.from_pretrained(out).eval()
            assert type(hf).__name__ == "T5ForConditionalGeneration"
            ref = hf(input_ids=enc, attention_mask=enc_mask, decoder_input_ids=idx).logits
            ours = model(idx, enc_idx=enc, enc_mask=enc_mask)[0]
        else:
            hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
            assert type(hf).__name__ == {"gpt": "GPT2LMHeadModel", "llama": "LlamaForCausalLM",
                                         "neox": "GPTNeoXForCausalLM"}[cfg.arch]
            ref = hf(idx).logits
            ours = model(idx)[0]
        torch.testing.assert_close(ours, ref, **TOL)
        # and back: our loader reads the folder to the same function
        back = load_pretrained(out).eval()
        again = back(idx, enc_idx=enc, enc_mask=enc_mask)[0] if cfg.arch == "t5" else back(idx)[0]
        torch.testing.assert_close(again, ours, rtol=0, atol=0)
    assert back.cfg == cfg


def _hf_models():
    # Folders written by transformers itself (its own init and naming), as any HF checkpoint would be.
    yield "gpt2", lambda: transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=50, n_positions=32, n_embd=32, n_layer=2, n_head=4))  # default gelu_new
    yield "llama-gqa", lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32))
    yield "neox", lambda: transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(
        vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=32, rotary_pct=0.5))


@pytest.mark.parametrize("label, make", list(_hf_models()), ids=[v[0] for v in _hf_models()])
def test_transformers_folder_loads_into_our_module(tmp_path, label, make):
    torch.manual_seed(1)
    hf = make().eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    hf.save_pretrained(tmp_path / "hf")
    ours = load_pretrained(tmp_path / "hf").eval()
    idx = torch.randint(0, 50, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx)[0], hf(idx).logits, **TOL)


def test_loss_mask_and_ignore_index():
    cfg = from_preset("tiny")
    model = _perturb(build_model(cfg))
    idx = torch.randint(0, cfg.vocab_size, (1, 6))
    targets = torch.tensor([[3, 4, -100, 6, 7, 8]])
    mask = torch.tensor([[1, 0, 1, 1, 0, 1]])
    logits, loss = model(idx, targets, loss_mask=mask)
    # positions counted: 0 (mask 1), 3, 5; position 2 is -100 and 1, 4 are masked out
    logp = F.log_softmax(logits[0], dim=-1)
    expected = -(logp[0, 3] + logp[3, 6] + logp[5, 8]) / 3
    torch.testing.assert_close(loss, expected)
    # no mask: mean over the five targets that are not -100
    _, loss_all = model(idx, targets)
    expected_all = -(logp[0, 3] + logp[1, 4] + logp[3, 6] + logp[4, 7] + logp[5, 8]) / 5
    torch.testing.assert_close(loss_all, expected_all)


def test_anchor_params_and_flops():
    model = build_model(from_preset("nanogpt-shakespeare-char"))
    # nanoGPT prints 0.80M: 4 blocks * (ln 2*128 + qkv 128*384 + proj 128*128 + fc 128*512 + proj 512*128)
    # = 4 * 196864 = 787456, + ln_f 128 + wte 65*128 = 8320 (tied lm_head) -> 795904; wpe (64*128) excluded
    assert model.num_params() == 795904
    assert model.num_params(non_embedding=False) == 795904 + 64 * 128
    # 6N + 12*L*H*Q*T = 6*795904 + 12*4*4*32*64 = 4775424 + 393216
    assert model.flops_per_token() == 6 * 795904 + 12 * 4 * 4 * 32 * 64


def test_t5_flops_count_each_weight_on_the_tokens_it_runs_on():
    from pretrain.model import build_model, from_preset

    model = build_model(from_preset("tiny-t5"))  # 2+2 layers, d 32, 2 heads x 16, gated FF 64, vocab 64
    # encoder layer: q,k,v,o 4*32*32 + FF (2*32*64 + 64*32) + 2 norms = 10,304; x2 + final norm = 20,640
    # decoder layer: self 4,096 + cross q,o 2,048 (+ k,v 2,048 on encoder tokens) + FF 6,144 + 3 norms = 12,384
    enc, cross_kv, dec = 20_640, 2 * 2_048, 2 * 12_384 + 32 + 64 * 32  # dec: + final norm + tied lm_head
    attention = 12 * 2 * 16 * (2 * 10 * 10 + 2 * 3 * (3 + 10))
    assert model.flops_per_example(10, 3) == 6 * ((enc + cross_kv) * 10 + dec * 3) + attention
    assert enc + cross_kv + dec == model.num_params()  # every counted weight once (relative biases are lookups)


def test_config_errors_name_field_and_choices():
    with pytest.raises(ValueError, match=r"norm='rmsnorm'.*GPT2LMHeadModel.*layernorm"):
        ModelConfig(arch="gpt", norm="rmsnorm")
    with pytest.raises(ValueError, match=r"n_kv_head=2.*arch='llama'"):
        ModelConfig(arch="gpt", n_head=4, n_kv_head=2, n_embd=32)
    with pytest.raises(ValueError, match=r"arch='bert'"):
        ModelConfig(arch="bert")
    with pytest.raises(ValueError, match=r"unknown model field\(s\) \['n_layers'\]"):
        ModelConfig.from_dict({"n_layers": 3}, source="x.yaml")
    with pytest.raises(ValueError, match="unknown model preset"):
        from_preset("no-such-preset")


def test_hf_config_roundtrip_fields():
    cfg = from_preset("tiny-gqa")
    d = hf_config_dict(cfg)
    assert d["num_key_value_heads"] == 2 and d["architectures"] == ["LlamaForCausalLM"]
    json.dumps(d)  # serialisable


def test_unsupported_hf_family_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mistral"}))
    with pytest.raises(ValueError, match="model_type='mistral'.*plain transformers"):
        load_pretrained(tmp_path)


def test_save_into_existing_folder_keeps_other_files(tmp_path):
    # a checkpoint folder being assembled: the model files land beside the trainer's files
    (tmp_path / "optimizer.pt").write_bytes(b"opt")
    (tmp_path / "pytorch_model.bin").write_bytes(b"stale")  # an older format would shadow the new weights
    model = build_model(from_preset("tiny"))
    model.save_pretrained(tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["config.json", "generation_config.json", "model.safetensors", "optimizer.pt"]
    with pytest.raises(FileExistsError):
        model.save_pretrained(tmp_path, force=False)
