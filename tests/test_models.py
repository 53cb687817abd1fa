"""Model loading, fine-tuning methods, saving and merged export on the tiny fixture models (one @slow real load)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

from tunebench.config import ModelConfig, TrainConfig
from tunebench.errors import ModelError
from tunebench.models import load as load_mod
from tunebench.models.export import export_merged, save_trained
from tunebench.models.load import (
    default_gguf_path,
    load_model,
    load_tokenizer_only,
    resolve_model_ref,
)
from tunebench.models.methods import apply_method, parameter_counts

LLAMA_LINEARS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
T5_LINEARS = {"q", "k", "v", "o", "wi", "wo"}


def _train_cfg(**kw) -> TrainConfig:
    return TrainConfig.model_validate(kw)


def _load(path: Path, **kw):
    return load_model(ModelConfig(ref=str(path)), **kw)


def _batch(family: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 1000, (2, 9), generator=g)
    if family == "seq2seq":
        return {"input_ids": ids, "decoder_input_ids": torch.randint(5, 1000, (2, 5), generator=g)}
    return {"input_ids": ids}


@torch.no_grad()
def _logits(model, family: str) -> torch.Tensor:
    model.eval()
    return model(**_batch(family)).logits.float()


def _perturb_lora(model) -> None:
    """LoRA B starts at zero (adapter == identity); randomize it, as training would, so the adapter changes the output."""
    g = torch.Generator().manual_seed(2)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data = torch.randn(p.shape, generator=g) * 0.05


@pytest.fixture(params=["causal", "seq2seq"])
def tiny(request, tiny_causal_dir, tiny_t5_dir) -> tuple[str, Path]:
    return request.param, tiny_causal_dir if request.param == "causal" else tiny_t5_dir


# --- references and families ------------------------------------------------------------------------------------


def test_family_and_chat_detected_from_config(tiny_causal_dir, tiny_t5_dir):
    causal = _load(tiny_causal_dir)
    assert (causal.family, causal.use_chat) == ("causal", True)
    assert causal.source == str(tiny_causal_dir.resolve())
    assert "<|im_start|>user\nHi<|im_end|>" in causal.format_prompt("Hi")
    t5 = _load(tiny_t5_dir)
    assert (t5.family, t5.use_chat) == ("seq2seq", False)
    assert t5.format_prompt("Hi") == "Hi"
    assert isinstance(t5.model, torch.nn.Module) and not t5.model.training
    assert t5.tokenizer.pad_token is not None


def test_load_dtype_follows_config_and_override(tiny_causal_dir):
    assert _load(tiny_causal_dir).model.dtype == torch.float32
    assert load_model(ModelConfig(ref=str(tiny_causal_dir), dtype="bfloat16")).model.dtype == torch.bfloat16
    assert _load(tiny_causal_dir, dtype=torch.float16).model.dtype == torch.float16


def test_tokenizer_only_matches_full_load(tiny_causal_dir):
    only = load_tokenizer_only(ModelConfig(ref=str(tiny_causal_dir), system_prompt="Be brief."))
    assert only.family == "causal" and only.use_chat
    assert only.format_prompt("Hi").startswith("<|im_start|>system\nBe brief.<|im_end|>")


def test_resolve_kinds(tiny_causal_dir, tmp_path):
    assert resolve_model_ref(str(tiny_causal_dir)) == ("local", str(tiny_causal_dir.resolve()))
    kind, location = resolve_model_ref("smollm2-135m-instruct")
    assert kind == "alias" and location == str(default_gguf_path()) and location.endswith(".gguf")
    assert resolve_model_ref("HuggingFaceTB/SmolLM2-135M-Instruct") == ("hub", "HuggingFaceTB/SmolLM2-135M-Instruct")
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    assert resolve_model_ref(str(gguf)) == ("gguf", str(gguf.resolve()))


@pytest.mark.parametrize("ref", ["./no/such/model", "/nowhere/model.gguf", "not a model!", "a/b/c"])
def test_unknown_ref_is_one_model_error(ref):
    with pytest.raises(ModelError, match="model.ref") as err:
        load_model(ModelConfig(ref=ref))
    assert "\n" not in str(err.value)


def test_unreachable_hub_id_is_model_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="model.ref 'nobody-tb/no-such-model'"):
        load_model(ModelConfig(ref="nobody-tb/no-such-model"))


def test_dir_without_config_is_model_error(tmp_path):
    with pytest.raises(ModelError, match="without config.json"):
        resolve_model_ref(str(tmp_path))


def test_chat_template_always_without_template_is_model_error(tiny_causal_dir, tmp_path):
    plain = tmp_path / "plain"
    shutil.copytree(tiny_causal_dir, plain)
    (plain / "chat_template.jinja").unlink()
    assert not _load(plain).use_chat
    with pytest.raises(ModelError, match="model.chat_template"):
        load_model(ModelConfig(ref=str(plain), chat_template="always"))


# --- methods ------------------------------------------------------------------------------------------------------


def test_full_trains_everything(tiny_causal_dir):
    model = apply_method(_load(tiny_causal_dir, dtype=torch.bfloat16).model, _train_cfg(method="full"))
    trainable, total = parameter_counts(model)
    assert trainable == total > 0
    assert {p.dtype for p in model.parameters()} == {torch.float32}


@pytest.mark.parametrize("family,linears", [("causal", LLAMA_LINEARS), ("seq2seq", T5_LINEARS)])
def test_lora_all_linear_wraps_expected_modules(family, linears, tiny_causal_dir, tiny_t5_dir):
    path = tiny_causal_dir if family == "causal" else tiny_t5_dir
    base = _load(path).model
    base_total = parameter_counts(base)[1]
    model = apply_method(base, _train_cfg(method="lora", lora={"r": 4, "alpha": 8}))
    wrapped = {n for n, m in model.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A}
    assert {n.rsplit(".", 1)[-1] for n in wrapped} == linears
    assert not any("lm_head" in n or "embed" in n or "shared" in n for n in wrapped)
    trainable_names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable_names and all(".lora_A." in n or ".lora_B." in n for n in trainable_names)
    layers = [m.base_layer for n, m in model.named_modules() if n in wrapped]
    expected = sum(4 * (layer.in_features + layer.out_features) for layer in layers)
    trainable, total = parameter_counts(model)
    assert trainable == expected and total == base_total + expected


def test_lora_named_targets(tiny_causal_dir):
    model = apply_method(_load(tiny_causal_dir).model, _train_cfg(method="lora", lora={"target_modules": ["q_proj"]}))
    wrapped = [n for n, m in model.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A]
    assert len(wrapped) == 2 and all(n.endswith("q_proj") for n in wrapped)


def test_lora_unknown_target_is_model_error(tiny_causal_dir):
    with pytest.raises(ModelError, match="train.lora.target_modules"):
        apply_method(_load(tiny_causal_dir).model, _train_cfg(method="lora", lora={"target_modules": ["nope"]}))


def test_freeze_top_k_and_named_modules_causal(tiny_causal_dir):
    cfg = _train_cfg(method="freeze", freeze={"trainable_top_k": 1, "trainable_modules": ["model.norm"]})
    model = apply_method(_load(tiny_causal_dir).model, cfg)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if n.startswith("model.layers.1.")} | {
        "model.norm.weight"
    }


def test_freeze_seq2seq_trains_top_decoder_blocks(tiny_t5_dir):
    model = apply_method(_load(tiny_t5_dir).model, _train_cfg(method="freeze", freeze={"trainable_top_k": 1}))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("decoder.block.1.") for n in trainable)
    assert trainable == {n for n, _ in model.named_parameters() if n.startswith("decoder.block.1.")}


@pytest.mark.parametrize(
    "freeze,match",
    [({"trainable_top_k": 3}, "trainable_top_k is 3 but model.layers has only 2"),
     ({"trainable_top_k": 0, "trainable_modules": ["nosuchmodule"]}, "'nosuchmodule' matches no module")],
)
def test_freeze_errors_name_the_key(tiny_causal_dir, freeze, match):
    with pytest.raises(ModelError, match=match):
        apply_method(_load(tiny_causal_dir).model, _train_cfg(method="freeze", freeze=freeze))


@pytest.mark.parametrize("method", ["lora", "freeze"])
def test_frozen_bf16_casts_only_frozen_weights_and_trains(tiny_causal_dir, method):
    cfg = _train_cfg(method=method, freeze={"trainable_top_k": 1})
    model = apply_method(_load(tiny_causal_dir).model, cfg, frozen_dtype=torch.bfloat16)
    params = list(model.named_parameters())
    assert any(not p.requires_grad for _, p in params) and any(p.requires_grad for _, p in params)
    for name, p in params:
        assert p.dtype == (torch.float32 if p.requires_grad else torch.bfloat16), name
    model.train()
    ids = _batch("causal")["input_ids"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = [p.grad for _, p in params if p.requires_grad]
    assert all(g is not None and g.dtype == torch.float32 for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


# --- saving and export --------------------------------------------------------------------------------------------


def test_saved_adapter_reloads_with_identical_logits(tiny, tmp_path):
    from peft import PeftModel

    family, path = tiny
    model = apply_method(_load(path).model, _train_cfg(method="lora", lora={"r": 4}))
    _perturb_lora(model)
    expected = _logits(model, family)
    assert not torch.allclose(expected, _logits(_load(path).model, family))  # the adapter matters
    out = save_trained(model, _load(path).tokenizer, tmp_path / "adapter", method="lora")
    assert (out / "adapter_config.json").is_file() and (out / "tokenizer_config.json").is_file()
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(path.resolve())
    reloaded = PeftModel.from_pretrained(_load(path).model, out)
    assert torch.equal(_logits(reloaded, family), expected)
    assert torch.equal(_logits(_load(path, adapter=out).model, family), expected)
    merged = _load(path, adapter=out, merge=True).model
    assert not any("lora" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(_logits(merged, family), expected, atol=1e-5, rtol=1e-5)


def test_adapter_save_never_looks_the_base_up_on_the_hub(tiny_causal_dir, tmp_path, monkeypatch):
    """Aliases such as `smollm2-135m-instruct` are no Hub ids: PEFT's vocabulary check must not go online."""
    import peft.utils.save_and_load as peft_save
    from safetensors import safe_open

    def no_lookup(*args, **kwargs):
        raise AssertionError("save_trained asked the Hub")

    monkeypatch.setattr(peft_save, "check_file_exists_on_hf_hub", no_lookup)
    loaded = _load(tiny_causal_dir)
    model = apply_method(loaded.model, _train_cfg(method="lora", lora={"r": 4}))
    model.peft_config["default"].base_model_name_or_path = "some-alias"
    out = save_trained(model, loaded.tokenizer, tmp_path / "adapter", method="lora")
    with safe_open(out / "adapter_model.safetensors", "pt") as f:
        assert not any("embed_tokens" in k for k in f.keys())
    # an adapter on the embedding layer keeps it in the saved adapter, as PEFT's own check would
    model = apply_method(_load(tiny_causal_dir).model,
                         _train_cfg(method="lora", lora={"r": 4, "target_modules": ["embed_tokens", "q_proj"]}))  # fmt: skip
    out = save_trained(model, loaded.tokenizer, tmp_path / "adapter-embed", method="lora")
    with safe_open(out / "adapter_model.safetensors", "pt") as f:
        assert any("embed_tokens" in k and "lora" not in k for k in f.keys())


