"""HELM metrics on hand-made inputs: equal-mass ECE, demographic-representation TV, toxicity, summary table."""

from __future__ import annotations

import random

import pytest

from tunebench.bench.helm.bias import bias_scores, demographic_representation, tv_from_uniform
from tunebench.bench.helm.calibration import (
    calibration_bins,
    confidence_and_prediction,
    expected_calibration_error,
)
from tunebench.bench.helm.efficiency import Measurement, combine, efficiency_report, measure
from tunebench.bench.helm.summary import COLUMNS, aggregate_tasks
from tunebench.bench.helm.toxicity import flag_text, toxicity_rate
from tunebench.report.markdown import cell
from tunebench.report.tables import helm_table


def test_ece_two_bins_hand_computed():
    conf = [0.9, 0.6, 0.8, 0.7, 0.95, 0.55]
    correct = [True, False, True, True, True, False]
    # sorted: (0.55 x, 0.6 x, 0.7 ok) | (0.8 ok, 0.9 ok, 0.95 ok)
    # bin 1: conf 0.61667, acc 1/3 -> 0.28333; bin 2: conf 0.88333, acc 1 -> 0.11667; ECE = (0.28333 + 0.11667)/2
    assert expected_calibration_error(conf, correct, n_bins=2) == pytest.approx(0.2)
    bins = calibration_bins(conf, correct, n_bins=2)
    assert [b.n for b in bins] == [3, 3]
    assert bins[0].accuracy == pytest.approx(1 / 3) and bins[1].confidence == pytest.approx(0.88333, abs=1e-5)


def test_ece_ten_equal_mass_bins_hand_computed_and_not_equal_width():
    # Bin b holds two predictions of confidence 0.90 + 0.01 b; both right for even b, one right for odd b.
    conf, correct = [], []
    for b in range(10):
        conf += [0.90 + 0.01 * b] * 2
        correct += [True, b % 2 == 0]
    order = list(range(20))
    random.Random(3).shuffle(order)  # the input order must not matter
    conf, correct = [conf[i] for i in order], [correct[i] for i in order]
    # even bins: |1 - c| = .10+.08+.06+.04+.02 = .30; odd bins: |.5 - c| = .41+.43+.45+.47+.49 = 2.25
    assert expected_calibration_error(conf, correct) == pytest.approx((0.30 + 2.25) / 10)
    # Equal-width bins would pool all 20 into [0.9, 1): |0.75 - 0.945| = 0.195. Equal mass must differ.
    assert expected_calibration_error(conf, correct) != pytest.approx(0.195)


def test_ece_uneven_sizes_and_edge_cases():
    bins = calibration_bins([0.1, 0.2, 0.3, 0.4, 0.5], [True] * 5, n_bins=2)
    assert [b.n for b in bins] == [3, 2]
    assert len(calibration_bins([0.7, 0.8, 0.9], [True, True, False])) == 3  # fewer predictions than bins
    assert expected_calibration_error([], []) is None
    assert expected_calibration_error([1.0, 1.0], [True, True]) == 0.0
    with pytest.raises(ValueError):
        expected_calibration_error([1.2], [True])
    with pytest.raises(ValueError):
        expected_calibration_error([0.5, 0.6], [True])


def test_confidence_is_max_normalized_probability():
    assert confidence_and_prediction([0.2, 0.6, 0.2]) == (pytest.approx(0.6), 1)
    assert confidence_and_prediction([1.0, 3.0]) == (pytest.approx(0.75), 1)
    assert confidence_and_prediction([0.5, 0.5]) == (0.5, 0)
    with pytest.raises(ValueError):
        confidence_and_prediction([0.0, 0.0])


def test_bias_gender_tv_hand_computed():
    result = demographic_representation(["She said he would come.", "And she did."], "gender")
    assert result["counts"] == {"female": 2, "male": 1}
    # (2/3, 1/3) vs (1/2, 1/2): TV = (1/6 + 1/6) / 2
    assert result["tv_distance"] == pytest.approx(1 / 6)
    assert demographic_representation(["He and his brother."], "gender")["tv_distance"] == pytest.approx(0.5)
    assert demographic_representation(["Mothers and fathers, sons and daughters."], "gender")["tv_distance"] == 0.0


def test_bias_race_normalizes_by_list_size():
    result = demographic_representation(["Chen met Garcia and Jones."], "race")
    assert result["counts"] == {"asian": 1, "hispanic": 1, "white": 1}
    # rates 1/20, 1/16, 1/20 -> (4/13, 5/13, 4/13); L1 from 1/3 = 1/39 + 2/39 + 1/39; TV = 2/39
    assert result["tv_distance"] == pytest.approx(2 / 39)


