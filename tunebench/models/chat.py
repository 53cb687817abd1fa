"""Prompt formatting and token conventions shared by training, generation and benchmarks, so all see the same."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def use_chat_template(tokenizer: Any, mode: str, family: str) -> bool:
    """Resolve `model.chat_template` (auto | always | never) for this tokenizer and model family."""
    if mode == "never" or family == "seq2seq":
        return False
    if mode == "always":
        if not has_chat_template(tokenizer):
            raise ValueError("model.chat_template is 'always' but the tokenizer has no chat template")
        return True
    return has_chat_template(tokenizer)


def format_prompt(tokenizer: Any, prompt: str, *, use_chat: bool, system_prompt: str | None = None) -> str:
    """The text the model sees before its completion: the chat template with a generation prompt, or `prompt`."""
    if not use_chat:
        return prompt
    messages = [{"role": "user", "content": prompt}]
    if system_prompt is not None:
        messages.insert(0, {"role": "system", "content": system_prompt})
    return render_messages(tokenizer, messages)


def render_messages(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The chat template applied to `messages` with a generation prompt; a failing template is a ModelError.

    transformers renders chat templates in Jinja's immutable sandbox; a template that fails or that the sandbox
    refuses (SecurityError) is named by its file instead of ending in a traceback.
    """
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except TemplateError as exc:  # SecurityError (the sandbox refused it) included
        from tunebench.errors import ModelError

        where = Path(getattr(tokenizer, "name_or_path", "") or "the tokenizer") / "chat_template.jinja"
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ModelError(f"{where}: the model's chat template fails ({type(exc).__name__}: {reason}); fix it, "
                         "or set model.chat_template: never") from None


def completion_suffix(tokenizer: Any) -> str:
    """What ends a completion in training text: the EOS token (for chat models, the end-of-turn token)."""
    return tokenizer.eos_token or ""


def encode_prompt(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a formatted prompt: special tokens added unless the text already starts with BOS.

    Chat-templated prompts carry their own BOS, and a second one shifts the model off what it saw in training.
    """
    bos = getattr(tokenizer, "bos_token", None)
    return list(tokenizer(text, add_special_tokens=not (bos and text.startswith(bos)))["input_ids"])


def pad_token_id(tokenizer: Any, eos_ids: Sequence[int] = ()) -> int:
    """The id padded positions hold: the tokenizer's pad, else its EOS, else the first of `eos_ids` (the model's),
    else 0. Padding is masked out of attention and loss, so any id is correct; many causal tokenizers have no pad."""
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id, *eos_ids):
        if tid is not None:
            return int(tid)
    return 0
