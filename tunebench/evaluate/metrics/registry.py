"""The metric registry's front door: check names, compute every requested metric's statistics once, summarize.

Each metric is an object (tunebench.evaluate.metrics.base.Metric) registered by name; importing its module
registers it. `compute_metric_stats` returns one `MetricStats` per metric, from which the corpus score,
bootstrap interval, paired tests and per-example values are all derived without recomputing statistics.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tunebench.errors import ConfigError, DataError

# the built-in metrics: importing a module registers its metrics (add a new metric module to this line)
from tunebench.evaluate.metrics import bleu, chrf_plus, classification, ner, perplexity, rouge  # noqa: F401
from tunebench.evaluate.metrics.base import (
    GROUPS,
    METRICS,
    Metric,
    MetricSettings,
    MetricWarning,
    get_metric,
    known_names,
    unknown_name_message,
)
from tunebench.evaluate.stats import ScoreFn, bootstrap_ci

ROUGE_TYPES = rouge.ROUGE_TYPES


@dataclass
class MetricStats:
    """One metric over one corpus: the metric object, its (N, K) statistics and their signature."""

    metric: Metric
    stats: np.ndarray  # (N, K)
    signature: str

    @property
    def name(self) -> str:
        return self.metric.name

    @property
    def score_fn(self) -> ScoreFn:
        """Summed statistics (B, K) -> B scores, for tunebench.evaluate.stats."""
        n, metric = len(self.stats), self.metric
        return lambda sums: metric.score(sums, n)

    @property
    def per_example(self) -> np.ndarray | None:
        """(N,) values for win/tie/loss and predictions.jsonl; None for a metric without (macro-F1)."""
        return self.metric.per_example(self.stats)

    def score(self) -> float:
        return float(self.metric.score(self.stats.sum(0, keepdims=True), len(self.stats))[0])

    def summary(self, *, bootstrap: int, seed: int) -> dict[str, Any]:
        """The scores.json entry: score (+ P/R/F1 for ROUGE, precisions/bp for BLEU), ci95, signature, n."""
        details = self.metric.details(self.stats)
        entry: dict[str, Any] = {k: details[k] for k in ("precision", "recall", "f1") if k in details}
        entry["score"] = self.score()
        entry.update({k: v for k, v in details.items() if k not in entry})
        entry["ci95"] = (
            bootstrap_ci(self.stats, self.score_fn, n_resamples=bootstrap, seed=seed) if bootstrap > 0 else None
        )
        entry["signature"] = self.signature
        entry["n"] = len(self.stats)
        return entry


def metric_class(name: str) -> type[Metric]:
    """The registered class of a metric name (its higher_is_better, scale, ...); ConfigError when unknown."""
    if name not in METRICS:
        raise ConfigError(unknown_name_message("metric", name, known_names(None)))
    return METRICS[name]


def check_metric_names(names: Sequence[str] | str, key: str, *, inputs: str | None = "text") -> list[str]:
    """Validate metric names given at config key `key`; return them expanded (groups such as 'rouge' opened),
    in order, without repeats. ConfigError (exit 2) names the key, the bad value and the known names."""
    raw = [m.strip() for m in names.split(",")] if isinstance(names, str) else [str(m).strip() for m in names]
    known = known_names(inputs)
    out: list[str] = []
    for name in raw:
        if not name:
            continue
        if name not in known:
            raise ConfigError(unknown_name_message(key, name, known))
        out.extend(m for m in GROUPS.get(name, (name,)) if m not in out)
    if not out:
        raise ConfigError(f"{key}: no metric given; known metrics: {', '.join(known)}")
    return out


def expand_metrics(metrics: Sequence[str] | str) -> list[str]:
    """Validate metric names (a list or comma-separated string), expand 'rouge', keep order, drop repeats."""
    return check_metric_names(metrics, "metrics")


def _check_inputs(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if len(predictions) != len(references):
        raise DataError(
            f"{len(predictions)} predictions but {len(references)} reference lists: pair them by id"
        )
    if not predictions:
        raise DataError("nothing to score: the prediction list is empty")
    for k, (p, refs) in enumerate(zip(predictions, references, strict=True)):
        if not isinstance(p, str):
            raise DataError(f"example {k}: the prediction must be a string, got {type(p).__name__}")
        if isinstance(refs, str) or not refs or not all(isinstance(r, str) for r in refs):
            raise DataError(f"example {k}: references must be a non-empty list of strings")


def compute_metric_stats(
    predictions: Sequence[Any],
    references: Sequence[Sequence[Any]],
    metrics: Sequence[str] | str,
    *,
    stem: bool = True,
    settings: MetricSettings | None = None,
    warn: bool = True,
) -> dict[str, MetricStats]:
    """Per-example statistics of every requested metric, computed once (metrics of one class that can share a
    pass, the ROUGE types, share it). `settings` (default: from `stem`) go to every metric; with `warn`, a
    MetricWarning is issued for each metric whose tokenizer would make the score meaningless here."""
    settings = settings or MetricSettings(stem=stem)
    objects = [get_metric(name, settings) for name in expand_metrics_any(metrics)]
    if all(m.inputs == "text" for m in objects):
        _check_inputs(predictions, references)
    elif len(predictions) != len(references) or not predictions:
        raise DataError(f"{len(predictions)} predictions but {len(references)} references: nothing to pair")
    by_class: dict[Any, list[Metric]] = {}
    for m in objects:
        by_class.setdefault(type(m).stats_together.__func__, []).append(m)  # type: ignore[attr-defined]
    stats: dict[str, np.ndarray] = {}
    for group in by_class.values():
        stats.update(zip((m.name for m in group), type(group[0]).stats_together(group, predictions, references),
                         strict=True))
    out = {}
    for m in objects:
        if warn:
            for sentence in m.warnings(references):
                warnings.warn(sentence, MetricWarning, stacklevel=2)
        out[m.name] = MetricStats(m, stats[m.name], m.signature(references))
    return out


def expand_metrics_any(metrics: Sequence[str] | str) -> list[str]:
    """Like expand_metrics, for names of any input kind (text metrics and multiple-choice ones)."""
    return check_metric_names(metrics, "metrics", inputs=None)


def summarize(all_stats: Mapping[str, MetricStats], *, bootstrap: int, seed: int) -> dict[str, dict[str, Any]]:
    """scores.json's `metrics` mapping from computed statistics (see MetricStats.summary)."""
    return {name: ms.summary(bootstrap=bootstrap, seed=seed) for name, ms in all_stats.items()}


