"""Metrics: one object per metric in one registry (base.py); ROUGE (rouge_score's numbers, faster), BLEU/chrF
(sacreBLEU), exact match, accuracy, macro-F1, token F1, and acc/acc_norm for multiple-choice benchmarks.

Import from here: `compute_metric_stats` computes every requested metric's statistics once; `summarize` and
`per_example_rows` turn them into scores.json and predictions.jsonl entries (`score_corpus` and
`per_example_scores` do both steps); `metric_class` and `METRICS` answer what a metric is (direction, scale).
"""

from tunebench.evaluate.metrics.base import (
    METRICS,
    Metric,
    MetricSettings,
    MetricWarning,
    get_metric,
    known_names,
    register_metric,
    unknown_name_message,
)
from tunebench.evaluate.metrics.registry import (
    ROUGE_TYPES,
    MetricStats,
    check_metric_names,
    compute_metric_stats,
    expand_metrics,
    expand_metrics_any,
    metric_class,
    per_example_rows,
    per_example_scores,
    score_corpus,
    summarize,
)
from tunebench.evaluate.metrics.signature import parse_signature

__all__ = [
    "METRICS",
    "ROUGE_TYPES",
    "Metric",
    "MetricSettings",
    "MetricStats",
    "MetricWarning",
    "check_metric_names",
    "compute_metric_stats",
    "expand_metrics",
    "expand_metrics_any",
    "get_metric",
    "known_names",
    "metric_class",
    "parse_signature",
    "per_example_rows",
    "per_example_scores",
    "register_metric",
    "score_corpus",
    "summarize",
    "unknown_name_message",
]
