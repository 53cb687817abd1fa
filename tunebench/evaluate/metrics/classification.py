"""Exact match, accuracy, macro-F1 and SQuAD token F1 for short answers and labels; acc/acc_norm for choices.

Written by hand because the normalisation must be the same one the signatures describe, and macro-F1 must be
recomputable from per-example statistics for the bootstrap (scikit-learn is not a dependency). Exact match
compares whitespace-collapsed text, case-sensitive, against any reference; accuracy and macro-F1 compare
labels: casefolded, whitespace-collapsed, surrounding punctuation stripped. Macro-F1 takes the first reference
as the gold label and averages F1 over the gold label set (a prediction outside it is wrong for its gold class
and forms no class of its own), counting only classes present in the (re)sample. Token F1 is SQuAD's
(Rajpurkar et al. 2016, its official evaluate-v1.1.py: lower-cased, punctuation and articles dropped,
bag-of-tokens overlap, best reference). acc and acc_norm (lm-evaluation-harness's names) score the option a
multiple-choice benchmark picked, by raw or per-character log-likelihood, against the gold option.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from tunebench.evaluate.metrics.base import Metric, register_metric
from tunebench.evaluate.metrics.signature import refs_field

_PUNCT = string.punctuation + string.whitespace
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_SQUAD_PUNCT = set(string.punctuation)


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


def _squad_tokens(text: str) -> list[str]:
    text = "".join(ch for ch in text.lower() if ch not in _SQUAD_PUNCT)
    return _ARTICLES.sub(" ", text).split()


def token_f1(prediction: str, references: Sequence[str]) -> float:
    """SQuAD token F1 against the best-matching reference (two empty texts agree: 1.0)."""
    pred = _squad_tokens(prediction)
    best = 0.0
    for ref in references:
        gold = _squad_tokens(ref)
        if not pred or not gold:
            best = max(best, float(pred == gold))
            continue
        common = sum((Counter(pred) & Counter(gold)).values())
        if common:
            precision, recall = common / len(pred), common / len(gold)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


@register_metric
class ExactMatch(Metric):
    """1 where the prediction equals any reference after whitespace collapsing (case-sensitive)."""

    name = "exact_match"

    def stats(self, predictions: Sequence[str], references: Sequence[Sequence[str]]) -> np.ndarray:
        return exact_match(predictions, references)[:, None]

    def signature_fields(self, references: Sequence[Sequence[str]]) -> dict[str, str | bool | int]:
        return {"norm": "whitespace", "case": "yes", "refs": refs_field(references), "agg": "any"}


@register_metric
class Accuracy(Metric):
    """1 where the prediction's label equals any reference label (casefolded, punctuation stripped)."""

    name = "accuracy"
    on_labels = True

    def stats(self, predictions: Sequence[str], references: Sequence[Sequence[str]]) -> np.ndarray:
        return accuracy(predictions, references)[:, None]

    def signature_fields(self, references: Sequence[Sequence[str]]) -> dict[str, str | bool | int]:
        return {"norm": "casefold-whitespace-punct", "refs": refs_field(references), "agg": "any"}


@register_metric
class MacroF1(Metric):
    """Macro-averaged F1 over the gold labels; a corpus metric with no per-example value."""

    name = "macro_f1"
    on_labels = True
    has_per_example = False
    aggregation = "corpus"

    def stats(self, predictions: Sequence[str], references: Sequence[Sequence[str]]) -> np.ndarray:
        return macro_f1_stats(predictions, references)

    def score(self, sums: np.ndarray, n: int) -> np.ndarray:
        return macro_f1_from_sums(sums)

    def signature_fields(self, references: Sequence[Sequence[str]]) -> dict[str, str | bool | int]:
        return {"norm": "casefold-whitespace-punct", "gold": "first-ref", "labels": "gold"}

    def paired_values(self, stats: np.ndarray) -> np.ndarray:
        """0/1 correctness (the true-positive indicators) stands in for per-example values."""
        return stats[:, 0::3].sum(axis=1)


@register_metric
class TokenF1(Metric):
    """SQuAD token F1 (lm-evaluation-harness calls it f1), mean over examples."""

    name = "f1"

    def stats(self, predictions: Sequence[str], references: Sequence[Sequence[str]]) -> np.ndarray:
        return np.array([[token_f1(p, refs)] for p, refs in zip(predictions, references, strict=True)])

    def signature(self, references: Sequence[Sequence[str]]) -> str:
        return "f1|norm:squad|agg:best-ref"  # the signature bench results have always carried


class _ChoiceAccuracy(Metric):
    """1 where the chosen option index equals the gold index (references: [[gold index]])."""

    inputs = "choice"

    def stats(self, predictions: Sequence[Any], references: Sequence[Sequence[Any]]) -> np.ndarray:
        return np.array([[float(p == refs[0])] for p, refs in zip(predictions, references, strict=True)])


@register_metric
class Acc(_ChoiceAccuracy):
    """The option with the highest log-likelihood is the gold one."""

    name = "acc"


@register_metric
class AccNorm(_ChoiceAccuracy):
    """The option with the highest log-likelihood per character is the gold one (lm-eval's acc_norm)."""

    name = "acc_norm"
