"""The `wandao` command: a thin dispatcher over the commands each package owns.

Each package lists its commands in `<package>/cli.py` as ``COMMANDS = {name: (target, summary)}``
where ``target`` is ``"module:function"``. The function takes ``argv`` (the arguments after the
command name) and returns an exit code. Nothing heavy is imported until a command runs, so
``wandao --help`` stays fast.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

from wandao import __version__

# Packages that own commands, in the order their commands are listed in `wandao --help`.
COMMAND_PACKAGES = ("indexer", "rag", "pretrain", "align", "evals")


# Commands that span every package live here rather than in one package.
BUILTIN_COMMANDS = {"demo": ("wandao.demo:main", "run the end-to-end demo on the mirrored data and write its report")}
#: Their config classes, as each package's cli.py declares its own (the configs/ tests load every file).
CONFIGS = {"demo": "wandao.demo:DemoConfig"}


def _collect_commands() -> dict[str, tuple[str, str]]:
    commands: dict[str, tuple[str, str]] = {}
    for package in COMMAND_PACKAGES:
        try:
            module = importlib.import_module(f"{package}.cli")
        except ModuleNotFoundError as err:
            if err.name == f"{package}.cli":
                continue  # this package has no commands yet
            raise
        for name, entry in getattr(module, "COMMANDS", {}).items():
            if name in commands:
                raise RuntimeError(f"command {name!r} is defined twice ({commands[name][0]} and {entry[0]})")
            commands[name] = entry
    commands.update(BUILTIN_COMMANDS)
    return commands


def _usage(commands: dict[str, tuple[str, str]]) -> str:
    width = max((len(n) for n in commands), default=8)
    lines = [
        f"wandao {__version__}: retrieval-augmented training and serving",
        "",
        "usage: wandao <command> [options]    (wandao <command> --help for each command's example)",
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in commands.items()]
    lines += ["", "Data sets are read from $WANDAO_DATA_DIR (the Makefile points it at ../shared/data)."]
    return "\n".join(lines)


def setup_logging() -> None:
    level = os.environ.get("WANDAO_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    commands = _collect_commands()
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage(commands))
        return 0
    if argv[0] == "--version":
        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in commands:
        print(f"wandao: unknown command {name!r}\n\n{_usage(commands)}", file=sys.stderr)
        return 2
    setup_logging()
    module_name, func_name = commands[name][0].split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    return int(func(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
