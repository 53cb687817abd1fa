"""The objective: completion-only cross-entropy, equal to transformers' own masked loss, logits where needed."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from tunebench.data.batching import PaddingCollator
from tunebench.data.example import Example
from tunebench.data.tokenize import tokenize_examples
from tunebench.train.loss import completion_loss_sum, supports_logits_to_keep, target_count

EXAMPLES = [
    Example("a", "Summarize: #Person1#: Hi. #Person2#: Hello, how are you?", "Two people greet.", ("x",)),
    Example("b", "Summarize: #Person1#: Lunch?", "#Person1# asks #Person2# to lunch today.", ("y",)),
]


def batch_for(model_dir, family: str, train_on_prompt: bool):
    tok = AutoTokenizer.from_pretrained(model_dir)
    rows, _ = tokenize_examples(EXAMPLES, tok, family=family, format_prompt=lambda p: p, max_length=64,
                                train_on_prompt=train_on_prompt)
    return rows, PaddingCollator(tok.pad_token_id, family)(rows)


@pytest.mark.parametrize("train_on_prompt", [False, True])
def test_causal_loss_equals_transformers_masked_loss(tiny_causal_dir, train_on_prompt):
    model = AutoModelForCausalLM.from_pretrained(tiny_causal_dir).eval()
    rows, batch = batch_for(tiny_causal_dir, "causal", train_on_prompt)
    assert batch["attention_mask"].sum() < batch["attention_mask"].numel()  # right padding is present
    n = sum(target_count(r, "causal") for r in rows)
    with torch.no_grad():
        reference = model(**batch).loss * n  # transformers: mean over shifted labels != -100, with the mask
        ours = completion_loss_sum(model, batch, family="causal", keep_logits=True)
        full = completion_loss_sum(model, batch, family="causal", keep_logits=False)
    assert ours.item() == pytest.approx(reference.item(), rel=1e-5)
    assert full.item() == pytest.approx(reference.item(), rel=1e-5)
    expected = sum(len(r.input_ids) - (1 if train_on_prompt else r.prompt_length) for r in rows)
    assert n == expected


def test_prompt_tokens_do_not_count_unless_asked(tiny_causal_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_causal_dir).eval()
    masked_rows, masked = batch_for(tiny_causal_dir, "causal", False)
    _, whole = batch_for(tiny_causal_dir, "causal", True)
    assert torch.equal(masked["input_ids"], whole["input_ids"])
    # only completion tokens (and their EOS) are targets when train_on_prompt is off
    for row in masked_rows:
        assert row.labels[: row.prompt_length] == [-100] * row.prompt_length
        assert -100 not in row.labels[row.prompt_length :]
    # the masked loss is the whole-sequence loss restricted to completion positions
    with torch.no_grad():
        logits = model(**whole).logits[:, :-1].float()
        per_token = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), whole["labels"][:, 1:].clamp(min=0), reduction="none")
        at_completion = per_token[masked["labels"][:, 1:] != -100].sum()
        ours = completion_loss_sum(model, masked, family="causal", keep_logits=True)
    assert ours.item() == pytest.approx(at_completion.item(), rel=1e-5)


def test_seq2seq_loss_equals_transformers(tiny_t5_dir):
    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_t5_dir).eval()
    rows, batch = batch_for(tiny_t5_dir, "seq2seq", False)
    n = sum(target_count(r, "seq2seq") for r in rows)
    assert not supports_logits_to_keep(model)
    with torch.no_grad():
        reference = model(**batch).loss * n
        ours = completion_loss_sum(model, batch, family="seq2seq", keep_logits=False,
                                   decoder_inputs=model.prepare_decoder_input_ids_from_labels)
    assert ours.item() == pytest.approx(reference.item(), rel=1e-5)


def test_causal_models_take_logits_to_keep(tiny_causal_dir):
    assert supports_logits_to_keep(AutoModelForCausalLM.from_pretrained(tiny_causal_dir))
