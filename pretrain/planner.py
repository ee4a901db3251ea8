"""Chinchilla compute planning: compute-optimal parameters N and tokens D for a FLOP budget.

Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models" (arXiv:2203.15556):

- **Approach 1/2** (the ~20 tokens per parameter rule): a power law N_opt(C) = k·C^a fitted by least
  squares in log space to the paper's Table 3 rows (the 67B row is left out: its own numbers disagree,
  6·67e9·1.5e12 = 6.03e23 ≠ 5.76e23). The fit gives a ≈ 0.498 (the paper reports a = 0.50 for
  approach 1) and about 20–21.6 tokens per parameter over the table's range. D_opt = C / (6·N_opt).
- **Approach 3**: the parametric loss L(N, D) = E + A/N^α + B/D^β with E = 1.69, A = 406.4,
  B = 410.7, α = 0.34, β = 0.28 (paper eq. 10 and sec. D.2), minimised under C = 6ND:
  N_opt(C) = G·(C/6)^a, D_opt(C) = G^-1·(C/6)^b, a = β/(α+β), b = α/(α+β), G = (αA/(βB))^(1/(α+β)).

Training FLOPs are C = 6·N·D (Kaplan et al. 2020).

Example:
    >>> plan_for_flops(5.76e23)["approach3"]["params"]  # doctest: +ELLIPSIS
    3.2...e+10
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

# Hoffmann et al. 2022, Table 3 (approach 1): parameters, FLOPs, tokens.
TABLE3 = (
    (400e6, 1.92e19, 8.0e9),
    (1e9, 1.21e20, 20.2e9),
    (10e9, 1.23e22, 205.1e9),
    (67e9, 5.76e23, 1.5e12),
    (175e9, 3.85e24, 3.7e12),
    (280e9, 9.90e24, 5.9e12),
    (520e9, 3.43e25, 11.0e12),
    (1e12, 1.27e26, 21.2e12),
    (10e12, 1.30e28, 216.2e12),
)
_TABLE3_FIT_ROWS = tuple(r for r in TABLE3 if r[0] != 67e9)

# Approach 3 constants (Hoffmann et al. 2022, eq. 10 / sec. D.2).
E, A, B, ALPHA, BETA = 1.69, 406.4, 410.7, 0.34, 0.28


def _fit_approach1() -> tuple[float, float]:
    """Least-squares fit of log N = log k + a·log C over Table 3 (without the 67B row)."""
    xs = [math.log(c) for _, c, _ in _TABLE3_FIT_ROWS]
    ys = [math.log(n) for n, _, _ in _TABLE3_FIT_ROWS]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    a = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return math.exp(my - a * mx), a


K1, A1 = _fit_approach1()


def flops(n: float, d: float) -> float:
    """Training FLOPs C = 6·N·D (Kaplan et al. 2020, sec. 2.1)."""
    return 6.0 * n * d


def loss(n: float, d: float) -> float:
    """Approach-3 predicted loss L(N, D) = E + A/N^α + B/D^β (Hoffmann et al. 2022, eq. 10)."""
    return E + A / n**ALPHA + B / d**BETA


def _g() -> tuple[float, float, float]:
    g = (ALPHA * A / (BETA * B)) ** (1.0 / (ALPHA + BETA))
    return g, BETA / (ALPHA + BETA), ALPHA / (ALPHA + BETA)


def approach3_for_flops(c: float) -> tuple[float, float]:
    """(N_opt, D_opt) for budget C by approach 3 (Hoffmann et al. 2022, eq. 4 with the eq. 10 fit)."""
    g, a, b = _g()
    return g * (c / 6.0) ** a, (c / 6.0) ** b / g


def approach1_for_flops(c: float) -> tuple[float, float]:
    """(N_opt, D_opt) for budget C by the approach-1 power law fitted to Table 3."""
    n = K1 * c**A1
    return n, c / (6.0 * n)


def _row(n: float, d: float) -> dict[str, float]:
    return {"params": n, "tokens": d, "tokens_per_param": d / n, "flops": flops(n, d), "loss": loss(n, d)}


def plan_for_flops(c: float) -> dict[str, dict[str, float]]:
    """Compute-optimal plans for a FLOP budget, both approaches."""
    return {"approach1": _row(*approach1_for_flops(c)), "approach3": _row(*approach3_for_flops(c))}


def plan_for_params(n: float) -> dict[str, dict[str, float]]:
    """The budget and token count that make N compute-optimal, both approaches."""
    c1 = (n / K1) ** (1.0 / A1)
    g, a, _ = _g()
    c3 = 6.0 * (n / g) ** (1.0 / a)
    return {"approach1": _row(n, c1 / (6.0 * n)), "approach3": _row(n, approach3_for_flops(c3)[1])}


def plan_for_tokens(d: float) -> dict[str, dict[str, float]]:
    """The model size for which D tokens are compute-optimal, both approaches."""
    # approach 1: D = C/(6 k C^a) = C^(1-a) / (6k)
    c1 = (6.0 * K1 * d) ** (1.0 / (1.0 - A1))
    g, _, b = _g()
    c3 = 6.0 * (d * g) ** (1.0 / b)
    return {"approach1": _row(approach1_for_flops(c1)[0], d), "approach3": _row(approach3_for_flops(c3)[0], d)}


def compare(n: float, d: float) -> dict[str, Any]:
    """A given plan (N, D) against the approach-3 compute-optimal plan at the same FLOPs."""
    c = flops(n, d)
    opt = plan_for_flops(c)
    return {"plan": _row(n, d), "optimal_at_same_flops": opt, "loss_gap": loss(n, d) - opt["approach3"]["loss"]}


def _fmt(x: float) -> str:
    for unit, s in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= unit:
            return f"{x / unit:.3g}{s}"
    return f"{x:.3g}"


def format_table(rows: list[tuple[str, dict[str, float]]]) -> str:
    head = f"{'plan':<34} {'N':>8} {'D':>8} {'D/N':>7} {'FLOPs':>10} {'loss':>7}"
    lines = [head, "-" * len(head)]
    for label, r in rows:
        lines.append(f"{label:<34} {_fmt(r['params']):>8} {_fmt(r['tokens']):>8} {r['tokens_per_param']:>7.1f} "
                     f"{r['flops']:>10.3g} {r['loss']:>7.4f}")
    return "\n".join(lines)


def plot_isoflops(path: str | os.PathLike, budgets: list[float], plans: list[tuple[str, float, float]] = ()) -> Path:
    """Iso-FLOP curves of the approach-3 loss against N (D = C/6N), the optimum marked on each,
    plus any given plans; written to a PNG atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for c in budgets:
        n_opt, _ = approach3_for_flops(c)
        ns = np.logspace(math.log10(n_opt) - 1.5, math.log10(n_opt) + 1.5, 200)
        (line,) = ax.plot(ns, [loss(n, c / (6 * n)) for n in ns], label=f"C = {c:.2g}")
        ax.plot([n_opt], [loss(n_opt, c / (6 * n_opt))], "o", color=line.get_color())
    for label, n, d in plans:
        ax.plot([n], [loss(n, d)], "k*", markersize=10)
        ax.annotate(label, (n, loss(n, d)), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("parameters N")
    ax.set_ylabel("predicted loss L(N, C/6N)")
    ax.set_title("Iso-FLOP curves, Chinchilla approach 3 (dots: optimum)")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _plan_arg(text: str) -> tuple[float, float]:
    try:
        n, d = text.split(":")
        n_, d_ = float(n), float(d)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--compare expects PARAMS:TOKENS such as 175e9:300e9, got {text!r}") from None
    if n_ <= 0 or d_ <= 0:
        raise argparse.ArgumentTypeError(f"--compare {text!r}: both numbers must be positive")
    return n_, d_


def _positive(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number such as 5.76e23, got {text!r}") from None
    if x <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return x


def plan_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="wandao plan",
        description="Compute-optimal model size and tokens by Chinchilla (Hoffmann et al. 2022).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  wandao plan --flops 5.76e23 --compare 175e9:300e9 --compare 280e9:300e9 --plot runs/isoflop.png",
    )
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--flops", type=_positive, help="training FLOP budget C")
    what.add_argument("--params", type=_positive, help="parameter count N")
    what.add_argument("--tokens", type=_positive, help="training tokens D")
    parser.add_argument("--compare", type=_plan_arg, action="append", default=[], metavar="N:D",
                        help="a plan to compare, PARAMS:TOKENS (repeatable), e.g. GPT-3's 175e9:300e9")
    parser.add_argument("--plot", metavar="FILE.png", help="save iso-FLOP curves here")
    parser.add_argument("--json", action="store_true", help="also print the result as one JSON line")
    args = parser.parse_args(argv)
    if args.flops is None and args.params is None and args.tokens is None and not args.compare:
        parser.error("give --flops, --params, --tokens or --compare")

    rows: list[tuple[str, dict[str, float]]] = []
    result: dict[str, Any] = {}
    if args.flops is not None:
        result["plan"] = plan_for_flops(args.flops)
        head = f"C={args.flops:.3g}"
    elif args.params is not None:
        result["plan"] = plan_for_params(args.params)
        head = f"N={_fmt(args.params)}"
    elif args.tokens is not None:
        result["plan"] = plan_for_tokens(args.tokens)
        head = f"D={_fmt(args.tokens)}"
    if "plan" in result:
        rows += [(f"{head}: approach 1/2 (Table 3)", result["plan"]["approach1"]),
                 (f"{head}: approach 3 (L(N,D) fit)", result["plan"]["approach3"])]
    result["compare"] = []
    for n, d in args.compare:
        cmp_ = compare(n, d)
        result["compare"].append(cmp_)
        rows.append((f"given {_fmt(n)}:{_fmt(d)}", cmp_["plan"]))
        rows.append((f"  optimal at same C (approach 3)", cmp_["optimal_at_same_flops"]["approach3"]))
    print(format_table(rows))
    for cmp_ in result["compare"]:
        p = cmp_["plan"]
        print(f"{_fmt(p['params'])}:{_fmt(p['tokens'])} predicted loss {p['loss']:.4f}, "
              f"{cmp_['loss_gap']:+.4f} against the compute-optimal plan at {p['flops']:.3g} FLOPs")
    if args.plot:
        budgets = sorted({10 ** k for k in range(18, 27, 2)} | ({args.flops} if args.flops else set()))
        plans = [(f"{_fmt(n)}:{_fmt(d)}", n, d) for n, d in args.compare]
        print(f"iso-FLOP plot: {plot_isoflops(args.plot, budgets, plans)}")
    if args.json:
        print(json.dumps(result))
    return 0
