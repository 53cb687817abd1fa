"""A sweep (or `tunebench run`) interrupted while a method trains finishes that method when rerun.

An interrupted training writes train_summary.json too (`interrupted: true`, no adapter); before, the rerun took
that file for finished training and evaluated a run without weights: the sweep recorded the method as failed
("holds no trained output") on every rerun, and `run` stopped the same way.
"""

from __future__ import annotations

import json
import os
import signal

import torch
import yaml
from pipeline_helpers import train_in_process

from tunebench.cli import main


def _config(tmp_path, model_dir):
    tree = {
        "name": "cut", "output_dir": str(tmp_path / "runs"), "seed": 3, "model": {"ref": str(model_dir)},
        "data": {"source": "dialogsum", "splits": {"train": "validation", "validation": None, "test": "test"},
                 "fractions": {"validation": 0.25}, "limits": {"train": 8, "validation": 2, "test": 2},
                 "max_length": 96},
        "train": {"method": "lora", "lora": {"r": 2, "alpha": 4}, "batch_size": 2, "max_steps": 3,
                  "save_every": 1, "eval_every": None, "warmup_ratio": 0.0},
        "eval": {"limit": 2, "shots": [0], "bootstrap": 50, "generation": {"max_new_tokens": 4, "batch_size": 2}},
        "bench": {"enabled": False},
    }
    path = tmp_path / "cut.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def _ctrl_c_at_training_call(monkeypatch, n: int) -> None:
    """Send this process SIGINT right after the n-th training forward pass, as Ctrl-C would."""
    from tunebench.train import loop

    real, calls = loop.completion_loss_sum, {"n": 0}

    def counting(*args, **kwargs):
        out = real(*args, **kwargs)
        if torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] == n:
                os.kill(os.getpid(), signal.SIGINT)
        return out

    monkeypatch.setattr(loop, "completion_loss_sum", counting)


def _summary(run_dir):
    return json.loads((run_dir / "train_summary.json").read_text())


def test_sweep_killed_mid_training_resumes_the_method(tmp_path, tiny_causal_dir, data_dir, monkeypatch):
    import tunebench.pipeline.sweep as sweep_stages

    path, out = _config(tmp_path, tiny_causal_dir), tmp_path / "sweep"
    argv = ["sweep", str(path), "--methods", "lora", "--out", str(out), "--data-dir", str(data_dir)]
    monkeypatch.setattr(sweep_stages, "_train_in_subprocess", train_in_process)
    with monkeypatch.context() as mp:
        _ctrl_c_at_training_call(mp, 2)  # during step 2: step 1 is checkpointed
        assert main(argv) == 130
    assert _summary(out / "lora")["interrupted"] is True and not (out / "lora" / "adapter").exists()

    assert main(argv) == 0
    summary = _summary(out / "lora")
    assert summary["interrupted"] is False and summary["steps"] == 3 and summary["resumed_from_step"] == 1
    row = json.loads((out / "sweep.json").read_text())["rows"][0]
    assert row["status"] == "done" and row["steps"] == 3
    assert (out / "lora" / "eval" / "tuned" / "scores.json").is_file()


def test_run_interrupted_in_training_resumes_on_rerun(tmp_path, tiny_causal_dir, data_dir, monkeypatch, capsys):
    steps_done = 1
    path = _config(tmp_path, tiny_causal_dir)
    argv = ["run", str(path), "--data-dir", str(data_dir)]
    with monkeypatch.context() as mp:
        _ctrl_c_at_training_call(mp, steps_done + 1)
        assert main(argv) == 1
    assert "training was interrupted; rerun the same command to resume" in capsys.readouterr().err
    run_dir = tmp_path / "runs" / "cut"
    assert _summary(run_dir)["interrupted"] is True

    assert main(argv) == 0
    summary = _summary(run_dir)
    assert summary["interrupted"] is False and summary["resumed_from_step"] == steps_done and summary["steps"] == 3
    assert (run_dir / "adapter").is_dir() and (run_dir / "compare" / "comparison.json").is_file()
