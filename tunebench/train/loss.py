"""The training objective: cross-entropy summed over completion tokens, computed only where it is needed.

Why not the model's own `labels=` loss: it projects *every* position onto the vocabulary (for SmolLM2-135M the
output head is a fifth of the weights and its fp32 logits are ~0.5 GB per batch) and averages per micro-batch,
which weights tokens unequally under gradient accumulation. Here a causal model gets `logits_to_keep` as a
boolean mask of the positions whose next token is a target (transformers 5 then applies the head to those rows
only), and the loss is a *sum*, which the loop divides by the target count of the whole optimizer step.

Right-padded causal batches are run without an attention mask: under causal masking no real token can see the
padding that follows it, so the outputs at real positions are identical, and SDPA takes its faster `is_causal`
path instead of a dense mask. `use_cache=False`: a training forward has no use for a KV cache.
"""

from __future__ import annotations

import inspect
from typing import Any, Literal

import torch
import torch.nn.functional as F

from tunebench.data.tokenize import IGNORE_INDEX, TokenizedExample
from tunebench.models.methods import prepended_positions


def base_model(model: Any) -> Any:
    """The transformers model under PEFT / DDP / torch.compile wrappers."""
    while True:
        if hasattr(model, "module"):  # DDP
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile
            model = model._orig_mod
        elif hasattr(model, "get_base_model"):  # PEFT
            model = model.get_base_model()
        else:
            return model


def _unwrapped(model: Any) -> Any:
    """`model` without DDP / torch.compile wrappers (a PEFT model stays one)."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def supports_logits_to_keep(model: Any) -> bool:
    """Whether the model's forward takes `logits_to_keep` (transformers 5 causal LMs do)."""
    return "logits_to_keep" in inspect.signature(base_model(model).forward).parameters


def target_count(example: TokenizedExample, family: Literal["causal", "seq2seq"]) -> int:
    """Tokens the loss is computed on. Causal: labels after the first position (nothing predicts position 0)."""
    labels = example.labels[1:] if family == "causal" else example.labels
    return sum(1 for t in labels if t != IGNORE_INDEX)


def completion_loss_sum(
    model: Any,
    batch: dict[str, torch.Tensor],
    *,
    family: Literal["causal", "seq2seq"],
    keep_logits: bool,
    decoder_inputs: Any = None,
) -> torch.Tensor:
    """Summed cross-entropy over the batch's target tokens (float32), from one forward pass of `model`.

    keep_logits: the model accepts `logits_to_keep`. decoder_inputs: seq2seq only, labels -> decoder input ids
    (the base model's `prepare_decoder_input_ids_from_labels`).
    """
    labels = batch["labels"]
    if family == "seq2seq":
        out = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            decoder_input_ids=decoder_inputs(labels=labels),
            use_cache=False,
        )
        mask = labels != IGNORE_INDEX
        return F.cross_entropy(out.logits[mask].float(), labels[mask], reduction="sum")
    # position t predicts token t + 1: keep the positions whose next token is a target
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    targets = labels[:, 1:][keep[:, :-1]]
    virtual = prepended_positions(_unwrapped(model))  # a soft prompt's positions come first in the output
    if virtual:
        keep = torch.cat([keep.new_zeros(keep.shape[0], virtual), keep], dim=1)
    if keep_logits:
        logits = model(input_ids=batch["input_ids"], logits_to_keep=keep, use_cache=False).logits
    else:
        logits = model(input_ids=batch["input_ids"], use_cache=False).logits[keep]
    return F.cross_entropy(logits.float(), targets, reduction="sum")
