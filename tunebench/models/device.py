"""Where a model runs and in which dtype: `model.device` (auto | cpu | cuda | mps) and `model.dtype` (auto | ...).

auto picks the accelerator when there is one (CUDA first, then Apple's MPS), else the CPU; a run launched as
several CPU processes (`accelerate launch --cpu`, torchrun without CUDA) or with `ACCELERATE_USE_CPU` set stays
on the CPU, as Accelerate itself decides. `dtype: auto` loads weights in bf16 on a CUDA GPU that computes it
natively (half the memory, tensor-core matmuls) and in float32 everywhere else, so CPU figures stay those of
float32. Training loads float32 whatever `auto` says (`load_dtype(..., training=True)`): trainable weights must
stay float32, and `train.frozen_bf16` decides what frozen weights are held in.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from tunebench.errors import ConfigError

if TYPE_CHECKING:
    import torch

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPE_NAMES = ("float32", "bfloat16", "float16")


def cpu_forced() -> bool:
    """The launch asks for the CPU: ACCELERATE_USE_CPU, or several processes on a machine without CUDA.

    Accelerate only sets up gloo data parallelism on CPU when asked to use the CPU, so the trainer asks.
    """
    import torch

    if os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"):
        return True
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(name: str) -> torch.device:
    """`model.device` -> the torch device to use. ConfigError when the named accelerator is not there.

    auto: cuda if `torch.cuda.is_available()`, else mps if `torch.backends.mps.is_available()`, else cpu (cpu
    also when `cpu_forced()`). The device index is left to the caller (Accelerate gives each process its own).
    """
    import torch

    if name not in DEVICES:
        raise ConfigError(f"model.device '{name}' is unknown: use one of {', '.join(DEVICES)}")
    if name == "auto":
        if cpu_forced():
            return torch.device("cpu")
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": _mps_available()}[name]
    if not available:
        raise ConfigError(f"model.device is '{name}' but this machine has no {name.upper()} device: "
                          "set model.device to auto or cpu")
    return torch.device(name)


def accelerate_cpu(device: torch.device) -> bool:
    """Accelerate's `cpu=` flag for training on `device`: ask for the CPU only where Accelerate would otherwise
    take an accelerator, or where several CPU processes need gloo data parallelism (`cpu_forced`)."""
    return device.type == "cpu" and (cpu_forced() or resolve_device("auto").type != "cpu")


def load_dtype(name: str, device: torch.device, *, training: bool = False) -> torch.dtype:
    """`model.dtype` -> the dtype weights are loaded in on `device` (auto: see the module docstring)."""
    import torch

    if name != "auto":
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    if not training and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32
