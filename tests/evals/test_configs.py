"""Every YAML under configs/evals/ opens with the command that runs it and loads into its suite's config."""

import re
from pathlib import Path

import pytest

from evals.config import build_config, load_yaml
from evals.suites import get_suite

CONFIGS = sorted(p for p in (Path(__file__).resolve().parents[2] / "configs" / "evals").glob("*.yaml")
                 if p.name != "regressions.yaml")
# fields a config leaves to the command line (the model or predictions being evaluated)
REQUIRED_ON_CLI = {"qa": {"predictions": "preds.jsonl"}, "feedback-mc": {"model": "m"}, "lm": {"model": "m"}}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads_into_its_suite(path):
    first = path.read_text().splitlines()[0]
    m = re.match(r"# wandao eval (\S+) --config (\S+)", first)
    assert m, f"{path.name} must open with '# wandao eval <suite> --config {path.relative_to(path.parents[2])}'"
    suite, cfg_path = m.groups()
    assert cfg_path == f"configs/evals/{path.name}"
    cls = get_suite(suite).Config
    cfg = build_config(cls, yaml_path=path, overrides=REQUIRED_ON_CLI.get(suite, {}))
    for key, value in load_yaml(path).items():
        got = getattr(cfg, key)
        assert (list(got) if isinstance(got, tuple) else got) == value


def test_unknown_yaml_field_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("dataset: xquad-en\npredictons: x.jsonl\n")
    with pytest.raises(ValueError, match="unknown config field.*predictons"):
        build_config(get_suite("qa").Config, yaml_path=path)