def per_example_rows(all_stats: Mapping[str, MetricStats]) -> list[dict[str, float]]:
    """One {metric: value} dict per example from computed statistics (metrics without per-example values left
    out)."""
    columns = {name: ms.per_example for name, ms in all_stats.items() if ms.per_example is not None}
    n = len(next(iter(all_stats.values())).stats) if all_stats else 0
    return [{name: float(values[k]) for name, values in columns.items()} for k in range(n)]


def score_corpus(
    predictions: list[str],
    references: list[list[str]],
    metrics: Sequence[str] | str,
    *,
    stem: bool = True,
    bootstrap: int = 1000,
    seed: int = 0,
    settings: MetricSettings | None = None,
) -> dict[str, dict[str, Any]]:
    """Corpus scores keyed by metric, each with a seeded 95% bootstrap interval (None when bootstrap=0).

    ROUGE, exact match and accuracy are on 0-1; BLEU and chrF on 0-100 as sacreBLEU reports them.
    """
    all_stats = compute_metric_stats(predictions, references, metrics, stem=stem, settings=settings)
    return summarize(all_stats, bootstrap=bootstrap, seed=seed)


def per_example_scores(
    predictions: list[str],
    references: list[list[str]],
    metrics: Sequence[str] | str,
    *,
    stem: bool = True,
    settings: MetricSettings | None = None,
) -> list[dict[str, float]]:
    """One {metric: value} dict per example, for predictions.jsonl (macro-F1 has no per-example value)."""
    return per_example_rows(compute_metric_stats(predictions, references, metrics, stem=stem, settings=settings))
