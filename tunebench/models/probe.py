"""What is scored must be what was trained: transformations before scoring are checked on a probe batch.

Merging a LoRA adapter into its base (PEFT `merge_adapter`), untying an output layer, casting and reloading are
all meant to leave the model's function unchanged, but some silently do not: merging a LoRA on `lm_head` whose
weight is tied to the input embeddings also moves the embeddings (peft issue #2777), so the merged model is a
different model. Every such step runs the same probe batch through the model before and after and compares the
logits; a mismatch is never scored silently -- evaluation keeps the adapter attached, export refuses.

Tolerances: float32 merges reorder a few sums (measured differences ~1e-6 of the logit scale on the tiny
fixtures); half precision rounds every merged weight to 8 (bf16) or 11 (fp16) bits. A wrong merge moves logits
by whole units (the tied-lm_head case: up to 8.2 on a tiny Llama, 70 with a larger update).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

PROBE_SHAPE = (2, 16)  # (batch, tokens): enough positions to reach every layer with varied attention
# relative tolerance on max |Δ logit| / max(1, max |logit|), by the dtype the model computes in
RTOL = {torch.float32: 1e-3, torch.float64: 1e-6, torch.bfloat16: 5e-2, torch.float16: 1e-2}


def probe_batch(model: Any) -> dict[str, torch.Tensor]:
    """A fixed batch of token ids inside the model's vocabulary: {"input_ids": (2, 16)}, plus decoder ids for seq2seq.

    Ids are drawn with a fixed seed from [0, vocab_size) so special tokens rarely dominate; positions stay within
    the model's limit.
    """
    config = model.config
    vocab = int(getattr(config, "vocab_size", None) or model.get_input_embeddings().num_embeddings)
    n_pos = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or PROBE_SHAPE[1]
    shape = (PROBE_SHAPE[0], min(PROBE_SHAPE[1], int(n_pos)))
    g = torch.Generator().manual_seed(1234)
    batch = {"input_ids": torch.randint(0, vocab, shape, generator=g)}
    if getattr(config, "is_encoder_decoder", False):
        batch["decoder_input_ids"] = torch.randint(0, vocab, (shape[0], max(2, shape[1] // 2)), generator=g)
    device = next(model.parameters()).device
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def probe_logits(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits of `batch` in eval mode as float32 on the CPU: (batch, tokens, vocab)."""
    was_training = model.training
    model.eval()
    try:
        return model(**batch).logits.float().cpu()
    finally:
        model.train(was_training)


def _compute_dtype(model: Any) -> torch.dtype:
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def mismatch(expected: torch.Tensor, got: torch.Tensor, dtype: torch.dtype = torch.float32) -> str | None:
    """None when `got` matches `expected` within the tolerance for `dtype`, else a phrase saying by how much."""
    if expected.shape != got.shape:
        return f"logits of shape {tuple(got.shape)} instead of {tuple(expected.shape)}"
    diff = (expected - got).abs().max().item()
    scale = max(1.0, expected.abs().max().item())
    if diff == diff and diff <= RTOL.get(dtype, 1e-3) * scale:  # diff == diff: a NaN never matches
        return None
    agree = (expected.argmax(-1) == got.argmax(-1)).float().mean().item()
    return f"max |Δ logit| {diff:.3g} on a probe batch, argmax agrees on {agree:.0%} of positions"


def _weight_of(module: nn.Module) -> torch.Tensor | None:
    layer = getattr(module, "base_layer", module)
    return getattr(layer, "weight", None)


def untie_adapted_outputs(model: Any) -> bool:
    """Give the output layer its own copy of the tied input embeddings when an adapter wraps either of them.

    Merging into a shared weight would change both layers; after the untie the merged update lands in the output
    layer only, and the config says `tie_word_embeddings: false` so a saved export reloads untied. Returns whether
    it untied. The copy is equal in value, so the adapter-attached model computes the same logits.
    """
    hf = model.get_base_model() if hasattr(model, "get_base_model") else model
    inp, out = hf.get_input_embeddings(), hf.get_output_embeddings()
    if inp is None or out is None:
        return False
    w_in, w_out = _weight_of(inp), _weight_of(out)
    if w_in is None or w_out is None or w_in.data_ptr() != w_out.data_ptr():
        return False
    if not any(hasattr(m, "lora_A") or hasattr(m, "lora_embedding_A") for m in (inp, out)):
        return False
    layer = getattr(out, "base_layer", out)
    layer.weight = nn.Parameter(w_out.detach().clone(), requires_grad=False)
    for config in {id(c): c for c in (hf.config, hf.config.get_text_config())}.values():
        config.tie_word_embeddings = False
    if hasattr(hf, "get_expanded_tied_weights_keys"):
        hf.all_tied_weights_keys = hf.get_expanded_tied_weights_keys(all_submodels=True)
    return True


def merge_checked(model: Any, what: str) -> tuple[Any, str | None]:
    """Merge a PEFT adapter into its base only if the merged model computes what the attached one does.

    Returns (merged plain model, None), or (the attached PeftModel, restored bit for bit, and one sentence saying
    why the merge was not used). `what` names the adapter in that sentence.
    """
    batch = probe_batch(model)
    expected = probe_logits(model, batch)
    untied = untie_adapted_outputs(model)
    wrapped = [m for m in model.modules() if hasattr(m, "base_layer") and hasattr(m, "merge")]
    originals = {id(m): _weight_of(m).detach().clone() for m in wrapped if _weight_of(m) is not None}
    model.merge_adapter()
    problem = mismatch(expected, probe_logits(model, batch), _compute_dtype(model))
    if problem is None:
        if untied:
            log.info("%s: the output layer was untied from the input embeddings before merging", what)
        return model.unload(), None
    model.unmerge_adapter()
    with torch.no_grad():
        for m in wrapped:
            if id(m) in originals:
                _weight_of(m).copy_(originals[id(m)])
    return model, f"merging {what} into its base changes the model's outputs ({problem})"
