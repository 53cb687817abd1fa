"""Honest verdicts on small sets (issue 15, item 1): per-label breakdown, majority-label baseline, degenerate outputs,
the conservative paired test below SMALL_TEST_SET examples, and every p-value named by its test."""

from __future__ import annotations

import json
from itertools import product
from pathlib import Path

import pytest

from tunebench.evaluate.compare import compare_systems
from tunebench.evaluate.metrics import score_corpus
from tunebench.evaluate.score import hash_test_set
from tunebench.evaluate.verdicts import (
    DEGENERATE_SHARE,
    SMALL_TEST_SET,
    decide,
    degenerate_outputs,
    diagnostics,
    label_report,
    verdict_test,
)

# The issue's case: 10 reviews (6 positive, 4 negative); the base model answers in sentences, the tuned one
# collapsed to "positive" for every input.
GOLD = ["positive", "negative", "positive", "positive", "negative", "positive", "negative", "positive", "positive",
        "negative"]
BASE = [f"I think this review is {'rather' if k % 2 else 'quite'} {g}, overall." for k, g in enumerate(GOLD)]
COLLAPSED = ["positive"] * len(GOLD)
METRICS = ["accuracy", "macro_f1"]


def write_eval(out: Path, preds: list[str], gold: list[str], metrics=METRICS) -> Path:
    """An eval dir as the eval stage writes it (docs/formats.md), diagnostics included."""
    out.mkdir(parents=True)
    ids = [f"r{k}" for k in range(len(gold))]
    refs = [[g] for g in gold]
    rows = [{"id": i, "prompt": f"Is this review positive or negative? review {i}", "references": r,
             "prediction": p} for i, r, p in zip(ids, refs, preds, strict=True)]
    (out / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    scores = {"schema": "tunebench.eval/1", "system": {"name": out.name},
              "test_set": {"split": "test", "n": len(ids), "hash": hash_test_set(ids, refs)},
              "metrics": score_corpus(preds, refs, metrics, bootstrap=50),
              "diagnostics": diagnostics(preds, refs, metrics)}
    (out / "scores.json").write_text(json.dumps(scores), encoding="utf-8")
    return out


def test_per_label_breakdown_and_majority_baseline_by_hand():
    preds = ["Positive.", "negative", "positive", "neutral", "negative", "positive"]
    gold = ["positive", "negative", "negative", "positive", "negative", "positive"]
    report = label_report(preds, [[g] for g in gold], METRICS)
    # positive: predicted 3 times (rows 0, 2, 5), 2 right; support 3 (rows 0, 3, 5)
    # negative: predicted 2 times (rows 1, 4), both right; support 3 (rows 1, 2, 4); "neutral" is no gold label
    assert report["labels"] == ["negative", "positive"] and report["outside_labels"] == 1
    pos, neg = report["per_label"]["positive"], report["per_label"]["negative"]
    assert (pos["precision"], pos["recall"], pos["support"], pos["predicted"]) == (2 / 3, 2 / 3, 3, 3)
    assert (neg["precision"], neg["recall"], neg["support"]) == (1.0, 2 / 3, 3)
    assert neg["f1"] == pytest.approx(2 * 1.0 * (2 / 3) / (1.0 + 2 / 3)) and pos["f1"] == pytest.approx(2 / 3)
    macro = score_corpus(preds, [[g] for g in gold], ["macro_f1"], bootstrap=0)["macro_f1"]["score"]
    assert macro == pytest.approx((pos["f1"] + neg["f1"]) / 2)  # the breakdown adds up to the metric
    # a 3/3 tie: the first label in sorted order; always answering it is right on 3 of 6, and its macro-F1 is
    # F1(negative) = 2*3 / (2*3 + 3) averaged with F1(positive) = 0
    assert report["majority_label"] == "negative"
    assert report["majority_baseline"] == pytest.approx({"accuracy": 0.5, "macro_f1": (6 / 9) / 2})


def test_majority_baseline_of_the_issue_case():
    report = label_report(COLLAPSED, [[g] for g in GOLD], METRICS)
    # always "positive" on 6 positive / 4 negative: accuracy 0.6, macro-F1 = (F1 1.2/1.6=0.75 + 0) / 2 = 0.375
    assert report["majority_label"] == "positive"
    assert report["majority_baseline"] == pytest.approx({"accuracy": 0.6, "macro_f1": 0.375})
    assert diagnostics(COLLAPSED, [[g] for g in GOLD], ["rougeL"])["labels"] is None  # not a classification task


def test_degenerate_rule():
    refs = [[g] for g in GOLD]
    flag = degenerate_outputs(COLLAPSED, refs, labels=True)
    assert flag == {"kind": "one label", "text": "positive", "count": 10, "n": 10, "share": 1.0,
                    "reference_share": 0.6}
    # labels are compared as accuracy compares them
    assert degenerate_outputs(["Positive."] * 5 + ["positive"] * 5, refs, labels=True)["count"] == 10
    assert degenerate_outputs(["Positive."] * 5 + ["positive"] * 5, refs, labels=False) is None
    # 9 of 10 identical is degenerate (>= 90%), 8 of 10 is not
    nine = ["positive"] * 9 + ["negative"]
    assert degenerate_outputs(nine, refs, labels=True)["share"] == DEGENERATE_SHARE
    assert degenerate_outputs(["positive"] * 8 + ["negative"] * 2, refs, labels=True) is None
    # a test set that really is 90% one label: a model that gets it right is not flagged
    uniform = [["positive"]] * 9 + [["negative"]]
    assert degenerate_outputs(nine, uniform, labels=True) is None
    # generation: one repeated text against varied references; a single example says nothing
    texts = [[f"summary {k}"] for k in range(20)]
    assert degenerate_outputs(["#Person1# says hi."] * 20, texts, labels=False)["kind"] == "one text"
    assert degenerate_outputs([f"s {k}" for k in range(20)], texts, labels=False) is None
    assert degenerate_outputs(["x"], [["y"]], labels=False) is None


def test_the_verdict_test_and_the_verdict():
    p = {"paired-bootstrap": 0.001, "approximate-randomization": 0.029}
    assert verdict_test(p, SMALL_TEST_SET - 1) == "approximate-randomization"
    assert verdict_test(p, SMALL_TEST_SET) == "paired-bootstrap"  # large sets keep the bootstrap
    assert verdict_test({"paired-bootstrap": 0.2, "approximate-randomization": 0.1}, 10) == "paired-bootstrap"
    assert verdict_test({"paired-bootstrap": 0.1, "approximate-randomization": 0.1}, 10) == "paired-bootstrap"
    assert decide(0.6, 0.029, candidate_degenerate=False) == "gain"
    assert decide(0.6, 0.029, candidate_degenerate=True) == "degenerate"
    assert decide(-0.6, 0.029, candidate_degenerate=True) == "loss"  # a loss stays a loss
    assert decide(0.6, 0.05, candidate_degenerate=False) == "n.s."
    assert decide(0.6, 0.01, candidate_degenerate=False, higher_is_better=False) == "loss"


def _exact_randomization_p(diffs: list[float]) -> float:
    """Two-sided exact randomization p of a mean difference: every sign assignment, counted at >= (by hand)."""
    observed = abs(sum(diffs))
    signs = list(product((1, -1), repeat=len(diffs)))
    return sum(abs(sum(s * d for s, d in zip(sign, diffs, strict=True))) >= observed - 1e-12
               for sign in signs) / len(signs)


@pytest.fixture()
def collapsed_run(tmp_path: Path) -> Path:
    write_eval(tmp_path / "run" / "eval" / "base-0shot", BASE, GOLD)
    write_eval(tmp_path / "run" / "eval" / "tuned", COLLAPSED, GOLD)
    return tmp_path / "run"


def test_a_collapsed_model_on_ten_reviews_is_not_a_significant_gain(collapsed_run: Path):
    out = compare_systems([collapsed_run], n_resamples=1000, seed=0)
    assert out["test_set"]["n"] == 10 and out["test_set"]["small"] is True
    (cmp,) = out["comparisons"]
    acc = cmp["metrics"]["accuracy"]
    assert (acc["baseline"], acc["candidate"]) == (0.0, 0.6)
    # both tests are kept, each named; the small set's verdict takes the larger p
    tests = acc["p_values"]
    assert set(tests) == {"paired-bootstrap", "approximate-randomization"}
    assert acc["p_value"] == max(tests.values()) and acc["method"] == max(tests, key=tests.get)
    assert acc["p_value_ar"] == tests["approximate-randomization"]
    # approximate randomization estimates the exact randomization p: 6 examples differ by 1, so 2 of 2^6 sign
    # assignments are as extreme (1000 trials: standard error ~0.006)
    exact = _exact_randomization_p([1.0] * 6 + [0.0] * 4)
    assert exact == pytest.approx(2 / 64) and tests["approximate-randomization"] == pytest.approx(exact, abs=0.02)
    assert tests["paired-bootstrap"] <= 0.002  # the bootstrap's floor: what the report used to show alone
    for metric, entry in cmp["metrics"].items():
        assert entry["verdict"] == "degenerate", metric  # significant, but no gain: one label for every input
    assert out["systems"]["tuned"]["diagnostics"]["degenerate"]["text"] == "positive"
    assert out["systems"]["base-0shot"]["diagnostics"]["degenerate"] is None
    assert out["systems"]["tuned"]["diagnostics"]["labels"]["majority_baseline"] == pytest.approx(
        {"accuracy": 0.6, "macro_f1": 0.375})


def test_a_large_set_keeps_the_bootstrap_and_a_real_gain_stays_a_gain(tmp_path: Path):
    gold = (GOLD * 6)[:60]
    good = [g if k % 5 else ("negative" if g == "positive" else "positive") for k, g in enumerate(gold)]
    write_eval(tmp_path / "base", ["maybe"] * 30 + gold[30:], gold)
    write_eval(tmp_path / "tuned", good, gold)
    out = compare_systems([tmp_path / "base", tmp_path / "tuned"], n_resamples=500)
    acc = out["comparisons"][0]["metrics"]["accuracy"]
    assert out["test_set"]["small"] is False and acc["method"] == "paired-bootstrap"
    assert acc["p_value"] == acc["p_values"]["paired-bootstrap"] and acc["verdict"] == "gain"
    assert out["systems"]["base"]["diagnostics"]["degenerate"] is None  # 50% "maybe" is not degenerate


def test_report_headline_and_terminal_flag_the_collapse(collapsed_run: Path, capsys):
    from tunebench.cli import main
    from tunebench.pipeline import write_report
    from tunebench.report.results import build_results

    assert main(["compare", str(collapsed_run), "--out", str(collapsed_run / "compare")]) == 0
    terminal = " ".join(capsys.readouterr().out.split())
    assert "tuned: degenerate outputs, one label 'positive' for 10 of 10 inputs" in terminal
    assert "small test set (n = 10 < 50)" in terminal and "significant gain" not in terminal
    assert "(approximate-randomization)" in terminal and "(paired-bootstrap)" in terminal
    assert "not a gain: degenerate outputs" in terminal

    paths = write_report(collapsed_run)
    results = build_results(collapsed_run)
    md = paths["markdown"].read_text()
    headline = md.split("## Headline")[1].split("\n## ")[0]
    assert "tuned: degenerate outputs, one label 'positive' for 10 of 10 inputs (100%" in headline
    assert "Small test set (n = 10 &lt; 50)" in headline and "significant gain" not in headline  # md escapes <
    assert "tuned vs base-0shot, accuracy: 0.0000 → 0.6000" in headline
    assert "approximate-randomization; majority-label baseline 0.6000): not a gain: degenerate outputs" in headline
    assert "majority-label baseline 0.3750" in headline  # macro-F1's
    # every p-value shown names its test
    acc = results["comparisons"][0]["metrics"]["accuracy"]
    other = "paired-bootstrap" if acc["method"] == "approximate-randomization" else "approximate-randomization"
    assert f"| {acc['method']} | degenerate | " in md and f"({other}) |" in md
    assert "| accuracy | 0.0000 [0.0000, 0.0000] | 0.6000 [" in md and "| 0.6000 |" in md  # baseline column
    assert "### Per-label breakdown: tuned" in md and "| positive | 0.6000 | 1.0000 | 0.7500 | 6 | 10 |" in md
    assert "| negative | 0.0000 | 0.0000 | 0.0000 | 4 | 0 |" in md

    page = paths["html"].read_text()
    assert "⚠ not a gain: degenerate outputs" in page and "▲ significant gain" not in page
    assert "tuned: degenerate outputs, one label &#39;positive&#39; for 10 of 10 inputs" in page
    assert "<th>majority-label baseline</th>" in page and "Per-label breakdown: tuned" in page
    assert f"({other})" in page and f"<td>{acc['method']}</td>" in page


def test_an_eval_alone_flags_degenerate_outputs_in_its_report_and_terminal(tmp_path: Path, capsys):
    from tunebench.cli import main
    from tunebench.pipeline import write_report

    d = write_eval(tmp_path / "tuned", COLLAPSED, GOLD)
    md = write_report(d)["markdown"].read_text()
    assert "## Headline" in md and "tuned: degenerate outputs" in md
    # score prints the breakdown, the baseline and the flag
    assert main(["score", "--pred", str(d / "predictions.jsonl"), "--metric", "accuracy,macro_f1"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "degenerate outputs, one label 'positive' for 10 of 10" in out
    assert "majority label 'positive': accuracy 0.6000, macro_f1 0.3750" in out


def test_old_scores_without_diagnostics_are_diagnosed_from_predictions(tmp_path: Path):
    from tunebench.report.results import build_results

    d = write_eval(tmp_path / "tuned", COLLAPSED, GOLD)
    scores = json.loads((d / "scores.json").read_text())
    del scores["diagnostics"]
    (d / "scores.json").write_text(json.dumps(scores))
    assert build_results(d)["systems"]["tuned"]["diagnostics"]["degenerate"]["count"] == 10


def test_the_task_summary_names_the_test_of_each_p_value():
    from tunebench.report.tables import task_summary_rows

    metric = {"baseline": 0.5, "candidate": 0.7, "delta": 0.2, "ci95": [0.05, 0.35], "p_value": 0.042,
              "method": "approximate-randomization", "higher_is_better": True}
    results = {"tasks": {"emotion": {"comparisons": [{"candidate": "tuned", "baseline": "base-0shot",
                                                      "metrics": {"accuracy": metric}}]}}}
    (row,) = task_summary_rows(results)
    assert row["p"] == "0.0420 (approximate-randomization)"
