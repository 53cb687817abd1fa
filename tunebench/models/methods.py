"""What gets trained: full fine-tuning, LoRA (through PEFT) or freeze (only the top blocks and named modules).

PEFT covers LoRA; freeze tuning has no library home, so the block finding is written here: the transformer
blocks are the outermost `nn.ModuleList` of one repeated module class (for encoder-decoders, the decoder's, the
stack nearest the output). Frozen weights may be held in bf16 -- on CPU that roughly halves matmul cost under
bf16 autocast -- while trainable weights always stay float32 so optimizer updates are not lost to rounding.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tunebench.config import FreezeConfig, TrainConfig
from tunebench.errors import ModelError


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters; tied weights count once."""
    trainable = total = 0
    for p in model.parameters():
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total


def block_stack(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The transformer blocks nearest the output: (qualified name, ModuleList)."""
    stacks: list[tuple[str, nn.ModuleList]] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if any(name.startswith(f"{outer}.") for outer, _ in stacks):
            continue  # a list inside a block (sub-layers, experts) is not the block stack
        if len({type(m) for m in module}) == 1 and next(module.parameters(), None) is not None:
            stacks.append((name, module))
    if not stacks:
        raise ModelError(
            f"train.method 'freeze': no transformer blocks found in {type(model).__name__}; use lora or full"
        )
    decoders = [s for s in stacks if "decoder" in s[0]]
    if decoders:
        return decoders[-1]
    return max(stacks, key=lambda s: sum(p.numel() for p in s[1].parameters()))


def _freeze(model: nn.Module, cfg: FreezeConfig) -> None:
    for p in model.parameters():
        p.requires_grad_(False)
    if cfg.trainable_top_k:
        name, blocks = block_stack(model)
        if cfg.trainable_top_k > len(blocks):
            raise ModelError(
                f"train.freeze.trainable_top_k is {cfg.trainable_top_k} but {name} has only {len(blocks)} "
                "blocks: lower it"
            )
        for block in list(blocks)[-cfg.trainable_top_k :]:
            block.requires_grad_(True)
    for pattern in cfg.trainable_modules:
        matched = [m for n, m in model.named_modules() if n and pattern in n]
        if not matched:
            examples = ", ".join(n for n, _ in list(model.named_children())[:4])
            raise ModelError(
                f"train.freeze.trainable_modules: '{pattern}' matches no module name (top level: {examples})"
            )
        for module in matched:
            module.requires_grad_(True)


def _lora(model: Any, train_cfg: TrainConfig) -> Any:
    from peft import LoraConfig, TaskType, get_peft_model

    is_seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
    lora = train_cfg.lora
    peft_cfg = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type=TaskType.SEQ_2_SEQ_LM if is_seq2seq else TaskType.CAUSAL_LM,
    )
    try:
        return get_peft_model(model, peft_cfg)
    except ValueError as exc:
        reason = (str(exc).strip().splitlines() or ["no match"])[0]
        raise ModelError(f"train.lora.target_modules {lora.target_modules!r} does not fit this model ({reason})") from None


def cast_frozen(model: nn.Module, dtype: torch.dtype) -> int:
    """Hold frozen floating-point weights in `dtype`; returns how many parameters were cast."""
    cast = 0
    for p in model.parameters():
        if not p.requires_grad and p.is_floating_point() and p.dtype != dtype:
            p.data = p.data.to(dtype)
            cast += p.numel()
    return cast


def apply_method(model: Any, train_cfg: TrainConfig, *, frozen_dtype: torch.dtype | None = None) -> Any:
    """Set what trains for `train_cfg.method`; returns the model to train (a PeftModel for LoRA).

    Trainable weights are made float32 whatever the load dtype; frozen ones are cast to `frozen_dtype` if given
    (bf16 frozen weights need the forward pass under bf16 autocast, as the training loop runs it).
    """
    if train_cfg.method == "full":
        model.requires_grad_(True)
    elif train_cfg.method == "lora":
        model = _lora(model, train_cfg)
    elif train_cfg.method == "freeze":
        _freeze(model, train_cfg.freeze)
    else:
        raise ModelError(f"train.method '{train_cfg.method}' is unknown: use full, lora or freeze")
    for p in model.parameters():
        if p.requires_grad and p.is_floating_point() and p.dtype != torch.float32:
            p.data = p.data.float()
    if frozen_dtype is not None:
        cast_frozen(model, frozen_dtype)
    return model
