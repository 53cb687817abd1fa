"""The methods table: every row applies, saves, is recognised and reloads onto its base with identical logits;
the mergeable flag decides whether evaluation and export merge."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from tunebench.config import ModelConfig, TrainConfig, config_from_dict
from tunebench.errors import ConfigError, ModelError
from tunebench.models.export import export_merged, save_trained
from tunebench.models.load import load_model, resolve_trained_output
from tunebench.models.methods import (
    METHODS,
    apply_method,
    attached_method,
    get_method,
    method_of_output,
    parameter_counts,
)

SETTINGS = {"lora": {"lora": {"r": 4, "alpha": 8}}, "freeze": {"freeze": {"trainable_top_k": 1}}}


def _cfg(method: str) -> TrainConfig:
    return TrainConfig.model_validate({"method": method, **SETTINGS.get(method, {})})


def _load(path: Path, **kw):
    return load_model(ModelConfig(ref=str(path)), **kw)


@torch.no_grad()
def _logits(model) -> torch.Tensor:
    model.eval()
    ids = torch.randint(5, 1000, (2, 9), generator=torch.Generator().manual_seed(1))
    return model(input_ids=ids).logits.float()[:, -ids.shape[1] :]  # a soft prompt's positions come first


def _train_a_little(model) -> None:
    """Move every trainable weight, as training would (LoRA's B starts at zero, so the adapter starts as identity)."""
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)


@pytest.mark.parametrize("name", list(METHODS))
def test_every_row_applies_saves_and_reloads_identically(name, tiny_causal_dir, tmp_path):
    method = get_method(name)
    loaded = _load(tiny_causal_dir)
    base_logits = _logits(loaded.model)
    model = apply_method(loaded.model, _cfg(name))
    trainable, total = parameter_counts(model)
    assert 0 < trainable <= total
    assert (trainable < total) == method.freezes_base
    _train_a_little(model)
    expected = _logits(model)
    assert not torch.allclose(expected, base_logits)  # what trained changes the output

    out = save_trained(model, loaded.tokenizer, tmp_path / method.output, method=name)
    recognised, where = resolve_trained_output(tmp_path)  # a run dir finds its adapter/ or model/
    assert where == out
    assert recognised.output == method.output and recognised.mergeable == method.mergeable
    reloaded = _load(tiny_causal_dir, adapter=out).model
    assert torch.equal(_logits(reloaded), expected)
    # the table tells an attached adapter of any method, and disabling it gives the base's outputs back
    assert attached_method(reloaded) is (method if method.output == "adapter" else None)
    if method.output == "adapter":
        with method.disabled(reloaded):
            torch.testing.assert_close(_logits(reloaded), base_logits, atol=1e-5, rtol=1e-5)
        assert torch.equal(_logits(reloaded), expected)  # enabled again on leaving

    merged = _load(tiny_causal_dir, adapter=out, merge=True).model
    if method.mergeable:
        assert type(merged) is type(_load(tiny_causal_dir).model)  # a plain model: the adapter was folded in
        torch.testing.assert_close(_logits(merged), expected, atol=1e-5, rtol=1e-5)
        assert attached_method(merged) is None
    else:
        assert torch.equal(_logits(merged), expected)


def test_a_non_mergeable_adapter_is_evaluated_attached_and_not_exported(tiny_causal_dir, tmp_path, monkeypatch):
    """A row marked not mergeable (here LoRA declared so) keeps its adapter attached when evaluation asks to merge."""
    from peft import PeftModel

    attached = replace(METHODS["lora"], name="lora_attached", mergeable=False, merge=None,
                       merge_refusal="kept attached by this test")
    monkeypatch.setitem(METHODS, "lora_attached", attached)
    loaded = _load(tiny_causal_dir)
    model = apply_method(loaded.model, _cfg("lora"))
    _train_a_little(model)
    expected = _logits(model)
    out = save_trained(model, loaded.tokenizer, tmp_path / "run" / "adapter", method="lora_attached")
    assert method_of_output(out) is attached  # the later registered row that recognises the output wins
    evaluated = _load(tiny_causal_dir, adapter=out, merge=True).model
    assert isinstance(evaluated, PeftModel)
    assert torch.equal(_logits(evaluated), expected)
    with pytest.raises(ConfigError, match=r"method 'lora_attached' cannot be merged into the base weights \(kept "
                       r"attached by this test\)"):
        export_merged(out, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_save_refuses_a_model_of_another_method(tiny_causal_dir, tmp_path):
    loaded = _load(tiny_causal_dir)
    with pytest.raises(ValueError, match="PEFT method"):
        save_trained(loaded.model, loaded.tokenizer, tmp_path / "adapter", method="lora")
    lora = apply_method(loaded.model, _cfg("lora"))
    with pytest.raises(ValueError, match="whole-model method"):
        save_trained(lora, loaded.tokenizer, tmp_path / "model", method="full")
    assert not (tmp_path / "adapter").exists() and not (tmp_path / "model").exists()


def test_config_checks_the_method_against_the_table():
    for name in METHODS:
        assert config_from_dict({"train": {"method": name}}).train.method == name
    with pytest.raises(ConfigError, match=r"train\.method: unknown method 'lorra': did you mean 'lora'\? known "
                                          r"methods: full, lora, freeze"):
        config_from_dict({"train": {"method": "lorra"}})
    with pytest.raises(ModelError, match="train.method 'nosuch' is unknown"):
        get_method("nosuch")


def test_table_rows_are_consistent():
    from tunebench.models.methods import Method

    for method in METHODS.values():
        assert (method.merge is not None) == method.mergeable
        assert (method.reload is not None) == (method.output == "adapter")
        assert (method.attached is not None) == (method.output == "adapter")  # every adapter can be disabled
    with pytest.raises(ValueError, match="mergeable"):
        Method(name="x", description="", apply=lambda m, c: m, output="model", mergeable=True, freezes_base=False,
               save=lambda m, d: None)


def test_a_peft_variant_row_recognises_only_its_own_adapters(tiny_causal_dir, tmp_path, monkeypatch):
    """A LoRA variant (here rsLoRA) shares PEFT's type LORA: its row tells its adapters apart by their config."""
    from peft import LoraConfig

    from tunebench.models.methods import peft_method, register

    def rslora(train_cfg, task_type):
        return LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], use_rslora=True, task_type=task_type)

    monkeypatch.setattr("tunebench.models.methods.METHODS", dict(METHODS))
    row = register(peft_method("rslora", "LORA", rslora, mergeable=True, description="rank-stabilised LoRA",
                               saved_as=lambda meta: meta.get("use_rslora")))
    import tunebench.models.methods as methods_mod

    assert methods_mod.METHODS["rslora"] is row and "rslora" not in METHODS  # the shared table is untouched
    loaded = _load(tiny_causal_dir)
    plain = save_trained(apply_method(_load(tiny_causal_dir).model, _cfg("lora")), loaded.tokenizer,
                         tmp_path / "plain", method="lora")
    variant = save_trained(row.apply(loaded.model, _cfg("lora")), loaded.tokenizer, tmp_path / "variant",
                           method="rslora")
    assert methods_mod.method_of_output(plain).name == "lora"
    assert methods_mod.method_of_output(variant).name == "rslora"