def test_full_save_reloads_identically_in_float32(tiny_causal_dir, tmp_path):
    loaded = _load(tiny_causal_dir)
    cfg = _train_cfg(method="freeze", freeze={"trainable_top_k": 1})
    model = apply_method(loaded.model, cfg, frozen_dtype=torch.bfloat16)
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight.add_(0.1)  # "training"
    out = save_trained(model, loaded.tokenizer, tmp_path / "model", method="freeze")
    assert model.model.layers[0].mlp.down_proj.weight.dtype == torch.bfloat16  # the save did not recast
    with safe_open(out / "model.safetensors", "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F32"}
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert reloaded.dtype == torch.float32
    model.float()
    assert torch.equal(_logits(reloaded, "causal"), _logits(model, "causal"))
    assert _load(tiny_causal_dir, adapter=out).source == str(out.resolve())


@pytest.mark.parametrize("via", ["adapter_dir", "run_dir"])
def test_export_merged_matches_adapter_logits(tiny, tmp_path, via):
    family, path = tiny
    loaded = _load(path)
    model = apply_method(loaded.model, _train_cfg(method="lora", lora={"r": 4}))
    _perturb_lora(model)
    expected = _logits(model, family)
    run_dir = tmp_path / "run"
    save_trained(model, loaded.tokenizer, run_dir / "adapter", method="lora")
    if via == "run_dir":
        (run_dir / "config.yaml").write_text(f"model:\n  ref: {path}\n")
    out = export_merged(run_dir if via == "run_dir" else run_dir / "adapter", tmp_path / "merged")
    auto = AutoModelForCausalLM if family == "causal" else AutoModelForSeq2SeqLM
    merged = auto.from_pretrained(out)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert (out / "tokenizer_config.json").is_file()
    torch.testing.assert_close(_logits(merged, family), expected, atol=1e-5, rtol=1e-5)


