"""Generation metrics during training: the loss falls long before summaries get better, so measure both.

Every `train.gen_eval.every` optimizer steps the model completes a fixed subset of the validation split (the
first `gen_eval.examples`, the same ones every time so the numbers are comparable across steps) with the
run's decoding settings, and `gen_eval.metric` (e.g. rougeL) is scored with the evaluation stage's metrics.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from tunebench.config import GenerationConfig, RunConfig
from tunebench.data.example import Example


@dataclass(frozen=True)
class GenEvalSet:
    """The fixed validation subset: chat-formatted prompts and every example's references."""

    ids: list[str]
    prompts: list[str]
    references: list[list[str]]

    def __len__(self) -> int:
        return len(self.ids)


def gen_eval_set(validation: Sequence[Example], n: int, format_prompt: Callable[[str], str]) -> GenEvalSet:
    """The first `n` validation examples (validation is already in seeded order, so this is a fixed sample)."""
    picked = list(validation[:n])
    return GenEvalSet(
        ids=[ex.id for ex in picked],
        prompts=[format_prompt(ex.prompt) for ex in picked],
        references=[list(ex.references) or [ex.completion] for ex in picked],
    )


def gen_eval_generation(cfg: RunConfig) -> GenerationConfig:
    """The evaluation stage's decoding settings with the shorter in-training length cap."""
    return cfg.eval.generation.model_copy(update={"max_new_tokens": cfg.train.gen_eval.max_new_tokens})


def run_gen_eval(
    model: Any,
    tokenizer: Any,
    subset: GenEvalSet,
    *,
    family: Literal["causal", "seq2seq"],
    metric: str,
    generation: GenerationConfig,
    stem: bool = True,
    bf16: bool = False,
    seed: int = 0,
    settings: Any = None,
) -> dict[str, Any]:
    """Generate on the subset and score it: {"metric", "value", "n", "time_s", "example"}.

    `settings` (a tunebench.evaluate.metrics.MetricSettings; default: from `stem`) are the eval section's.

    `generate_texts` restores the model's train mode and forks the RNG, so the training run continues exactly
    as if no generation had happened (resume stays exact).
    """
    from tunebench.evaluate.generate import generate_texts
    from tunebench.evaluate.metrics import score_corpus

    start = time.perf_counter()
    results = generate_texts(model, tokenizer, subset.prompts, family=family, gen=generation, seed=seed, bf16=bf16)
    predictions = [r.text for r in results]
    scores = score_corpus(predictions, subset.references, [metric], stem=stem, bootstrap=0, seed=seed,
                          settings=settings)
    return {
        "metric": metric,
        "value": float(scores[metric]["score"]),
        "n": len(predictions),
        "time_s": round(time.perf_counter() - start, 3),
        "example": {"id": subset.ids[0], "prediction": predictions[0]} if predictions else None,
    }
