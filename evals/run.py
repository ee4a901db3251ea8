"""Run an eval suite and write a run folder people can read.

A run folder holds:

- ``config.json``: suite, resolved config, wandao version, time, machine;
- ``metrics.json``: the headline metrics (the same JSON the CLI prints last);
- ``per_example.jsonl``: one row per query/question/answer, for error analysis;
- ``report.md``: the headline table, then plots, then the worst cases;
- PNG plots: ``metrics.png`` (metric bars), ``distribution.png`` (the per-example score
  histogram) and, when the folder has a training ``metrics.jsonl`` (lines with ``step``),
  ``curve-<metric>.png`` line plots.

Example:
    >>> import evals
    >>> result = evals.run("qa", out="runs/eval/qa-demo", dataset="xquad-en",
    ...                    predictions="preds.jsonl")  # doctest: +SKIP
    >>> result.metrics["f1"]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import platform
import sys
import time
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

logger = logging.getLogger(__name__)


@dataclass
class RunResult:
    out: Path
    metrics: dict
    per_example: list[dict]


def default_out(suite: str) -> Path:
    return Path("runs") / "eval" / f"{suite}-{time.strftime('%Y%m%d-%H%M%S')}"


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return repr(value)


def _machine() -> dict:
    info = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()}
    torch = sys.modules.get("torch")  # only when the suite used it: importing torch costs seconds
    if torch is not None:
        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    return info


def run(suite: str, out: str | os.PathLike | None = None, force: bool = False, config: str | None = None,
        **targets: Any) -> RunResult:
    """Run ``suite`` with config fields ``targets`` and write the run folder.

    Args:
        suite: ``retrieval``, ``odqa-retrieval``, ``qa``, ``attribution``, ``feedback-mc``, ``lm``, ``rm``,
            ``moderation``.
        out: the run folder (default ``runs/eval/<suite>-<timestamp>``).
        force: replace an existing folder.
        config: a YAML file of config fields (flags/keyword arguments override it).
        **targets: fields of the suite's ``Config`` dataclass.

    Returns:
        :class:`RunResult` with the folder, metrics and per-example rows.
    """
    from evals.config import build_config
    from evals.suites import get_suite
    from indexer.io import atomic_directory

    module = get_suite(suite)
    if config and hasattr(module, "config_file"):  # a suite may take another kind of file as --config
        config, targets = module.config_file(config, targets)
    cfg = build_config(module.Config, yaml_path=config, overrides=targets)
    out = Path(out) if out is not None else default_out(suite)
    _check_out(out, force)  # fail before the work, not after
    started = time.time()
    metrics, per_example = module.suite(cfg)
    elapsed = time.time() - started
    from wandao import __version__

    run_config = {"suite": suite, "config": _jsonable(cfg), "wandao": __version__,
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
                  "seconds": round(elapsed, 3), "machine": _machine()}
    with atomic_directory(out, force=force) as tmp:
        write_json(tmp / "config.json", run_config)
        write_json(tmp / "metrics.json", metrics)
        from indexer.data import write_jsonl

        write_jsonl(tmp / "per_example.jsonl", (_jsonable(r) for r in per_example))
        write_report(tmp)
    logger.info("wrote run folder %s (%.1fs)", out, elapsed)
    return RunResult(out, metrics, per_example)


def _check_out(out: Path, force: bool) -> None:
    """Refuse an existing ``out`` without ``force``, and never replace a folder that is not a run folder
    (an index, a checkpoint...) even with it."""
    from indexer.io import OutputExistsError

    if not out.exists():
        return
    if not force:
        raise OutputExistsError(f"{out} already exists; pass --force to replace it")
    if not out.is_dir():
        raise OutputExistsError(f"{out} exists and is not a folder; choose another --out")
    is_run = (out / "config.json").exists() and "suite" in json.loads((out / "config.json").read_text(encoding="utf-8"))
    if not is_run and any(out.iterdir()):
        raise OutputExistsError(f"{out} exists and is not an eval run folder (no config.json with a suite); "
                                "--force only replaces run folders: choose another --out")


def write_json(path: Path, obj: Any) -> None:
    from indexer.io import atomic_write_text

    atomic_write_text(path, json.dumps(_jsonable(obj), indent=2, ensure_ascii=False) + "\n")


def metrics_line(metrics: dict) -> str:
    """The one-line metrics JSON the CLI prints last."""
    return json.dumps(_jsonable(metrics), ensure_ascii=False, separators=(", ", ": "))


# ---------------------------------------------------------------------------------------------- reports

def _training_series(path: Path) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """``{metric: {kind: [(step, value), ...]}}`` from a training ``metrics.jsonl`` (lines with ``step``;
    ``kind`` such as train/eval is optional, as pretrain's MetricsLogger writes it)."""
    from indexer.data import iter_jsonl

    series: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for _, obj in iter_jsonl(path):
        step = obj.get("step")
        if not isinstance(step, (int, float)) or isinstance(step, bool):
            continue
        kind = str(obj.get("kind", ""))
        for k, v in obj.items():
            if k in ("step", "kind") or isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                continue
            series.setdefault(k, {}).setdefault(kind, []).append((step, float(v)))
    return series


def _read_run(run_dir: Path) -> tuple[dict, dict, list[dict]]:
    """(config, metrics, per-example rows) of an eval run folder, or of a training run folder that only
    has ``metrics.jsonl`` (its metrics are then the last logged value of each series)."""
    from indexer.data import DataError, iter_jsonl

    if not (run_dir / "metrics.json").exists() and (run_dir / "metrics.jsonl").exists():
        last = {k: by_kind[kind][-1][1] for k, by_kind in _training_series(run_dir / "metrics.jsonl").items()
                for kind in by_kind}
        return {"suite": "training", "source": str(run_dir / "metrics.jsonl")}, last, []
    for name in ("config.json", "metrics.json"):
        if not (run_dir / name).exists():
            raise DataError(run_dir / name, "not found: is this a run folder written by `wandao eval` "
                                            "(or a training run with metrics.jsonl)?")
    config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    rows = [obj for _, obj in iter_jsonl(run_dir / "per_example.jsonl")] if (
        run_dir / "per_example.jsonl").exists() else []
    return config, metrics, rows


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, int):
        return str(v)
    return f"{v:.4f}" if abs(v) < 10 else f"{v:.2f}"


