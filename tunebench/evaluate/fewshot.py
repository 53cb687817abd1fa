"""In-context baselines: zero-, one- and few-shot prompts of the base model, from train demonstrations only.

A tuned model is only worth its training if it beats the base model shown a few solved examples, so the eval
stage scores those prompts too. Choices, all deterministic:
- the k demonstrations are drawn once from the TRAIN split with `random.Random(f"{seed}:fewshot:{k}")` and are
  the same for every test example (one prefix, so differences between test examples come from the examples);
  pool items whose id or prompt hash equals a test example's are left out, and the draw is asserted clean;
- chat models see them as alternating user/assistant turns before the query (what instruction models are tuned
  on); plain models see "prompt\\ncompletion" blocks joined by blank lines before the query prompt;
- per example, demonstrations that would push prompt + `max_new_tokens` past the context (the smaller of the
  model's maximum positions and a configured budget) are dropped, longest first (keeping as many as fit), and
  counted. The plain rendering is what predictions.jsonl records, whatever the model saw.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tunebench.data.example import Example
from tunebench.data.splits import prompt_hash
from tunebench.errors import DataError
from tunebench.models.chat import render_messages

# Tokenizers report "no limit" as a huge sentinel (about 1e30); anything above this is no real limit.
_UNBOUNDED = 10_000_000


@dataclass(frozen=True)
class FewShotPrompts:
    """Prompts for one k: what the model sees, what predictions.jsonl records, and what was dropped."""

    k: int
    model_prompts: list[str]
    plain_prompts: list[str]
    demo_ids: list[str]
    kept: list[int]
    stats: dict[str, Any] = field(default_factory=dict)


def choose_demonstrations(
    pool: Sequence[Example], k: int, *, seed: int, test: Sequence[Example]
) -> list[Example]:
    """k demonstrations from the train pool by a fixed seed; none shares an id or a prompt with the test set."""
    if k == 0:
        return []
    test_ids = {e.id for e in test}
    test_hashes = {prompt_hash(e.prompt) for e in test}
    clean = [e for e in pool if e.id not in test_ids and prompt_hash(e.prompt) not in test_hashes]
    if len(clean) < k:
        raise DataError(
            f"eval.shots asks for {k} demonstrations but the train split has only {len(clean)} examples not in "
            f"the test set; lower eval.shots or enlarge data.limits.train"
        )
    demos = random.Random(f"{seed}:fewshot:{k}").sample(clean, k)
    assert not {d.id for d in demos} & test_ids, "a few-shot demonstration has a test example's id"
    assert not {prompt_hash(d.prompt) for d in demos} & test_hashes, (
        "a few-shot demonstration is a test prompt"
    )
    return demos


def render_plain(demos: Sequence[Example], prompt: str) -> str:
    """Demonstrations as prompt/completion blocks separated by blank lines, then the query prompt."""
    blocks = [f"{d.prompt}\n{d.completion}" for d in demos]
    return "\n\n".join([*blocks, prompt])


def render_chat(tokenizer: Any, demos: Sequence[Example], prompt: str, system_prompt: str | None) -> str:
    """Demonstrations as earlier user/assistant turns of the chat, then the query as the last user turn."""
    messages: list[dict[str, str]] = []
    if system_prompt is not None:
        messages.append({"role": "system", "content": system_prompt})
    for d in demos:
        messages += [{"role": "user", "content": d.prompt}, {"role": "assistant", "content": d.completion}]
    messages.append({"role": "user", "content": prompt})
    return render_messages(tokenizer, messages)


def context_limit(model: Any, tokenizer: Any, budget: int | None) -> int | None:
    """Tokens a prompt plus its completion may take: model positions, tokenizer limit and budget, smallest."""
    config = getattr(model, "config", None)
    limits = [getattr(config, name, None) for name in ("max_position_embeddings", "n_positions")]
    limits += [getattr(tokenizer, "model_max_length", None), budget]
    real = [int(v) for v in limits if isinstance(v, int) and 0 < v < _UNBOUNDED]
    return min(real) if real else None


def _count(tokenizer: Any, text: str) -> int:
    """Tokens of a prompt exactly as generation will encode it (BOS added unless the text has one)."""
    from tunebench.evaluate.generate import encode_prompts

    return len(encode_prompts(tokenizer, [text])[0])


def _fit(
    demos: list[Example],
    drop_order: list[int],
    query: Example,
    render: Any,
    count: Any,
    limit: int | None,
    max_new_tokens: int,
) -> tuple[list[Example], str, bool]:
    """Drop demonstrations in `drop_order` until prompt + max_new_tokens fits; (kept, model prompt, fits)."""
    kept = list(demos)
    text = render(kept, query.prompt)
    if limit is None:
        return kept, text, True
    n_dropped = 0
    while (too_long := count(text) + max_new_tokens > limit) and n_dropped < len(demos):
        n_dropped += 1
        gone = set(drop_order[:n_dropped])
        kept = [d for i, d in enumerate(demos) if i not in gone]
        text = render(kept, query.prompt)
    return kept, text, not too_long


def build_fewshot_prompts(
    loaded: Any,
    examples: Sequence[Example],
    *,
    k: int,
    pool: Sequence[Example] | None,
    seed: int,
    max_new_tokens: int,
    budget: int | None = None,
) -> FewShotPrompts:
    """Prompts with k train demonstrations (k = 0: the plain zero-shot prompts) for a LoadedModel.

    `loaded` needs .model, .tokenizer, .use_chat, .system_prompt and .format_prompt (models.load.LoadedModel).
    """
    if k > 0 and not pool:
        raise DataError(
            f"eval.shots {k} needs train examples to draw demonstrations from; the train split is empty"
        )
    demos = choose_demonstrations(pool or [], k, seed=seed, test=examples)
    tokenizer = loaded.tokenizer
    limit = context_limit(loaded.model, tokenizer, budget)

    def render(chosen: list[Example], prompt: str) -> str:
        if not chosen:
            return loaded.format_prompt(prompt)
        if loaded.use_chat:
            return render_chat(tokenizer, chosen, prompt, loaded.system_prompt)
        return render_plain(chosen, prompt)

    def count(text: str) -> int:
        return _count(tokenizer, text)

    # longest first, so the fewest demonstrations go
    drop_order = sorted(range(len(demos)), key=lambda i: (-count(demos[i].prompt + demos[i].completion), i))
    model_prompts, plain_prompts, kept_counts, over = [], [], [], 0
    for ex in examples:
        kept, text, fits = _fit(demos, drop_order, ex, render, count, limit, max_new_tokens)
        model_prompts.append(text)
        plain_prompts.append(render_plain(kept, ex.prompt))
        kept_counts.append(len(kept))
        over += not fits
    dropped = [k - n for n in kept_counts]
    stats = {
        "k": k,
        "selection": "same demonstrations for every example (seeded draw from train)",
        "demo_ids": [d.id for d in demos],
        "context_limit": limit,
        "dropped_total": sum(dropped),
        "examples_with_dropped": sum(1 for d in dropped if d),
        "kept_mean": sum(kept_counts) / len(kept_counts) if kept_counts else float(k),
        "prompts_over_limit": over,
    }
    return FewShotPrompts(k, model_prompts, plain_prompts, [d.id for d in demos], kept_counts, stats)
