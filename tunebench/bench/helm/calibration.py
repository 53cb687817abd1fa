"""Expected calibration error with equal-mass bins, HELM's calibration metric (ECE-10).

Equal-mass binning (each bin holds the same number of predictions, sorted by confidence) rather than equal-width
binning: with small benchmark subsets most confidences crowd into a few width bins, and equal-mass bins keep every
bin's accuracy estimate on the same footing (Nixon et al. 2019; Kumar et al. 2019, as used by HELM). Written by
hand because the library HELM uses (`uncertainty-calibration`) is not a dependency here and the computation is a
dozen lines of NumPy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CalibrationBin:
    """One equal-mass bin: how many predictions, their mean confidence and their accuracy."""

    n: int
    confidence: float
    accuracy: float


def calibration_bins(confidences: Sequence[float], correct: Sequence[bool], n_bins: int = 10) -> list[CalibrationBin]:
    """Sort predictions by confidence and cut them into `n_bins` contiguous bins of equal size.

    When N is not a multiple of `n_bins` the first N mod n_bins bins hold one extra prediction (np.array_split);
    with fewer predictions than bins every prediction is its own bin. A stable sort keeps ties in input order,
    so the result is deterministic.
    """
    conf = np.asarray(confidences, dtype=float)
    hit = np.asarray(correct, dtype=float)
    if conf.shape != hit.shape or conf.ndim != 1:
        raise ValueError(f"confidences ({conf.shape}) and correct ({hit.shape}) must be 1-D and equally long")
    if n_bins < 1:
        raise ValueError("n_bins must be at least 1")
    if conf.size == 0:
        return []
    if np.any((conf < 0) | (conf > 1)) or np.any(np.isnan(conf)):
        raise ValueError("confidences must lie in [0, 1]")
    order = np.argsort(conf, kind="stable")
    bins = []
    for idx in np.array_split(order, min(n_bins, conf.size)):
        bins.append(CalibrationBin(n=int(idx.size), confidence=float(conf[idx].mean()), accuracy=float(hit[idx].mean())))
    return bins


def expected_calibration_error(confidences: Sequence[float], correct: Sequence[bool], n_bins: int = 10) -> float | None:
    """ECE = sum_b (n_b / N) |acc_b - conf_b| over equal-mass bins; None when there are no predictions."""
    bins = calibration_bins(confidences, correct, n_bins)
    if not bins:
        return None
    total = sum(b.n for b in bins)
    return float(sum(b.n / total * abs(b.accuracy - b.confidence) for b in bins))


def confidence_and_prediction(probs: Sequence[float]) -> tuple[float, int]:
    """The model's confidence is the largest normalized choice probability; its prediction is that choice.

    Ties go to the first choice, the same convention as argmax-based accuracy.
    """
    arr = np.asarray(probs, dtype=float)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError("choice probabilities must be a non-empty list")
    total = arr.sum()
    if not np.isfinite(total) or total <= 0:
        raise ValueError(f"choice probabilities must be non-negative and sum above 0, got {arr.tolist()}")
    arr = arr / total
    pred = int(np.argmax(arr))
    return float(arr[pred]), pred