def _numeric(metrics: dict) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _default_headline(names) -> list[str]:
    """Headline metrics of a run that is not an eval suite (a training run): losses, perplexities, accuracies."""
    return [k for k in names if any(w in k for w in ("loss", "ppl", "perplexity", "acc", "bits_per"))]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_bars(path: Path, names: Sequence[str], series: dict[str, dict[str, float]], title: str) -> None:
    """Grouped bars: one group per metric, one bar per run/configuration."""
    import numpy as np

    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(names) * max(1, len(series)) ** 0.5 + 2), 3.6))
    width = 0.8 / max(1, len(series))
    x = np.arange(len(names))
    for i, (label, vals) in enumerate(series.items()):
        heights = [vals.get(n, float("nan")) for n in names]
        bars = ax.bar(x + i * width - 0.4 + width / 2, heights, width, label=label)
        ax.bar_label(bars, labels=[_fmt(h) if h == h else "" for h in heights], fontsize=7, padding=1)
    ax.set_xticks(x, names)
    ax.set_title(title)
    if len(series) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def plot_curves(run_dirs: Sequence[Path], out_dir: Path, labels: Sequence[str] | None = None,
                prefix: str = "curve-") -> list[Path]:
    """Line plots from training ``metrics.jsonl`` files: one PNG per metric, one line per run (and kind)."""
    per_run = [(_training_series(d / "metrics.jsonl") if (d / "metrics.jsonl").exists() else {}) for d in run_dirs]
    labels = list(labels) if labels else [d.name for d in run_dirs]
    metrics = [k for k in dict.fromkeys(k for series in per_run for k in series)]
    plt = _plt() if metrics else None
    out = []
    for k in metrics:
        lines = [(label, kind, pts) for label, series in zip(labels, per_run)
                 for kind, pts in series.get(k, {}).items() if len(pts) >= 2]
        if not lines:
            continue
        fig, ax = plt.subplots(figsize=(5, 3.2))
        for label, kind, pts in lines:
            name = " ".join(x for x in ((label if len(run_dirs) > 1 else ""), kind) if x)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=name or None)
        ax.set_xlabel("step")
        ax.set_ylabel(k)
        ax.set_title(k)
        ax.grid(alpha=0.3)
        if len(lines) > 1:
            ax.legend(fontsize=8)
        fig.tight_layout()
        target = out_dir / f"{prefix}{_safe(k)}.png"
        fig.savefig(target, dpi=110)
        plt.close(fig)
        out.append(target)
    return out


