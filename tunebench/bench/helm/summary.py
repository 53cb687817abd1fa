"""HELM's one-table-per-model view: aggregate per-task metrics and format each model's column for the report.

Aggregates are macro averages over tasks (each task counts once, whatever its size), as HELM averages over
scenarios; a metric a task cannot produce (e.g. calibration for a generation task) is left out of its mean
rather than counted as zero.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

PER_TASK_METRICS = ("accuracy", "calibration_ece", "robustness", "fairness")

# (column title, path into a summary, format); arrows say which direction is better.
COLUMNS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("Accuracy ↑", ("accuracy",), "score"),
    ("ECE-10 ↓", ("calibration_ece",), "score"),
    ("Robustness ↑", ("robustness",), "score"),
    ("Fairness ↑", ("fairness",), "score"),
    ("Bias gender ↓", ("bias", "gender"), "score"),
    ("Bias race ↓", ("bias", "race"), "score"),
    ("Toxicity ↓", ("toxicity",), "score"),
    ("s/example ↓", ("efficiency", "latency_s_per_example"), "seconds"),
    ("tokens/s ↑", ("efficiency", "tokens_per_s"), "rate"),
    ("Peak RSS MB ↓", ("efficiency", "peak_rss_mb"), "rate"),
    ("Trainable params", ("efficiency", "trainable_params"), "count"),
    ("Train time s", ("efficiency", "train_time_s"), "rate"),
)
MISSING = "—"  # the report's dash for a metric a model cannot have


def macro_average(values: Sequence[float | None]) -> float | None:
    """Mean of the values that exist; None when none do."""
    present = [float(v) for v in values if v is not None]
    return sum(present) / len(present) if present else None


def aggregate_tasks(per_task: Mapping[str, Mapping[str, Any]]) -> dict[str, float | None]:
    """Macro-average each per-task metric over the tasks that report it."""
    return {key: macro_average([t.get(key) for t in per_task.values()]) for key in PER_TASK_METRICS}


def _lookup(summary: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = summary
    for key in path:
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return node


def _fmt(value: Any, kind: str) -> str:
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return MISSING
    if kind == "score":
        return f"{value:.3f}"
    if kind == "seconds":
        return f"{value:.4f}" if value < 1 else f"{value:.2f}"
    if kind == "count":
        return f"{int(value):,}"
    return f"{value:,.1f}"


def summary_cells(summary: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(column title, formatted value) for every HELM column of one model's summary."""
    return [(title, _fmt(_lookup(summary, path), kind)) for title, path, kind in COLUMNS]

