"""A checkpoint written by a two-process run resumes in a two-process run exactly.

Two CPU processes (gloo), started by torchrun (the launcher `accelerate launch --multi_gpu` wraps). The right
values come from the same config trained by two processes without a stop: the resumed run must end with the same
weights bit for bit and log the same losses. Both ways a run stops are covered: Ctrl-C in one process only (the
trigger reaches the other, both checkpoint the step they were at) and a crash of every process after the last
periodic checkpoint.
"""

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
from train_helpers import free_port, losses

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow

# LoRA with dropout (so every process's RNG state matters), 12 examples in batches of 2 per process, a global
# batch of 8 (2 per process x 2 processes x 2 accumulated): windows of 4 and 2 batches per epoch, so 5 steps cross
# two epoch boundaries and each process runs 2, 1, 2, 1, 2 training forward passes in steps 1..5.
RUN = dict(method="lora", lora={"dropout": 0.2}, n_train=12, global_batch_size=8, max_steps=5, eval_every=2)

SCRIPT = """
import json, os, signal, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
import torch
from train_helpers import make_cfg
from tunebench.train import loop

job = json.loads(sys.argv[1])
rank = int(os.environ["RANK"])
real, calls = loop.completion_loss_sum, {{"n": 0}}

def counting(*args, **kwargs):  # the stop hook of test_train_resume.py, on the ranks `job` names
    out = real(*args, **kwargs)
    if torch.is_grad_enabled():
        calls["n"] += 1
        if calls["n"] == job.get("stop_at") and rank in job["stop_ranks"]:
            if job["how"] == "ctrl-c":
                os.kill(os.getpid(), signal.SIGINT)
            else:
                raise RuntimeError("simulated power cut")
    return out

loop.completion_loss_sum = counting
cfg = make_cfg(Path(job["tmp"]), Path(job["model"]), name=job["name"], **job["keys"])
result = loop.train(cfg, data_dir=Path(job["data"]), resume=job.get("resume", False), progress=False)
if rank == 0:
    Path(job["tmp"], job["name"] + ".result.json").write_text(json.dumps(
        {{"steps": result.steps, "interrupted": result.interrupted, "summary": result.summary}}))
"""


def two_processes(tmp_path: Path, job: dict) -> subprocess.CompletedProcess:
    script = tmp_path / "ddp_job.py"
    script.write_text(textwrap.dedent(SCRIPT.format(tests=str(REPO / "tests"))))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(script), json.dumps({"tmp": str(tmp_path), **job})]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def run_result(tmp_path: Path, name: str) -> dict:
    return json.loads((tmp_path / f"{name}.result.json").read_text())


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "checkpoints" / "step-5" / "trainable.safetensors")


def assert_same_run(a: Path, b: Path) -> None:
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys() and wa
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert losses(a) == losses(b) and len(losses(a)) == 5
    assert losses(a, "val_loss") == losses(b, "val_loss")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_causal_dir, data_dir) -> Path:
    tmp = tmp_path_factory.mktemp("ddp_whole")
    done = two_processes(tmp, {"name": "whole", "model": str(tiny_causal_dir), "data": str(data_dir), "keys": RUN})
    assert done.returncode == 0, done.stderr[-3000:]
    summary = run_result(tmp, "whole")["summary"]
    assert summary["num_processes"] == 2 and summary["grad_accum"] == 2 and summary["steps"] == 5
    return tmp / "runs" / "whole"


def test_ctrl_c_in_one_process_checkpoints_both_and_two_processes_resume_exactly(tmp_path, tiny_causal_dir,
                                                                                  data_dir, uninterrupted):
    job = {"name": "cut", "model": str(tiny_causal_dir), "data": str(data_dir), "keys": RUN}
    # rank 0's 4th training pass is the first of step 3's two: its Ctrl-C must stop both processes there, and
    # step 2 (with step 3's window still to do) is checkpointed with both processes' RNG states
    done = two_processes(tmp_path, {**job, "stop_at": 4, "stop_ranks": [0], "how": "ctrl-c"})
    assert done.returncode == 0, done.stderr[-3000:]
    first = run_result(tmp_path, "cut")
    assert first["interrupted"] and first["steps"] == 2
    run_dir = tmp_path / "runs" / "cut"
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step-*")) == ["step-2"]
    saved = json.loads((run_dir / "checkpoints" / "step-2" / "trainer_state.json").read_text())
    assert (saved["step"], saved["epoch"], saved["window"]) == (2, 1, 0)
    assert len(json.loads((run_dir / "checkpoints" / "step-2" / "rng.json").read_text())) == 2

    done = two_processes(tmp_path, {**job, "resume": True})
    assert done.returncode == 0, done.stderr[-3000:]
    second = run_result(tmp_path, "cut")
    assert not second["interrupted"] and second["steps"] == 5
    assert second["summary"]["resumed_from_step"] == 2 and second["summary"]["num_processes"] == 2
    assert_same_run(uninterrupted, run_dir)


def test_two_processes_killed_after_a_checkpoint_resume_exactly(tmp_path, tiny_causal_dir, data_dir, uninterrupted):
    job = {"name": "killed", "model": str(tiny_causal_dir), "data": str(data_dir), "keys": {**RUN, "save_every": 2}}
    # the 7th training pass of each process is inside step 5: the last checkpoint is step 4, step 5 never finished
    done = two_processes(tmp_path, {**job, "stop_at": 7, "stop_ranks": [0, 1], "how": "crash"})
    assert done.returncode != 0 and "simulated power cut" in done.stderr
    run_dir = tmp_path / "runs" / "killed"
    logged = [json.loads(line)["step"] for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert max(logged) == 4
    assert "step-4" in {p.name for p in (run_dir / "checkpoints").glob("step-*")}

    done = two_processes(tmp_path, {**job, "resume": True})
    assert done.returncode == 0, done.stderr[-3000:]
    result = run_result(tmp_path, "killed")
    assert result["steps"] == 5 and result["summary"]["resumed_from_step"] == 4
    assert_same_run(uninterrupted, run_dir)
