"""The parameter-efficient rows of the methods table (LoRA variants, IA3, prompt and prefix tuning, bottleneck
adapters) on the tiny causal and T5 models: each trains with falling loss touching only its own parameters,
saves, reloads with identical logits, evaluates attached or merged, and exports where it can merge."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
from train_helpers import make_cfg

from tunebench.config import ModelConfig, TrainConfig
from tunebench.errors import ConfigError
from tunebench.models.export import export_merged, save_trained
from tunebench.models.load import load_model, resolve_trained_output
from tunebench.models.methods import METHODS, apply_method, get_method, prepended_positions
from tunebench.train.loss import base_model, completion_loss_sum

CASES = {
    "adapter": {"method": "adapter", "adapter": {"reduction_factor": 4}},
    "adapter_pfeiffer": {"method": "adapter", "adapter": {"style": "pfeiffer", "reduction_factor": 4}},
    "ia3": {"method": "ia3"},
    "prompt_tuning": {"method": "prompt_tuning", "prompt_tuning": {"num_virtual_tokens": 4}},
    "prefix_tuning": {"method": "prefix_tuning", "prefix_tuning": {"num_virtual_tokens": 4}},
    "dora": {"method": "lora", "lora": {"r": 4, "use_dora": True}},
    "rslora": {"method": "lora", "lora": {"r": 4, "use_rslora": True}},
    "pissa": {"method": "lora", "lora": {"r": 4, "init_lora_weights": "pissa"}},
}
OWN = {"adapter": "_adapter.", "ia3": "ia3_", "prompt_tuning": "prompt_encoder", "prefix_tuning": "prompt_encoder",
       "lora": "lora_"}


def _batch(family: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 1000, (2, 10), generator=g)
    if family == "seq2seq":
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                "labels": torch.randint(5, 1000, (2, 6), generator=g)}
    labels = ids.clone()
    labels[:, :4] = -100  # the prompt
    return {"input_ids": ids, "labels": labels}


@torch.no_grad()
def _logits(model, family: str) -> torch.Tensor:
    model.eval()
    batch = _batch(family)
    if family == "seq2seq":
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    decoder_input_ids=base_model(model).prepare_decoder_input_ids_from_labels(labels=batch["labels"]))
    else:
        out = model(input_ids=batch["input_ids"])
    return out.logits.float()


@pytest.fixture(params=["causal", "seq2seq"])
def tiny(request, tiny_causal_dir, tiny_t5_dir) -> tuple[str, Path]:
    return request.param, tiny_causal_dir if request.param == "causal" else tiny_t5_dir


@pytest.mark.parametrize("case", list(CASES))
def test_method_trains_saves_reloads_evaluates_and_exports(case, tiny, tmp_path):
    family, model_dir = tiny
    cfg = TrainConfig.model_validate(CASES[case])
    row = get_method(cfg.method)
    assert cfg.lr == row.default_lr
    loaded = load_model(ModelConfig(ref=str(model_dir)))
    model = apply_method(loaded.model, cfg)
    own = OWN[cfg.method]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(own in n for n in trainable)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}

    # ---- a few optimizer steps on one batch: the loss falls, only the method's own parameters move
    model.eval()  # dropout off (the tiny T5 has 0.1): the loss then falls step by step, without noise
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    decoder_inputs = base_model(model).prepare_decoder_input_ids_from_labels if family == "seq2seq" else None
    batch = _batch(family)
    losses = []
    for _ in range(6):
        loss = completion_loss_sum(model, batch, family=family, keep_logits=family == "causal",
                                   decoder_inputs=decoder_inputs)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    after = dict(model.named_parameters())
    assert all(torch.equal(after[n], p) for n, p in frozen.items())

    # ---- save, recognise, reload onto the base: identical logits
    expected = _logits(model, family)
    out = save_trained(model, loaded.tokenizer, tmp_path / "run" / row.output, method=cfg.method)
    recognised, where = resolve_trained_output(tmp_path / "run")
    assert (recognised.name, where) == (cfg.method, out)
    reloaded = load_model(ModelConfig(ref=str(model_dir)), adapter=out, merge=True).model
    if case == "pissa":  # saved as a rank-2r LoRA onto the original base: equal up to float rounding
        torch.testing.assert_close(_logits(reloaded, family), expected, atol=1e-4, rtol=1e-4)
    elif row.mergeable:
        torch.testing.assert_close(_logits(reloaded, family), expected, atol=1e-5, rtol=1e-5)
        attached = load_model(ModelConfig(ref=str(model_dir)), adapter=out).model
        assert torch.equal(_logits(attached, family), expected)
    else:
        assert torch.equal(_logits(reloaded, family), expected)  # evaluated with the method attached

    # ---- export: merged where the method can merge, refused with one sentence where it cannot
    if row.mergeable:
        from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

        merged_dir = export_merged(tmp_path / "run", tmp_path / "merged")
        auto = AutoModelForSeq2SeqLM if family == "seq2seq" else AutoModelForCausalLM
        torch.testing.assert_close(_logits(auto.from_pretrained(merged_dir), family), expected,
                                   atol=1e-4, rtol=1e-4)
    else:
        with pytest.raises(ConfigError, match=rf"method '{cfg.method}' cannot be merged into the base weights \("
                           + re.escape(row.merge_refusal)):
            export_merged(tmp_path / "run", tmp_path / "merged")
        assert not (tmp_path / "merged").exists()


@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning", "adapter"])
def test_attached_methods_generate_their_own_greedy_tokens(method, tiny_causal_dir):
    """Greedy generation through `generate_texts` equals a token-by-token argmax over the model's full forward
    (PEFT's `generate` would drop a prompt or prefix under transformers 5; the fast decoder must keep adapters)."""
    from tunebench.config import GenerationConfig
    from tunebench.evaluate.generate import generate_texts

    loaded = load_model(ModelConfig(ref=str(tiny_causal_dir)))
    model = apply_method(loaded.model, TrainConfig.model_validate(CASES[method]))
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.5)
    model.eval()
    tok = loaded.tokenizer
    prompts = ["Summarize: the cat sat on the mat.", "Hello there"]
    results = generate_texts(model, tok, prompts, family="causal", gen=GenerationConfig(max_new_tokens=6))
    for prompt, result in zip(prompts, results, strict=True):
        ids = tok(prompt, return_tensors="pt").input_ids
        new: list[int] = []
        with torch.no_grad():
            for _ in range(6):
                nxt = int(model(input_ids=torch.tensor([ids[0].tolist() + new])).logits[0, -1].argmax())
                if nxt == tok.eos_token_id:
                    break
                new.append(nxt)
        assert result.text == tok.decode(new, skip_special_tokens=True).strip()


