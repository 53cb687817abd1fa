"""Metrics: ROUGE (rouge_score's numbers, faster), BLEU/chrF (sacreBLEU), exact match, accuracy, macro-F1.

Import from here: `score_corpus` for corpus scores with bootstrap intervals, `per_example_scores` for
predictions.jsonl, `compute_metric_stats` for the per-example statistics the paired tests resample.
"""

from tunebench.evaluate.metrics.registry import (
    METRIC_NAMES,
    PER_EXAMPLE_NAMES,
    ROUGE_TYPES,
    MetricStats,
    compute_metric_stats,
    expand_metrics,
    per_example_scores,
    score_corpus,
)
from tunebench.evaluate.metrics.signature import parse_signature

__all__ = [
    "METRIC_NAMES",
    "PER_EXAMPLE_NAMES",
    "ROUGE_TYPES",
    "MetricStats",
    "compute_metric_stats",
    "expand_metrics",
    "parse_signature",
    "per_example_scores",
    "score_corpus",
]
