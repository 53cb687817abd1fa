"""ROUGE equals rouge_score's score_multi to 1e-9 on real DialogSum text, across options and edge cases."""

from __future__ import annotations

import json
import random
import re

import pytest
from rouge_score import rouge_scorer
from rouge_score import tokenize as rs_tokenize

from tunebench.evaluate.metrics import rouge

TYPES = list(rouge.ROUGE_TYPES)


@pytest.fixture(scope="module")
def dialogsum(data_dir) -> list[dict]:
    with open(data_dir / "dialogsum" / "dialogsum.test.jsonl", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh][:150]


def _refs(row: dict) -> list[str]:
    return [row["summary1"], row["summary2"], row["summary3"]]


def _by_sentence(text: str) -> str:
    """Put each sentence on its own line, so Lsum sees several sentences on the reference side too."""
    return re.sub(r"(?<=[.!?])\s+", "\n", text)


def assert_same_as_rouge_score(predictions, references, *, stem: bool, types=TYPES) -> None:
    ours = rouge.rouge_prf(predictions, references, types, stem=stem)
    scorer = rouge_scorer.RougeScorer(types, use_stemmer=stem)
    for k, (pred, refs) in enumerate(zip(predictions, references, strict=True)):
        expected = scorer.score_multi(refs, pred)
        for t in types:
            want = (expected[t].precision, expected[t].recall, expected[t].fmeasure)
            assert ours[t][k].tolist() == pytest.approx(want, abs=1e-9), (t, k, pred, refs)


@pytest.mark.parametrize("stem", [True, False])
def test_multi_reference_dialogsum_matches_rouge_score(dialogsum, stem):
    # first two dialogue turns: a realistic, multi-line prediction (exercises the union-LCS of Lsum)
    predictions = ["\n".join(r["dialogue"].split("\n")[:2]) for r in dialogsum]
    assert_same_as_rouge_score(predictions, [_refs(r) for r in dialogsum], stem=stem)


def test_sentence_split_both_sides_and_single_reference(dialogsum):
    predictions = [_by_sentence(r["summary2"]) + "\n" + r["dialogue"].split("\n")[0] for r in dialogsum]
    references = [[_by_sentence(r["summary1"])] for r in dialogsum]
    assert any(p.count("\n") >= 2 for p in predictions) and any("\n" in r[0] for r in references)
    assert_same_as_rouge_score(predictions, references, stem=True)
    assert_same_as_rouge_score(predictions, references, stem=False, types=["rougeLsum"])


def test_shuffled_words_stress_lcs_tie_breaking(dialogsum):
    """Shuffled summaries repeat words in many orders, so the LCS that Lsum unions is ambiguous."""
    rng = random.Random(0)
    predictions, references = [], []
    for r in dialogsum[:60]:
        words = r["summary1"].split()
        rng.shuffle(words)
        cut = len(words) // 2
        predictions.append(" ".join(words[:cut]) + "\n" + " ".join(words[cut:]))
        references.append([_by_sentence(r["summary2"]), r["summary3"]])
    assert_same_as_rouge_score(predictions, references, stem=True)


def test_lcs_indices_equal_rouge_score_backtracking():
    rng = random.Random(1)
    for _ in range(3000):
        a = [rng.randrange(4) for _ in range(rng.randint(0, 14))]
        b = [rng.randrange(4) for _ in range(rng.randint(0, 14))]
        assert rouge._lcs_indices(rouge._masks(a), len(a), b) == rouge_scorer.lcs_ind(a, b)


@pytest.mark.parametrize(
    "prediction",
    ["", "   ", "!!! ...", "\n\n", "a"],
)
def test_empty_or_tokenless_prediction_scores_zero(prediction):
    refs = [["#Person1# asks #Person2# for directions to the station.", "They talk about the station."]]
    ours = rouge.rouge_prf([prediction], refs, TYPES, stem=True)
    assert all(ours[t][0][2] == 0.0 for t in TYPES)
    assert_same_as_rouge_score([prediction], refs, stem=True)


def test_unicode_text_matches_rouge_score():
    predictions = [
        "Café crème à Zürich — naïve façade, 東京 2024!",
        "İstanbul ΣΊΣΥΦΟΣ straße \u212a Kelvin 😀 running runners",
        "émigré\u00a0résumé\tcoöperate\r\nline two ﬁle",
    ]
    references = [
        ["cafe creme a zurich naive facade 2024", "Zürich café"],
        ["istanbul kelvin straße running", "runner runs"],
        ["emigre resume cooperate\nline two file"],
    ]
    for stem in (True, False):
        assert_same_as_rouge_score(predictions, references, stem=stem)


def test_tokenizer_equals_rouge_score(dialogsum):
    from nltk.stem import porter

    stemmer = porter.PorterStemmer()
    for r in dialogsum[:40]:
        for stem in (True, False):
            assert rouge.tokenize(r["dialogue"], stem) == rs_tokenize.tokenize(
                r["dialogue"], stemmer if stem else None
            )


def test_unknown_type_and_length_mismatch_are_errors():
    with pytest.raises(ValueError, match="rouge3"):
        rouge.rouge_prf(["a"], [["a"]], ["rouge3"])
    with pytest.raises(ValueError, match="2 predictions"):
        rouge.rouge_prf(["a", "b"], [["a"]])
