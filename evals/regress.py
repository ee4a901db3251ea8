"""Regression expectations as data: run configured evals and check metrics against tolerances.

``configs/evals/regressions.yaml`` lists entries in the style of pyserini's reproduction matrices::

    regressions:
      - name: scifact-bm25-flat
        suite: retrieval
        config: {dataset: scifact, index: runs/indexes/scifact-bm25, retriever: bm25}
        build: [--corpus, scifact, --bm25]   # `wandao index build ... --out <config.index>` if missing
        expected:
          ndcg@10: {value: 0.6789, tol: 0.001}
        source: Anserini beir-v1.0.0-scifact.flat

Each metric gets a status: ``OK`` when |measured − expected| ≤ tol, ``OKish`` within 2 × tol,
``FAIL`` beyond that (or when the run fails or the metric is missing). An entry's status is its
worst metric's.
"""

from __future__ import annotations

import logging
import os
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

logger = logging.getLogger(__name__)

DEFAULT_FILE = Path(__file__).resolve().parents[1] / "configs" / "evals" / "regressions.yaml"
ORDER = {"OK": 0, "OKish": 1, "FAIL": 2}


@dataclass
class Expectation:
    metric: str
    value: float
    tol: float


@dataclass
class Regression:
    name: str
    suite: str
    config: dict
    expected: list[Expectation]
    build: list[str] = field(default_factory=list)
    source: str = ""
    note: str = ""


def status(measured: float | None, expected: float, tol: float) -> str:
    """``OK`` (within tol), ``OKish`` (within 2 × tol) or ``FAIL``.

    Example:
        >>> status(0.6795, 0.6789, 0.001), status(0.6805, 0.6789, 0.001), status(0.70, 0.6789, 0.001)
        ('OK', 'OKish', 'FAIL')
    """
    if measured is None:
        return "FAIL"
    diff = abs(float(measured) - expected)
    eps = 1e-12  # so that a value exactly on the boundary is inside it despite float rounding
    if diff <= tol + eps:
        return "OK"
    if diff <= 2 * tol + eps:
        return "OKish"
    return "FAIL"


def load_regressions(path: str | os.PathLike = DEFAULT_FILE) -> list[Regression]:
    """Parse the YAML file; malformed entries raise DataError naming the entry and field."""
    from evals.config import load_yaml
    from evals.suites import SUITES
    from indexer.data import DataError

    data = load_yaml(path)
    entries = data.get("regressions")
    if not isinstance(entries, list):
        raise DataError(path, "expected a top-level 'regressions:' list", field="regressions")
    out, names = [], set()
    for i, e in enumerate(entries):
        where = f"regressions[{i}]"
        if not isinstance(e, dict) or not isinstance(e.get("name"), str):
            raise DataError(path, f"{where}: each entry needs a name", field="name")
        if e["name"] in names:
            raise DataError(path, f"{where}: name {e['name']!r} is used twice", field="name")
        names.add(e["name"])
        if e.get("suite") not in SUITES:
            raise DataError(path, f"{where} ({e['name']}): suite must be one of {', '.join(SUITES)}", field="suite")
        exp = e.get("expected")
        if not isinstance(exp, dict) or not exp:
            raise DataError(path, f"{where} ({e['name']}): 'expected' must map metrics to {{value, tol}}",
                            field="expected")
        expectations = []
        for metric, spec in exp.items():
            if not (isinstance(spec, dict) and isinstance(spec.get("value"), (int, float))
                    and isinstance(spec.get("tol"), (int, float)) and spec["tol"] >= 0):
                raise DataError(path, f"{where} ({e['name']}): expected.{metric} needs numeric value and tol ≥ 0",
                                field=f"expected.{metric}")
            expectations.append(Expectation(str(metric), float(spec["value"]), float(spec["tol"])))
        out.append(Regression(e["name"], e["suite"], dict(e.get("config") or {}), expectations,
                              [str(x) for x in e.get("build") or []], str(e.get("source", "")),
                              str(e.get("note", ""))))
    return out


def _ensure_index(reg: Regression) -> None:
    index = reg.config.get("index")
    if not index or Path(index).exists():
        return
    if not reg.build:
        raise FileNotFoundError(f"{reg.name}: index {index} not found and the entry has no 'build' arguments")
    from wandao.cli import main as wandao_main

    logger.info("%s: building the index: wandao index build %s --out %s", reg.name, " ".join(reg.build), index)
    rc = wandao_main(["index", "build", *reg.build, "--out", str(index)])
    if rc != 0:
        raise RuntimeError(f"{reg.name}: `wandao index build` exited with {rc}")


def run_regressions(regs: list[Regression], out_root: str | os.PathLike = "runs/eval/regress",
                    runner: Callable[..., Any] | None = None) -> list[dict]:
    """Run each entry as an eval run (folder ``<out_root>/<name>``) and check its metrics."""
    from evals.run import run as run_eval

    runner = runner or run_eval
    results = []
    for reg in regs:
        row: dict = {"name": reg.name, "suite": reg.suite, "source": reg.source, "checks": [], "error": None}
        try:
            _ensure_index(reg)
            res = runner(reg.suite, out=Path(out_root) / reg.name, force=True, **reg.config)
            measured = res.metrics
        except Exception as err:  # a failed run is a FAIL, with the reason, not a crash of the runner
            logger.error("%s failed: %s", reg.name, err)
            logger.debug("%s", traceback.format_exc())
            row["error"] = f"{type(err).__name__}: {err}"
            measured = {}
        for e in reg.expected:
            got = measured.get(e.metric)
            got = float(got) if isinstance(got, (int, float)) else None
            row["checks"].append({"metric": e.metric, "expected": e.value, "tol": e.tol, "measured": got,
                                  "status": status(got, e.value, e.tol)})
        row["status"] = max((c["status"] for c in row["checks"]), key=ORDER.__getitem__)
        results.append(row)
    return results


def format_table(results: list[dict]) -> str:
    lines = [f"{'name':<28} {'metric':<12} {'expected':>9} {'tol':>7} {'measured':>9}  status"]
    for r in results:
        for c in r["checks"]:
            got = f"{c['measured']:.4f}" if c["measured"] is not None else "-"
            lines.append(f"{r['name']:<28} {c['metric']:<12} {c['expected']:>9.4f} {c['tol']:>7.4f} {got:>9}  "
                         f"{c['status']}")
        if r["error"]:
            lines.append(f"{'':<28} error: {r['error']}")
    return "\n".join(lines)
