"""evals: one evaluation harness for retrieval, QA, attribution, reward models, moderation and LMs.

``evals.run(suite, **targets)`` runs a suite and writes a run folder (see :mod:`evals.run`);
``evals.compare(run_dirs, out)`` puts run folders side by side. Nothing heavy is imported here.

Importing the submodule ``evals.run`` rebinds the package attribute ``run`` to that module, so the
module is made callable (it forwards to :func:`evals.run.run`): ``evals.run(...)`` works either way.
"""

from __future__ import annotations

from typing import Any

__all__ = ["run", "compare", "write_report"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        import importlib

        return getattr(importlib.import_module("evals.run"), name)
    raise AttributeError(f"module 'evals' has no attribute {name!r}")
