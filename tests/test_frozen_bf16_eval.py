"""A run trained on a bf16-held frozen base (`train.frozen_bf16`) is scored on its float32 base: same model?

Issue 13 item 1: what is scored must be what was trained. Training with bf16 autocast holds the frozen base in bf16
(the matmuls cast it to bf16 anyway); evaluation loads the base in float32 and attaches the trained adapter. The
only difference is then rounding: the adapter's effect must be the same on either base, so the trained model's
logits in training precision and the evaluated model's float32 logits may differ by no more than the bf16 rounding
of the untuned model itself (measured here, not assumed).
"""

from __future__ import annotations

import torch
from train_helpers import make_cfg

from tunebench.config import ModelConfig
from tunebench.models.load import load_model
from tunebench.models.probe import probe_batch
from tunebench.train.loop import train


def _logits(model, batch, autocast: bool) -> torch.Tensor:
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        return model(**batch).logits.float()


def test_frozen_bf16_training_scores_in_float32_as_trained(tmp_path, tiny_causal_dir, data_dir):
    # a float32 run first, in the same process: a later run must still be able to train in bf16 (Accelerate keeps
    # one process-wide state and refused the second precision until the trainer cleared it)
    train(make_cfg(tmp_path, tiny_causal_dir, name="fp32-first", method="lora", bf16="off", max_steps=1), data_dir=data_dir,
          progress=False)
    cfg = make_cfg(tmp_path, tiny_causal_dir, method="lora", bf16="on", frozen_bf16=True, lr=5e-2, max_steps=6,
                   n_train=12, lora={"dropout": 0.0, "target_modules": ["q_proj", "v_proj", "down_proj"]})
    result = train(cfg, data_dir=data_dir, progress=False)
    assert result.summary["bf16"] and result.summary["frozen_bf16"]

    fp32_base = load_model(ModelConfig(ref=str(tiny_causal_dir)))
    batch = probe_batch(fp32_base.model)
    base32 = _logits(fp32_base.model, batch, autocast=False)
    base16 = _logits(fp32_base.model, batch, autocast=True)
    rounding = (base16 - base32).abs().max().item()  # what bf16 alone does to the untuned model

    tuned32 = _logits(load_model(ModelConfig(ref=str(tiny_causal_dir)), adapter=result.run_dir).model, batch, False)
    # the model as trained: bf16-held frozen weights, float32 adapter, bf16 autocast
    trained = load_model(ModelConfig(ref=str(tiny_causal_dir)), adapter=result.run_dir).model
    for name, p in trained.named_parameters():
        if "lora_" not in name:
            p.data = p.data.to(torch.bfloat16)
    tuned16 = _logits(trained, batch, autocast=True)

    effect = (tuned32 - base32).abs().max().item()
    assert effect > 10 * rounding, "the adapter must change the model far more than rounding does, or this proves nothing"
    assert (tuned16 - tuned32).abs().max().item() <= 3 * rounding
    assert (tuned16.argmax(-1) == tuned32.argmax(-1)).float().mean().item() >= 0.9
