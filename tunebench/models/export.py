"""Saving what training produced, and `tunebench export --merge`: a mergeable adapter (LoRA) folded into a
plain full model. What is saved and whether it merges is the methods table's say (`models/methods.py`).

Both go through `save_pretrained` (safetensors, no pickle) inside `tunebench.io.atomic_dir`, so a killed save
never leaves a half-written adapter or model behind.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tunebench.errors import ConfigError, ModelError
from tunebench.io import atomic_dir
from tunebench.models.load import base_model_config, load_model, resolve_trained_output
from tunebench.models.methods import get_method


@contextmanager
def _float32_weights(model: nn.Module) -> Iterator[None]:
    """Temporarily hold every weight in float32 (frozen bf16 ones included); bf16 -> f32 -> bf16 is exact."""
    original = {}
    for p in model.parameters():
        if p.is_floating_point() and p.dtype != torch.float32:
            original[p] = p.dtype
            p.data = p.data.float()
    try:
        yield
    finally:
        for p, dtype in original.items():
            p.data = p.data.to(dtype)


def save_trained(model: Any, tokenizer: Any, out_dir: Path, *, method: str) -> Path:
    """Write the trained output of `method` with its tokenizer, as the methods table says (an adapter dir for
    an adapter method, else a full model dir); returns `out_dir`.

    Weights are saved in float32 even when frozen weights were held in bf16 during training. Raises ValueError
    when `model` is not what `method` produces (e.g. a plain model for lora).
    """
    row = get_method(method)
    out_dir = Path(out_dir)
    with _float32_weights(model), atomic_dir(out_dir) as tmp:
        row.save(model, tmp)
        tokenizer.save_pretrained(tmp)
    return out_dir


def export_merged(run_dir_or_adapter: Path, out_dir: Path, *, trust_remote_code: bool = False) -> Path:
    """Merge a mergeable adapter (LoRA) into its base and write a full model + tokenizer that `from_pretrained` loads.

    The base comes from the run's config.yaml, else the adapter's `base_model_name_or_path`. A run that trained
    the full model already has a full model: it is copied as is. The merge and the reload of what was written are
    both checked on a probe batch against the adapter attached to its base; a mismatch raises ModelError and
    writes nothing (`tunebench.models.probe`). The base model's custom code runs only when `trust_remote_code`
    is passed here (the user's `--trust-remote-code`), whatever the run's config.yaml says. ConfigError (exit 2)
    for a method the methods table marks as not mergeable, with the row's `merge_refusal`.
    """
    source = Path(run_dir_or_adapter)
    method, trained = resolve_trained_output(source)
    out_dir = Path(out_dir)
    if out_dir.resolve() == trained.resolve():
        raise ModelError(f"export --merge {out_dir}: choose an output dir other than the trained output")
    if method.output == "model":
        with atomic_dir(out_dir) as tmp:
            shutil.copytree(trained, tmp, dirs_exist_ok=True)
        return out_dir
    if not method.mergeable:
        raise ConfigError(f"export --merge {source}: method '{method.name}' cannot be merged into the base weights "
                          f"({method.merge_refusal}); evaluate the run with `tunebench eval --adapter {source}`, or "
                          f"load {trained} onto its base model")
    from tunebench.models.probe import merge_checked, mismatch, probe_batch, probe_logits

    base = base_model_config(source, trust_remote_code=trust_remote_code)
    loaded = load_model(base, adapter=trained, dtype=torch.float32)
    batch = probe_batch(loaded.model)
    expected = probe_logits(loaded.model, batch)
    merged, problem = merge_checked(loaded.model, f"the adapter {trained}")
    if problem:
        raise ModelError(f"export --merge: {problem}; score the run with the adapter attached instead "
                         "(tunebench eval/bench --adapter RUN)")
    with atomic_dir(out_dir) as tmp:
        merged.save_pretrained(tmp)
        loaded.tokenizer.save_pretrained(tmp)
        reloaded = type(merged).from_pretrained(tmp, dtype=torch.float32)
        problem = mismatch(expected, probe_logits(reloaded, batch))
        if problem:
            raise ModelError(f"export --merge: the merged model saved to {out_dir} reloads as a different model "
                             f"({problem}); score the run with the adapter attached instead")
    return out_dir
