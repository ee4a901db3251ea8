"""Surgery: grown models compute the original function (logits equal), then train."""

import json

import pytest
import torch

from pretrain.model import build_model, from_preset, load_pretrained
from pretrain.surgery import _depth_plan, grow, grown_config, surgery_main

# float32: the split reading weights sum back to the original up to a few ulps (seen: <= 6e-7).
TOL = dict(rtol=1e-5, atol=1e-5)


def _trained_like(name, **over):
    torch.manual_seed(0)
    model = build_model(from_preset(name, **over))
    with torch.no_grad():  # move away from init: non-trivial norm gains and biases
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


CASES = [
    # (preset, overrides, growth)
    ("tiny", {}, dict(n_embd=64)),  # width x2, heads 2 -> 4 (head width kept), MLP 128 -> 256
    ("tiny", {"bias": False, "tie_embeddings": False}, dict(n_embd=96, n_head=4)),  # x3, wider heads 16 -> 24
    ("tiny", {}, dict(n_layer=5)),  # depth 2 -> 5
    ("tiny", {}, dict(n_embd=64, n_head=2, n_layer=3, mlp_hidden=300)),  # all at once
    ("tiny-llama", {}, dict(n_embd=64, n_layer=3)),
    ("tiny-llama", {"tie_embeddings": True, "bias": True}, dict(n_embd=64, mlp_hidden=200)),
    ("tiny-gqa", {}, dict(n_embd=64, n_head=8, n_kv_head=4)),  # GQA groups of 2 kept, kv heads 2 -> 4
    ("tiny-mqa", {}, dict(n_head=6, n_layer=4)),  # MQA: 4 -> 6 query heads on the one kv head
    ("tiny-neox", {}, dict(n_embd=64, n_layer=3)),  # parallel blocks
]


@pytest.mark.parametrize("name, over, growth", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_grown_model_computes_the_same_logits(name, over, growth):
    model = _trained_like(name, **over)
    grown = grow(model, **growth).eval()
    for key, value in growth.items():
        assert getattr(grown.cfg, key) == value
    assert grown.num_params() > model.num_params()
    idx = torch.randint(0, model.cfg.vocab_size, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(grown(idx)[0], model(idx)[0], **TOL)


def test_depth_only_growth_is_bitwise_exact():
    model = _trained_like("tiny-mqa")
    grown = grow(model, n_layer=4).eval()
    idx = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        assert torch.equal(grown(idx)[0], model(idx)[0])  # zero output projections add exact zeros


def test_depth_plan_spreads_new_blocks():
    # 2 -> 5: three new blocks at (2j+1)*2//6 = 0, 1, 1 -> after block 0 one copy, after block 1 two
    assert _depth_plan(2, 5) == [(0, False), (0, True), (1, False), (1, True), (1, True)]
    # 4 -> 6: new blocks after blocks (1*4)//4 = 1 and (3*4)//4 = 3
    assert _depth_plan(4, 6) == [(0, False), (1, False), (1, True), (2, False), (3, False), (3, True)]


def test_grown_model_trains_and_copies_diverge():
    model = _trained_like("tiny")
    grown = grow(model, n_embd=64, n_layer=3).train()
    before = {n: p.detach().clone() for n, p in grown.named_parameters()}
    opt = torch.optim.SGD(grown.parameters(), lr=0.5)
    idx = torch.randint(0, 64, (4, 16))
    losses = []
    for _ in range(5):
        _, loss = grown(idx[:, :-1], idx[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    unchanged = [n for n, p in grown.named_parameters() if torch.equal(p, before[n])]
    assert unchanged == []  # zero-initialised output projections and padded pieces learn too
    # residual channel i and its copy i+32 got different updates (the split noise broke the symmetry)
    wte = grown.transformer.wte.weight
    assert not torch.allclose(wte[:, :32] - before["transformer.wte.weight"][:, :32],
                              wte[:, 32:] - before["transformer.wte.weight"][:, 32:])


def test_growth_that_cannot_be_exact_is_refused():
    cfg = from_preset("tiny")
    with pytest.raises(ValueError, match="--n-embd 48: must be a whole multiple of the current 32"):
        grown_config(cfg, n_embd=48)
    with pytest.raises(ValueError, match="RoPE heads keep their width 16"):
        grown_config(from_preset("tiny-neox", rotary_pct=0.5), n_embd=64, n_head=2)
    with pytest.raises(ValueError, match="surgery supports arch"):
        grown_config(from_preset("tiny-t5"), n_layer=3)


def test_surgery_cli_writes_a_transformers_folder(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    model = _trained_like("tiny-gqa")
    model.save_pretrained(tmp_path / "src", eos_token_id=3)
    rc = surgery_main(["--from", str(tmp_path / "src"), "--out", str(tmp_path / "grown"),
                       "--n-embd", "64", "--n-layer", "3"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["max_logit_diff"] < 1e-5 and report["config"]["n_layer"] == 3
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "grown").eval()
    assert hf.config.hidden_size == 64 and hf.config.num_hidden_layers == 3 and hf.config.eos_token_id == 3
    idx = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, model(idx)[0], **TOL)
    assert load_pretrained(tmp_path / "grown").cfg.n_embd == 64
