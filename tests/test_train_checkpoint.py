"""Checkpoint pieces: nested state <-> safetensors + JSON, RNG round trips, pruning, mismatch errors."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from tunebench.rundir import CheckpointDir, CheckpointRoot
from tunebench.train import checkpoint as ckpt
from tunebench.train.schedule import build_optimizer, build_scheduler


def small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))


def test_split_and_join_restore_nested_state_exactly():
    state = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(2, 2)}},
             "groups": [{"lr": 0.1, "betas": (0.9, 0.999), "params": [0, 1], "name": None}],
             "np": np.arange(5, dtype=np.uint32), "flag": True}
    tensors: dict[str, torch.Tensor] = {}
    tree = ckpt.split_tensors(state, tensors)
    back = ckpt.join_tensors(tree, tensors)
    assert set(back["state"]) == {0}  # int keys survive JSON
    assert torch.equal(back["state"][0]["exp_avg"], state["state"][0]["exp_avg"])
    assert back["groups"][0]["betas"] == (0.9, 0.999)
    assert back["np"].dtype == np.uint32 and back["np"].tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(TypeError, match="without pickle"):
        ckpt.split_tensors({"bad": object()}, {})


def test_rng_round_trip_replays_every_generator():
    saved = ckpt.capture_rng()
    first = (random.random(), np.random.rand(), torch.rand(3))
    tensors: dict[str, torch.Tensor] = {}
    ckpt.restore_rng(ckpt.join_tensors(ckpt.split_tensors(saved, tensors), tensors))
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert first[:2] == again[:2] and torch.equal(first[2], again[2])


def test_save_and_load_restore_weights_optimizer_and_schedule(tmp_path):
    model = small_model()
    opt = build_optimizer(model, lr=0.1, weight_decay=0.01)
    sched = build_scheduler(opt, "cosine", total_steps=10, warmup_ratio=0.2)
    for _ in range(3):
        model(torch.randn(2, 4)).sum().backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    path = ckpt.save_checkpoint(tmp_path, 3, model=model, optimizer=opt, scheduler=sched,
                                rng=[ckpt.capture_rng()], trainer_state={"epoch": 1, "window": 2})

    other = small_model()
    opt2 = build_optimizer(other, lr=0.1, weight_decay=0.01)
    sched2 = build_scheduler(opt2, "cosine", total_steps=10, warmup_ratio=0.2)
    state, rngs = ckpt.load_checkpoint(path, model=other, optimizer=opt2, scheduler=sched2)
    assert state["step"] == 3 and state["window"] == 2 and len(rngs) == 1
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), other.parameters(), strict=True))
    assert sched2.get_last_lr() == sched.get_last_lr()
    x = torch.randn(2, 4)
    for m, o, s in ((model, opt, sched), (other, opt2, sched2)):
        m(x).sum().backward()
        o.step()
        s.step()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), other.parameters(), strict=True))


def test_loading_into_a_different_model_names_the_fix(tmp_path):
    model = small_model()
    opt = build_optimizer(model, lr=0.1, weight_decay=0.0)
    sched = build_scheduler(opt, "linear", total_steps=4, warmup_ratio=0.0)
    path = ckpt.save_checkpoint(tmp_path, 1, model=model, optimizer=opt, scheduler=sched, rng=[], trainer_state={})
    bigger = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.LayerNorm(5))
    with pytest.raises(ckpt.CheckpointError, match="config the run was started with"):
        ckpt.load_trainable(bigger, path / "trainable.safetensors")


def test_prune_keeps_the_last_and_the_best(tmp_path):
    for step in (2, 4, 6, 8):
        (tmp_path / f"step-{step}").mkdir()
    (tmp_path / ".step-10.abc.tmp").mkdir()  # an unfinished atomic write is not a checkpoint
    assert ckpt.list_checkpoints(tmp_path) == [2, 4, 6, 8]
    assert ckpt.prune_checkpoints(tmp_path, keep_last=2, best_step=2) == [4]
    assert ckpt.list_checkpoints(tmp_path) == [2, 6, 8]
    assert ckpt.latest_checkpoint(tmp_path) == tmp_path / "step-8"
    ckpt.write_best(tmp_path, 6, "val_loss", 1.5)
    assert json.loads((tmp_path / "best.json").read_text()) == {"step": 6, "metric": "val_loss", "value": 1.5}


def test_a_checkpoint_holds_the_documented_files_each_named_by_checkpoint_dir(tmp_path):
    docs = (Path(__file__).resolve().parents[1] / "docs" / "formats.md").read_text(encoding="utf-8")
    block = docs.split("\ncheckpoints/step-N/", 1)[1].split("\ncheckpoints/best.json", 1)[0]
    documented = set(re.findall(r"^    (\S+)", block, flags=re.M))
    model = small_model()
    opt = build_optimizer(model, lr=0.1, weight_decay=0.0)
    sched = build_scheduler(opt, "linear", total_steps=4, warmup_ratio=0.0)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    path = ckpt.save_checkpoint(tmp_path, 3, model=model, optimizer=opt, scheduler=sched, rng=[ckpt.capture_rng()],
                                trainer_state={})
    assert {f.name for f in path.iterdir()} == documented
    assert documented <= set(CheckpointDir.files())
    saved = CheckpointDir(path)
    assert (saved.step, saved.trainable, saved.optimizer.tensors, saved.rng.tree, saved.trainer_state.tree) == (
        3, path / "trainable.safetensors", path / "optimizer.safetensors", path / "rng.json",
        path / "trainer_state.json")
    root = CheckpointRoot(tmp_path)
    assert (root.step(3), root.latest(), root.steps(), root.best) == (saved, saved, [3], tmp_path / "best.json")
    assert CheckpointRoot(tmp_path / "none").latest() is None
