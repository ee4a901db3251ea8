"""``wandao eval``: run an eval suite into a run folder, rebuild reports, compare runs, check regressions.

The last line printed is always one JSON object (the metrics).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

logger = logging.getLogger(__name__)

COMMANDS = {"eval": ("evals.cli:main", "evaluate retrieval, QA, attribution, LMs, ... and write a run folder")}

OTHER = {
    "report": ("rebuild report.md and plots of run folders", "wandao eval report runs/eval/retrieval-20250101-120000"),
    "compare": ("side-by-side table, bar plot and significance of run folders",
                "wandao eval compare runs/eval/bm25 runs/eval/dense --out runs/eval/bm25-vs-dense"),
    "regress": ("run the expected-metric regressions (configs/evals/regressions.yaml)",
                "wandao eval regress --only scifact-bm25-flat"),
}


def _usage() -> str:
    from evals.suites import SUITES, get_suite

    lines = ["usage: wandao eval <suite|report|compare|regress> [options]   (wandao eval <name> --help)", "",
             "suites:"]
    for name in SUITES:
        doc = (get_suite(name).__doc__ or "").strip().splitlines()[0]
        lines.append(f"  {name:<15} {doc.split(': ', 1)[-1]}")
    lines += ["", "other commands:"] + [f"  {n:<15} {s}" for n, (s, _) in OTHER.items()]
    lines += ["", "example:", "  wandao eval qa --dataset xquad-en --predictions preds.jsonl --json",
              "  wandao eval retrieval --index runs/indexes/scifact --dataset scifact --json"]
    lines += ["", "Every suite accepts --out RUN_DIR (default runs/eval/<suite>-<timestamp>), --config YAML,",
              "--force and --json; the last line printed is the metrics JSON."]
    return "\n".join(lines)


def _fail(prog: str, err: Exception) -> int:
    print(f"{prog}: error: {err}", file=sys.stderr)
    return 2


def _run_suite(name: str, argv: list[str]) -> int:
    from evals.config import add_config_arguments
    from evals.suites import get_suite

    module = get_suite(name)
    prog = f"wandao eval {name}"
    doc = (module.__doc__ or "").strip()
    parser = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=f"example:\n  {module.EXAMPLE}")
    add_config_arguments(parser, module.Config)
    parser.add_argument("--out", help="run folder (default: runs/eval/<suite>-<timestamp>)")
    parser.add_argument("--config", help="YAML file of config fields (flags override it)")
    parser.add_argument("--force", action="store_true", help="replace an existing run folder")
    parser.add_argument("--json", action="store_true", help="print only the metrics JSON line")
    args = parser.parse_args(argv)
    from evals.run import metrics_line, run

    targets = {k: v for k, v in vars(args).items() if k not in ("out", "config", "force", "json") and v is not None}
    try:
        result = run(name, out=args.out, force=args.force, config=args.config, **targets)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, RuntimeError) as err:
        return _fail(prog, err)
    if not args.json:
        for k, v in result.metrics.items():
            print(f"{k:>20}  {v:.4f}" if isinstance(v, float) else f"{k:>20}  {v}")
        print(f"run folder: {result.out}  (report: {result.out / 'report.md'})")
    print(metrics_line(result.metrics))
    return 0


def _report(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="wandao eval report", description=OTHER["report"][0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=f"example:\n  {OTHER['report'][1]}")
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    parser.add_argument("--worst", type=int, default=10, help="worst-case examples listed (default: 10)")
    args = parser.parse_args(argv)
    from evals.run import write_report

    written = []
    try:
        for d in args.run_dirs:
            written.append(str(write_report(d, n_worst=args.worst)))
            print(f"wrote {written[-1]}")
    except (ValueError, FileNotFoundError) as err:
        return _fail("wandao eval report", err)
    print(json.dumps({"reports": written}))
    return 0


def _compare(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="wandao eval compare", description=OTHER["compare"][0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=f"example:\n  {OTHER['compare'][1]}")
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    parser.add_argument("--out", required=True, help="folder for compare.md, compare.png, compare.json")
    parser.add_argument("--permutations", type=int, default=10000, help="randomisation-test samples")
    parser.add_argument("--seed", type=int, default=0, help="randomisation-test seed")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    args = parser.parse_args(argv)
    from pathlib import Path

    from evals.run import compare, metrics_line

    try:
        result = compare(args.run_dirs, args.out, args.permutations, args.seed)
    except (ValueError, FileNotFoundError) as err:
        return _fail("wandao eval compare", err)
    if not args.json:
        print((Path(args.out) / "compare.md").read_text(encoding="utf-8"))
    print(metrics_line({"metrics": result["metrics"], "significance": result["significance"]}))
    return 0


def _regress(argv: list[str]) -> int:
    from evals.regress import DEFAULT_FILE

    parser = argparse.ArgumentParser(prog="wandao eval regress", description=OTHER["regress"][0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=f"example:\n  {OTHER['regress'][1]}")
    parser.add_argument("--file", default=str(DEFAULT_FILE), help="regressions YAML (default: %(default)s)")
    parser.add_argument("--only", action="append", metavar="NAME", help="run only this entry (repeatable)")
    parser.add_argument("--out-root", default="runs/eval/regress", help="where each entry's run folder goes")
    args = parser.parse_args(argv)
    from evals.regress import format_table, load_regressions, run_regressions
    from evals.run import metrics_line

    try:
        regs = load_regressions(args.file)
    except (ValueError, FileNotFoundError) as err:
        return _fail("wandao eval regress", err)
    if args.only:
        unknown = sorted(set(args.only) - {r.name for r in regs})
        if unknown:
            return _fail("wandao eval regress", ValueError(
                f"unknown entry {', '.join(unknown)}; entries: {', '.join(r.name for r in regs)}"))
        regs = [r for r in regs if r.name in args.only]
    results = run_regressions(regs, args.out_root)
    print(format_table(results))
    counts = {s: sum(r["status"] == s for r in results) for s in ("OK", "OKish", "FAIL")}
    print(metrics_line({"entries": len(results), **counts,
                        "results": {r["name"]: r["status"] for r in results}}))
    return 1 if counts["FAIL"] else 0


def main(argv: list[str]) -> int:
    from evals.suites import SUITES

    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        raise SystemExit(0)  # as argparse does for --help
    name, rest = argv[0], argv[1:]
    if name in SUITES:
        return _run_suite(name, rest)
    handlers = {"report": _report, "compare": _compare, "regress": _regress}
    if name in handlers:
        return handlers[name](rest)
    print(f"wandao eval: unknown suite or command {name!r}\n\n{_usage()}", file=sys.stderr)
    return 2
