"""model.device and model.dtype: auto picks the accelerator when there is one (availability monkeypatched: this
machine has none), a named device that is missing is one clear error, and the CPU stays CPU in float32."""

from __future__ import annotations

import pytest
import torch

from tunebench.config import ModelConfig, config_from_dict
from tunebench.errors import ConfigError
from tunebench.models.device import accelerate_cpu, cpu_forced, load_dtype, resolve_device
from tunebench.models.load import load_model


@pytest.fixture
def machine(monkeypatch):
    """Pretend which accelerators exist: machine(cuda=..., mps=..., bf16=...)."""
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)

    def set_up(cuda: bool = False, mps: bool = False, bf16: bool = True) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)

    return set_up


@pytest.mark.parametrize(("cuda", "mps", "expected"), [(True, False, "cuda"), (False, True, "mps"),
                                                       (True, True, "cuda"), (False, False, "cpu")])
def test_auto_takes_the_accelerator_when_there_is_one(machine, cuda, mps, expected):
    machine(cuda=cuda, mps=mps)
    assert resolve_device("auto") == torch.device(expected)
    assert resolve_device("cpu") == torch.device("cpu")  # asked for, the CPU is always there
    # training asks Accelerate for the CPU exactly when the CPU is wanted on a machine with an accelerator
    assert accelerate_cpu(torch.device("cpu")) is (expected != "cpu")


def test_a_missing_accelerator_is_a_config_error(machine):
    machine(cuda=False, mps=False)
    for name in ("cuda", "mps"):
        with pytest.raises(ConfigError, match=f"model.device is '{name}' but this machine has no {name.upper()}"):
            resolve_device(name)
    machine(cuda=True)
    assert resolve_device("cuda") == torch.device("cuda")


def test_cpu_launches_stay_on_the_cpu(machine, monkeypatch):
    machine(cuda=False)
    monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun / accelerate launch with two CPU processes: gloo DDP
    assert cpu_forced() and accelerate_cpu(torch.device("cpu"))
    monkeypatch.setenv("WORLD_SIZE", "1")
    machine(cuda=True)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    assert resolve_device("auto") == torch.device("cpu")


def test_dtype_auto_fits_the_device(machine):
    machine(cuda=True, bf16=True)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert load_dtype("auto", cuda) == torch.bfloat16
    assert load_dtype("auto", cuda, training=True) == torch.float32  # trainable weights stay float32
    assert load_dtype("auto", cpu) == torch.float32
    assert load_dtype("float16", cpu) == torch.float16  # a named dtype is taken as given
    machine(cuda=True, bf16=False)
    assert load_dtype("auto", cuda) == torch.float32


def test_config_keys_and_defaults():
    model = config_from_dict({}).model
    assert (model.device, model.dtype) == ("auto", "auto")
    with pytest.raises(ConfigError, match="model.device"):
        config_from_dict({"model": {"device": "tpu"}})


def test_cpu_loads_stay_cpu_float32(machine, tiny_causal_dir):
    machine(cuda=False, mps=False)
    loaded = load_model(ModelConfig(ref=str(tiny_causal_dir)))
    assert loaded.model.device.type == "cpu" and loaded.model.dtype == torch.float32
    pinned = load_model(ModelConfig(ref=str(tiny_causal_dir), device="cpu", dtype="bfloat16"))
    assert pinned.model.device.type == "cpu" and pinned.model.dtype == torch.bfloat16
    # a model is placed where it will run: the meta device stands in for an accelerator this machine lacks
    assert load_model(ModelConfig(ref=str(tiny_causal_dir)), device="meta").model.device.type == "meta"