def test_prompt_tuning_loglikelihood_matches_the_base_fed_the_soft_prompt(tiny_causal_dir):
    """Scoring offsets a soft prompt's positions: equal to the base model run on [prompt vectors; embeddings]."""
    from tunebench.bench.loglik import Request, loglikelihoods, split_tokens

    loaded = load_model(ModelConfig(ref=str(tiny_causal_dir)))
    model = apply_method(loaded.model, TrainConfig.model_validate(CASES["prompt_tuning"])).eval()
    assert prepended_positions(model) == 4
    tok = loaded.tokenizer
    requests = [Request("Question: is the sky blue? Answer:", (" yes", " no")),
                Request("Question: is grass red? Answer:", (" yes", " no maybe"))]
    got = loglikelihoods(model, tok, requests)
    base = model.get_base_model()
    soft = model.get_prompt(batch_size=1)
    for req, scores in zip(requests, got, strict=True):
        for continuation, score in zip(req.continuations, scores, strict=True):
            tokens, b = split_tokens(tok, req.context, continuation)
            with torch.no_grad():
                embeds = torch.cat([soft, base.get_input_embeddings()(torch.tensor([tokens[:-1]]))], dim=1)
                logprobs = torch.log_softmax(base(inputs_embeds=embeds).logits[0, 4 + b - 1 :].float(), dim=-1)
            expected = float(logprobs.gather(-1, torch.tensor(tokens[b:]).unsqueeze(-1)).sum())
            assert score == pytest.approx(expected, abs=1e-4)


