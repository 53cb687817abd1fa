"""score_corpus / per_example_scores: sacreBLEU's numbers, classification metrics, intervals, signatures."""

from __future__ import annotations

import json

import numpy as np
import pytest
import sacrebleu
from rouge_score import rouge_scorer

from tunebench.errors import ConfigError, DataError
from tunebench.evaluate.metrics import expand_metrics, parse_signature, per_example_scores, score_corpus


@pytest.fixture(scope="module")
def corpus(data_dir) -> tuple[list[str], list[list[str]]]:
    with open(data_dir / "dialogsum" / "dialogsum.test.jsonl", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh][:120]
    predictions = [" ".join(r["dialogue"].split("\n")[:2]) for r in rows]
    references = [[r["summary1"], r["summary2"], r["summary3"]] for r in rows]
    return predictions, references


def test_bleu_and_chrf_equal_sacrebleu_corpus_scores(corpus):
    preds, refs = corpus
    out = score_corpus(preds, refs, ["bleu", "chrf"], bootstrap=0)
    streams = [list(s) for s in zip(*refs, strict=True)]
    bleu = sacrebleu.metrics.BLEU()
    assert out["bleu"]["score"] == pytest.approx(bleu.corpus_score(preds, streams).score, abs=1e-9)
    assert out["bleu"]["signature"] == bleu.get_signature().format()
    assert out["bleu"]["signature"].startswith("nrefs:3|") and out["bleu"]["ci95"] is None
    chrf = sacrebleu.metrics.CHRF()
    assert out["chrf"]["score"] == pytest.approx(chrf.corpus_score(preds, streams).score, abs=1e-9)
    assert out["chrf"]["signature"] == chrf.get_signature().format()


def test_variable_reference_counts_match_per_example_sacrebleu_statistics(corpus):
    preds, refs = corpus
    refs = [r[: 1 + k % 3] for k, r in enumerate(refs)]  # 1, 2 or 3 references
    out = score_corpus(preds, refs, ["bleu"], bootstrap=0)
    bleu = sacrebleu.metrics.BLEU()
    summed = np.sum(
        [bleu._extract_corpus_statistics([p], [[x] for x in r])[0] for p, r in zip(preds, refs, strict=True)],
        0,
    )
    assert out["bleu"]["score"] == pytest.approx(
        bleu._compute_score_from_stats(summed.tolist()).score, abs=1e-9
    )
    assert parse_signature(out["bleu"]["signature"])["nrefs"] == "var"
    assert (
        parse_signature(score_corpus(preds, refs, ["rouge1"], bootstrap=0)["rouge1"]["signature"])["refs"]
        == "var"
    )


def test_per_example_scores_are_sentence_bleu_chrf_and_rouge_f1(corpus):
    preds, refs = corpus
    preds, refs = preds[:20], refs[:20]
    rows = per_example_scores(preds, refs, ["rouge", "bleu", "chrf", "macro_f1"], stem=False)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    for row, p, r in zip(rows, preds, refs, strict=True):
        assert set(row) == {"rouge1", "rouge2", "rougeL", "rougeLsum", "bleu", "chrf"}
        assert row["bleu"] == pytest.approx(sacrebleu.sentence_bleu(p, r).score, abs=1e-9)
        assert row["chrf"] == pytest.approx(sacrebleu.sentence_chrf(p, r).score, abs=1e-9)
        assert row["rougeL"] == pytest.approx(scorer.score_multi(r, p)["rougeL"].fmeasure, abs=1e-9)


def test_rouge_entry_shape_and_interval(corpus):
    preds, refs = corpus
    out = score_corpus(preds, refs, ["rouge"], bootstrap=300, seed=1)
    assert list(out) == ["rouge1", "rouge2", "rougeL", "rougeLsum"]
    entry = out["rougeL"]
    assert set(entry) == {"precision", "recall", "f1", "score", "ci95", "signature", "n"}
    assert entry["score"] == entry["f1"] and entry["n"] == len(preds)
    assert entry["ci95"][0] < entry["score"] < entry["ci95"][1]
    assert entry["signature"] == (
        "rougeL|tok:rouge_score-default|stem:yes|lsum_split:newline|refs:3|agg:best-f|version:tunebench-0.1.0"
    )
    again = score_corpus(preds, refs, ["rougeL"], bootstrap=300, seed=1)["rougeL"]
    assert again["ci95"] == entry["ci95"]
    assert score_corpus(preds, refs, ["rougeL"], bootstrap=300, seed=2)["rougeL"]["ci95"] != entry["ci95"]


def test_empty_predictions_score_zero_without_crashing(corpus):
    _, refs = corpus
    out = score_corpus([""] * 5, refs[:5], ["rouge", "bleu", "chrf", "exact_match"], bootstrap=50)
    assert all(entry["score"] == 0.0 for entry in out.values())
    assert per_example_scores([""], refs[:1], ["rouge", "bleu"])[0]["bleu"] == 0.0


def test_classification_metrics():
    preds = ["Positive.", "negative", " neutral ", "positive", "banana", "Negative!"]
    refs = [["positive"], ["positive"], ["Neutral"], ["positive"], ["negative"], ["negative"]]
    out = score_corpus(preds, refs, ["accuracy", "macro_f1", "exact_match"], bootstrap=0)
    assert out["accuracy"]["score"] == pytest.approx(4 / 6)
    # positive: tp 2, fp 0, fn 1 -> 0.8; negative: tp 1, fp 1, fn 1 -> 0.5; neutral: tp 1 -> 1.0
    assert out["macro_f1"]["score"] == pytest.approx((0.8 + 0.5 + 1.0) / 3)
    assert out["exact_match"]["score"] == pytest.approx(1 / 6)  # only "positive" == "positive" verbatim
    assert (
        score_corpus(["a  b"], [["x", " a b "]], ["exact_match"], bootstrap=0)["exact_match"]["score"] == 1.0
    )
    assert per_example_scores(preds, refs, ["accuracy", "macro_f1"])[0] == {"accuracy": 1.0}


def test_metric_names_and_input_errors():
    assert expand_metrics("rouge, bleu,rougeL") == ["rouge1", "rouge2", "rougeL", "rougeLsum", "bleu"]
    with pytest.raises(ConfigError, match="unknown metric 'meteor'"):
        score_corpus(["a"], [["a"]], ["meteor"])
    with pytest.raises(DataError, match="empty"):
        score_corpus([], [], ["rouge1"])
    with pytest.raises(DataError, match="example 0"):
        score_corpus(["a"], [[]], ["rouge1"])