def _worst(rows: list[dict], key: str, low_is_bad: bool, n: int) -> list[dict]:
    scored = [r for r in rows if key in r]

    def sort_key(r: dict):
        v = r[key]
        missing = v is None
        if low_is_bad:
            return (not missing, v if not missing else 0)
        return (not missing, -(v if not missing else 0))

    return sorted(scored, key=sort_key)[:n]


def _cell(v: Any, limit: int = 120) -> str:
    s = v if isinstance(v, str) else (_fmt(v) if isinstance(v, (int, float)) else json.dumps(v, ensure_ascii=False))
    s = s.replace("|", "\\|").replace("\n", " ")
    return s if len(s) <= limit else s[:limit - 1] + "…"


def write_report(run_dir: str | os.PathLike, n_worst: int = 10) -> Path:
    """(Re)build ``report.md`` and the PNG plots of a run folder from its JSON files."""
    from indexer.io import atomic_write_text

    run_dir = Path(run_dir)
    config, metrics, rows = _read_run(run_dir)
    suite = config.get("suite", "?")
    try:
        from evals.suites import get_suite

        module = get_suite(suite)
        headline, (worst_key, low_is_bad) = module.HEADLINE, module.WORST
        columns = getattr(module, "WORST_COLUMNS", None)
    except ValueError:
        headline, (worst_key, low_is_bad), columns = _default_headline(_numeric(metrics)), ("", True), None
    numeric = _numeric(metrics)
    names = [h for h in headline if h in numeric]
    lines = [f"# {suite} eval", ""]
    lines += ["| metric | value |", "| --- | --- |"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in metrics.items()]
    lines += [""]
    plots = []
    if names:
        plot_bars(run_dir / "metrics.png", names, {suite: numeric}, f"{suite}: {metrics.get('dataset', '')}")
        plots.append(("metrics", "metrics.png"))
    values = [r[worst_key] for r in rows if isinstance(r.get(worst_key), (int, float))
              and not isinstance(r.get(worst_key), bool)]
    if len(values) > 1:
        plt = _plt()
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.hist(values, bins=min(30, max(5, len(values) // 5)))
        ax.set_xlabel(worst_key)
        ax.set_ylabel("examples")
        ax.set_title(f"per-example {worst_key}")
        fig.tight_layout()
        fig.savefig(run_dir / "distribution.png", dpi=110)
        plt.close(fig)
        plots.append((f"per-example {worst_key}", "distribution.png"))
    plots += [(p.stem.removeprefix("curve-"), p.name) for p in plot_curves([run_dir], run_dir)]
    if plots:
        lines += ["## Plots", ""] + [f"![{t}]({f})" for t, f in plots] + [""]
    worst = _worst(rows, worst_key, low_is_bad, n_worst) if worst_key else []
    if worst:
        cols = list(columns) if columns else list(worst[0])[:8]
        lines += [f"## Worst {len(worst)} examples by {worst_key}", ""]
        lines += ["| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
        lines += ["| " + " | ".join(_cell(r.get(c)) for c in cols) + " |" for r in worst]
        lines += [""]
    lines += ["## Config", "", "```json", json.dumps(config, indent=2, ensure_ascii=False), "```", ""]
    target = run_dir / "report.md"
    atomic_write_text(target, "\n".join(lines))
    return target


def compare(run_dirs: Sequence[str | os.PathLike], out: str | os.PathLike, n_permutations: int = 10000,
            seed: int = 0) -> dict:
    """Side-by-side table and bar plot of two or more run folders; significance against the first.

    Per-example rows with the same ``id`` in the first run and another run are compared with a
    paired t-test and a paired randomisation test (:func:`evals.trec.paired_tests`) on every
    headline metric both runs' rows carry (retrieval: per-query nDCG@10, recall, ...).

    Writes ``compare.md``, ``compare.png`` and ``compare.json`` into ``out``; returns the JSON.
    """
    from indexer.io import atomic_write_text

    if len(run_dirs) < 2:
        raise ValueError("compare needs two or more run folders")
    runs = []
    for d in run_dirs:
        config, metrics, rows = _read_run(Path(d))
        runs.append((Path(d), config, metrics, rows))
    labels = []
    for d, config, metrics, _ in runs:
        label = d.name
        if label in labels:
            label = str(d)
        labels.append(label)
    numeric = [_numeric(m) for _, _, m, _ in runs]
    shared = [k for k in numeric[0] if all(k in n for n in numeric[1:])]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        from evals.suites import get_suite

        headline = [h for h in get_suite(runs[0][1].get("suite", "")).HEADLINE if h in shared]
    except ValueError:
        headline = _default_headline(shared)
    lines = ["# Comparison", "", "| metric | " + " | ".join(labels) + " |", "| --- |" + " --- |" * len(labels)]
    for k in shared:
        lines.append(f"| {k} | " + " | ".join(_fmt(n[k]) for n in numeric) + " |")
    lines.append("")
    significance: dict[str, dict] = {}
    from evals.trec import paired_tests

    base_rows = {r["id"]: r for r in runs[0][3] if "id" in r}
    for label, (_, _, _, rows) in zip(labels[1:], runs[1:]):
        other = {r["id"]: r for r in rows if "id" in r}
        for k in headline:
            a = {i: float(r[k]) for i, r in base_rows.items() if isinstance(r.get(k), (int, float))}
            b = {i: float(r[k]) for i, r in other.items() if isinstance(r.get(k), (int, float))}
            if len(set(a) & set(b)) >= 2:
                significance.setdefault(label, {})[k] = paired_tests(a, b, n_permutations, seed)
    if significance:
        lines += [f"## Significance against {labels[0]} (paired, per example)", "",
                  "| run | metric | n | delta | p (t-test) | p (randomisation) |", "| --- | --- | --- | --- | --- | --- |"]
        for label, per in significance.items():
            for k, s in per.items():
                lines.append(f"| {label} | {k} | {s['n']} | {s['delta']:+.4f} | {s['p_ttest']:.4g} | "
                             f"{s['p_randomization']:.4g} |")
        lines.append("")
    if headline:
        plot_bars(out / "compare.png", headline, {l: n for l, n in zip(labels, numeric)}, "comparison")
        lines += ["![comparison](compare.png)", ""]
    curves = plot_curves([d for d, *_ in runs], out, labels, prefix="compare-curve-")
    if curves:
        lines += ["## Training curves", ""] + [f"![{p.stem.removeprefix('compare-curve-')}]({p.name})"
                                               for p in curves] + [""]
    result = {"runs": [str(d) for d, *_ in runs], "labels": labels,
              "metrics": {l: n for l, n in zip(labels, numeric)}, "significance": significance}
    atomic_write_text(out / "compare.md", "\n".join(lines))
    write_json(out / "compare.json", result)
    return result


class _CallableModule(types.ModuleType):
    """``evals.run`` is both this module and the function :func:`run` (see ``evals/__init__.py``)."""

    def __call__(self, *args: Any, **kwargs: Any) -> RunResult:
        return run(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
