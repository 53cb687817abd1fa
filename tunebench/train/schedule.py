"""AdamW and the learning-rate schedule: linear warmup, then linear, cosine or constant.

The schedules are transformers' own (`get_*_schedule_with_warmup`), so a run here and a run with Hugging Face
`Trainer` see the same learning rate at every step. Their state is plain numbers, which checkpoint.py stores as
JSON.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch.optim import AdamW
from torch.optim.lr_scheduler import LambdaLR
from transformers import (
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
    get_linear_schedule_with_warmup,
)

ScheduleKind = Literal["linear", "cosine", "constant"]


def build_optimizer(model: torch.nn.Module, *, lr: float, weight_decay: float) -> AdamW:
    """AdamW over the trainable parameters; biases and norm weights (1-D tensors) get no weight decay.

    Decaying norm gains and biases pulls them towards zero, which is not regularisation but damage; this split is
    the one Hugging Face `Trainer` and most recipes use.
    """
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    if not decay and not no_decay:
        raise ValueError("the model has no trainable parameters: check train.method and its settings")
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return AdamW([g for g in groups if g["params"]], lr=lr, betas=(0.9, 0.999), eps=1e-8)


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    """Steps of linear warmup: the ratio of the total, rounded up so any non-zero ratio warms up at least once."""
    return math.ceil(total_steps * warmup_ratio)


def build_scheduler(
    optimizer: torch.optim.Optimizer, kind: ScheduleKind, *, total_steps: int, warmup_ratio: float
) -> LambdaLR:
    """The per-optimizer-step schedule; `scheduler.step()` is called once after every `optimizer.step()`."""
    warmup = warmup_steps(total_steps, warmup_ratio)
    if kind == "linear":
        return get_linear_schedule_with_warmup(optimizer, warmup, total_steps)
    if kind == "cosine":
        return get_cosine_schedule_with_warmup(optimizer, warmup, total_steps)
    if kind == "constant":
        return get_constant_schedule_with_warmup(optimizer, warmup)
    raise ValueError(f"train.scheduler: unknown schedule '{kind}' (use linear, cosine or constant)")


def total_optimizer_steps(steps_per_epoch: int, *, epochs: float, max_steps: int | None) -> int:
    """Optimizer steps of the run: `max_steps` when set, else the (fractional) epochs' worth of steps.

    `steps_per_epoch` counts a last partial accumulation window as a step, as Hugging Face `Trainer` does.
    """
    if max_steps is not None:
        return max_steps
    return max(1, math.ceil(epochs * steps_per_epoch))
