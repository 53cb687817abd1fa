"""Bootstrap intervals and paired tests: reproducible by seed, calibrated on clear-cut cases."""

from __future__ import annotations

import numpy as np
import pytest

from tunebench.evaluate.metrics import compute_metric_stats
from tunebench.evaluate.stats import (
    approximate_randomization_stats,
    bootstrap_ci,
    bootstrap_scores,
    mean_score,
    paired_bootstrap,
    paired_bootstrap_stats,
    resample_indices,
)


@pytest.fixture(scope="module")
def values() -> np.ndarray:
    return np.random.default_rng(7).beta(2, 5, size=400)


def test_bootstrap_is_reproducible_by_seed_and_covers_the_mean(values):
    ci = bootstrap_ci(values, mean_score(len(values)), n_resamples=1000, seed=3)
    assert ci == bootstrap_ci(values, mean_score(len(values)), n_resamples=1000, seed=3)
    assert ci != bootstrap_ci(values, mean_score(len(values)), n_resamples=1000, seed=4)
    assert ci[0] < values.mean() < ci[1]
    # the percentile interval of a mean is about +-1.96 standard errors
    se = values.std(ddof=1) / np.sqrt(len(values))
    assert ci[1] - ci[0] == pytest.approx(2 * 1.96 * se, rel=0.15)


def test_resamples_are_the_same_for_every_system_of_a_test_set():
    a = np.concatenate(list(resample_indices(50, 300, seed=0)))
    b = np.concatenate(list(resample_indices(50, 300, seed=0)))
    assert a.shape == (300, 50) and (a == b).all()
    assert a.min() >= 0 and a.max() < 50


def test_corpus_metric_bootstrap_recomputes_from_summed_statistics():
    preds = ["the cat sat on the mat", "a dog barked loudly", "it rained all day", "birds sing"] * 10
    refs = [
        ["the cat sat on a mat"],
        ["the dog barked"],
        ["it was raining all day"],
        ["birds were singing"],
    ] * 10
    bleu = compute_metric_stats(preds, refs, ["bleu"])["bleu"]
    scores = bootstrap_scores(bleu.stats, bleu.score_fn, n_resamples=200, seed=0)
    assert scores.shape == (200,) and np.isfinite(scores).all()
    assert scores.min() < bleu.score() < scores.max()


def _ar(a: np.ndarray, b: np.ndarray, n_trials: int) -> dict:
    """Approximate randomization of a mean metric, as compare runs it (per-example values, K = 1)."""
    return approximate_randomization_stats(a, b, mean_score(len(a)), n_trials=n_trials, seed=0)


def test_identical_systems_get_p_one(values):
    result = paired_bootstrap(values, values, n_resamples=1000, seed=0)
    assert result["delta"] == 0.0 and result["ci95"] == [0.0, 0.0]
    assert result["p_value"] == 1.0 and result["method"] == "paired-bootstrap"
    assert _ar(values, values, n_trials=1000)["p_value"] == 1.0


def test_clearly_better_system_is_significant(values):
    better = np.clip(values + 0.05 + np.random.default_rng(1).normal(0, 0.02, len(values)), 0, 1)
    result = paired_bootstrap(values, better, n_resamples=1000, seed=0)
    assert result["p_value"] < 0.01
    assert result["ci95"][0] > 0 and result["ci95"][0] < result["delta"] < result["ci95"][1]
    assert result == paired_bootstrap(values, better, n_resamples=1000, seed=0)
    assert _ar(values, better, n_trials=2000)["p_value"] < 0.01


def test_noise_is_not_significant(values):
    noisy = values + np.random.default_rng(2).normal(0, 0.05, len(values))
    noisy -= noisy.mean() - values.mean()  # same mean, different examples
    assert paired_bootstrap(values, noisy, n_resamples=1000, seed=0)["p_value"] > 0.5
    assert _ar(values, noisy, n_trials=1000)["p_value"] > 0.5


def test_paired_tests_on_a_corpus_metric():
    refs = [["the cat sat on the mat"], ["a dog barked at the mailman"], ["rain fell all day long"]] * 20
    weak = ["cat", "dog", "rain"] * 20
    strong = ["the cat sat on a mat", "a dog barked at a mailman", "rain fell all day"] * 20
    a = compute_metric_stats(weak, refs, ["bleu"])["bleu"]
    b = compute_metric_stats(strong, refs, ["bleu"])["bleu"]
    bs = paired_bootstrap_stats(a.stats, b.stats, a.score_fn, n_resamples=500, seed=0)
    assert bs["delta"] == pytest.approx(b.score() - a.score()) and bs["p_value"] < 0.01
    assert (
        approximate_randomization_stats(a.stats, b.stats, a.score_fn, n_trials=500, seed=0)["p_value"] < 0.01
    )
    same = paired_bootstrap_stats(a.stats, a.stats, a.score_fn, n_resamples=200, seed=0)
    assert same["p_value"] == 1.0


def test_shape_errors():
    with pytest.raises(ValueError, match="equal 1-D shapes"):
        paired_bootstrap([1.0, 2.0], [1.0], n_resamples=10, seed=0)
    with pytest.raises(ValueError, match="empty"):
        bootstrap_ci(np.zeros(0), mean_score(0), n_resamples=10)
