"""The DeepSpeed ZeRO-2 path on CPU (gloo), a few real steps of the tiny model.

The first DeepSpeed run on a machine JIT-builds its shared-memory communication op with ninja/g++
(about two minutes on 2 cores); later runs reuse ~/.cache/torch_extensions and take seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (pip install 'wandao[deepspeed]')")


def test_zero2_runs_on_cpu_and_checkpoints(tmp_path, data_dir):
    # A subprocess: deepspeed.init_distributed sets up a process group that would outlive the test.
    cmd = [sys.executable, "-m", "pretrain.train", "--config", "configs/pretrain/tiny.yaml",
           "--train.backend", "deepspeed", "--deepspeed.zero_stage", "2", "--train.device", "cpu",
           "--train.out_dir", str(tmp_path / "ds"), "--train.max_iters", "6", "--train.eval_interval", "3",
           "--train.eval_iters", "2", "--train.log_interval", "1", "--train.grad_accum_steps", "2",
           "--model.block_size", "16", "--train.num_threads", "1", "--train.plot", "false"]
    env = dict(os.environ, WANDAO_DATA_DIR=str(data_dir), MASTER_PORT="29561")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["backend"] == "deepspeed-zero2" and summary["steps"] == 6
    records = [json.loads(line) for line in (tmp_path / "ds" / "metrics.jsonl").read_text().splitlines()]
    evals = [r["val_loss"] for r in records if r["kind"] == "eval"]
    assert evals[-1] < evals[0] - 0.1  # 6 ZeRO-2 steps at lr 3e-3 move a fresh model off ln(65)
    grad_norms = [r["grad_norm"] for r in records if r["kind"] == "train"]
    assert all(g is not None and g > 0 for g in grad_norms)
    ckpt = tmp_path / "ds" / "step-00000006"
    assert (ckpt / "model.safetensors").exists() and (ckpt / "deepspeed" / "state").is_dir()
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(str(ckpt)).config.n_layer == 2


def test_t5_span_corruption_under_zero2(tmp_path, data_dir):
    """The same loop trains the encoder-decoder: span-corrupted batches through the DeepSpeed engine."""
    cmd = [sys.executable, "-m", "pretrain.train", "--config", "configs/pretrain/tiny-t5-span.yaml",
           "--train.backend", "deepspeed", "--deepspeed.zero_stage", "2", "--train.device", "cpu",
           "--train.out_dir", str(tmp_path / "t5"), "--train.max_iters", "6", "--train.eval_interval", "3",
           "--train.eval_iters", "2", "--train.log_interval", "1", "--train.grad_accum_steps", "2",
           "--schedule.warmup_iters", "2", "--model.block_size", "32", "--train.num_threads", "1",
           "--train.plot", "false"]
    env = dict(os.environ, WANDAO_DATA_DIR=str(data_dir), MASTER_PORT="29562")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["backend"] == "deepspeed-zero2" and summary["arch"] == "t5" and summary["steps"] == 6
    records = [json.loads(line) for line in (tmp_path / "t5" / "metrics.jsonl").read_text().splitlines()]
    evals = [r["val_loss"] for r in records if r["kind"] == "eval"]
    assert evals[0] == pytest.approx(5.12, abs=0.05)  # ln(167): 65 characters, EOS, pad, 100 sentinels
    assert evals[-1] < evals[0] - 0.1
    from transformers import T5ForConditionalGeneration

    hf = T5ForConditionalGeneration.from_pretrained(str(tmp_path / "t5" / "step-00000006"))
    assert hf.config.vocab_size == 167 and hf.config.decoder_start_token_id == hf.config.pad_token_id == 66
