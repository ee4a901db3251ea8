"""The project's config system: nested dataclasses, YAML files and dotted CLI overrides.

One dataclass per entry point, each field with ``metadata={"help": ...}``. Precedence (torchtune):

1. the dataclass defaults,
2. a YAML file given with ``--config FILE.yaml``,
3. dotted CLI overrides: ``--train.micro_batch_size 8``, ``--optim.name=lamb``.

Values are converted from the field annotations (``bool``, ``int``, ``float``, ``str``,
``Optional[X]``, ``list[X]``, ``Literal[...]``, nested dataclasses, ``dict``). Unknown keys are an
error naming the key, the file and the allowed keys; a bad value names the flag and the allowed
values. Validation that needs more than the type lives in each dataclass's ``__post_init__``
and raises :class:`ConfigError` (use :func:`check_choice` / :func:`check_range`), which the
loader re-raises with the full dotted flag.

Every YAML under ``configs/`` starts with the command that runs it, for example
``# wandao pretrain --config configs/pretrain/tiny.yaml``; each package lists its config
classes in ``<package>/cli.py`` as ``CONFIGS = {"command": "module:Class"}`` so a test can load
every YAML into its class.

Example:
    >>> from dataclasses import dataclass, field
    >>> @dataclass
    ... class Opt(Config):
    ...     lr: float = field(default=1e-3, metadata={"help": "peak learning rate"})
    >>> @dataclass
    ... class Run(Config):
    ...     optim: Opt = field(default_factory=Opt, metadata={"help": "optimizer"})
    >>> parse_args(Run, ["--optim.lr", "3e-4"]).optim.lr
    0.0003
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import json
import os
import tempfile
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

C = TypeVar("C", bound="Config")


class ConfigError(ValueError):
    """A bad config value or key; ``key`` is the dotted path of the offending field."""

    def __init__(self, message: str, key: str | None = None, source: str | None = None):
        self.key, self.source, self.problem = key, source, message
        where = f"{source}: " if source else ""
        flag = f"--{key}: " if key else ""
        super().__init__(f"{where}{flag}{message}")


def check_choice(key: str, value: Any, allowed: typing.Iterable[Any]) -> None:
    """Raise :class:`ConfigError` naming ``key`` and the allowed values when ``value`` is not one of them."""
    allowed = list(allowed)
    if value not in allowed:
        raise ConfigError(f"got {value!r}; allowed values: {', '.join(map(str, allowed))}", key)


def check_range(key: str, value: Any, low: float | None = None, high: float | None = None,
                low_inclusive: bool = True) -> None:
    """Raise :class:`ConfigError` when ``value`` lies outside ``[low, high]`` (``(low, high]`` if not ``low_inclusive``)."""
    if value is None:
        return
    if low is not None and (value < low or (not low_inclusive and value == low)):
        op = ">=" if low_inclusive else ">"
        raise ConfigError(f"got {value!r}; must be {op} {low}", key)
    if high is not None and value > high:
        raise ConfigError(f"got {value!r}; must be <= {high}", key)


# ----------------------------------------------------------------------------------- conversion


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_optional(tp: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) < len(typing.get_args(tp)):
            return True, (args[0] if len(args) == 1 else Union[tuple(args)])
    return False, tp


def _type_name(tp: Any) -> str:
    optional, inner = _is_optional(tp)
    if optional:
        return f"{_type_name(inner)} or null"
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "{" + ",".join(map(str, typing.get_args(tp))) + "}"
    if origin in (list, tuple):
        args = typing.get_args(tp)
        return f"list of {_type_name(args[0]) if args else 'values'}"
    if origin is dict:
        return "mapping"
    return getattr(tp, "__name__", str(tp))


_TRUE = {"true", "1", "yes", "on", "y"}
_FALSE = {"false", "0", "no", "off", "n"}


def convert(value: Any, tp: Any, key: str, source: str | None = None) -> Any:
    """Convert ``value`` (from YAML or a CLI string) to the annotation ``tp``; errors name ``key``."""
    optional, inner = _is_optional(tp)
    if value is None or (optional and isinstance(value, str) and value.strip().lower() in ("none", "null", "~")):
        if optional or tp is Any:
            return None
        raise ConfigError(f"must not be null (expected {_type_name(tp)})", key, source)
    tp = inner
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, str):
            parsed = _parse_structured(value, key, source)
            # Shorthand: a bare string sets the first field (``--data.sources a.txt b.txt`` -> paths).
            value = parsed if isinstance(parsed, dict) else {dataclasses.fields(tp)[0].name: value}
        if not isinstance(value, dict):
            raise ConfigError(f"expected a mapping of {tp.__name__} fields, got {value!r}", key, source)
        return from_dict(tp, value, source=source, prefix=key)
    if origin is Literal:
        allowed = typing.get_args(tp)
        for choice in allowed:
            if value == choice or (isinstance(value, str) and str(choice) == value):
                return choice
        raise ConfigError(f"got {value!r}; allowed values: {', '.join(map(str, allowed))}", key, source)
    if origin in (list, tuple):
        args = typing.get_args(tp)
        item_tp = args[0] if args else Any
        if isinstance(value, str):
            value = _parse_list_string(value, key, source)
        if not isinstance(value, (list, tuple)):
            value = [value]
        items = [convert(v, item_tp, f"{key}[{i}]", source) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if isinstance(value, str):
            value = _parse_structured(value, key, source)
        if not isinstance(value, dict):
            raise ConfigError(f"expected a mapping, got {value!r}", key, source)
        args = typing.get_args(tp)
        if len(args) == 2:
            return {convert(k, args[0], f"{key}.{k}", source): convert(v, args[1], f"{key}.{k}", source)
                    for k, v in value.items()}
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"expected true or false, got {value!r}", key, source)
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"expected an integer, got {value!r}", key, source)
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            text = value.strip().replace("_", "")
            with contextlib.suppress(ValueError):
                return int(text)
            with contextlib.suppress(ValueError):
                as_float = float(text)  # "1e6" is a fine integer
                if as_float.is_integer():
                    return int(as_float)
        raise ConfigError(f"expected an integer, got {value!r}", key, source)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"expected a number, got {value!r}", key, source)
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return float(value.strip())
        raise ConfigError(f"expected a number, got {value!r}", key, source)
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"expected a string, got {value!r}", key, source)
        return str(value)
    return value


def _parse_structured(text: str, key: str, source: str | None) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"cannot parse {text!r} as YAML/JSON: {err}", key, source) from None


def _parse_list_string(text: str, key: str, source: str | None) -> list:
    stripped = text.strip()
    if stripped.startswith("["):
        parsed = _parse_structured(stripped, key, source)
        if isinstance(parsed, list):
            return parsed
    if stripped == "":
        return []
    return [part.strip() for part in stripped.split(",")]


# ------------------------------------------------------------------------------ dict <-> config


def from_dict(cls: type[C], data: dict[str, Any], source: str | None = None, prefix: str = "") -> C:
    """Build ``cls`` from a (nested) mapping; unknown keys and bad values raise :class:`ConfigError`."""
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping of {cls.__name__} fields, got {type(data).__name__}",
                          prefix or None, source)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = _hints(cls)
    unknown = [k for k in data if k not in fields]
    if unknown:
        where = f"{prefix}.{unknown[0]}" if prefix else str(unknown[0])
        raise ConfigError(f"unknown key {where!r}; allowed keys{' under ' + prefix if prefix else ''}: "
                          f"{', '.join(fields)}", None, source)
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = convert(value, hints[name], key, source)
    try:
        return cls(**kwargs)
    except ConfigError as err:
        if err.source is None and err.key is not None and prefix and not err.key.startswith(prefix + "."):
            raise ConfigError(err.problem, f"{prefix}.{err.key}", source) from None
        if err.source is None:
            raise ConfigError(err.problem, err.key, source) from None
        raise


def to_dict(cfg: Any) -> Any:
    """A plain nested dict/list/scalar copy of a config (YAML/JSON serialisable)."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {str(k): to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, Path):
        return str(cfg)
    return cfg


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML config file into a dict (an empty file is ``{}``); errors name the file and line."""
    import yaml

    path = Path(path)
    if not path.exists():
        raise ConfigError("config file not found", None, str(path))
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark is not None else ""
        raise ConfigError(f"{line}malformed YAML: {getattr(err, 'problem', err)}", None, str(path)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"the top level must be a mapping, got {type(data).__name__}", None, str(path))
    return data


def load_config(cls: type[C], path: str | os.PathLike | None = None,
                overrides: dict[str, Any] | None = None) -> C:
    """Defaults, then the YAML file at ``path``, then dotted ``overrides`` (``{"optim.lr": "3e-4"}``)."""
    data: dict[str, Any] = {}
    source = None
    if path is not None:
        source = str(path)
        data = read_yaml(path)
        # Validate the file on its own first so an error in it names the file.
        from_dict(cls, data, source=source)
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value)
    return from_dict(cls, data, source=None if not overrides else "command line" if path is None
                     else f"{path} + command line")


# ---------------------------------------------------------------------------------------- CLI


def _leaf_fields(cls: type, prefix: str = "") -> typing.Iterator[tuple[str, Any, dataclasses.Field]]:
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        optional, inner = _is_optional(tp)
        if dataclasses.is_dataclass(inner) and not optional:
            yield from _leaf_fields(inner, key + ".")
        else:
            yield key, tp, f


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def build_parser(cls: type, prog: str, description: str | None = None,
                 epilog: str | None = None) -> argparse.ArgumentParser:
    """An argparse parser with ``--config`` and one dotted flag per leaf field (help from the metadata)."""
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog, allow_abbrev=False,
                                     usage=f"{prog} [--config FILE.yaml] [--section.key VALUE ...]",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, metavar="FILE.yaml",
                        help="YAML config; its values override the defaults, and flags override it")
    groups: dict[str, argparse._ArgumentGroup] = {}
    for key, tp, f in _leaf_fields(cls):
        section = key.rsplit(".", 1)[0] if "." in key else ""
        group = groups.get(section)
        if group is None:
            group = groups[section] = parser.add_argument_group(section or "general")
        _, inner = _is_optional(tp)
        is_bool = inner is bool
        is_list = typing.get_origin(inner) in (list, tuple)
        default = to_dict(_default_of(f))
        help_text = f.metadata.get("help", "")
        help_text = f"{help_text} [{_type_name(tp)}; default: {default}]".strip().replace("%", "%%")
        kwargs: dict[str, Any] = {"dest": key, "default": argparse.SUPPRESS, "help": help_text,
                                  "metavar": "VALUE"}
        if is_bool:
            kwargs.update(nargs="?", const="true", metavar="BOOL")
        elif is_list:
            kwargs.update(nargs="*", metavar="ITEM")
        group.add_argument(f"--{key}", **kwargs)
    return parser


def parse_args(cls: type[C], argv: list[str] | None, prog: str = "wandao", description: str | None = None,
               epilog: str | None = None) -> C:
    """Parse ``argv`` (``--config FILE`` plus dotted overrides) into ``cls``.

    A :class:`ConfigError` is reported through ``argparse`` (exit code 2) with the file, flag and
    allowed values in the message.
    """
    parser = build_parser(cls, prog, description, epilog)
    ns = vars(parser.parse_args(argv))
    path = ns.pop("config", None)
    overrides = {}
    for key, value in ns.items():
        if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
            value = value[0]  # one token: "a,b" or "[1, 2]" or a single item, decided by convert()
        overrides[key] = value
    try:
        return load_config(cls, path, overrides)
    except ConfigError as err:
        parser.error(str(err))
        raise  # unreachable: parser.error exits


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def save_config(cfg: Any, folder: str | os.PathLike, name: str = "config") -> tuple[Path, Path]:
    """Write ``name.yaml`` and ``name.json`` into ``folder`` atomically; returns both paths."""
    import yaml

    folder = Path(folder)
    data = to_dict(cfg)
    yaml_path, json_path = folder / f"{name}.yaml", folder / f"{name}.json"
    _atomic_write_text(yaml_path, yaml.safe_dump(data, sort_keys=False))
    _atomic_write_text(json_path, json.dumps(data, indent=2) + "\n")
    return yaml_path, json_path


class Config:
    """Mixin for config dataclasses: ``to_dict()``, ``save(folder)``, ``from_dict``, ``load``, ``parse``."""

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def save(self, folder: str | os.PathLike, name: str = "config") -> tuple[Path, Path]:
        return save_config(self, folder, name)

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any], source: str | None = None) -> C:
        return from_dict(cls, data, source=source)

    @classmethod
    def load(cls: type[C], path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None) -> C:
        return load_config(cls, path, overrides)

    @classmethod
    def parse(cls: type[C], argv: list[str] | None, prog: str = "wandao", description: str | None = None,
              epilog: str | None = None) -> C:
        return parse_args(cls, argv, prog, description, epilog)


# ----------------------------------------------------------------------------------- registry


def config_command(path: str | os.PathLike) -> tuple[str, str]:
    """Read a config file's first line, ``# wandao <command> [<sub>] --config <path>``; return ``(command, path)``.

    The command is every word between ``wandao`` and ``--config`` (``"augment sft"``), the key of ``CONFIGS``.
    """
    path = Path(path)
    first = path.read_text(encoding="utf-8").splitlines()[:1]
    parts = first[0].lstrip("#").split() if first else []
    if len(parts) < 4 or parts[0] != "wandao" or "--config" not in parts:
        raise ConfigError("the first line must be a comment '# wandao <command> --config <path>' showing "
                          f"how to run this file; got {first[0] if first else '(empty file)'!r}", None, str(path))
    at = parts.index("--config")
    if at < 2 or at + 1 >= len(parts):
        raise ConfigError("expected '# wandao <command> [<subcommand>] --config <path>'", None, str(path))
    return " ".join(parts[1:at]), parts[at + 1]


def registered_configs(packages: typing.Iterable[str]) -> dict[str, type]:
    """Collect ``CONFIGS = {command: "module:Class"}`` from each ``<package>.cli`` into ``{command: class}``."""
    found: dict[str, type] = {}
    for package in packages:
        try:
            module = importlib.import_module(f"{package}.cli")
        except ModuleNotFoundError as err:
            if err.name == f"{package}.cli":
                continue
            raise
        for command, target in getattr(module, "CONFIGS", {}).items():
            module_name, cls_name = target.split(":")
            found[command] = getattr(importlib.import_module(module_name), cls_name)
    return found


def config_class_for(command: str, classes: dict[str, type]) -> type | None:
    """The class registered for the longest prefix of ``command`` (``"rm train"`` finds ``"rm"``)."""
    words = command.split()
    for n in range(len(words), 0, -1):
        found = classes.get(" ".join(words[:n]))
        if found is not None:
            return found
    return None
