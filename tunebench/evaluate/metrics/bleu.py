"""BLEU and chrF through sacreBLEU, kept as per-example sufficient statistics for fast bootstrap.

sacreBLEU is the reference implementation, so the numbers are its own; what it lacks is a seeded bootstrap
that shares resample indices across systems, so scores are recomputed here from summed per-sentence statistics
with sacreBLEU's own `_compute_score_from_stats` (the same route its `--paired-bs` takes). Examples with fewer
references are padded with None in the reference streams, which sacreBLEU drops per segment.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def reference_streams(references: Sequence[Sequence[str]]) -> list[list[str | None]]:
    """Per-example reference lists -> sacreBLEU's reference streams, padded with None."""
    width = max((len(r) for r in references), default=0)
    return [[refs[k] if k < len(refs) else None for refs in references] for k in range(width)]


def _metric(name: str, *, sentence: bool = False) -> Any:
    from sacrebleu.metrics import BLEU, CHRF

    if name == "bleu":
        return BLEU(
            effective_order=sentence
        )  # sentence BLEU needs effective order, as sacrebleu.sentence_bleu
    if name == "chrf":
        return CHRF()
    raise ValueError(f"not a sacreBLEU metric: {name!r}")


def corpus_stats(
    name: str, predictions: Sequence[str], references: Sequence[Sequence[str]]
) -> tuple[np.ndarray, str]:
    """(N, K) per-example statistics and sacreBLEU's signature for `name` in {'bleu', 'chrf'}."""
    metric = _metric(name)
    stats = metric._extract_corpus_statistics(list(predictions), reference_streams(references))
    return np.asarray(stats, dtype=np.float64).reshape(len(predictions), -1), metric.get_signature().format()


def scores_from_sums(name: str, sums: np.ndarray) -> np.ndarray:
    """Corpus scores (0-100) for each row of summed statistics, computed by sacreBLEU."""
    metric = _metric(name)
    return np.array([metric._compute_score_from_stats(row.tolist()).score for row in np.atleast_2d(sums)])


def sentence_scores(name: str, stats: np.ndarray) -> np.ndarray:
    """Per-example sentence BLEU (effective order) or chrF, from the same statistics."""
    metric = _metric(name, sentence=True)
    return np.array([metric._compute_score_from_stats(row.tolist()).score for row in stats])


def details(name: str, sums: np.ndarray) -> dict[str, Any]:
    """Extra corpus-level numbers worth reporting: BLEU's n-gram precisions and brevity penalty."""
    if name != "bleu":
        return {}
    result = _metric(name)._compute_score_from_stats(sums.tolist())
    return {"precisions": [float(p) for p in result.precisions], "bp": float(result.bp)}
