"""What a score means on its test set: the per-label breakdown and majority-label baseline of a classification
task, degenerate outputs, and the verdict of a paired comparison (the more conservative test on small sets).

A model that answers one label for every input can beat a base model "significantly" while learning nothing the
test set can show (issue 15: 10 reviews, all answered "positive", reported as a significant gain). Three facts
expose it and travel with every evaluation, comparison and report:

- **Per-label breakdown and majority-label baseline** (classification tasks: an evaluation with a metric whose
  class says `on_labels`, accuracy or macro-F1): precision, recall, F1 and support per gold label, as
  scikit-learn's `classification_report` defines them (labels normalised as the accuracy metric compares them;
  the gold label is an example's first reference, as macro-F1 takes it), and the score each label metric gives
  the predictor that always answers the most frequent gold label (ties: the first in sorted order). The baseline
  is computed by the metrics themselves on that constant prediction, so it is on the same footing as the scores.
- **Degenerate outputs**: at least `DEGENERATE_SHARE` (90%) of the predictions are one text (labels compared
  as accuracy compares them; other text with whitespace collapsed), on at least two examples, and the predictions
  are more uniform than the references (the most frequent first reference covers a smaller share), so a test
  set that really is 90% one label does not flag a model that gets it right.
- **Small test sets** (n < `SMALL_TEST_SET`): the paired bootstrap's p-value has a floor of 1/(B+1) and is
  anticonservative on a handful of examples (Koehn 2004; Riezler & Maxwell 2005 prefer approximate
  randomization), so the verdict takes the larger of the bootstrap and approximate-randomization p-values and
  names that test. Larger sets keep the paired bootstrap, as before.

A gain of a candidate whose outputs are degenerate is never a "gain": its verdict is `degenerate`. Hand-written
because scikit-learn (whose `classification_report` this matches) is not a dependency for a dozen lines.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from tunebench.evaluate.metrics.classification import normalize_label, normalize_text

ALPHA = 0.05
"""Significance level of a comparison's verdict (the p-values themselves are reported as they are)."""
SMALL_TEST_SET = 50
"""Below this many examples a verdict uses the more conservative (larger p) of the paired tests computed."""
DEGENERATE_SHARE = 0.9
"""Predictions are degenerate when at least this share of them is one text (see the module docstring)."""

BOOTSTRAP = "paired-bootstrap"
RANDOMIZATION = "approximate-randomization"
VERDICTS = ("gain", "loss", "n.s.", "degenerate")
"""A comparison's verdict: significant gain, significant loss, not significant, or a gain of degenerate outputs."""


def label_metrics(metrics: Sequence[str]) -> list[str]:
    """The names among `metrics` that compare class labels (accuracy, macro-F1): a classification task's."""
    from tunebench.evaluate.metrics import METRICS

    return [m for m in metrics if m in METRICS and METRICS[m].on_labels]


def label_report(predictions: Sequence[str], references: Sequence[Sequence[str]],
                 metrics: Sequence[str]) -> dict[str, Any]:
    """Per-label precision, recall, F1 and support, and the majority-label baseline of each label metric.

    Returns {"labels": [sorted gold labels], "per_label": {label: {precision, recall, f1, support, predicted}},
    "majority_label": str, "majority_baseline": {metric: score}, "outside_labels": int (predictions that are no
    gold label)}. precision = TP / (TP + FP), recall = TP / support, F1 their harmonic mean, 0.0 where a
    denominator is 0 (scikit-learn's zero_division=0); the mean of the per-label F1 is the macro-F1 metric.
    """
    from tunebench.evaluate.metrics import compute_metric_stats

    gold = [normalize_label(refs[0]) for refs in references]
    said = [normalize_label(p) for p in predictions]
    labels = sorted(set(gold))
    per_label = {}
    for label in labels:
        tp = sum(1 for p, g in zip(said, gold, strict=True) if p == label and g == label)
        predicted = said.count(label)
        support = gold.count(label)
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_label[label] = {"precision": precision, "recall": recall, "f1": f1, "support": support,
                            "predicted": predicted}
    counts = Counter(gold)
    majority = min(labels, key=lambda label: (-counts[label], label))
    # the majority label as written in the references (the metrics normalise it again)
    written = next(refs[0] for refs in references if normalize_label(refs[0]) == majority)
    names = label_metrics(metrics)
    baseline = compute_metric_stats([written] * len(references), references, names, warn=False) if names else {}
    return {
        "labels": labels,
        "per_label": per_label,
        "majority_label": majority,
        "majority_baseline": {name: ms.score() for name, ms in baseline.items()},
        "outside_labels": sum(1 for p in said if p not in per_label),
    }


