"""Bottleneck adapters (Houlsby, Pfeiffer) on tiny Llama, GPT-2, T5 and BART models built from configs."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tunebench.config import AdapterConfig
from tunebench.errors import ConfigError, ModelError
from tunebench.models.bottleneck import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    add_bottleneck_adapters,
    load_bottleneck,
    save_bottleneck,
)

HIDDEN = 32
ARCHS = ["llama", "gpt2", "t5", "bart"]
SEQ2SEQ = {"t5", "bart"}


def _tiny(arch: str, hidden: int = HIDDEN) -> nn.Module:
    """A fresh 2-block model (2+2 for encoder-decoders), 256-token vocabulary, no dropout, seeded."""
    import transformers as tf

    torch.manual_seed(0)
    if arch == "llama":
        cfg = tf.LlamaConfig(vocab_size=256, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
        model = tf.LlamaForCausalLM(cfg)
    elif arch == "gpt2":
        model = tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=256, n_embd=hidden, n_layer=2, n_head=4, n_positions=64,
                                                   resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
    elif arch == "t5":
        cfg = tf.T5Config(vocab_size=256, d_model=hidden, d_ff=2 * hidden, d_kv=8, num_layers=2,
                          num_decoder_layers=2, num_heads=4, decoder_start_token_id=0, dropout_rate=0.0)
        model = tf.T5ForConditionalGeneration(cfg)
    else:
        cfg = tf.BartConfig(vocab_size=256, d_model=hidden, encoder_layers=2, decoder_layers=2,
                            encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=2 * hidden,
                            decoder_ffn_dim=2 * hidden, max_position_embeddings=64, dropout=0.0)
        model = tf.BartForConditionalGeneration(cfg)
    return model.eval()


def _batch(arch: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 256, (2, 7), generator=g)
    if arch in SEQ2SEQ:
        labels = torch.randint(3, 256, (2, 5), generator=g)
        return {"input_ids": ids, "labels": labels}
    return {"input_ids": ids, "labels": ids}


@torch.no_grad()
def _logits(model: nn.Module, arch: str) -> torch.Tensor:
    model.eval()
    return model(**_batch(arch)).logits


def _blocks(arch: str) -> int:
    return 4 if arch in SEQ2SEQ else 2


def _perturb(model: nn.Module, scale: float = 0.5) -> None:
    """Move every adapter off its zero up-projection, as training would."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "_adapter.up." in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)


@pytest.mark.parametrize("style", ["houlsby", "pfeiffer"])
@pytest.mark.parametrize("arch", ARCHS)
def test_fresh_adapters_leave_outputs_unchanged_and_are_all_that_trains(arch, style):
    model = _tiny(arch)
    before = _logits(model, arch)
    cfg = AdapterConfig(style=style, reduction_factor=4, non_linearity="relu")
    names = add_bottleneck_adapters(model, cfg)
    per_block = 2 if style == "houlsby" else 1
    assert len(names) == _blocks(arch) * per_block
    assert (_logits(model, arch) - before).abs().max() <= 1e-5
    m = HIDDEN // 4  # each adapter: down (d x m + m) and up (m x d + d)
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    assert sum(trainable.values()) == len(names) * (2 * HIDDEN * m + m + HIDDEN)
    assert all("_adapter." in n for n in trainable)
    _perturb(model)
    assert (_logits(model, arch) - before).abs().max() > 1e-3  # the hooks are live


@pytest.mark.parametrize("style", ["houlsby", "pfeiffer"])
def test_placement_matches_a_hand_computed_gpt2_block(style):
    """Houlsby: x1 = x + A(attn(ln1 x)), out = x1 + A(mlp(ln2 x1)); Pfeiffer: only the second adapter."""
    model = _tiny("gpt2")
    plain = copy.deepcopy(model.transformer.h[0])
    add_bottleneck_adapters(model, AdapterConfig(style=style, reduction_factor=2, non_linearity="tanh"))
    _perturb(model, 0.2)
    block = model.transformer.h[0]

    def adapter(module: nn.Module | None, h: torch.Tensor) -> torch.Tensor:
        if module is None:
            return h
        return h + torch.tanh(h @ module.down.weight.T + module.down.bias) @ module.up.weight.T + module.up.bias

    x = torch.randn(1, 5, HIDDEN, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        x1 = x + adapter(getattr(block, "attention_adapter", None), plain.attn(plain.ln_1(x))[0])
        expected = x1 + adapter(block.ffn_adapter, plain.mlp(plain.ln_2(x1)))
        got = block(x)
    assert hasattr(block, "attention_adapter") == (style == "houlsby")
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_training_lowers_loss_and_leaves_base_weights_bit_identical(arch):
    model = _tiny(arch)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    add_bottleneck_adapters(model, AdapterConfig(reduction_factor=4))
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=3e-2)
    batch = _batch(arch)
    losses = []
    for _ in range(6):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.99 * losses[0], losses
    after = dict(model.named_parameters())
    assert all(torch.equal(after[n], p) for n, p in base.items())
    assert all(not after[n].requires_grad for n in base)
    assert any(p.abs().sum() > 0 for n, p in after.items() if "_adapter.up." in n)


