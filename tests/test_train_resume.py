"""Exact resume: a run killed or Ctrl-C'd and resumed ends with the same weights as one never stopped."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import losses, make_cfg

from tunebench.io import read_jsonl
from tunebench.train import loop
from tunebench.train.loop import train

# LoRA with dropout (so the RNG state matters), 6 examples in batches of 2 with 2 batches per step: windows of
# 2 and 1 batches per epoch, so 5 steps cross two epoch boundaries. Training forward calls per step: 2, 1, 2, 1, 2.
RUN = dict(method="lora", lora={"dropout": 0.2}, n_train=6, grad_accum=2, max_steps=5, eval_every=2)


def weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "checkpoints" / f"step-{step}" / "trainable.safetensors")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_causal_dir, data_dir) -> Path:
    tmp = tmp_path_factory.mktemp("whole")
    return train(make_cfg(tmp, tiny_causal_dir, name="whole", **RUN), data_dir=data_dir, progress=False).run_dir


def stop_at_training_call(monkeypatch, n: int, action) -> None:
    """Run `action` right after the n-th training forward pass (validation passes run without grad)."""
    real = loop.completion_loss_sum
    calls = {"n": 0}

    def counting(*args, **kwargs):
        out = real(*args, **kwargs)
        if torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] == n:
                action()
        return out

    monkeypatch.setattr(loop, "completion_loss_sum", counting)


def assert_same_run(a: Path, b: Path) -> None:
    final_a, final_b = weights(a, 5), weights(b, 5)
    assert final_a.keys() == final_b.keys()
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)
    assert losses(a) == losses(b)
    assert losses(a, "val_loss") == losses(b, "val_loss")


def test_ctrl_c_checkpoints_and_resume_is_exact(tmp_path, tiny_causal_dir, data_dir, monkeypatch, uninterrupted):
    cfg = make_cfg(tmp_path, tiny_causal_dir, name="cut", **RUN)
    # Python's default handler, or SIG_IGN when the test process was started in the background with SIGINT ignored
    before = signal.getsignal(signal.SIGINT)
    # the 4th training pass is the first of step 3's two: Ctrl-C there must checkpoint step 2
    stop_at_training_call(monkeypatch, 4, lambda: os.kill(os.getpid(), signal.SIGINT))
    first = train(cfg, data_dir=data_dir, progress=False)
    assert first.interrupted and first.steps == 2 and first.output_dir is None
    assert (first.run_dir / "checkpoints" / "step-2").is_dir()
    assert first.summary["interrupted"] is True
    assert signal.getsignal(signal.SIGINT) is before  # the handler is put back

    monkeypatch.undo()
    second = train(cfg, data_dir=data_dir, resume=True, progress=False)
    assert not second.interrupted and second.steps == 5
    assert second.summary["resumed_from_step"] == 2
    assert_same_run(uninterrupted, second.run_dir)


def test_a_killed_run_resumes_from_its_last_checkpoint(tmp_path, tiny_causal_dir, data_dir, monkeypatch,
                                                       uninterrupted):
    cfg = make_cfg(tmp_path, tiny_causal_dir, name="killed", save_every=2, **RUN)

    def crash() -> None:
        raise RuntimeError("simulated power cut")

    stop_at_training_call(monkeypatch, 7, crash)  # inside step 5: the last checkpoint is step 4
    with pytest.raises(RuntimeError, match="power cut"):
        train(cfg, data_dir=data_dir, progress=False)
    logged = [r["step"] for r in read_jsonl(cfg.run_dir / "train_log.jsonl")]
    assert max(logged) == 4

    monkeypatch.undo()
    result = train(cfg, data_dir=data_dir, resume=True, progress=False)
    assert result.summary["resumed_from_step"] == 4
    assert_same_run(uninterrupted, result.run_dir)


def test_resume_refuses_a_changed_config(tmp_path, tiny_causal_dir, data_dir):
    cfg = make_cfg(tmp_path, tiny_causal_dir, name="changed", max_steps=1)
    train(cfg, data_dir=data_dir, progress=False)
    changed = make_cfg(tmp_path, tiny_causal_dir, name="changed", max_steps=1, lr=1e-3)
    with pytest.raises(Exception, match="train.lr"):
        train(changed, data_dir=data_dir, resume=True, progress=False)


def test_checkpoints_hold_only_safetensors_and_json(uninterrupted):
    steps = sorted((uninterrupted / "checkpoints").glob("step-*"))
    assert steps
    for step_dir in steps:
        for f in step_dir.iterdir():
            assert f.suffix in (".safetensors", ".json"), f
            if f.suffix == ".safetensors":
                load_file(f)  # parses as safetensors
            head = f.read_bytes()[:2]
            assert head != b"\x80\x04" and head[:1] != b"\x80"  # no pickle protocol header


def test_resume_with_another_process_count_exits_2_and_keeps_the_checkpoint(tmp_path, tiny_causal_dir, data_dir):
    """A checkpoint saved by two processes (its per-process RNG list has two states), resumed by one."""
    import hashlib

    from tunebench.errors import ConfigError
    from tunebench.rundir import CheckpointDir
    from tunebench.train import checkpoint as ckpt

    cfg = make_cfg(tmp_path, tiny_causal_dir, name="procs", max_steps=1, save_every=1)
    run_dir = train(cfg, data_dir=data_dir, progress=False).run_dir
    step = run_dir / "checkpoints" / "step-1"
    rng = ckpt._load_state(CheckpointDir(step).rng)
    ckpt._save_state(CheckpointDir(step).rng, [rng[0], rng[0]])
    before = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in step.iterdir()}
    with pytest.raises(ConfigError, match=r"saved by 2 process\(es\) and this run has 1: resume with the same "
                                          r"number of processes \(accelerate launch --num_processes 2\)"):
        train(cfg, data_dir=data_dir, resume=True, progress=False)
    assert {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in step.iterdir()} == before


def test_tensorboard_events_of_a_resumed_run_match_its_log(tmp_path, tiny_causal_dir, data_dir, monkeypatch,
                                                          uninterrupted):
    """Steps logged after the last checkpoint by the killed process are purged, as train_log.jsonl drops them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = make_cfg(tmp_path, tiny_causal_dir, name="tb", save_every=2, **RUN)

    def crash() -> None:
        raise RuntimeError("simulated power cut")

    stop_at_training_call(monkeypatch, 6, crash)  # inside step 4: step 3 was logged, the last checkpoint is step 2
    with pytest.raises(RuntimeError, match="power cut"):
        train(cfg, data_dir=data_dir, progress=False)
    monkeypatch.undo()
    train(cfg, data_dir=data_dir, resume=True, progress=False)
    events = EventAccumulator(str(cfg.run_dir / "tensorboard"))
    events.Reload()
    scalars = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert [s for s, _ in scalars] == [1, 2, 3, 4, 5]
    assert [v for _, v in scalars] == pytest.approx(losses(uninterrupted), rel=1e-6)
    assert [e.step for e in events.Scalars("val/loss")] == [0, 2, 4, 5]
