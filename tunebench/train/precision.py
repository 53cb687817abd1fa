"""bf16 autocast on or off: `train.bf16: auto` turns it on only where the hardware computes bf16 natively.

On a CPU without native bf16 (AVX512-BF16 or AMX), autocast emulates it and runs slower than float32, so
auto checks the CPU flags PyTorch itself dispatches on; CUDA asks the device.
"""

from __future__ import annotations

from typing import Literal

import torch

from tunebench.errors import ConfigError


def bf16_native(device: torch.device) -> bool:
    """Whether `device` computes bf16 matmuls natively."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    cpu = torch.cpu
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def resolve_bf16(mode: Literal["auto", "on", "off"], device: torch.device) -> bool:
    """train.bf16 -> use bf16 autocast? 'on' on hardware without bf16 support is a ConfigError."""
    if mode == "off":
        return False
    native = bf16_native(device)
    if mode == "on" and not native and device.type == "cuda":
        raise ConfigError(f"train.bf16 is 'on' but {torch.cuda.get_device_name(device)} has no bf16: "
                          "set train.bf16 to auto or off")
    return native or mode == "on"
