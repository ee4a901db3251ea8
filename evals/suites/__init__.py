"""Eval suites. Each module defines a dataclass ``Config``, ``suite(cfg) -> (metrics, per_example)``,
``HEADLINE`` (metrics for tables and bar plots), ``WORST`` (per-example key and whether low is bad)
and ``EXAMPLE`` (a runnable command for ``--help``). Modules import heavy dependencies lazily."""

from __future__ import annotations

import importlib
from types import ModuleType

SUITES: dict[str, str] = {
    "retrieval": "evals.suites.retrieval",
    "odqa-retrieval": "evals.suites.odqa",
    "qa": "evals.suites.qa",
    "attribution": "evals.suites.attribution",
    "feedback-mc": "evals.suites.feedback_mc",
    "lm": "evals.suites.lm",
    "rm": "evals.suites.rm",
    "moderation": "evals.suites.moderation",
}


def get_suite(name: str) -> ModuleType:
    """The module of suite ``name``; unknown names list the known ones."""
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; known suites: {', '.join(SUITES)}")
    return importlib.import_module(SUITES[name])
