"""Training-only CPU fast paths: bool-mask dropout, PEFT input dtype, giving freed memory back."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from tunebench.train.fast_paths import (
    BoolMaskDropout,
    keep_lora_input_dtype,
    release_free_memory,
    use_bool_mask_dropout,
)


def test_bool_mask_dropout_is_inverted_dropout():
    torch.manual_seed(0)
    drop = BoolMaskDropout(0.25)
    x = torch.ones(200_000, requires_grad=True)
    y = drop(x)
    kept = y != 0
    assert kept.float().mean().item() == pytest.approx(0.75, abs=0.01)
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.75))
    y.sum().backward()
    assert torch.equal(x.grad != 0, kept)  # gradient flows through kept elements only
    assert torch.equal(drop.eval()(x), x)
    torch.manual_seed(1)
    a = BoolMaskDropout(0.25)(x)
    torch.manual_seed(1)
    assert torch.equal(a, BoolMaskDropout(0.25)(x))  # seeded like any torch RNG draw


def test_lora_dropouts_are_swapped_and_input_dtype_kept(tiny_causal_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_causal_dir)
    model = get_peft_model(model, LoraConfig(r=4, lora_dropout=0.1, target_modules="all-linear"))
    swapped = use_bool_mask_dropout(model)
    layers = [m for m in model.modules() if hasattr(m, "lora_dropout")]
    assert swapped == len(layers) > 0
    assert all(isinstance(m.lora_dropout["default"], BoolMaskDropout) for m in layers)
    with keep_lora_input_dtype(model):
        assert all(m.cast_input_dtype_enabled is False for m in layers)
    assert all(m.cast_input_dtype_enabled is True for m in layers)


def test_release_free_memory_runs():
    assert release_free_memory() in (True, False)
