"""Dataclass configs for the eval suites: defaults, then a YAML file, then CLI flags.

Each suite's config is a dataclass whose fields carry ``metadata={"help": ...}`` (and optionally
``"flags"`` for short aliases such as ``-k``). :func:`add_config_arguments` turns the fields into
argparse flags (``run_out`` → ``--run-out``, also accepted as ``--run_out``); :func:`build_config`
applies the precedence defaults < ``--config FILE.yaml`` < flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any


def _field_type(cls: type, f: dataclasses.Field) -> Any:
    hints = typing.get_type_hints(cls)
    return hints[f.name]


def _base(tp: Any) -> tuple[Any, bool]:
    """(element type, is_list) for ``X``, ``X | None``, ``list[X]``, ``tuple[X, ...]``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base(args[0])
    if origin in (list, tuple):
        return typing.get_args(tp)[0], True
    return tp, False


def add_config_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one flag per dataclass field (default ``None`` = not given on the command line)."""
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli") is False:
            continue
        tp, is_list = _base(_field_type(cls, f))
        flags = [f"--{f.name.replace('_', '-')}"]
        if "_" in f.name:
            flags.append(f"--{f.name}")
        flags += list(f.metadata.get("flags", ()))
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        help_text = f.metadata.get("help", "")
        if default not in (None, "", [], ()):
            help_text += f" (default: {default})"
        kwargs: dict[str, Any] = {"dest": f.name, "default": None, "help": help_text}
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = tp if tp in (int, float) else str
            if is_list:
                kwargs["nargs"] = "+"
            if "choices" in f.metadata:
                kwargs["choices"] = f.metadata["choices"]
            kwargs["metavar"] = f.metadata.get("metavar", f.name.upper())
        parser.add_argument(*flags, **kwargs)


def load_yaml(path: str | Path) -> dict:
    import yaml

    from indexer.data import DataError

    path = Path(path)
    if not path.exists():
        raise DataError(path, "config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        raise DataError(path, f"invalid YAML: {getattr(err, 'problem', err)}",
                        line=mark.line + 1 if mark else None) from None
    if not isinstance(data, dict):
        raise DataError(path, f"expected a mapping of config fields, got {type(data).__name__}")
    return data


def build_config(cls: type, values: dict | None = None, yaml_path: str | Path | None = None,
                 overrides: argparse.Namespace | dict | None = None) -> Any:
    """Defaults < ``values`` < YAML file < overrides (``None`` overrides are ignored)."""
    names = {f.name for f in dataclasses.fields(cls)}
    merged: dict[str, Any] = dict(values or {})
    if yaml_path:
        data = load_yaml(yaml_path)
        data = {k.replace("-", "_"): v for k, v in data.items()}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"{yaml_path}: unknown config field(s) {', '.join(unknown)}; "
                             f"{cls.__name__} has {', '.join(sorted(names))}")
        merged.update(data)
    if overrides is not None:
        items = vars(overrides).items() if isinstance(overrides, argparse.Namespace) else overrides.items()
        merged.update({k: v for k, v in items if k in names and v is not None})
    unknown = sorted(set(merged) - names)
    if unknown:
        raise TypeError(f"unknown option(s) {', '.join(unknown)} for {cls.__name__}; "
                        f"known: {', '.join(sorted(names))}")
    for f in dataclasses.fields(cls):  # YAML lists for tuple fields
        tp, is_list = _base(_field_type(cls, f))
        if is_list and isinstance(merged.get(f.name), list) and typing.get_origin(
                _field_type(cls, f)) is tuple:
            merged[f.name] = tuple(merged[f.name])
    return cls(**merged)