def test_export_of_full_run_copies_model(tiny_causal_dir, tmp_path):
    loaded = _load(tiny_causal_dir)
    save_trained(apply_method(loaded.model, _train_cfg(method="full")), loaded.tokenizer,
                 tmp_path / "run" / "model", method="full")
    out = export_merged(tmp_path / "run", tmp_path / "merged")
    assert torch.equal(_logits(AutoModelForCausalLM.from_pretrained(out), "causal"), _logits(loaded.model, "causal"))


def test_adapter_without_base_is_model_error(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(ModelError, match="base_model_name_or_path"):
        export_merged(tmp_path, tmp_path / "out")
    with pytest.raises(ModelError, match="does not exist"):
        export_merged(tmp_path / "missing", tmp_path / "out")


# --- the real default model ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_default_alias_is_dense_trainable_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEBENCH_CACHE", str(tmp_path / "cache"))
    loaded = load_model(ModelConfig())
    model = loaded.model
    assert loaded.family == "causal" and loaded.use_chat
    assert getattr(model, "hf_quantizer", None) is None and not getattr(model, "is_quantized", False)
    assert getattr(model.config, "quantization_config", None) is None
    assert all(type(m).__name__ != "GgufLinear" for m in model.modules())
    assert loaded.source == str(tmp_path / "cache" / "models" / "smollm2-135m-instruct")
    assert model.name_or_path == "HuggingFaceTB/SmolLM2-135M-Instruct"  # adapters record the Hub id
    model.train()
    ids = loaded.tokenizer(loaded.format_prompt("Name a colour."), return_tensors="pt").input_ids
    model(input_ids=ids, labels=ids).loss.backward()
    assert model.lm_head.weight.grad is not None and model.lm_head.weight.grad.abs().sum() > 0
    model.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "model.safetensors").is_file()

    def no_conversion(*_a, **_k):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(load_mod, "convert_gguf", no_conversion)
    assert load_tokenizer_only(ModelConfig()).source == loaded.source
    again = load_model(ModelConfig())
    torch.testing.assert_close(again.model.lm_head.weight, model.lm_head.weight.detach())


