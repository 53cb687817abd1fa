"""The metric registry: names -> per-example statistics, a score from summed statistics, and a signature.

Every metric is reduced to the same shape (see tunebench.evaluate.stats) so corpus scores, bootstrap
intervals, paired tests and per-example scores all come from one computation per metric.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tunebench.errors import ConfigError, DataError
from tunebench.evaluate.metrics import bleu, classification, rouge
from tunebench.evaluate.metrics.signature import make_signature, refs_field
from tunebench.evaluate.stats import ScoreFn, bootstrap_ci, mean_score

ROUGE_TYPES = rouge.ROUGE_TYPES
METRIC_NAMES = (*ROUGE_TYPES, "bleu", "chrf", "exact_match", "accuracy", "macro_f1")
"""Every metric name a user may give, besides 'rouge' (= the four ROUGE types)."""

PER_EXAMPLE_NAMES = (*ROUGE_TYPES, "bleu", "chrf", "exact_match", "accuracy")
"""Metrics with a per-example value (sentence BLEU/chrF for the corpus metrics; macro-F1 has none)."""


@dataclass
class MetricStats:
    """One metric over one corpus: per-example statistics and how to turn their sums into the score."""

    name: str
    stats: np.ndarray  # (N, K)
    score_fn: ScoreFn
    signature: str
    per_example: np.ndarray | None  # (N,) values for win/tie/loss and predictions.jsonl; None for macro-F1

    def score(self) -> float:
        return float(self.score_fn(self.stats.sum(0, keepdims=True))[0])


def expand_metrics(metrics: Sequence[str] | str) -> list[str]:
    """Validate metric names (a list or comma-separated string), expand 'rouge', keep order, drop repeats."""
    names = (
        [m.strip() for m in metrics.split(",")] if isinstance(metrics, str) else [m.strip() for m in metrics]
    )
    out: list[str] = []
    for name in names:
        if not name:
            continue
        if name == "rouge":
            expanded = list(ROUGE_TYPES)
        elif name in METRIC_NAMES:
            expanded = [name]
        else:
            raise ConfigError(f"unknown metric {name!r}: choose from rouge, {', '.join(METRIC_NAMES)}")
        out.extend(m for m in expanded if m not in out)
    if not out:
        raise ConfigError("no metric given: choose from rouge, " + ", ".join(METRIC_NAMES))
    return out


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
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    metrics: Sequence[str] | str,
    *,
    stem: bool = True,
) -> dict[str, MetricStats]:
    """Per-example statistics of every requested metric (ROUGE types share one pass over the texts)."""
    names = expand_metrics(metrics)
    _check_inputs(predictions, references)
    n = len(predictions)
    nrefs = refs_field(references)
    out: dict[str, MetricStats] = {}
    rouge_types = [m for m in names if m in ROUGE_TYPES]
    prf = rouge.rouge_prf(predictions, references, rouge_types, stem=stem) if rouge_types else {}
    for name in names:
        if name in ROUGE_TYPES:
            sig = make_signature(
                name, tok="rouge_score-default", stem=stem, lsum_split="newline", refs=nrefs, agg="best-f"
            )
            # columns: precision, recall, F1; the score is mean F1
            out[name] = MetricStats(name, prf[name], lambda s: s[:, 2] / n, sig, prf[name][:, 2])
        elif name in ("bleu", "chrf"):
            stats, sig = bleu.corpus_stats(name, predictions, references)
            out[name] = MetricStats(
                name,
                stats,
                lambda s, _m=name: bleu.scores_from_sums(_m, s),
                sig,
                bleu.sentence_scores(name, stats),
            )
        elif name == "exact_match":
            values = classification.exact_match(predictions, references)
            sig = make_signature(name, norm="whitespace", case="yes", refs=nrefs, agg="any")
            out[name] = MetricStats(name, values[:, None], mean_score(n), sig, values)
        elif name == "accuracy":
            values = classification.accuracy(predictions, references)
            sig = make_signature(name, norm="casefold-whitespace-punct", refs=nrefs, agg="any")
            out[name] = MetricStats(name, values[:, None], mean_score(n), sig, values)
        else:  # macro_f1
            stats = classification.macro_f1_stats(predictions, references)
            sig = make_signature(name, norm="casefold-whitespace-punct", gold="first-ref", labels="gold")
            out[name] = MetricStats(name, stats, classification.macro_f1_from_sums, sig, None)
    return out


def summarize(ms: MetricStats, *, bootstrap: int, seed: int) -> dict[str, Any]:
    """The scores.json entry of one metric: score (+ P/R/F1 for ROUGE), ci95, signature, n."""
    entry: dict[str, Any] = {}
    if ms.name in ROUGE_TYPES:
        p, r, f = (float(x) for x in ms.stats.mean(0))
        entry.update(precision=p, recall=r, f1=f)
    entry["score"] = ms.score()
    entry.update(bleu.details(ms.name, ms.stats.sum(0)) if ms.name in ("bleu", "chrf") else {})
    entry["ci95"] = (
        bootstrap_ci(ms.stats, ms.score_fn, n_resamples=bootstrap, seed=seed) if bootstrap > 0 else None
    )
    entry["signature"] = ms.signature
    entry["n"] = len(ms.stats)
    return entry


def score_corpus(
    predictions: list[str],
    references: list[list[str]],
    metrics: Sequence[str] | str,
    *,
    stem: bool = True,
    bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Corpus scores keyed by metric, each with a seeded 95% bootstrap interval (None when bootstrap=0).

    ROUGE, exact match and accuracy are on 0-1; BLEU and chrF on 0-100 as sacreBLEU reports them.
    """
    all_stats = compute_metric_stats(predictions, references, metrics, stem=stem)
    return {name: summarize(ms, bootstrap=bootstrap, seed=seed) for name, ms in all_stats.items()}


def per_example_scores(
    predictions: list[str], references: list[list[str]], metrics: Sequence[str] | str, *, stem: bool = True
) -> list[dict[str, float]]:
    """One {metric: value} dict per example, for predictions.jsonl (macro-F1 has no per-example value)."""
    all_stats = compute_metric_stats(predictions, references, metrics, stem=stem)
    columns = {name: ms.per_example for name, ms in all_stats.items() if ms.per_example is not None}
    return [{name: float(values[k]) for name, values in columns.items()} for k in range(len(predictions))]
