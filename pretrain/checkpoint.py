"""Checkpoint folders: ``step-00001000/`` holding everything an exact resume needs.

Layout::

    step-00001000/
        config.json, model.safetensors    the model, via its ``save_pretrained`` (loads in transformers)
        tokenizer.json, tokenizer_config.json
        optimizer.pt                      optimizer state_dict
        trainer_state.pt                  step, schedule, data sampler position, RNG states
                                          (torch CPU/CUDA, numpy, python)
        trainer_state.json                the readable part (step, losses, tokens seen)
        run_config.yaml                   the run's config

The folder is written under a temporary name and renamed, so a crash never leaves a partial
checkpoint; :func:`latest_checkpoint` ignores temporary folders.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

logger = logging.getLogger(__name__)

STEP_RE = re.compile(r"^step-(\d{8})$")


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def rng_state() -> dict:
    import numpy as np
    import torch

    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def atomic_folder(final: Path):
    """Yield a temporary sibling folder that is renamed to ``final`` when the block succeeds."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def save_checkpoint(out_dir: str | os.PathLike, step: int, save_model: Callable[[Path], None],
                    optimizer_state: dict | None, trainer_state: dict, readable: dict | None = None,
                    tokenizer: Any = None, config: Any = None, keep: int = 0,
                    extra: Callable[[Path], None] | None = None) -> Path:
    """Write ``out_dir/step-XXXXXXXX/`` atomically and prune to the newest ``keep`` (0 keeps all).

    Args:
        save_model: writes the model (``save_pretrained``) into the folder it is given.
        optimizer_state: ``optimizer.state_dict()`` (None when a backend saves its own, e.g. DeepSpeed).
        trainer_state: schedule, sampler and RNG states; saved with ``torch.save``.
        extra: writes backend-specific files (DeepSpeed's sharded states) into the folder.
    """
    import torch

    final = Path(out_dir) / step_dir_name(step)
    with atomic_folder(final) as tmp:
        save_model(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        if optimizer_state is not None:
            torch.save(optimizer_state, tmp / "optimizer.pt")
        torch.save(trainer_state, tmp / "trainer_state.pt")
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step, **(readable or {})}, indent=2) + "\n")
        if config is not None:
            import yaml

            from pretrain.config import to_dict

            (tmp / "run_config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
        if extra is not None:
            extra(tmp)
    logger.info("saved checkpoint %s", final)
    prune_checkpoints(out_dir, keep, final)
    return final


def prune_checkpoints(out_dir: str | os.PathLike, keep: int, just_saved: Path) -> None:
    """Keep ``just_saved`` and the newest ``keep - 1`` other checkpoints (``keep`` 0 keeps all).

    ``just_saved`` always survives: a fresh run in a folder that still holds a higher-step checkpoint of an
    earlier run would otherwise delete its own newest checkpoint and leave the stale one as "latest".
    """
    if keep <= 0:
        return
    others = [p for p in list_checkpoints(out_dir) if p.resolve() != Path(just_saved).resolve()]
    for old in others[:max(0, len(others) - (keep - 1))]:
        logger.info("pruning checkpoint %s (keep_checkpoints %d)", old, keep)
        shutil.rmtree(old, ignore_errors=True)


def list_checkpoints(out_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoint folders under ``out_dir``, oldest first."""
    out_dir = Path(out_dir)
    if not out_dir.exists():
        return []
    found = [p for p in out_dir.iterdir() if p.is_dir() and STEP_RE.match(p.name) and (p / "trainer_state.pt").exists()]
    return sorted(found, key=lambda p: int(STEP_RE.match(p.name).group(1)))


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    found = list_checkpoints(out_dir)
    return found[-1] if found else None


def resolve_resume(resume: str | None, out_dir: str | os.PathLike) -> Path | None:
    """``None``: fresh start. ``"auto"``: the newest checkpoint in ``out_dir`` (or fresh). Else a step folder."""
    if resume is None:
        stale = list_checkpoints(out_dir)
        if stale:
            logger.warning("fresh start in %s, which holds %d checkpoint(s) of an earlier run (newest %s); "
                           "they are pruned as this run saves its own", out_dir, len(stale), stale[-1].name)
        return None
    if resume == "auto":
        return latest_checkpoint(out_dir)
    path = Path(resume)
    if not (path / "trainer_state.pt").exists():
        latest = latest_checkpoint(path)
        if latest is None:
            raise FileNotFoundError(f"--train.resume {resume}: not a checkpoint folder (no trainer_state.pt) "
                                    "and no step-XXXXXXXX/ folders inside it")
        path = latest
    return path


def load_trainer_state(folder: str | os.PathLike) -> dict:
    import torch

    return torch.load(Path(folder) / "trainer_state.pt", map_location="cpu", weights_only=False)


def load_optimizer_state(folder: str | os.PathLike) -> dict | None:
    import torch

    path = Path(folder) / "optimizer.pt"
    return torch.load(path, map_location="cpu", weights_only=False) if path.exists() else None
