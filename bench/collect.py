"""Gather the latest benchmark tables (bench/out/*.md) into docs/benchmarks.md.

Run by `make bench` after the benchmarks; each table states its machine and load.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ORDER = ["bm25", "dense", "augment", "pretrain", "pretrain_variants", "rm", "serve"]

HEADER = """# Benchmarks

Every benchmark runs its baseline in the same run and prints ratios; `make bench` regenerates
this page from `bench/out/*.md`. Speed targets live here, never in timed tests. Read each table
with its machine line: the development machines have 2 cores, and a high load average means other
work shared them during the run.

"""


def main() -> int:
    out_dir = ROOT / "bench" / "out"
    tables = {p.stem: p for p in out_dir.glob("*.md")}
    if not tables:
        print("no benchmark tables in bench/out; run `make bench` first", file=sys.stderr)
        return 1
    names = [n for n in ORDER if n in tables] + sorted(set(tables) - set(ORDER))
    parts = [HEADER, f"_Collected {time.strftime('%Y-%m-%d')}._\n"]
    parts += [tables[n].read_text(encoding="utf-8").rstrip() + "\n" for n in names]
    target = ROOT / "docs" / "benchmarks.md"
    target.parent.mkdir(exist_ok=True)
    target.write_text("\n".join(parts), encoding="utf-8")
    print(f"wrote {target} ({len(names)} tables)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
