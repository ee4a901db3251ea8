"""Shared helpers for wandao's benchmarks: the machine, timing, peak memory, Markdown tables.

Every benchmark runs its baseline in the same run, repeats timings (best of N, since the
machines are shared and noisy) and prints the machine next to the numbers.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "bench" / "out"


def machine() -> dict[str, Any]:
    """CPU model, cores (usable and total), RAM, OS, Python and numpy versions, load average."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                ram_gib = round(int(line.split()[1]) / 1024 ** 2, 1)
                break
    except OSError:
        pass
    try:
        import numpy

        numpy_version = numpy.__version__
    except ImportError:
        numpy_version = None
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu,
        "cores": usable,
        "cores_total": os.cpu_count(),
        "ram_gib": ram_gib,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "numpy": numpy_version,
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def describe_machine(info: dict[str, Any] | None = None) -> str:
    m = info or machine()
    return (f"{m['cpu']}, {m['cores']} cores usable ({m['cores_total']} total), {m['ram_gib']} GiB RAM, "
            f"{m['os']}, Python {m['python']}, numpy {m['numpy']}, load average {m['load_avg_1m']} at start")


def best_of(fn: Callable[[], Any], repeats: int = 3) -> tuple[float, Any]:
    """Run ``fn`` ``repeats`` times; return (fastest wall seconds, the last result)."""
    best, result = float("inf"), None
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def latencies(fn: Callable[[Any], Any], items: Sequence[Any], warmup: int = 20) -> list[float]:
    """Seconds per call of ``fn(item)`` for each item, after ``warmup`` untimed calls."""
    for item in items[:warmup]:
        fn(item)
    out = []
    for item in items:
        t0 = time.perf_counter()
        fn(item)
        out.append(time.perf_counter() - t0)
    return out


def percentile(values: Sequence[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 ** 2 if sys.platform == "darwin" else 1024), 1)


def current_rss_mib() -> float:
    try:
        import psutil

        return round(psutil.Process().memory_info().rss / 1024 ** 2, 1)
    except ImportError:
        return float("nan")


def run_worker(argv: list[str], timeout: float = 900) -> dict[str, Any]:
    """Run ``python argv...`` in a fresh process (clean peak RSS); its last stdout line is JSON."""
    proc = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {' '.join(argv)} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if not lines:
        raise RuntimeError(f"worker {' '.join(argv)} printed nothing; stderr:\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1])


def fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if value != value:  # NaN
            return "–"
        return f"{value:,.{digits}f}"
    return str(value)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, int]]) -> str:
    """A Markdown table; ``columns`` are (key, header, decimal digits)."""
    head = "| " + " | ".join(h for _, h, _ in columns) + " |"
    rule = "|" + "|".join(" --- " if i == 0 else " ---: " for i in range(len(columns))) + "|"
    body = ["| " + " | ".join(fmt(row.get(key), digits) for key, _, digits in columns) + " |" for row in rows]
    return "\n".join([head, rule, *body])


def write_outputs(name: str, markdown: str, payload: dict[str, Any], out_dir: Path = OUT_DIR) -> tuple[Path, Path]:
    """Write ``<name>.md`` and ``<name>.json`` atomically under ``bench/out``."""
    from indexer.io import atomic_write_text

    md, js = out_dir / f"{name}.md", out_dir / f"{name}.json"
    atomic_write_text(md, markdown if markdown.endswith("\n") else markdown + "\n")
    atomic_write_text(js, json.dumps(payload, indent=2) + "\n")
    return md, js
