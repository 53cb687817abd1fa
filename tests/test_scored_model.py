"""What is scored is exactly what was trained: merges, unties and reloads before scoring are checked on a probe batch.

The right logits come from plain transformers + PEFT: the base model loaded with `from_pretrained` and the saved
adapter attached with `PeftModel.from_pretrained`, never merged.
"""

from __future__ import annotations

import pytest
import torch
from train_helpers import make_cfg

from tunebench.config import ModelConfig
from tunebench.errors import ModelError
from tunebench.models import probe
from tunebench.models.export import export_merged
from tunebench.models.load import load_model
from tunebench.train.loop import train


@pytest.fixture(scope="module")
def tied_lora_run(tmp_path_factory, tiny_causal_dir, data_dir):
    """A few LoRA steps at lr 0.05 on the tied-embedding tiny Llama, adapting lm_head and q_proj."""
    tmp = tmp_path_factory.mktemp("tied")
    cfg = make_cfg(tmp, tiny_causal_dir, method="lora", max_steps=4, lr=0.05,
                   lora={"r": 4, "target_modules": ["lm_head", "q_proj"]})
    return train(cfg, data_dir=data_dir, progress=False).run_dir


def _ids() -> torch.Tensor:
    return torch.randint(5, 2000, (2, 11), generator=torch.Generator().manual_seed(3))


@torch.no_grad()
def _plain_peft_logits(base_dir, adapter_dir) -> torch.Tensor:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), str(adapter_dir)).eval()
    return model(input_ids=_ids()).logits


@torch.no_grad()
def _logits(model) -> torch.Tensor:
    return model.eval()(input_ids=_ids()).logits


def test_tied_lm_head_adapter_scores_as_trained(tied_lora_run, tiny_causal_dir, tmp_path):
    expected = _plain_peft_logits(tiny_causal_dir, tied_lora_run / "adapter")
    base = _logits(load_model(ModelConfig(ref=str(tiny_causal_dir))).model)
    assert (expected - base).abs().max() > 0.1  # the adapter changed the model, so a wrong merge would show
    scored = load_model(ModelConfig(ref=str(tiny_causal_dir)), adapter=tied_lora_run, merge=True)
    torch.testing.assert_close(_logits(scored.model), expected, atol=1e-4, rtol=1e-4)
    assert torch.equal(_logits(scored.model).argmax(-1), expected.argmax(-1))

    from transformers import AutoModelForCausalLM

    out = export_merged(tied_lora_run, tmp_path / "merged")
    exported = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in n for n, _ in exported.named_parameters())
    torch.testing.assert_close(_logits(exported), expected, atol=1e-4, rtol=1e-4)
    # the untie touched only the merged copy: the base model on disk still ties its output layer
    reloaded_base = AutoModelForCausalLM.from_pretrained(tiny_causal_dir)
    assert reloaded_base.lm_head.weight is reloaded_base.model.embed_tokens.weight


def test_a_merge_that_changes_the_model_is_avoided_or_refused(tied_lora_run, tiny_causal_dir, tmp_path,
                                                              monkeypatch, caplog):
    """Without the untie, merging lm_head's update also moves the tied input embeddings: the probe must see it."""
    monkeypatch.setattr(probe, "untie_adapted_outputs", lambda model: None)
    expected = _plain_peft_logits(tiny_causal_dir, tied_lora_run / "adapter")
    with caplog.at_level("WARNING"):
        scored = load_model(ModelConfig(ref=str(tiny_causal_dir)), adapter=tied_lora_run, merge=True)
    assert any("adapter attached" in r.getMessage() for r in caplog.records)
    assert any("lora" in n for n, _ in scored.model.named_parameters())  # evaluated with the adapter attached
    assert torch.equal(_logits(scored.model), expected)
    with pytest.raises(ModelError, match="merging .* changes the model's outputs"):
        export_merged(tied_lora_run, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_probe_compares_against_the_attached_adapter(tiny_causal_dir):
    """The probe's own tolerance: equal models pass, a model off by one logit unit in one place fails."""
    model = load_model(ModelConfig(ref=str(tiny_causal_dir))).model
    batch = probe.probe_batch(model)
    ref = probe.probe_logits(model, batch)
    assert probe.mismatch(ref, ref.clone()) is None
    off = ref.clone()
    off[0, 0, 0] += 1.0
    assert "max |Δ logit|" in probe.mismatch(ref, off)
