"""The parity gate for benchmarks: a fast precision scores a task only where it changes no conclusion.

`bench.precision` (bf16, fp16, int8 or auto) is used for a task after the same gate as generation's
(`evaluate/parity.py`, whose paired check, verdict, cache and decision this module reuses): a seeded calibration
slice of the task's scored instances (`bench.parity.examples`, default 64, drawn with the run's seed) is scored in
fp32 and in the fast precision, and the paired bootstrap's 95% interval of fast - fp32 must lie within a margin:

- multiple-choice tasks: per-question correctness, each accuracy metric the task reports (acc and acc_norm),
  within ±`bench.parity.accuracy_margin` (default one point, the issue's number; on 64 questions one flipped
  answer is already 1.6 points, so the default slice accepts only a precision that flips none);
- generation tasks: the task's first metric per question, the same margin (one hundredth of its scale);
- perplexity tasks: the per-document NLL in nats/token (the corpus NLL per token, a ratio of per-document sums,
  resampled over documents) within ±ln(1 + `bench.parity.perplexity_margin`), i.e. token perplexity within ±1%
  by default: half the 2% perplexity rise the forgetting suite is sized to detect (issue 9), so a precision that
  passes cannot by itself make or hide such a rise. KL is not gated: it is measured with base and tuned in the
  same precision.

The verdict is cached per (model, adapter weights, precision, task: name, version, the slice's instances, prompt
format, metrics and margins) like generation's, and the decision record goes into results.json beside the
precision each task was scored in. Base and tuned of one run take one decision (`decide_bench_precision` with
both models): a fast precision only where both pass.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tunebench.bench.instances import Instance, PreparedTask
from tunebench.config import BenchConfig, BenchParityConfig
from tunebench.evaluate.parity import (
    GateResult,
    Variant,
    cached_gate,
    calibration_slice,
    choose_gated,
    model_key,
)
from tunebench.evaluate.parity import verdict as gate_verdict

ACCURACY_METRICS = ("acc", "acc_norm")


def gate_margins(task: PreparedTask, cfg: BenchParityConfig) -> dict[str, float]:
    """{metric: margin} the gate checks for `task`: nll within ±ln(1 + perplexity_margin) nats/token for a
    perplexity task; acc/acc_norm (multiple choice) or the first metric (generation) within accuracy_margin,
    default one hundredth of the metric's scale (one accuracy point)."""
    from tunebench.evaluate.metrics import METRICS

    if task.output_type == "perplexity":
        return {"nll": math.log1p(cfg.perplexity_margin)}
    if task.output_type == "multiple_choice":
        names = [m for m in task.metrics if m in ACCURACY_METRICS] or list(ACCURACY_METRICS[:1])
    else:
        names = task.metrics[:1]
    return {m: cfg.accuracy_margin if cfg.accuracy_margin is not None else 0.01 * METRICS[m].scale for m in names}


def instances_hash(instances: Sequence[Instance]) -> str:
    """What the calibration slice scores: a hash of each instance's id, full prompt, choices and references."""
    payload = [[i.id, i.prompt, list(i.choices), list(i.references)] for i in instances]
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode()).hexdigest()[:16]


def _calibration_scores(loaded: Any, task: PreparedTask, items: list[Instance], metrics: Sequence[str], *,
                        batch_size: int, seed: int) -> tuple[dict[str, tuple[Any, Callable[[Any], Any]]], list[Any]]:
    """{metric: ((N, K) statistics, score function)} of `items` scored by `loaded`, and one comparable output
    per item (the predictions; for perplexity the document's NLL)."""
    from tunebench.bench.scoring import (
        choice_stats,
        perplexity_documents,
        score_generation,
        score_multiple_choice,
    )

    if task.output_type == "perplexity":
        from tunebench.bench.perplexity import PERPLEXITY_METRICS, score_documents

        settings = task.spec.perplexity
        rows = score_documents(loaded, perplexity_documents(task, items), max_length=settings.max_length,
                               context_len=settings.context_len, kl=False)
        metric = PERPLEXITY_METRICS["nll"]
        return {"nll": (metric.stats(rows), metric.score_sums)}, [r["nll"] for r in rows]
    if task.output_type == "multiple_choice":
        rows = score_multiple_choice(loaded, items, batch_size=batch_size)
        stats = choice_stats(rows, list(metrics))
        outputs = [(r["prediction"], r["prediction_norm"]) for r in rows]
    else:
        rows, stats = score_generation(loaded, task, items, batch_size=batch_size, seed=seed)
        outputs = [r["output"] for r in rows]
    return {m: (stats[m].stats, stats[m].score_fn) for m in metrics}, outputs


