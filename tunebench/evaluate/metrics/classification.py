"""Exact match, accuracy and macro-F1 for short answers and labels produced by generation.

Written by hand because the normalisation must be the same one the signatures describe, and macro-F1 must be
recomputable from per-example statistics for the bootstrap (scikit-learn is not a dependency). Exact match
compares whitespace-collapsed text, case-sensitive, against any reference; accuracy and macro-F1 compare
labels: casefolded, whitespace-collapsed, surrounding punctuation stripped. Macro-F1 takes the first reference
as the gold label and averages F1 over the gold label set (a prediction outside it is wrong for its gold class
and forms no class of its own), counting only classes present in the (re)sample.
"""

from __future__ import annotations

import string
from collections.abc import Sequence

import numpy as np

_PUNCT = string.punctuation + string.whitespace


def normalize_text(text: str) -> str:
    return " ".join(text.split())


def normalize_label(text: str) -> str:
    return " ".join(text.casefold().split()).strip(_PUNCT)


def exact_match(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> np.ndarray:
    """1.0 where the prediction equals any reference after whitespace normalisation."""
    return np.array(
        [
            float(normalize_text(p) in {normalize_text(r) for r in refs})
            for p, refs in zip(predictions, references, strict=True)
        ]
    )


def accuracy(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> np.ndarray:
    """1.0 where the prediction's label equals any reference label."""
    return np.array(
        [
            float(normalize_label(p) in {normalize_label(r) for r in refs})
            for p, refs in zip(predictions, references, strict=True)
        ]
    )


def macro_f1_stats(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> np.ndarray:
    """(N, 3*C) per-example [TP, FP, FN] indicators for each gold class, summable for the bootstrap."""
    gold = [normalize_label(refs[0]) for refs in references]
    labels = sorted(set(gold))
    index = {label: k for k, label in enumerate(labels)}
    stats = np.zeros((len(gold), 3 * len(labels)))
    for row, (pred, g) in enumerate(zip(predictions, gold, strict=True)):
        p = normalize_label(pred)
        if p == g:
            stats[row, 3 * index[g]] = 1
        else:
            stats[row, 3 * index[g] + 2] = 1
            if p in index:
                stats[row, 3 * index[p] + 1] = 1
    return stats


def macro_f1_from_sums(sums: np.ndarray) -> np.ndarray:
    """Macro-F1 per row of summed [TP, FP, FN] statistics, over classes with any support or prediction."""
    sums = np.atleast_2d(sums)
    tp, fp, fn = sums[:, 0::3], sums[:, 1::3], sums[:, 2::3]
    denom = 2 * tp + fp + fn
    present = denom > 0
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=present)
    return np.divide(f1.sum(axis=1), present.sum(axis=1), out=np.zeros(len(sums)), where=present.any(axis=1))
