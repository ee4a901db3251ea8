"""Checkpoint surgery: grow a trained model wider and deeper without changing what it computes.

Net2Net (Chen et al. 2016, "Net2Net: Accelerating Learning via Knowledge Transfer") and OpenAI Five's
"surgery" (Berner et al. 2019, sec. 3.3 and appendix B): the grown model's logits equal the original's,
then training continues from there. Works on GPT-2-, Llama- (incl. MQA/GQA) and GPT-NeoX-style
models, read from any HF folder of those classes and written back as one.

How each growth stays exact (``tests/pretrain/test_surgery.py`` checks every case with ``assert_close``):

- **Residual width** ``n_embd -> k·n_embd`` (k an integer): every residual channel is copied k times
  (channel i -> i, i+d, ..., i+(k-1)d). A vector of k equal copies has the same mean and the same
  variance (and RMS) as the original, so LayerNorm and RMSNorm give copies of the original outputs,
  exactly; norm gains and biases are copied too. Matrices that *write* the residual (embeddings,
  attention and MLP output projections) have their rows copied; matrices that *read* it have their
  columns split among the k copies, W_j = W·s_j with Σ_j s_j = 1 (s_j = 1/k plus zero-sum noise, so the
  copies get different gradients and do not stay tied forever; Net2Net's symmetry breaking). With tied
  embeddings the lm_head is the copied embedding, so the final norm's gain and bias are divided by k.
  This is why the factor must be an integer: with unequal copy counts the norm statistics change, and
  zero-padded channels change the mean and variance (naive Net2WiderNet is not exact with norms).
- **Heads** (more query heads, more key/value heads, or a wider head for learned-position GPTs): an old
  head keeps its weights in its new slot (under GQA, old query head h of group j moves to slot
  j·g' + h mod g so that it still reads kv head j). New heads get fresh weights and zero columns in the
  output projection. A wider head pads q with zeros (k and v pads are random, so they learn) and scales
  q by sqrt(hd'/hd) to undo SDPA's 1/sqrt(hd) change. RoPE heads keep their width (the rotation
  frequencies depend on it).
- **MLP hidden width**: new units get fresh input weights and zero output weights.
- **Depth**: new blocks are copies of the block before them with their attention and MLP output
  projections (and biases) set to zero, so a pre-norm block adds exactly 0 to the residual stream;
  the output weights' gradient is non-zero, so they start learning at once.

Example:
    wandao surgery --from runs/tiny/step-00002000/model --out runs/tiny-grown --n-embd 64 --n-layer 4
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
from pathlib import Path

import torch

from pretrain.model import ModelConfig, _LMBase, build_model, load_pretrained

logger = logging.getLogger(__name__)

SUPPORTED = ("gpt", "llama", "neox")


# -- per-arch views onto a block, in one canonical layout ----------------------------------------


def _blocks(model: _LMBase):
    return {"gpt": lambda: model.transformer.h, "llama": lambda: model.model.layers,
            "neox": lambda: model.gpt_neox.layers}[model.cfg.arch]()


def _norms(block, arch):
    return (block.ln_1, block.ln_2) if arch == "gpt" else (block.input_layernorm, block.post_attention_layernorm)


def _get_attn(block, cfg: ModelConfig) -> dict[str, torch.Tensor | None]:
    """q (nh, hd, C), k/v (nkv, hd, C), biases (heads, hd), o (C, nh, hd), ob (C)."""
    nh, nkv, hd, C = cfg.n_head, cfg.n_kv_head, cfg.head_dim, cfg.n_embd
    if cfg.arch == "gpt":
        a = block.attn
        w = a.c_attn.weight.view(3, nh, hd, C)
        b = a.c_attn.bias.view(3, nh, hd) if a.c_attn.bias is not None else None
        o, ob = a.c_proj.weight, a.c_proj.bias
        q, k, v = w[0], w[1], w[2]
        qb, kb, vb = (b[0], b[1], b[2]) if b is not None else (None, None, None)
    elif cfg.arch == "neox":
        a = block.attention
        w = a.query_key_value.weight.view(nh, 3, hd, C)
        b = a.query_key_value.bias.view(nh, 3, hd) if a.query_key_value.bias is not None else None
        o, ob = a.dense.weight, a.dense.bias
        q, k, v = w[:, 0], w[:, 1], w[:, 2]
        qb, kb, vb = (b[:, 0], b[:, 1], b[:, 2]) if b is not None else (None, None, None)
    else:
        a = block.self_attn
        q, k, v = (m.weight.view(n, hd, C) for m, n in ((a.q_proj, nh), (a.k_proj, nkv), (a.v_proj, nkv)))
        qb, kb, vb = ((m.bias.view(n, hd) if m.bias is not None else None)
                      for m, n in ((a.q_proj, nh), (a.k_proj, nkv), (a.v_proj, nkv)))
        o, ob = a.o_proj.weight, a.o_proj.bias
    return dict(q=q, k=k, v=v, qb=qb, kb=kb, vb=vb, o=o.view(C, nh, hd), ob=ob)


def _set_attn(block, cfg: ModelConfig, t: dict[str, torch.Tensor | None]) -> None:
    nh, hd, C = cfg.n_head, cfg.head_dim, cfg.n_embd
    if cfg.arch == "gpt":
        a = block.attn
        a.c_attn.weight.copy_(torch.stack([t["q"], t["k"], t["v"]]).reshape(3 * nh * hd, C))
        if a.c_attn.bias is not None:
            a.c_attn.bias.copy_(torch.stack([t["qb"], t["kb"], t["vb"]]).reshape(-1))
        o_mod = a.c_proj
    elif cfg.arch == "neox":
        a = block.attention
        a.query_key_value.weight.copy_(torch.stack([t["q"], t["k"], t["v"]], dim=1).reshape(3 * nh * hd, C))
        if a.query_key_value.bias is not None:
            a.query_key_value.bias.copy_(torch.stack([t["qb"], t["kb"], t["vb"]], dim=1).reshape(-1))
        o_mod = a.dense
    else:
        a = block.self_attn
        for m, key in ((a.q_proj, "q"), (a.k_proj, "k"), (a.v_proj, "v")):
            m.weight.copy_(t[key].reshape(m.weight.shape))
            if m.bias is not None:
                m.bias.copy_(t[key + "b"].reshape(-1))
        o_mod = a.o_proj
    o_mod.weight.copy_(t["o"].reshape(C, nh * hd))
    if o_mod.bias is not None:
        o_mod.bias.copy_(t["ob"])


def _mlp(block, arch):
    """(input linears, output linear)."""
    m = block.mlp
    if arch == "gpt":
        return [m.c_fc], m.c_proj
    if arch == "llama":
        return [m.gate_proj, m.up_proj], m.down_proj
    return [m.dense_h_to_4h], m.dense_4h_to_h


def _embeddings(model: _LMBase):
    """(embedding modules whose columns are residual channels, final norm)."""
    arch = model.cfg.arch
    if arch == "gpt":
        return [model.transformer.wte, model.transformer.wpe], model.transformer.ln_f
    if arch == "llama":
        return [model.model.embed_tokens], model.model.norm
    return [model.gpt_neox.embed_in], model.gpt_neox.final_layer_norm


# -- the growth ----------------------------------------------------------------------------------


def _split(w: torch.Tensor, k: int, noise: float, gen: torch.Generator) -> torch.Tensor:
    """Columns (last dim d) -> k·d: copy j of column i is w[..., i]·s_j with Σ_j s_j = 1."""
    if k == 1:
        return w.clone()
    eps = torch.randn((k, *w.shape), generator=gen, dtype=w.dtype) * noise
    s = 1.0 / k + (eps - eps.mean(dim=0, keepdim=True))  # zero-sum noise keeps the sum exact
    return torch.cat([w * s[j] for j in range(k)], dim=-1)


def _tile(w: torch.Tensor, k: int, dim: int) -> torch.Tensor:
    return torch.cat([w] * k, dim=dim)


def _depth_plan(old: int, new: int) -> list[tuple[int, bool]]:
    """[(source old block, is_new)] with the extra blocks spread evenly through the stack."""
    extra = new - old
    after = [0] * old
    for j in range(extra):
        after[min(old - 1, (2 * j + 1) * old // (2 * extra))] += 1
    plan: list[tuple[int, bool]] = []
    for i in range(old):
        plan.append((i, False))
        plan += [(i, True)] * after[i]
    return plan


def grown_config(cfg: ModelConfig, n_embd=None, n_head=None, n_kv_head=None, mlp_hidden=None, n_layer=None) -> ModelConfig:
    """The grown model's config; raises ValueError naming the option when a growth cannot be exact."""
    if cfg.arch not in SUPPORTED:
        raise ValueError(f"surgery supports arch in {SUPPORTED}, not {cfg.arch!r}")
    n_embd = n_embd or cfg.n_embd
    if n_embd < cfg.n_embd or n_embd % cfg.n_embd:
        raise ValueError(f"--n-embd {n_embd}: must be a whole multiple of the current {cfg.n_embd} (k equal copies "
                         "of each channel keep LayerNorm/RMSNorm statistics exact; other widths cannot)")
    k = n_embd // cfg.n_embd
    if n_head is None:  # default: keep the head width, so heads scale with the width (except llama)
        n_head = cfg.n_head if cfg.arch == "llama" else cfg.n_head * k
    n_kv_head = n_kv_head or (n_head if cfg.n_kv_head == cfg.n_head else cfg.n_kv_head)
    head_dim = cfg.head_dim if cfg.arch == "llama" else None
    new = ModelConfig.from_dict({**cfg.to_dict(), "n_embd": n_embd, "n_head": n_head, "n_kv_head": n_kv_head,
                                 "head_dim": head_dim, "mlp_hidden": mlp_hidden or cfg.mlp_hidden * k,
                                 "n_layer": n_layer or cfg.n_layer}, source="surgery")
    checks = [("--n-head", new.n_head >= cfg.n_head, f"cannot shrink {cfg.n_head} heads"),
              ("--n-kv-head", new.n_kv_head >= cfg.n_kv_head, f"cannot shrink {cfg.n_kv_head} kv heads"),
              ("--n-head", new.n_head // new.n_kv_head >= cfg.n_head // cfg.n_kv_head,
               "query heads per kv head cannot shrink (old heads must keep their kv head)"),
              ("--n-head", new.head_dim >= cfg.head_dim, f"head width {new.head_dim} < {cfg.head_dim}"),
              ("--n-head", cfg.pos != "rope" or new.head_dim == cfg.head_dim,
               f"RoPE heads keep their width {cfg.head_dim}; pass n_head = n_embd / {cfg.head_dim}"),
              ("--mlp-hidden", new.mlp_hidden >= cfg.mlp_hidden, f"cannot shrink MLP width {cfg.mlp_hidden}"),
              ("--n-layer", new.n_layer >= cfg.n_layer, f"cannot remove layers ({cfg.n_layer})")]
    for flag, ok, why in checks:
        if not ok:
            raise ValueError(f"{flag}: {why}")
    return new


