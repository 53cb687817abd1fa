"""HELM-style multi-metric evaluation (Liang et al. 2022, "Holistic Evaluation of Language Models").

One table per model: accuracy, calibration (ECE-10, equal-mass bins), robustness and fairness (worst case per
instance under seeded input perturbations), bias (demographic representation), toxicity (a shipped lexicon) and
efficiency. `helm_evaluate` runs it over benchmark tasks; the report shows one column per model
(report/tables.py `helm_table`). The runner (and so torch) is imported only when `helm_evaluate` is first used.
"""

from __future__ import annotations

from typing import Any

__all__ = ["helm_evaluate"]


def __getattr__(name: str) -> Any:
    if name == "helm_evaluate":
        from tunebench.bench.helm.runner import helm_evaluate

        return helm_evaluate
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
