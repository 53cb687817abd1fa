"""Learning-rate schedules, step counts, step windows, forward chunks and the bf16 switch."""

from __future__ import annotations

import math

import pytest
import torch

from tunebench.errors import ConfigError
from tunebench.models.precision import resolve_bf16
from tunebench.train.batches import forward_chunks, step_windows
from tunebench.train.schedule import build_optimizer, build_scheduler, total_optimizer_steps, warmup_steps


def lrs(kind: str, total: int, warmup_ratio: float) -> list[float]:
    model = torch.nn.Linear(2, 2)
    opt = build_optimizer(model, lr=1.0, weight_decay=0.0)
    sched = build_scheduler(opt, kind, total_steps=total, warmup_ratio=warmup_ratio)
    out = []
    for _ in range(total):
        out.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return out


def test_warmup_then_linear_cosine_constant():
    assert warmup_steps(10, 0.2) == 2 and warmup_steps(10, 0.01) == 1 and warmup_steps(10, 0.0) == 0
    assert lrs("linear", 10, 0.2)[:4] == pytest.approx([0.0, 0.5, 1.0, 0.875])
    cosine = lrs("cosine", 10, 0.2)
    assert cosine[2] == pytest.approx(1.0)
    assert cosine[6] == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 8)))
    assert lrs("constant", 10, 0.2)[2:] == pytest.approx([1.0] * 8)


def test_no_weight_decay_on_biases_and_norms():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.LayerNorm(3))
    groups = build_optimizer(model, lr=0.1, weight_decay=0.1).param_groups
    assert [(len(g["params"]), g["weight_decay"]) for g in groups] == [(1, 0.1), (3, 0.0)]
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(model, lr=0.1, weight_decay=0.0)


def test_total_steps_count_partial_windows_and_fractional_epochs():
    assert total_optimizer_steps(3, epochs=1.0, max_steps=None) == 3
    assert total_optimizer_steps(3, epochs=1.5, max_steps=None) == 5
    assert total_optimizer_steps(3, epochs=0.1, max_steps=None) == 1
    assert total_optimizer_steps(3, epochs=2.0, max_steps=7) == 7


def test_step_windows_share_batches_between_processes():
    batches = [[i] for i in range(7)]
    assert step_windows(batches, grad_accum=2, num_processes=1) == [
        [[0], [1]], [[2], [3]], [[4], [5]], [[6]]]
    # two processes: the odd batch out is dropped so both take part in every all-reduce
    assert step_windows(batches, grad_accum=2, num_processes=2) == [[[0], [1], [2], [3]], [[4], [5]]]


def test_forward_chunks_bound_padded_tokens():
    lengths = [100, 400, 300, 50, 390]
    chunks = forward_chunks([0, 1, 2, 3, 4], lengths, max_tokens=800)
    assert sorted(i for c in chunks for i in c) == [0, 1, 2, 3, 4]
    assert all(len(c) * max(lengths[i] for i in c) <= 800 for c in chunks)
    assert chunks[0] == [1, 4]  # longest first, so rows of a chunk have similar lengths
    assert forward_chunks([0, 1], [5000, 10], max_tokens=800) == [[0], [1]]  # one long row runs alone
    assert forward_chunks([0, 1, 2], lengths, max_tokens=None) == [[0, 1, 2]]


def test_bf16_switch(tmp_path):
    cpu = torch.device("cpu")
    assert resolve_bf16("off", cpu)[0] is False
    assert resolve_bf16("on", cpu)[0] is True
    # auto follows the measured matmul rates, not a CPU flag (tests/test_precision.py covers the probe)
    for fast, expected in (("bf16", True), ("fp32", False)):
        used, record = resolve_bf16("auto", cpu, timer=lambda name, shape, f=fast: 1.0 if name == f else 2.0,
                                    cache_dir=tmp_path / fast)
        assert used is expected and record["picked"] == fast
    if torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        with pytest.raises(ConfigError):
            resolve_bf16("on", torch.device("cuda"))


def test_global_batch_size_sets_accumulation_per_process_count():
    from tunebench.train.batches import accumulation_steps

    assert accumulation_steps(2, 1, None, 2) == 1  # no global batch: grad_accum as given
    assert accumulation_steps(2, 1, 8, 1) == 4 and accumulation_steps(2, 1, 8, 2) == 2 and accumulation_steps(2, 1, 8, 4) == 1
    with pytest.raises(ConfigError, match=r"train.global_batch_size 6 is not a multiple of train.batch_size 2 x 2 "
                                          r"process\(es\) = 4"):
        accumulation_steps(2, 1, 6, 2)
    with pytest.raises(ConfigError, match="train.grad_accum 3 contradicts train.global_batch_size 8"):
        accumulation_steps(2, 3, 8, 2, grad_accum_set=True)
    assert accumulation_steps(2, 2, 8, 2, grad_accum_set=True) == 2  # both set and consistent


def test_a_global_batch_the_process_count_does_not_divide_exits_2_before_training(tmp_path, capsys):
    import yaml

    from tunebench.cli import main

    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "runs"),
                                      "train": {"batch_size": 4, "global_batch_size": 6}}))
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert "train.global_batch_size 6 is not a multiple of train.batch_size 4" in err and "Traceback" not in err
