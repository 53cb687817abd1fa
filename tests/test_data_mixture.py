"""Mixing strategies: per-task counts on constructed sizes, purity in (seed, epoch), and bad input."""

from __future__ import annotations

import math

import pytest

from tunebench.data.batching import epoch_batches
from tunebench.data.mixture import (
    MIXING_STRATEGIES,
    build_mixture,
    format_composition,
    largest_remainder,
    mixing_rates,
)
from tunebench.errors import ConfigError

NAMES = ("a", "b", "c")
SIZES = (100, 300, 600)


def test_registry_holds_the_four_strategies():
    assert set(MIXING_STRATEGIES) == {"proportional", "temperature", "capped", "weights"}


def test_proportional_counts_equal_sizes():
    m = build_mixture(NAMES, SIZES, "proportional")
    assert m.counts == (100, 300, 600)
    assert m.rates == pytest.approx((0.1, 0.3, 0.6))


def test_capped_counts_are_min_size_cap():
    m = build_mixture(NAMES, SIZES, "capped", cap=200)
    assert m.counts == (100, 200, 200)
    assert m.epoch_size == 500


def test_temperature_two_by_hand():
    # rates ∝ sqrt(0.1), sqrt(0.3), sqrt(0.6) = 0.316228, 0.547723, 0.774597 (sum 1.638548)
    # -> 0.19299, 0.33427, 0.47273 of 1000: floors 192, 334, 472, the two largest remainders (.99, .74) get +1
    m = build_mixture(NAMES, SIZES, "temperature", temperature=2.0)
    assert m.rates == pytest.approx((0.19299, 0.33427, 0.47273), abs=1e-5)
    assert m.counts == (193, 334, 473)


def test_temperature_one_equals_proportional():
    t1 = build_mixture(NAMES, SIZES, "temperature", temperature=1.0)
    prop = build_mixture(NAMES, SIZES, "proportional")
    assert t1.counts == prop.counts
    assert t1.rates == pytest.approx(prop.rates)


def test_very_large_temperature_is_near_uniform():
    m = build_mixture(NAMES, SIZES, "temperature", temperature=1e6)
    assert m.rates == pytest.approx((1 / 3, 1 / 3, 1 / 3), abs=1e-5)
    assert sorted(m.counts) == [333, 333, 334]


def test_temperature_with_cap_follows_t5():
    # T5 §3.5.2: rates from min(e, K), then raised to 1/T: min(.,200) = 100, 200, 200 -> 0.2, 0.4, 0.4
    m = build_mixture(NAMES, SIZES, "temperature", temperature=2.0, cap=200)
    w = [math.sqrt(0.2), math.sqrt(0.4), math.sqrt(0.4)]
    assert m.rates == pytest.approx(tuple(x / sum(w) for x in w))
    assert m.epoch_size == 500


def test_weights_strategy_uses_weights_only():
    m = build_mixture(NAMES, SIZES, "weights", weights=[1, 0, 3], epoch_size=400)
    assert m.counts == (100, 0, 300)


def test_largest_remainder_sums_to_total():
    assert largest_remainder(mixing_rates("proportional", [1, 1, 1]), 10) == [4, 3, 3]


def test_epoch_is_pure_function_of_seed_and_epoch():
    m = build_mixture(NAMES, SIZES, "temperature", temperature=3.0)
    first = m.epoch_indices(7, 2)
    assert first == m.epoch_indices(7, 2)
    assert first != m.epoch_indices(7, 3)
    assert first != m.epoch_indices(8, 2)
    assert len(first) == m.epoch_size


def test_upsampled_task_sees_every_example_before_repeating():
    m = build_mixture(NAMES, SIZES, "temperature", temperature=10.0)
    c = m.counts[0]
    assert c > SIZES[0]  # the small task is upsampled
    stream = [i for e in range(3) for i in m.task_indices(0, 5, e)]
    for k in range(0, len(stream) - SIZES[0], SIZES[0]):
        assert sorted(stream[k : k + SIZES[0]]) == list(range(SIZES[0]))


def test_downsampled_task_covers_its_data_over_epochs():
    m = build_mixture(NAMES, SIZES, "capped", cap=200)
    seen = [i for e in range(3) for i in m.task_indices(2, 1, e)]
    assert sorted(seen) == list(range(600))


def test_single_task_epoch_is_identity():
    m = build_mixture(["only"], [17])
    assert m.epoch_indices(3, 4) == list(range(17))


def test_resume_mid_epoch_replays_the_same_batches():
    m = build_mixture(NAMES, SIZES, "temperature", temperature=2.0)
    lengths = [10 + (i % 37) for i in range(sum(SIZES))]

    def batches(epoch: int) -> list[list[int]]:
        idx = m.epoch_indices(11, epoch)
        return [[idx[j] for j in b] for b in epoch_batches([lengths[i] for i in idx], 8, 11, epoch)]

    full = batches(1)
    # a fresh process resuming after 5 batches of epoch 1 rebuilds the same mixture and skips 5
    again = build_mixture(NAMES, SIZES, "temperature", temperature=2.0)
    idx = again.epoch_indices(11, 1)
    resumed = [[idx[j] for j in b] for b in epoch_batches([lengths[i] for i in idx], 8, 11, 1)][5:]
    assert resumed == full[5:]


def test_composition_counts_and_token_share():
    m = build_mixture(["x", "y"], [2, 4], "capped", cap=2)
    lengths = [10, 10, 1, 1, 1, 1]
    comp = m.composition(lengths, seed=0)
    rows = {r["task"]: r for r in comp["tasks"]}
    assert rows["x"]["examples_per_epoch"] == 2 and rows["y"]["examples_per_epoch"] == 2
    assert rows["x"]["tokens_per_epoch"] == 20 and rows["y"]["tokens_per_epoch"] == 2
    assert rows["x"]["token_share"] == pytest.approx(20 / 22, abs=1e-6)
    assert rows["y"]["passes_per_epoch"] == 0.5
    text = format_composition(comp)
    assert "capped (cap 2)" in text and "90.9%" in text


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"strategy": "weights", "weights": [1, -1, 2]}, "data.tasks.1.weight"),
        ({"strategy": "weights", "weights": [0, 0, 0]}, "data.tasks.*.weight"),
        ({"strategy": "temperature", "temperature": 0.0}, "data.mixture.temperature"),
        ({"strategy": "temperature", "temperature": -2.0}, "data.mixture.temperature"),
        ({"strategy": "temperature"}, "data.mixture.temperature"),
        ({"strategy": "capped"}, "data.mixture.cap"),
        ({"strategy": "capped", "cap": 0}, "data.mixture.cap"),
        ({"strategy": "nosuch"}, "data.mixture.strategy"),
    ],
)
def test_bad_parameters_name_the_key(kwargs, key):
    with pytest.raises(ConfigError) as err:
        build_mixture(NAMES, SIZES, **kwargs)
    assert str(err.value).startswith(key)
    assert err.value.exit_code == 2


def test_duplicate_task_names_rejected():
    with pytest.raises(ConfigError, match=r"data\.tasks\.2\.name: task name 'a' is used twice"):
        build_mixture(["a", "b", "a"], SIZES)
