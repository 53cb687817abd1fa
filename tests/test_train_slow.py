"""Slow training tests: two-process data parallelism (gloo on CPU) and the real default model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import free_port, losses, make_cfg

from tunebench.config import config_from_dict
from tunebench.train.loop import train

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_two_processes_equal_one_process_with_accumulation(tmp_path, tiny_causal_dir, data_dir):
    """DDP over gloo with batches of 2 on each of 2 processes == one process accumulating 2 batches of 2.

    Launched with torchrun, the launcher `accelerate launch --multi_gpu` wraps; `accelerate launch --cpu`
    starts several CPU processes only through mpirun, which this machine lacks.
    """
    keys = dict(method="lora", lora={"dropout": 0.0}, n_train=8, max_steps=3, eval_every=3, save_every=3)
    # the 2-process run states its global batch (4 = 2 per process x 2 processes, no accumulation); the one-process
    # run accumulates 2 batches of 2 explicitly: the same optimizer steps either way
    ddp_keys = {**keys, "global_batch_size": 4}
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(f"""
        import json, sys
        from pathlib import Path
        sys.path.insert(0, {str(REPO / 'tests')!r})
        from train_helpers import make_cfg
        from tunebench.train.loop import train
        cfg = make_cfg(Path({str(tmp_path)!r}), Path({str(tiny_causal_dir)!r}), name="ddp", **{ddp_keys!r})
        train(cfg, data_dir=Path({str(data_dir)!r}), progress=False)
    """))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(script)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    single = train(make_cfg(tmp_path, tiny_causal_dir, name="single", grad_accum=2, **keys), data_dir=data_dir,
                   progress=False)
    ddp_dir = tmp_path / "runs" / "ddp"
    summary = json.loads((ddp_dir / "train_summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["steps"] == 3
    assert summary["grad_accum"] == 1 and summary["global_batch_size"] == 4 == single.summary["global_batch_size"]
    a = load_file(ddp_dir / "checkpoints" / "step-3" / "trainable.safetensors")
    b = load_file(single.run_dir / "checkpoints" / "step-3" / "trainable.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in a)
    assert losses(ddp_dir) == pytest.approx(losses(single.run_dir), rel=1e-5)


def test_real_default_model_learns_dialogsum(tmp_path, data_dir):
    cfg = config_from_dict({
        "name": "smol", "output_dir": str(tmp_path / "runs"), "seed": 1,
        "data": {"source": "dialogsum", "splits": {"train": "validation", "validation": None, "test": "test"},
                 "limits": {"train": 12, "validation": 6, "test": 1}, "max_length": 384},
        "train": {"method": "lora", "batch_size": 4, "max_steps": 3, "lr": 1e-3, "warmup_ratio": 0.0,
                  "eval_every": 3, "save_every": 3, "log_every": 1},
    })
    result = train(cfg, data_dir=data_dir, progress=False)
    s = result.summary
    assert s["steps"] == 3 and s["bf16"] == s["frozen_bf16"] and s["logits_only_at_targets"]
    assert 0.5 < s["initial_val_loss"] < 5.0  # a trained model, not random weights (ln 49152 = 10.8)
    assert s["final_val_loss"] < s["initial_val_loss"]
    assert (result.run_dir / "adapter" / "adapter_model.safetensors").is_file()
