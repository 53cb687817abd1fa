"""Examples -> token ids and labels: prompt masking, EOS, special tokens and the truncation policy.

Written by hand because the rules are the point: causal models learn only the completion (prompt positions
carry -100 unless train_on_prompt), the completion ends with the EOS / end-of-turn token, a BOS is added at
most once (chat templates often spell it in the text already), and an over-long example loses the left part
of its prompt, never silently its completion.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from tunebench.data.example import Example
from tunebench.models.chat import completion_suffix

IGNORE_INDEX = -100  # the label of a position the loss skips (PyTorch cross_entropy's default ignore_index)


@dataclass(frozen=True)
class TokenizedExample:
    """Model-ready ids. Causal: input_ids = prompt + completion. Seq2seq: encoder input_ids, decoder labels."""

    id: str
    input_ids: list[int]
    labels: list[int]
    prompt_length: int = 0
    length: int = 0  # tokens the example costs in a batch (seq2seq: encoder + decoder), for length grouping


def special_tokens_added(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a text with add_special_tokens=True (e.g. [BOS], [EOS])."""
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    full = tokenizer("x", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return list(full[:start]), list(full[start + len(plain) :])
    return [], []


def _ids(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    return [list(x) for x in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def fit_to_length(prompt: list[int], completion: list[int], max_length: int, keep_head: int = 0) -> tuple[
    list[int], list[int], bool]:
    """Cut the prompt from the left (after its first `keep_head` special tokens) so prompt + completion fit.

    When the completion alone leaves no room, the prompt keeps its last min(len, max_length // 2) tokens and
    the completion loses its end; the flag says so.
    """
    if len(prompt) + len(completion) <= max_length:
        return prompt, completion, False
    head, body = prompt[:keep_head], prompt[keep_head:]
    room = max_length - len(completion) - len(head)
    if room >= 1:
        return head + body[len(body) - room :], completion, False
    n_prompt = min(len(prompt), max(max_length // 2, len(head)))
    kept_prompt = head + body[len(body) - (n_prompt - len(head)) :]
    return kept_prompt, completion[: max_length - len(kept_prompt)], True


def tokenize_examples(
    examples: Sequence[Example],
    tokenizer: Any,
    *,
    family: Literal["causal", "seq2seq"],
    format_prompt: Callable[[str], str],
    max_length: int,
    truncation: Literal["truncate", "drop"] = "truncate",
    train_on_prompt: bool = False,
) -> tuple[list[TokenizedExample], dict[str, Any]]:
    """Tokenize examples for training; stats count truncated/dropped examples and describe token lengths.

    Causal: input_ids = [BOS?] tokens(format_prompt(prompt)) + tokens(completion + EOS); labels mask the prompt.
    Seq2seq: input_ids = tokens(format_prompt(prompt)) with the tokenizer's specials (T5 appends </s>),
    labels = tokens(completion) + EOS. `max_length` bounds prompt + completion in both cases.
    """
    if family not in ("causal", "seq2seq"):
        raise ValueError(f"unknown model family {family!r}")
    prefix, suffix = special_tokens_added(tokenizer)
    prompts = _ids(tokenizer, [format_prompt(ex.prompt) for ex in examples])
    if family == "causal":
        completions = _ids(tokenizer, [ex.completion + completion_suffix(tokenizer) for ex in examples])
        prompts = [p if prefix and p[: len(prefix)] == prefix else prefix + p for p in prompts]
    else:
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        completions = [c + eos for c in _ids(tokenizer, [ex.completion for ex in examples])]
        prompts = [prefix + p + suffix for p in prompts]
    keep_head = len(prefix)  # a left cut never removes the BOS

    out: list[TokenizedExample] = []
    lengths: list[int] = []
    truncated = completion_truncated = dropped = 0
    for ex, p, c in zip(examples, prompts, completions, strict=True):
        lengths.append(len(p) + len(c))
        if len(p) + len(c) > max_length:
            if truncation == "drop":
                dropped += 1
                continue
            p, c, cut_completion = fit_to_length(p, c, max_length, keep_head)
            truncated += 1
            completion_truncated += int(cut_completion)
        if family == "causal":
            labels = (list(p) if train_on_prompt else [IGNORE_INDEX] * len(p)) + list(c)
            out.append(TokenizedExample(ex.id, list(p) + list(c), labels, len(p), len(p) + len(c)))
        else:
            out.append(TokenizedExample(ex.id, list(p), list(c), len(p), len(p) + len(c)))
    stats = {
        "examples": len(examples),
        "kept": len(out),
        "truncated": truncated,
        "completion_truncated": completion_truncated,
        "dropped": dropped,
        "truncation": truncation,
        "tokens": token_length_stats(lengths, max_length),
    }
    return out, stats


def token_length_stats(lengths: Sequence[int], max_length: int | None = None) -> dict[str, Any]:
    """min / median / p95 / max / mean token lengths, and how many exceed max_length."""
    if len(lengths) == 0:
        return {"count": 0, "min": None, "median": None, "p95": None, "max": None, "mean": None, "over_max": 0,
                "max_length": max_length}
    arr = np.asarray(lengths, dtype=np.int64)
    return {
        "count": int(arr.size),
        "min": int(arr.min()),
        "median": float(np.median(arr)),
        "p95": float(np.percentile(arr, 95)),
        "max": int(arr.max()),
        "mean": round(float(arr.mean()), 2),
        "over_max": int((arr > max_length).sum()) if max_length is not None else 0,
        "max_length": max_length,
    }
