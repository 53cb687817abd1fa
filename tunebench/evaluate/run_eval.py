"""The `eval` stage: generate on a split and score it; returns the rows of predictions.jsonl and scores.json.

One call per system (base zero-shot, base k-shot, tuned), so `compare` can pair any two evaluations whose
test-set hashes agree. The stage writes nothing: the pipeline writes both files (docs/formats.md), on the main
process only, scores.json last so its presence means the evaluation finished.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tunebench import software_versions
from tunebench.config import EvalConfig
from tunebench.data.example import Example
from tunebench.errors import DataError
from tunebench.processes import check_rank, is_main, map_sharded
from tunebench.rundir import EVAL_SCHEMA as SCHEMA

if TYPE_CHECKING:
    from tunebench.evaluate.metrics import MetricStats


@dataclass
class Evaluation:
    """One evaluation's output: predictions.jsonl's rows (one per example, in order), scores.json's content, and
    the per-example statistics of every metric (rows in predictions.jsonl's order), which `compare` takes
    instead of computing them again (compare_systems(computed=...))."""

    predictions: list[dict[str, Any]]
    scores: dict[str, Any]
    stats: dict[str, MetricStats] = field(default_factory=dict)


def test_set_hash(examples: Iterable[Example | Mapping[str, Any]]) -> str:
    """SHA-256 over the sorted (id, references) pairs: equal hashes mean two evaluations scored the same items.

    Accepts Examples or predictions.jsonl rows (dicts with "id" and "references"). The hashing itself is
    `score.hash_test_set`, which `compare` recomputes from files, so the two can never disagree.
    """
    from tunebench.evaluate.score import hash_test_set

    ids: list[str] = []
    refs: list[list[str]] = []
    for e in examples:
        if isinstance(e, Mapping):
            ids.append(str(e["id"]))
            refs.append([str(r) for r in e["references"]])
        else:
            ids.append(e.id)
            refs.append(list(e.references))
    return hash_test_set(ids, refs)


test_set_hash.__test__ = False  # type: ignore[attr-defined]  # not a pytest test despite its name


def evaluate(
    loaded: Any,
    examples: Sequence[Example],
    *,
    cfg: EvalConfig,
    system: dict[str, Any],
    shots: int = 0,
    demos: Sequence[Example] | None = None,
    seed: int = 0,
    progress: bool = True,
    context_budget: int | None = None,
    bf16: bool = False,
    precision_record: dict[str, Any] | None = None,
    split: str | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> Evaluation:
    """Evaluate `loaded` (a models.load.LoadedModel) on `examples`; returns the predictions, scores (with the
    outputs' diagnostics: degenerate outputs, per-label breakdown and majority-label baseline,
    tunebench.evaluate.verdicts) and the metrics' statistics.

    Examples are scored as given: the caller applies eval.limit (the CLI's --limit may differ) and names the
    split when it is not `cfg.split`. shots > 0 prepends that many demonstrations drawn from `demos` (the
    TRAIN split); `context_budget` caps prompt + max_new_tokens below the model's own limit. `rank` of
    `world_size` processes: each process generates for its shard of the examples, the outputs are gathered so
    every process returns the whole evaluation, and only the main one shows progress (processes.map_sharded).
    The precision the model computes in (bf16 under `bf16` autocast, else read from its weights:
    models.precision.model_precision) is recorded in scores.json and in every metric's signature;
    `precision_record` (how it was chosen: probe and parity gate, evaluate/parity.py) is kept beside it.
    Raises DataError for no examples, ValueError for a rank outside the world.
    """
    check_rank(rank, world_size)
    from tunebench.evaluate.fewshot import build_fewshot_prompts
    from tunebench.evaluate.generate import generate_texts
    from tunebench.evaluate.metrics import compute_metric_stats, per_example_rows, summarize
    from tunebench.evaluate.metrics.signature import with_precision
    from tunebench.evaluate.verdicts import diagnostics
    from tunebench.models.precision import model_precision

    examples = list(examples)
    split = split or cfg.split
    if not examples:
        raise DataError(f"the {split} split has no examples to evaluate; check data.splits and eval.limit")
    gen = cfg.generation
    fewshot = build_fewshot_prompts(
        loaded,
        examples,
        k=shots,
        pool=demos,
        seed=seed,
        max_new_tokens=gen.max_new_tokens,
        budget=context_budget,
    )
    start = time.perf_counter()
    results = map_sharded(
        lambda prompts: generate_texts(loaded.model, loaded.tokenizer, prompts, family=loaded.family, gen=gen,
                                       progress=progress and is_main(rank), seed=seed, bf16=bf16),
        fewshot.model_prompts, rank=rank, world_size=world_size,
    )  # fmt: skip
    wall_s = time.perf_counter() - start
    predictions = [r.text for r in results]
    references = [list(e.references) for e in examples]
    stats = compute_metric_stats(predictions, references, cfg.metrics, settings=cfg.metric_settings())
    per_example = per_example_rows(stats)
    metrics = summarize(stats, bootstrap=cfg.bootstrap, seed=seed)
    precision = "bf16" if bf16 else model_precision(loaded.model)
    for entry in metrics.values():
        entry["signature"] = with_precision(entry["signature"], precision)

    rows = [
        {
            "id": e.id,
            "prompt": r.cut_prompt if r.n_cut_tokens else prompt,
            "references": list(e.references),
            "prediction": r.text,
            "scores": s,
            "gen_time_s": round(r.time_s, 4),
            "n_prompt_tokens": r.n_prompt_tokens,
            "n_new_tokens": r.n_new_tokens,
            "n_cut_tokens": r.n_cut_tokens,
        }
        for e, prompt, r, s in zip(examples, fewshot.model_prompts, results, per_example, strict=True)
    ]
    scores = {
        "schema": SCHEMA,
        "system": dict(system),
        "test_set": {"split": split, "n": len(examples), "hash": test_set_hash(examples)},
        "generation": {
            **gen.model_dump(mode="json"),
            "seed": seed,
            "family": loaded.family,
            "prompt_format": "chat" if loaded.use_chat else "plain",
            "system_prompt": loaded.system_prompt,
            "bf16": bf16,
            "precision": precision,
            **({"precision_choice": precision_record} if precision_record else {}),
            "software": software_versions(),
        },
        "metrics": metrics,
        "diagnostics": diagnostics(predictions, references, list(stats)),
        "examples_per_s": len(examples) / wall_s if wall_s > 0 else None,
        "gen_time_s": wall_s,
        "mean_new_tokens": sum(r.n_new_tokens for r in results) / len(results),
        "prompts_cut": sum(1 for r in results if r.n_cut_tokens),
        "fewshot": fewshot.stats,
    }
    return Evaluation(rows, scores, stats)
