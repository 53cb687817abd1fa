"""Entity-level precision, recall and F1 of generated entity lists, as seqeval computes them.

Each prediction is an entity list (tunebench.data.ner); its IOB2 tags are rebuilt over the reference sentence's
tokens and compared with the gold tags entity by entity: an entity counts as correct only with the same type and
the same span (CoNLL-2003's evaluation, Tjong Kim Sang & De Meulder 2003; seqeval's default mode). Per example we
keep (correct, predicted, gold, unparseable, unaligned) counts; summed, they give seqeval's micro-averaged scores
(`seqeval.metrics.f1_score` sums the same counts over sentences), so bootstrap intervals and paired tests resample
sentences like every other metric. Registered as the metric `seqeval` (the conll2003 template's metric).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tunebench.data.ner import CONLL2003_TYPES, entity_spans, read_ner_reference, tags_from_entity_list
from tunebench.evaluate.metrics.base import Metric, register_metric

STAT_COLUMNS = ("correct", "predicted", "gold", "unparseable", "unaligned")


def ner_stats(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> np.ndarray:
    """(N, 5) counts per example: correct entities, predicted, gold, unparseable (0/1), unaligned.

    references[i][0] is the JSON {"tokens", "labels"} reference of example i (tunebench.data.ner.ner_reference).
    """
    out = np.zeros((len(predictions), len(STAT_COLUMNS)), dtype=np.float64)
    for i, (pred, refs) in enumerate(zip(predictions, references, strict=True)):
        tokens, gold_tags = read_ner_reference(refs[0], f"example {i}")
        rebuilt = tags_from_entity_list(tokens, pred, CONLL2003_TYPES)
        gold = set(entity_spans(gold_tags))
        predicted = set(entity_spans(rebuilt.tags))
        out[i] = (len(gold & predicted), len(predicted), len(gold), float(not rebuilt.parsed), rebuilt.unaligned)
    return out


def prf_from_sums(sums: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Micro precision, recall, F1 (each (B,)) from summed counts (B, 5); 0 where undefined, as seqeval does."""
    sums = np.atleast_2d(sums)
    correct, predicted, gold = sums[:, 0], sums[:, 1], sums[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, correct / predicted, 0.0)
        recall = np.where(gold > 0, correct / gold, 0.0)
        f1 = np.where(predicted + gold > 0, 2 * correct / (predicted + gold), 0.0)
    return precision, recall, f1


def sentence_f1(stats: np.ndarray) -> np.ndarray:
    """(N,) per-sentence entity F1 (1 when a sentence has no gold and no predicted entity), for win/tie/loss."""
    _, _, f1 = prf_from_sums(stats)
    empty = (stats[:, 1] + stats[:, 2]) == 0
    return np.where(empty, 1.0, f1)


def details(stats: np.ndarray) -> dict[str, float | int]:
    """Corpus precision, recall, F1 and the counts of unparseable outputs and unaligned entities."""
    sums = stats.sum(0, keepdims=True)
    p, r, f = prf_from_sums(sums)
    return {"precision": float(p[0]), "recall": float(r[0]), "f1": float(f[0]),
            "unparseable": int(sums[0, 3]), "unaligned": int(sums[0, 4])}


@register_metric
class Seqeval(Metric):
    """Entity-level micro F1 of generated entity lists (seqeval's default mode on rebuilt IOB2 tags), on 0-1.

    scores.json also gets the corpus precision and recall, and the counts of unparseable outputs (scored as no
    entities) and of listed entities not found in the sentence (unaligned).
    """

    name = "seqeval"
    aggregation = "corpus"

    def stats(self, predictions: Sequence[str], references: Sequence[Sequence[str]]) -> np.ndarray:
        return ner_stats(predictions, references)

    def score(self, sums: np.ndarray, n: int) -> np.ndarray:
        """Micro F1 (B,) from summed (B, 5) counts."""
        return prf_from_sums(sums)[2]

    def per_example(self, stats: np.ndarray) -> np.ndarray:
        """Each sentence's entity F1 (1 when it has neither gold nor predicted entities)."""
        return sentence_f1(stats)

    def signature_fields(self, references: Sequence[Sequence[str]]) -> dict[str, str | bool | int]:
        from importlib.metadata import version

        return {"scheme": "IOB2", "mode": "default", "avg": "micro", "types": ",".join(CONLL2003_TYPES),
                "align": "first-free-match", "seqeval": version("seqeval")}

    def details(self, stats: np.ndarray) -> dict[str, Any]:
        return details(stats)