def bench_parity_gate(loaded: Any, task: PreparedTask, cfg: BenchParityConfig, precision: str, *, seed: int = 0,
                      n_resamples: int = 1000, batch_size: int = 16, cache_dir: Path | None = None,
                      variant: Variant | None = None, use_cache: bool = True) -> GateResult:
    """Score the calibration slice of `task` with `loaded` (a models.load.LoadedModel) in fp32 and in
    `precision`; accept when every gated metric's paired-bootstrap 95% interval of fast - fp32 lies within its
    margin (`gate_margins`; `n_resamples` seeded by `seed`).

    variant: how the fast model is made (default `models.precision.precision_variant`; tests inject a perturbed
    one). A cached verdict for the same key is returned without scoring (`cached=True`). Raises ValueError for a
    task without instances, ConfigError for a precision the model's device cannot run.
    """
    from tunebench.models.precision import REFERENCE, precision_variant

    if not task.instances:
        raise ValueError(f"task {task.spec.name}: no instances to calibrate on")
    variant = variant or precision_variant
    margins = gate_margins(task, cfg)
    calibration = calibration_slice(task.instances, cfg.examples, seed)
    key = {**model_key(loaded, precision), "kind": "bench", "task": task.spec.name, "version": task.spec.version,
           "output_type": task.output_type, "instances": instances_hash(calibration), "n": len(calibration),
           "margins": margins, "seed": seed, "bootstrap": n_resamples}
    what = "documents" if task.output_type == "perplexity" else "questions"

    def compute() -> GateResult:
        from tunebench.evaluate.parity import paired_check

        runs = {}
        for name in (REFERENCE, precision):
            model = variant(loaded.model, name)
            runs[name] = _calibration_scores(dataclasses.replace(loaded, model=model), task, calibration,
                                             list(margins), batch_size=batch_size, seed=seed)
            del model
        (ref, ref_out), (fast, fast_out) = runs[REFERENCE], runs[precision]
        checks = {m: paired_check(ref[m][0], fast[m][0], ref[m][1], margin, n_resamples=n_resamples, seed=seed)
                  for m, margin in margins.items()}
        if task.output_type == "perplexity":
            identical = None
        else:
            same = sum(a == b for a, b in zip(ref_out, fast_out, strict=True))
            identical = f"{same} of {len(calibration)} predictions identical"
        return gate_verdict(loaded, precision, len(calibration), checks, what=f"{what} of {task.spec.name}",
                            identical=identical)

    return cached_gate(key, compute, cache_dir=cache_dir, use_cache=use_cache)


def decide_bench_precision(models: Sequence[Callable[[], Any]], tasks: Sequence[PreparedTask], cfg: BenchConfig, *,
                           seed: int = 0, n_resamples: int = 1000, batch_size: int = 16,
                           pinned: Mapping[str, str] | None = None, cache_dir: Path | None = None,
                           timer: Any = None, variant: Variant | None = None
                           ) -> dict[str, tuple[str | None, dict[str, Any]]]:
    """{task name: (precision, record)} for every system of one comparison (the base and the tuned model): per
    task, `evaluate.parity.choose_gated` on bench.precision with `bench_parity_gate`, so a fast precision scores
    a task only where the gate passes for every model, else fp32 with the reason. bench.precision None -> each
    task as loaded (None).

    pinned: {task: precision} that replaces bench.precision for that task (still gated): a run whose base (or
    tuned) benchmarks were scored earlier takes their precision, so the pair always shares one.
    A task no larger than the calibration slice is scored in fp32 without a gate: the gate would score all of it
    in fp32 anyway, so a fast precision could only add time.
    """
    from tunebench.models.precision import REFERENCE

    out: dict[str, tuple[str | None, dict[str, Any]]] = {}
    for task in tasks:
        name = task.spec.name
        requested = (pinned or {}).get(name, cfg.precision)
        if requested not in (None, REFERENCE) and len(task.instances) <= cfg.parity.examples:
            out[name] = (REFERENCE, {"requested": cfg.precision, "used": REFERENCE, "reason": (
                f"fp32: the task's {len(task.instances)} instances are no more than the calibration slice "
                f"(bench.parity.examples {cfg.parity.examples}), so the gate would score all of them in fp32 anyway")})
            continue

        def gate(loaded: Any, fast: str, task: PreparedTask = task) -> GateResult:
            return bench_parity_gate(loaded, task, cfg.parity, fast, seed=seed, n_resamples=n_resamples,
                                     batch_size=batch_size, cache_dir=cache_dir, variant=variant)

        used, record = choose_gated(models, requested, gate, cache_dir=cache_dir, timer=timer)
        if pinned and name in pinned:
            record = {**record, "requested": cfg.precision, "pinned": pinned[name],
                      "reason": f"pinned to {pinned[name]}, the precision the other system of the pair was scored "
                                f"in; {record['reason']}"}
        out[name] = (used, record)
    return out