def test_alias_records_its_hub_id_and_maps_back_to_the_local_copy(tmp_path):
    from tunebench.models.load import ALIASES, DEFAULT_ALIAS, base_model_config

    assert ALIASES[DEFAULT_ALIAS].hub_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    (tmp_path / "adapter_config.json").write_text(json.dumps(
        {"base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct", "revision": "main"}))
    assert base_model_config(tmp_path) == ModelConfig(ref=DEFAULT_ALIAS)  # offline: the local GGUF copy
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "org/other"}))
    assert base_model_config(tmp_path).ref == "org/other"


def test_readme_offline_adapter_snippet_runs(tiny_causal_dir, tmp_path, monkeypatch):
    """The README's offline snippet, run as written with the tiny model standing in for the alias's local copy."""
    import re

    import tunebench.models.load as load

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Using a trained adapter elsewhere"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    loaded = _load(tiny_causal_dir)
    adapter = tmp_path / "runs" / "my-reviews" / "adapter"
    save_trained(apply_method(loaded.model, _train_cfg(method="lora", lora={"r": 4})), loaded.tokenizer, adapter,
                 method="lora")
    monkeypatch.setattr(load, "default_gguf_path", lambda alias=load.DEFAULT_ALIAS: tiny_causal_dir / "x.gguf")
    monkeypatch.setattr(load, "dense_gguf_dir", lambda gguf, alias=None: tiny_causal_dir)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    from peft import PeftModel

    assert isinstance(scope["model"], PeftModel)
    expected = _logits(_load(tiny_causal_dir, adapter=adapter).model, "causal")
    torch.testing.assert_close(_logits(scope["model"].eval(), "causal"), expected)