@torch.no_grad()
def grow(model: _LMBase, n_embd: int | None = None, n_head: int | None = None, n_kv_head: int | None = None,
         mlp_hidden: int | None = None, n_layer: int | None = None, split_noise: float = 0.05,
         seed: int = 0) -> _LMBase:
    """A wider and/or deeper copy of ``model`` computing the same function (see the module docstring).

    Args:
        n_embd: residual width, a whole multiple of the current one.
        n_head / n_kv_head: query and key/value heads (default: heads scale with the width for GPT and
            NeoX, stay for Llama whose head_dim is explicit).
        mlp_hidden: MLP hidden width (default: scales with the width).
        n_layer: number of blocks.
        split_noise: relative std of the zero-sum noise that splits reading weights among copies.
        seed: seeds the fresh weights and the noise.
    Returns:
        the grown model (new module; ``model`` is untouched).
    """
    old_cfg = model.cfg
    cfg = grown_config(old_cfg, n_embd, n_head, n_kv_head, mlp_hidden, n_layer)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    new = build_model(cfg)
    k = cfg.n_embd // old_cfg.n_embd
    dtype = next(model.parameters()).dtype
    new.to(dtype)
    arch = cfg.arch

    # embeddings: residual channels are columns -> copies
    (old_embs, old_fnorm), (new_embs, new_fnorm) = _embeddings(model), _embeddings(new)
    for oe, ne in zip(old_embs, new_embs):
        ne.weight.copy_(_tile(oe.weight, k, dim=1))
    scale = 1.0 / k if cfg.tie_embeddings else 1.0  # tied lm_head sums k copies: shrink the final norm
    new_fnorm.weight.copy_(_tile(old_fnorm.weight, k, 0) * scale)
    if getattr(old_fnorm, "bias", None) is not None:
        new_fnorm.bias.copy_(_tile(old_fnorm.bias, k, 0) * scale)
    if not cfg.tie_embeddings:
        new.lm_head.weight.copy_(_split(model.lm_head.weight, k, split_noise, gen))

    # head slots: old query head h (group j = h // g) -> j·g' + h % g; kv head j -> j
    g, g2 = old_cfg.n_head // old_cfg.n_kv_head, cfg.n_head // cfg.n_kv_head
    slot = [(h // g) * g2 + h % g for h in range(old_cfg.n_head)]
    hd, hd2 = old_cfg.head_dim, cfg.head_dim
    q_scale = math.sqrt(hd2 / hd)  # SDPA divides by sqrt(head_dim): undo the change for old heads

    old_blocks, new_blocks = _blocks(model), _blocks(new)
    for i, (src, is_new) in enumerate(_depth_plan(old_cfg.n_layer, cfg.n_layer)):
        ob, nb = old_blocks[src], new_blocks[i]
        for on, nn_ in zip(_norms(ob, arch), _norms(nb, arch)):
            nn_.weight.copy_(_tile(on.weight, k, 0))
            if getattr(on, "bias", None) is not None:
                nn_.bias.copy_(_tile(on.bias, k, 0))

        # attention
        o, t = _get_attn(ob, old_cfg), {key: (v.clone() if v is not None else None)
                                       for key, v in _get_attn(nb, cfg).items()}
        t["o"].zero_()
        if t["ob"] is not None:
            t["ob"].zero_()
        for h in range(old_cfg.n_head):
            t["q"][slot[h]].zero_()
            t["q"][slot[h], :hd] = _split(o["q"][h], k, split_noise, gen) * q_scale
            if o["qb"] is not None:
                t["qb"][slot[h]].zero_()
                t["qb"][slot[h], :hd] = o["qb"][h] * q_scale
            if not is_new:
                t["o"][:, slot[h], :hd] = _tile(o["o"][:, h], k, 0)
        for j in range(old_cfg.n_kv_head):
            for key in ("k", "v"):
                t[key][j, :hd] = _split(o[key][j], k, split_noise, gen)
                if o[key + "b"] is not None:
                    t[key + "b"][j, :hd] = o[key + "b"][j]
        if t["ob"] is not None and not is_new:
            t["ob"].copy_(_tile(o["ob"], k, 0))
        _set_attn(nb, cfg, t)

        # MLP: old units keep their slots; new units read with fresh weights and write zeros
        (o_ins, o_out), (n_ins, n_out) = _mlp(ob, arch), _mlp(nb, arch)
        h_old = old_cfg.mlp_hidden
        for oi, ni in zip(o_ins, n_ins):
            ni.weight[:h_old] = _split(oi.weight, k, split_noise, gen)
            if oi.bias is not None:
                ni.bias[:h_old] = oi.bias
        n_out.weight.zero_()
        if n_out.bias is not None:
            n_out.bias.zero_()
        if not is_new:
            n_out.weight[:, :h_old] = _tile(o_out.weight, k, 0)
            if o_out.bias is not None:
                n_out.bias.copy_(_tile(o_out.bias, k, 0))
    return new


def surgery_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="wandao surgery",
        description="Grow an HF causal-LM checkpoint (GPT-2, Llama, GPT-NeoX) wider and deeper, function-preserving.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=("example:\n  wandao surgery --from runs/tiny/final/model --out runs/tiny-grown --n-embd 64 --n-layer 4\n"
                "then continue training from runs/tiny-grown (it is a plain transformers folder)"),
    )
    parser.add_argument("--from", dest="src", required=True, help="HF model folder (config.json + safetensors)")
    parser.add_argument("--out", required=True, help="where to write the grown HF folder")
    parser.add_argument("--n-embd", type=int, help="residual width (a whole multiple of the current one)")
    parser.add_argument("--n-head", type=int, help="query heads")
    parser.add_argument("--n-kv-head", type=int, help="key/value heads (llama)")
    parser.add_argument("--mlp-hidden", type=int, help="MLP hidden width")
    parser.add_argument("--n-layer", type=int, help="number of blocks")
    parser.add_argument("--split-noise", type=float, default=0.05,
                        help="relative zero-sum noise splitting reading weights among copies (symmetry breaking)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--check-tokens", type=int, default=64,
                        help="check the grown logits against the original on this many random tokens (0: skip)")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    args = parser.parse_args(argv)
    if Path(args.out).exists() and not args.force:
        parser.error(f"--out {args.out} exists; pass --force to replace it")
    try:
        model = load_pretrained(args.src).eval()
        grown = grow(model, args.n_embd, args.n_head, args.n_kv_head, args.mlp_hidden, args.n_layer,
                     split_noise=args.split_noise, seed=args.seed).eval()
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    report = {"from": args.src, "out": args.out, "params_before": model.num_params(non_embedding=False),
              "params_after": grown.num_params(non_embedding=False),
              "config": {k: v for k, v in dataclasses.asdict(grown.cfg).items()
                         if getattr(model.cfg, k) != v}}
    if args.check_tokens:
        g = torch.Generator().manual_seed(args.seed)
        T = min(args.check_tokens, model.cfg.block_size)
        idx = torch.randint(0, model.cfg.vocab_size, (1, T), generator=g)
        with torch.no_grad():
            diff = (grown(idx)[0] - model(idx)[0]).abs().max().item()
        report["max_logit_diff"] = diff
        logger.info("grown logits differ from the original by at most %.3g", diff)
    src_cfg = json.loads((Path(args.src) / "config.json").read_text())
    keep = {key: src_cfg[key] for key in ("bos_token_id", "eos_token_id", "pad_token_id") if src_cfg.get(key) is not None}
    tok = {name: Path(args.src) / name  # the tokenizer travels with the weights
           for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt")
           if (Path(args.src) / name).exists()}
    grown.save_pretrained(args.out, extra_files=tok, **keep)
    print(json.dumps(report))
    return 0
