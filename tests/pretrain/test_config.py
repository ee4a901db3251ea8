"""The config system: precedence, type conversion, errors that name the key, and every YAML under configs/."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import pytest

from pretrain.config import (Config, ConfigError, check_choice, config_class_for, config_command, load_config, parse_args,
                             registered_configs)

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Inner(Config):
    micro_batch_size: int = field(default=4, metadata={"help": "sequences per step"})
    lr: float = field(default=1e-3, metadata={"help": "learning rate"})
    compile: bool = field(default=False, metadata={"help": "torch.compile"})
    name: Literal["adamw", "lamb"] = field(default="adamw", metadata={"help": "optimizer"})
    resume: Optional[str] = field(default=None, metadata={"help": "checkpoint"})
    weights: list[float] = field(default_factory=lambda: [1.0], metadata={"help": "mixture weights"})

    def __post_init__(self) -> None:
        if self.micro_batch_size < 1:
            raise ConfigError(f"got {self.micro_batch_size}; must be >= 1", "micro_batch_size")


@dataclass
class Outer(Config):
    train: Inner = field(default_factory=Inner, metadata={"help": "training"})
    seed: int = field(default=0, metadata={"help": "seed"})


def test_precedence_defaults_then_yaml_then_cli(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  micro_batch_size: 8\n  lr: 3.0e-4\nseed: 5\n")
    cfg = parse_args(Outer, ["--config", str(path), "--train.micro_batch_size", "16", "--seed=7"])
    assert cfg.train.micro_batch_size == 16  # CLI beats YAML
    assert cfg.train.lr == pytest.approx(3e-4)  # YAML beats default
    assert cfg.train.name == "adamw"  # default kept
    assert cfg.seed == 7  # --key=value form


def test_type_conversion_from_strings():
    cfg = parse_args(Outer, ["--train.compile", "--train.resume", "none", "--train.weights", "0.7", "0.3",
                             "--train.name", "lamb", "--train.lr", "1e-2"])
    assert cfg.train.compile is True  # a bare bool flag means true
    assert cfg.train.resume is None  # "none" -> None for Optional
    assert cfg.train.weights == [0.7, 0.3]
    assert cfg.train.name == "lamb"
    assert cfg.train.lr == 0.01
    assert parse_args(Outer, ["--train.weights", "0.5,0.5"]).train.weights == [0.5, 0.5]
    assert parse_args(Outer, ["--train.compile", "false"]).train.compile is False
    assert parse_args(Outer, ["--train.micro_batch_size", "1e3"]).train.micro_batch_size == 1000


def test_unknown_key_names_key_file_and_allowed(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  micro_batch: 8\n")
    with pytest.raises(ConfigError) as err:
        load_config(Outer, path)
    msg = str(err.value)
    assert "train.micro_batch" in msg and str(path) in msg and "micro_batch_size" in msg


def test_bad_values_name_the_flag_and_allowed_values(tmp_path):
    with pytest.raises(ConfigError, match=r"--train\.name: got 'sgd'; allowed values: adamw, lamb"):
        load_config(Outer, overrides={"train.name": "sgd"})
    with pytest.raises(ConfigError, match=r"--train\.micro_batch_size: got 0; must be >= 1"):
        load_config(Outer, overrides={"train.micro_batch_size": "0"})
    with pytest.raises(ConfigError, match=r"--train\.lr: expected a number"):
        load_config(Outer, overrides={"train.lr": "fast"})
    with pytest.raises(ConfigError, match=r"--x: got 3; allowed values: 1, 2"):
        check_choice("x", 3, [1, 2])
    # through the command line: argparse exits with code 2 and the message on stderr
    with pytest.raises(SystemExit) as exc:
        parse_args(Outer, ["--train.name", "sgd"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        parse_args(Outer, ["--train.nope", "1"])  # unknown flag


def test_malformed_yaml_names_the_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("train:\n  lr: [1, 2\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: line \d+"):
        load_config(Outer, path)


def test_save_round_trips(tmp_path):
    cfg = load_config(Outer, overrides={"train.lr": "0.5", "train.weights": [2, 3]})
    yaml_path, json_path = cfg.save(tmp_path)
    assert load_config(Outer, yaml_path) == cfg
    assert Outer.from_dict(__import__("json").loads(json_path.read_text())) == cfg


def _config_files() -> list[Path]:
    # configs/models holds presets (test below); configs/evals is loaded by tests/evals/test_configs.py
    # through the suite loader, which supplies the fields an eval config leaves to the command line.
    skip = {"models", "evals"}
    return sorted(p for p in (REPO / "configs").rglob("*.yaml") if not skip & set(p.relative_to(REPO / "configs").parts))


@pytest.mark.parametrize("path", _config_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_command_config_loads(path, data_dir):
    """Each YAML opens with '# wandao <command> --config <path>'; it loads into that command's class."""
    from wandao.cli import COMMAND_PACKAGES

    first = path.read_text(encoding="utf-8").split("\n", 1)[0]
    if "--config" not in first:
        pytest.skip(f"{path.name} is a data file, not a command config (its first line has no '--config')")
    command, named_path = config_command(path)
    assert (REPO / named_path).resolve() == path.resolve(), f"{path}: its first line names {named_path}"
    cls = config_class_for(command, registered_configs(COMMAND_PACKAGES + ("wandao",)))
    assert cls is not None, f"{path}: no config class registered for '{command}' (add it to <package>/cli.py CONFIGS)"
    cfg = load_config(cls, path)
    assert cfg.to_dict()


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "models").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_model_preset_loads(path):
    from pretrain.model import ModelConfig, from_preset

    assert isinstance(from_preset(path.stem), ModelConfig)


def test_pretrain_sources_shorthand_and_yaml_list():
    from pretrain.train import PretrainConfig

    cfg = PretrainConfig.parse(["--data.sources", "a.txt", "b.jsonl"])
    assert [(s.path, s.weight) for s in cfg.data.sources] == [("a.txt", 1.0), ("b.jsonl", 1.0)]
    cfg = PretrainConfig.parse(["--data.sources", "[{path: a.txt, weight: 3}, {path: b, weight: 1}]"])
    assert [(s.path, s.weight) for s in cfg.data.sources] == [("a.txt", 3.0), ("b", 1.0)]
    with pytest.raises(ConfigError, match=r"--data\.sources\[0\]\.weight: got -1\.0; must be > 0"):
        PretrainConfig.load(None, {"data.sources": [{"path": "a", "weight": -1}]})
