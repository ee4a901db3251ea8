"""pretrain.checkpoint: pruning keeps the checkpoint just written, whatever step numbers earlier runs left."""

from __future__ import annotations

from pathlib import Path

from pretrain import checkpoint as ckpt


def _save(out: Path, step: int, keep: int) -> Path:
    def save_model(folder: Path) -> None:
        (folder / "model.safetensors").write_bytes(b"weights %d" % step)

    return ckpt.save_checkpoint(out, step, save_model, None, {"step": step}, keep=keep)


def test_keep_n_prunes_the_oldest_by_step(tmp_path):
    for step in (10, 20, 30):
        _save(tmp_path, step, keep=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-00000020", "step-00000030"]


def test_a_fresh_run_never_prunes_its_own_checkpoint_for_a_stale_higher_step(tmp_path, caplog):
    _save(tmp_path, 1200, keep=1)  # an earlier, longer run in the same folder
    assert ckpt.resolve_resume(None, tmp_path) is None
    assert "holds 1 checkpoint(s) of an earlier run (newest step-00001200)" in caplog.text
    saved = _save(tmp_path, 1000, keep=1)
    assert ckpt.list_checkpoints(tmp_path) == [saved] == [ckpt.latest_checkpoint(tmp_path)]
    assert (saved / "model.safetensors").read_bytes() == b"weights 1000"
    _save(tmp_path, 500, keep=0)  # keep 0 keeps everything
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-00000500", "step-00001000"]