def test_adapter_run_resumes_exactly(tmp_path, tiny_causal_dir, data_dir):
    """A bottleneck-adapter run resumed from its step-2 checkpoint ends with the weights of the uninterrupted run."""
    from safetensors.torch import load_file

    from tunebench.train.loop import train

    run = dict(method="adapter", adapter={"reduction_factor": 8}, n_train=6, max_steps=4, save_every=2,
               keep_checkpoints=5, lr=1e-2)
    whole = train(make_cfg(tmp_path, tiny_causal_dir, name="whole", **run), data_dir=data_dir, progress=False)
    cut = tmp_path / "runs" / "cut"
    shutil.copytree(whole.run_dir, cut)
    for leftover in ("checkpoints/step-4", "adapter", "train_summary.json"):
        target = cut / leftover
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    resumed = train(make_cfg(tmp_path, tiny_causal_dir, name="cut", **run), data_dir=data_dir, resume=True,
                    progress=False)
    assert resumed.summary["resumed_from_step"] == 2
    a = load_file(whole.run_dir / "adapter" / "bottleneck_adapter.safetensors")
    b = load_file(resumed.run_dir / "adapter" / "bottleneck_adapter.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(a[k].abs().sum() > 0 for k in a if ".up." in k)


def test_ia3_on_an_architecture_peft_has_no_defaults_for_is_exit_2(tmp_path):
    from transformers import Phi3Config, Phi3ForCausalLM

    model = Phi3ForCausalLM(Phi3Config(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                       num_attention_heads=4, num_key_value_heads=4, pad_token_id=0))
    with pytest.raises(ConfigError, match=r"^train\.ia3\.target_modules: PEFT has no default IA3 modules for model "
                                          r"type 'phi3'") as err:
        apply_method(model, TrainConfig(method="ia3"))
    assert err.value.exit_code == 2


def test_prefix_tuning_refused_by_peft_is_exit_2_naming_the_method():
    """A config PEFT cannot size a prefix for (no layer count it recognises) is refused before training."""
    from torch import nn

    class Bare(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.config = type("Cfg", (), {"to_dict": lambda self: {"model_type": "bare"}, "is_encoder_decoder": False,
                                           "model_type": "bare", "tie_word_embeddings": False})()
            self.embed = nn.Embedding(10, 8)

    with pytest.raises(ConfigError, match=r"^train\.method 'prefix_tuning': PEFT cannot apply it to Bare") as err:
        apply_method(Bare(), TrainConfig(method="prefix_tuning"))
    assert err.value.exit_code == 2


def test_every_method_has_a_documented_default_lr():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    for name, row in METHODS.items():
        assert TrainConfig(method=name).lr == row.default_lr
        assert f"| `{name}` | {row.default_lr:g} |" in readme
    assert METHODS["full"].default_lr * 5 <= min(r.default_lr for r in METHODS.values() if r.freezes_base
                                                   and r.name != "freeze")
    assert TrainConfig(method="full", lr=1e-3).lr == 1e-3


@pytest.mark.parametrize("method", ["dora", "ia3", "prompt_tuning", "adapter"])
def test_seq2seq_loglikelihood_with_a_method_matches_the_model_forward(tiny_t5_dir, method):
    """The shared-encoder scoring path equals the method-wrapped model's own forward of each pair (soft prompts
    included: a prompt-learning model keeps its own forward)."""
    from tunebench.bench.loglik import Request, loglikelihoods_seq2seq

    loaded = load_model(ModelConfig(ref=str(tiny_t5_dir)))
    model = apply_method(loaded.model, TrainConfig.model_validate(CASES[method])).eval()
    torch.manual_seed(1)
    with torch.no_grad():  # move trainable weights off their identity initialisation so the method matters
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    tok = loaded.tokenizer
    requests = [Request("Is the sky blue?", (" yes", " no")), Request("Two plus two is", (" four", " 5", " six"))]
    got = loglikelihoods_seq2seq(model, tok, requests, batch_size=3)
    for req, scores in zip(requests, got, strict=True):
        source = torch.tensor([tok(req.context)["input_ids"]])
        for continuation, score in zip(req.continuations, scores, strict=True):
            labels = torch.tensor([tok(continuation, add_special_tokens=False)["input_ids"]])
            with torch.no_grad():
                logits = model(input_ids=source, attention_mask=torch.ones_like(source), labels=labels).logits
            expected = float(torch.log_softmax(logits[0].float(), -1).gather(-1, labels[0][:, None]).sum())
            assert score == pytest.approx(expected, abs=1e-4)