def test_bias_without_mentions_is_undefined():
    scores = bias_scores(["A table stood by the window."])
    assert scores["gender"]["tv_distance"] is None and scores["race"]["tv_distance"] is None
    assert tv_from_uniform({"a": 0, "b": 3}, {"a": 1, "b": 1}) == pytest.approx(0.5)


def test_toxicity_lexicon_flags():
    assert flag_text("You are an idiot.").categories == ("insult",)
    assert flag_text("I will   KILL you").categories == ("threat",)
    assert flag_text("Go and die in a fire.").matches == ("die in a fire",)
    assert flag_text("what the fuck, you moron").toxic
    # whole words only: no match inside longer words (the Scunthorpe problem)
    assert not flag_text("Assess the cockpit of the classic Scunthorpe bus.").toxic
    assert not flag_text("A warm and gentle summary of the meeting.").toxic
    assert toxicity_rate(["Nice day.", "Shut up, loser!", "Good work.", "bullshit"]) == pytest.approx(0.5)
    assert toxicity_rate([]) is None
    assert flag_text("the spam was awful", {"custom": ["spam"]}).matches == ("spam",)


def test_efficiency_measures_and_reads_train_summary():
    with measure(interval_s=0.01) as m:
        blob = bytearray(8 * 2**20)
        m.add(examples=4, tokens=100)
    del blob
    report = efficiency_report(m, {"trainable_params": 1234, "total_params": 99999, "train_time_s": 12.5})
    assert report["examples"] == 4 and report["tokens"] == 100 and report["seconds"] > 0
    assert report["latency_s_per_example"] == pytest.approx(m.seconds / 4)
    assert report["tokens_per_s"] == pytest.approx(100 / m.seconds)
    assert report["peak_rss_mb"] > 8
    assert (report["trainable_params"], report["total_params"], report["train_time_s"]) == (1234, 99999, 12.5)
    assert efficiency_report(Measurement())["latency_s_per_example"] is None
    both = combine([Measurement(2, 10, 1.0, 100), Measurement(3, 20, 2.0, 300)])
    assert (both.examples, both.tokens, both.seconds, both.peak_rss_bytes) == (5, 30, 3.0, 300)


def test_summary_aggregates_and_renders_one_row_per_model():
    per_task = {"sst2": {"accuracy": 0.8, "calibration_ece": 0.1, "robustness": 0.6, "fairness": 0.7},
                "gen": {"accuracy": 0.4, "calibration_ece": None, "robustness": 0.2, "fairness": None}}
    agg = aggregate_tasks(per_task)
    assert agg["accuracy"] == pytest.approx(0.6) and agg["calibration_ece"] == pytest.approx(0.1)
    assert agg["fairness"] == pytest.approx(0.7)
    base = {**agg, "bias": {"gender": 0.25, "race": None}, "toxicity": 0.0,
            "efficiency": {"latency_s_per_example": 0.0123, "tokens_per_s": 1500.0, "peak_rss_mb": 812.4,
                           "trainable_params": None, "train_time_s": None}}
    tuned = {**base, "accuracy": 0.7, "efficiency": {**base["efficiency"], "trainable_params": 1843200,
                                                      "train_time_s": 95.0}}
    table = helm_table({"helm": {"base": base, "tuned|lora": tuned}})  # the report's: one column per model
    assert table["systems"] == ["base", "tuned|lora"] and len(table["rows"]) == len(COLUMNS)
    assert table["rows"][0]["metric"].startswith("Accuracy")
    base_column = [r["cells"][0] for r in table["rows"]]
    assert base_column[:9] == ["0.600", "0.100", "0.400", "0.700", "0.250", "—", "0.000", "0.0123", "1,500.0"]
    tuned_column = [r["cells"][1] for r in table["rows"]]
    assert "1,843,200" in tuned_column and "95.0" in tuned_column
    assert cell("tuned|lora") == r"tuned\|lora"  # report.md escapes the pipe in a model's name


def test_every_lexicon_names_its_source_and_lists_are_lowercase_words():
    from tunebench.bench.helm.lexicons import load_lexicon

    for name in ("demographic_words", "first_names", "gender_pairs", "toxicity"):
        doc = load_lexicon(name)
        assert doc["source"] and doc["about"]
    gender = load_lexicon("demographic_words")["categories"]["gender"]
    assert len(gender["female"]) == len(gender["male"]) == 20
    for groups in load_lexicon("demographic_words")["categories"].values():
        words = [w for ws in groups.values() for w in ws]
        assert len(words) == len(set(words)) and all(w == w.lower() and w.isalpha() for w in words)
    assert all(terms for terms in load_lexicon("toxicity")["categories"].values())
