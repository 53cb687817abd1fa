"""Bootstrap intervals and paired significance tests over per-example statistics.

Every metric is reduced to an (N, K) array of per-example statistics and a function from summed statistics
to a score, so one resampling routine serves mean metrics (ROUGE F1, accuracy: K=1, score = sum / N) and
corpus metrics (BLEU, chrF, macro-F1: score recomputed from summed sufficient statistics). Resamples are drawn
as index matrices from a seeded NumPy generator: the same (N, seed, n_resamples) gives the same resamples, so
systems compared on one test set share their resample indices, which is what makes the bootstrap *paired*.

The tests follow sacreBLEU's `--paired-bs` and `--paired-ar` (resampling scheme, two-sided statistic, the +1
correction), with one deliberate difference: a resampled difference counts as "at least as extreme" with >=
(within 1e-12) instead of sacreBLEU's >, so a system compared with itself gets p = 1 rather than 1/(B+1).
Hand-written because neither sacreBLEU (BLEU/chrF/TER only) nor SciPy (not a dependency) pairs arbitrary
corpus metrics with shared indices.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

ScoreFn = Callable[[np.ndarray], np.ndarray]
"""Maps summed statistics, shape (B, K), over resamples of N examples to B scores."""

_CHUNK_ELEMENTS = 2_000_000  # bound the (chunk, N) count matrix to ~16 MB
_TOL = 1e-12


def mean_score(n: int) -> ScoreFn:
    """Score function of a mean metric whose statistics are one value per example."""
    return lambda sums: sums[:, 0] / n


def resample_indices(n: int, n_resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Yield (chunk, n) arrays of example indices, one row per bootstrap resample, from a seeded generator."""
    if n <= 0:
        raise ValueError("cannot bootstrap an empty test set")
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_resamples, _CHUNK_ELEMENTS // n))
    done = 0
    while done < n_resamples:
        rows = min(chunk, n_resamples - done)
        yield rng.integers(0, n, size=(rows, n))
        done += rows


def weighted_sums(stats: np.ndarray, rows: np.ndarray, *, indices: bool) -> np.ndarray:
    """Summed statistics per row: rows are resample indices (indices=True) or 0/1 weights per example.

    Column-wise gathers beat a BLAS matrix product here: it is memory-bound and BLAS threads fight over the
    few cores such machines have; very wide statistics (macro-F1 with many labels) still use the product.
    """
    if stats.shape[1] > 32:
        weights = rows if not indices else _counts(rows, len(stats))
        return weights.astype(np.float64) @ stats
    if indices:
        return np.stack([col[rows].sum(axis=1) for col in stats.T], axis=1)
    return np.stack([(rows * col).sum(axis=1) for col in stats.T], axis=1)


def _counts(idx: np.ndarray, n: int) -> np.ndarray:
    rows = len(idx)
    flat = (idx + (np.arange(rows)[:, None] * n)).ravel()
    return np.bincount(flat, minlength=rows * n).reshape(rows, n)


def bootstrap_scores(stats: np.ndarray, score_fn: ScoreFn, *, n_resamples: int, seed: int) -> np.ndarray:
    """The metric on each of `n_resamples` seeded bootstrap resamples of the examples."""
    stats = _as_2d(stats)
    return np.concatenate(
        [
            score_fn(weighted_sums(stats, idx, indices=True))
            for idx in resample_indices(len(stats), n_resamples, seed)
        ]
    )


def percentile_interval(values: np.ndarray, level: float = 0.95) -> list[float]:
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return [float(lo), float(hi)]


def bootstrap_ci(
    stats: np.ndarray, score_fn: ScoreFn, *, n_resamples: int = 1000, seed: int = 0
) -> list[float]:
    """95% percentile bootstrap interval of a corpus score."""
    return percentile_interval(bootstrap_scores(stats, score_fn, n_resamples=n_resamples, seed=seed))


def paired_bootstrap_stats(
    stats_a: np.ndarray, stats_b: np.ndarray, score_fn: ScoreFn, *, n_resamples: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Delta (b - a), its 95% interval and a two-sided p-value from shared bootstrap resamples.

    p = (#{|delta_r - mean(delta)| >= |delta|} + 1) / (B + 1): how often resampling noise centred on zero
    is as large as the observed difference (sacreBLEU's paired bootstrap statistic).
    """
    stats_a, stats_b = _as_2d(stats_a), _as_2d(stats_b)
    if stats_a.shape != stats_b.shape:
        raise ValueError(f"paired statistics differ in shape: {stats_a.shape} vs {stats_b.shape}")
    observed = float(score_fn(stats_b.sum(0, keepdims=True))[0] - score_fn(stats_a.sum(0, keepdims=True))[0])
    deltas = np.concatenate(
        [
            score_fn(weighted_sums(stats_b, idx, indices=True))
            - score_fn(weighted_sums(stats_a, idx, indices=True))
            for idx in resample_indices(len(stats_a), n_resamples, seed)
        ]
    )
    extreme = np.abs(deltas - deltas.mean()) >= abs(observed) - _TOL * max(1.0, abs(observed))
    return {
        "delta": observed,
        "ci95": percentile_interval(deltas),
        "p_value": float((extreme.sum() + 1) / (len(deltas) + 1)),
        "method": "paired-bootstrap",
        "n_resamples": n_resamples,
    }


def paired_bootstrap(
    values_a: np.ndarray | list[float],
    values_b: np.ndarray | list[float],
    *,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Paired bootstrap of a mean metric (ROUGE F1, 0/1 correctness): delta = mean(b) - mean(a)."""
    a = np.asarray(values_a, dtype=np.float64)
    b = np.asarray(values_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired values need equal 1-D shapes, got {a.shape} and {b.shape}")
    return paired_bootstrap_stats(a, b, mean_score(len(a)), n_resamples=n_resamples, seed=seed)


def approximate_randomization_stats(
    stats_a: np.ndarray, stats_b: np.ndarray, score_fn: ScoreFn, *, n_trials: int = 10000, seed: int = 0
) -> dict[str, Any]:
    """Two-sided approximate randomization: swap each example's outputs between the systems at random.

    p = (#{|score(a') - score(b')| >= |score(a) - score(b)|} + 1) / (T + 1), as sacreBLEU's `--paired-ar`.
    """
    stats_a, stats_b = _as_2d(stats_a), _as_2d(stats_b)
    if stats_a.shape != stats_b.shape:
        raise ValueError(f"paired statistics differ in shape: {stats_a.shape} vs {stats_b.shape}")
    total_a, total_b = stats_a.sum(0), stats_b.sum(0)
    observed = float(score_fn(total_b[None])[0] - score_fn(total_a[None])[0])
    diff = stats_b - stats_a
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_trials, _CHUNK_ELEMENTS // len(stats_a)))
    count, done = 0, 0
    while done < n_trials:
        rows = min(chunk, n_trials - done)
        moved = weighted_sums(
            diff, rng.integers(0, 2, size=(rows, len(stats_a)), dtype=np.int8), indices=False
        )
        swapped = np.abs(score_fn(total_b - moved) - score_fn(total_a + moved))
        count += int((swapped >= abs(observed) - _TOL * max(1.0, abs(observed))).sum())
        done += rows
    return {
        "delta": observed,
        "p_value": (count + 1) / (n_trials + 1),
        "method": "approximate-randomization",
        "n_trials": n_trials,
    }


def _as_2d(stats: np.ndarray) -> np.ndarray:
    stats = np.asarray(stats, dtype=np.float64)
    return stats[:, None] if stats.ndim == 1 else stats