def degenerate_outputs(predictions: Sequence[str], references: Sequence[Sequence[str]], *,
                       labels: bool) -> dict[str, Any] | None:
    """The degenerate-output flag (module docstring's rule), or None when the outputs are not degenerate.

    labels: compare predictions as class labels (a classification task) rather than as text. Returns {"kind":
    "one label" | "one text", "text": the repeated prediction as first written, "count", "n", "share",
    "reference_share": the most frequent first reference's share}.
    """
    n = len(predictions)
    if n < 2:
        return None
    norm = normalize_label if labels else normalize_text
    said = [norm(p) for p in predictions]
    text, count = Counter(said).most_common(1)[0]
    reference_share = Counter(norm(refs[0]) for refs in references).most_common(1)[0][1] / n
    share = count / n
    if share < DEGENERATE_SHARE or share <= reference_share:
        return None
    return {"kind": "one label" if labels else "one text", "text": predictions[said.index(text)], "count": count,
            "n": n, "share": share, "reference_share": reference_share}


def diagnostics(predictions: Sequence[str], references: Sequence[Sequence[str]],
                metrics: Sequence[str]) -> dict[str, Any]:
    """scores.json's `diagnostics`: {"degenerate": flag or None, "labels": label_report or None (not a
    classification task)}; `metrics` are the evaluation's metric names."""
    on_labels = bool(label_metrics(metrics))
    return {
        "degenerate": degenerate_outputs(predictions, references, labels=on_labels),
        "labels": label_report(predictions, references, metrics) if on_labels else None,
    }


def describe_degenerate(system: str, flag: Mapping[str, Any]) -> str:
    """One sentence for the headline and the terminal: which system, what it repeated, how often."""
    text = str(flag["text"])
    shown = text if len(text) <= 60 else text[:57] + "..."
    return (f"{system}: degenerate outputs, {flag['kind']} {shown!r} for {flag['count']} of {flag['n']} inputs "
            f"({flag['share']:.0%}; the references' most frequent is {flag['reference_share']:.0%}), so its "
            "scores do not show what it learned")


def verdict_test(p_values: Mapping[str, float], n: int) -> str:
    """The test whose p-value decides: the paired bootstrap, or on a small set (n < SMALL_TEST_SET) the more
    conservative (larger p) of those computed (the bootstrap on a tie)."""
    if n >= SMALL_TEST_SET or len(p_values) == 1:
        return BOOTSTRAP if BOOTSTRAP in p_values else next(iter(p_values))
    return max(p_values, key=lambda test: (p_values[test], test == BOOTSTRAP))


def decide(delta: float, p_value: float, *, candidate_degenerate: bool, higher_is_better: bool = True) -> str:
    """'gain' (a significant improvement in the metric's direction), 'loss', 'n.s.' (p >= ALPHA or no
    difference) or 'degenerate' (an improvement by a candidate whose outputs are degenerate)."""
    if p_value >= ALPHA or not delta:
        return "n.s."
    if (delta > 0) == higher_is_better:
        return "degenerate" if candidate_degenerate else "gain"
    return "loss"


def small_set_note(n: int) -> str:
    """The sentence every report and terminal summary of a small comparison carries."""
    return (f"small test set (n = {n} < {SMALL_TEST_SET}): each verdict uses the more conservative of the paired "
            "bootstrap and approximate-randomization p-values")
