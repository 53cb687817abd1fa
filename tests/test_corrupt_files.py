"""Corrupt or refused files from outside end in one sentence naming the file, never in a library's traceback.

Each file is damaged by hand here (truncated to half its bytes, a pickle, a chat template the sandbox refuses).
"""

from __future__ import annotations

import os
import pickle
import shutil

import pytest
import torch

from tunebench.config import ModelConfig, TrainConfig
from tunebench.errors import TunebenchError
from tunebench.models.load import load_model


def _truncate(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_truncated_model_weights_name_the_file(tiny_causal_dir, tmp_path):
    model_dir = _copy(tiny_causal_dir, tmp_path / "model")
    _truncate(model_dir / "model.safetensors")
    with pytest.raises(TunebenchError, match=r"model\.safetensors: .*truncated or corrupt"):
        load_model(ModelConfig(ref=str(model_dir)))


def test_truncated_adapter_names_the_file(tiny_causal_dir, tmp_path):
    from tunebench.models.export import save_trained
    from tunebench.models.methods import apply_method

    loaded = load_model(ModelConfig(ref=str(tiny_causal_dir)))
    model = apply_method(loaded.model, TrainConfig.model_validate({"method": "lora", "lora": {"r": 2}}))
    adapter = save_trained(model, loaded.tokenizer, tmp_path / "adapter", method="lora")
    _truncate(adapter / "adapter_model.safetensors")
    with pytest.raises(TunebenchError, match=r"adapter_model\.safetensors: .*truncated or corrupt"):
        load_model(ModelConfig(ref=str(tiny_causal_dir)), adapter=adapter)


def test_truncated_checkpoint_says_resume_from_the_one_before(tmp_path):
    from tunebench.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

    model = torch.nn.Linear(4, 4)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    path = save_checkpoint(tmp_path, 1, model=model, optimizer=optimizer, scheduler=scheduler, rng=[],
                           trainer_state={})
    _truncate(path / "trainable.safetensors")
    with pytest.raises(CheckpointError, match="delete it to resume from the one before"):
        load_checkpoint(path, model=model, optimizer=optimizer, scheduler=scheduler)


def test_pickled_weights_are_refused_by_name(tiny_causal_dir, tmp_path):
    model_dir = _copy(tiny_causal_dir, tmp_path / "model")
    (model_dir / "model.safetensors").unlink()
    marker = tmp_path / "PICKLE_RAN"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    (model_dir / "pytorch_model.bin").write_bytes(pickle.dumps({"model.embed_tokens.weight": Payload()}))
    with pytest.raises(TunebenchError, match=r"pytorch_model\.bin: .*pickle"):
        load_model(ModelConfig(ref=str(model_dir)))
    assert not marker.exists()


def test_chat_template_refused_by_the_sandbox_names_the_file(tiny_causal_dir, tmp_path):
    model_dir = _copy(tiny_causal_dir, tmp_path / "model")
    (model_dir / "chat_template.jinja").write_text("{{ ''.__class__.__mro__[1].__subclasses__() }}")
    loaded = load_model(ModelConfig(ref=str(model_dir)))
    with pytest.raises(TunebenchError, match=r"chat_template\.jinja: .*SecurityError"):
        loaded.format_prompt("hello")
