"""Training on a mixture: exact resume mid-epoch, and the epoch's examples are the mixture's choice."""

from __future__ import annotations

import json
import os
import signal

import pytest
from pipeline_helpers import build_splits_once, mixture_tasks
from test_train_resume import RUN, assert_same_run, stop_at_training_call

from tunebench.config import config_from_dict
from tunebench.data.mixture import build_mixture
from tunebench.train.loop import train

TASKS = mixture_tasks({"train": 6, "validation": 2, "test": 1}, {"train": 3, "validation": 2, "test": 1},
                      emotion_variant="random")


def mix_cfg(tmp_path, model_dir, name):
    train_keys = {k: v for k, v in RUN.items() if k != "n_train"}
    return config_from_dict({
        "name": name, "output_dir": str(tmp_path / "runs"), "seed": 7, "model": {"ref": str(model_dir)},
        "data": {"tasks": TASKS, "mixture": {"strategy": "temperature", "temperature": 3.0}, "max_length": 96},
        "train": {"batch_size": 2, "lr": 5e-3, "warmup_ratio": 0.0, "save_every": None, "log_every": 1,
                  **train_keys},
    })


@pytest.fixture
def splits_built_once():
    """The three trainings below build the same splits: once (`build_splits_once`), kept past monkeypatch.undo()."""
    with pytest.MonkeyPatch.context() as mp:
        build_splits_once(mp)
        yield


def test_mixture_run_resumes_mid_epoch_exactly(tmp_path, tiny_causal_dir, data_dir, monkeypatch, splits_built_once):
    whole = train(mix_cfg(tmp_path / "a", tiny_causal_dir, "whole"), data_dir=data_dir, progress=False)
    mixture = json.loads((whole.run_dir / "mixture.json").read_text())
    # sizes 6 and 3, T = 3: rates ∝ (2/3)^(1/3), (1/3)^(1/3) = 0.5575, 0.4425 of 9 -> 5 and 4 (multi30k upsampled)
    assert [r["examples_per_epoch"] for r in mixture["tasks"]] == [5, 4]
    assert mixture["tasks"][1]["passes_per_epoch"] == round(4 / 3, 4)
    assert build_mixture(["e", "m"], [6, 3], "temperature", temperature=3.0).counts == (5, 4)

    cfg = mix_cfg(tmp_path / "b", tiny_causal_dir, "cut")
    # 9 examples per epoch in batches of 2, 2 batches per step: steps of 2, 2, 1 passes. The 5th pass is step 3,
    # the last window of epoch 0: Ctrl-C there checkpoints step 2, in the middle of the epoch
    stop_at_training_call(monkeypatch, 5, lambda: os.kill(os.getpid(), signal.SIGINT))
    first = train(cfg, data_dir=data_dir, progress=False)
    assert first.interrupted and first.steps == 2
    monkeypatch.undo()
    second = train(cfg, data_dir=data_dir, resume=True, progress=False)
    assert second.steps == 5 and second.summary["resumed_from_step"] == 2
    assert_same_run(whole.run_dir, second.run_dir)