@pytest.mark.parametrize("style", ["houlsby", "pfeiffer"])
@pytest.mark.parametrize("arch", ARCHS)
def test_save_and_reload_onto_the_base_gives_identical_logits(arch, style, tmp_path):
    model = _tiny(arch)
    add_bottleneck_adapters(model, AdapterConfig(style=style, reduction_factor=8, non_linearity="gelu"))
    _perturb(model)
    out = tmp_path / "adapter"
    save_bottleneck(model, out)
    assert {p.name for p in out.iterdir()} == {CONFIG_FILE, WEIGHTS_FILE}
    reloaded = load_bottleneck(_tiny(arch), out)
    assert not any(p.requires_grad for n, p in reloaded.named_parameters() if "_adapter." not in n)
    assert torch.equal(_logits(reloaded, arch), _logits(model, arch))


def test_reload_onto_another_model_is_a_model_error(tmp_path):
    model = _tiny("llama")
    add_bottleneck_adapters(model, AdapterConfig(reduction_factor=4))
    out = tmp_path / "adapter"
    save_bottleneck(model, out)
    with pytest.raises(ModelError, match="does not fit"):
        load_bottleneck(_tiny("llama", hidden=48), out)
    with pytest.raises(ModelError, match="does not fit"):
        load_bottleneck(_tiny("gpt2"), out)  # other block names


def test_frozen_bf16_model_without_autocast_keeps_its_dtype():
    model = _tiny("llama").to(torch.bfloat16)
    add_bottleneck_adapters(model, AdapterConfig(reduction_factor=4))
    assert {p.dtype for n, p in model.named_parameters() if "_adapter." in n} == {torch.float32}
    _perturb(model)
    assert _logits(model, "llama").dtype == torch.bfloat16


def test_reduction_factor_leaving_no_hidden_unit_is_exit_2_naming_the_key():
    with pytest.raises(ConfigError, match=r"train\.adapter\.reduction_factor 64 leaves 0\.50 hidden units") as err:
        add_bottleneck_adapters(_tiny("llama"), AdapterConfig(reduction_factor=64))
    assert err.value.exit_code == 2


def test_model_without_recognisable_blocks_is_exit_2_naming_the_key():
    class Mixer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.config = type("Cfg", (), {"hidden_size": HIDDEN})()
            self.layers = nn.ModuleList(nn.Sequential(nn.Linear(HIDDEN, HIDDEN), nn.ReLU()) for _ in range(2))

    model = Mixer()
    with pytest.raises(ConfigError, match=r"^train\.method 'adapter': no transformer block of Mixer") as err:
        add_bottleneck_adapters(model, AdapterConfig())
    assert err.value.exit_code == 2
    assert all(p.requires_grad for p in model.parameters())  # nothing frozen by a refused call


def test_adding_twice_is_refused():
    model = _tiny("gpt2")
    add_bottleneck_adapters(model, AdapterConfig())
    with pytest.raises(ModelError, match="already has bottleneck adapters"):
        add_bottleneck_adapters(model, AdapterConfig())


def test_export_merge_of_an_adapter_run_is_exit_2_with_one_sentence(tmp_path, capsys, tiny_causal_dir):
    """`tunebench export --merge` refuses bottleneck adapters (they add layers) with the methods table's reason;
    before, it exited 1 with "a adapter adapter cannot be folded"."""
    from transformers import AutoModelForCausalLM

    from tunebench.cli import main

    model = AutoModelForCausalLM.from_pretrained(tiny_causal_dir)
    add_bottleneck_adapters(model, AdapterConfig(reduction_factor=16))
    save_bottleneck(model, tmp_path / "run" / "adapter")
    out = tmp_path / "merged"
    assert main(["export", str(tmp_path / "run"), "--merge", str(out)]) == 2
    err = capsys.readouterr().err  # also holds transformers' progress of the from_pretrained above
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("error: ")] == [
        f"error: export --merge {tmp_path / 'run'}: method 'adapter' cannot be merged into the base weights "
        "(bottleneck adapters add layers, with a non-linearity, that no base weight can absorb); evaluate the run "
        f"with `tunebench eval --adapter {tmp_path / 'run'}`, or load {tmp_path / 'run' / 'adapter'} onto its base "
        "model"]
    assert not out.exists()
