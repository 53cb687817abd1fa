"""Training-only CPU fast paths: PEFT keeps the bf16 LoRA input, freed memory goes back to the OS."""

from __future__ import annotations

import platform
import sys

from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from tunebench.train.fast_paths import keep_lora_input_dtype, release_free_memory


def test_lora_input_dtype_is_kept_only_inside(tiny_causal_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_causal_dir)
    model = get_peft_model(model, LoraConfig(r=4, lora_dropout=0.1, target_modules="all-linear"))
    layers = [m for m in model.modules() if hasattr(m, "lora_dropout")]
    assert layers
    with keep_lora_input_dtype(model, active=False):
        assert all(m.cast_input_dtype_enabled is True for m in layers)
    with keep_lora_input_dtype(model):
        assert all(m.cast_input_dtype_enabled is False for m in layers)
    assert all(m.cast_input_dtype_enabled is True for m in layers)


def test_release_free_memory_calls_glibc_on_linux():
    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert release_free_memory() is glibc
