"""NER as generation: entity lists round-trip CoNLL tags, the parser, and entity-level scores equal seqeval's."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tunebench.data.ner import (
    format_entity_list,
    ner_reference,
    parse_entity_list,
    tags_from_entity_list,
)
from tunebench.errors import DataError
from tunebench.evaluate.metrics.ner import details, ner_stats, prf_from_sums, sentence_f1

TOKENS = ["AL-AIN", ",", "United", "Arab", "Emirates", "1996-12-06"]
TAGS = ["B-LOC", "O", "B-LOC", "I-LOC", "I-LOC", "O"]


def test_format_in_order_of_appearance():
    assert format_entity_list(TOKENS, TAGS) == "location: AL-AIN; location: United Arab Emirates"
    assert format_entity_list(["Nadim", "Ladki", "won"], ["B-PER", "I-PER", "O"]) == "person: Nadim Ladki"
    assert format_entity_list(["no", "one"], ["O", "O"]) == "none"


def test_round_trip_on_conll_rows(data_dir):
    rows = [json.loads(line) for line in (data_dir / "conll2003/validation.jsonl").read_text().splitlines()]
    assert len(rows) == 3250
    for row in rows:
        text = format_entity_list(row["tokens"], row["labels"])
        rebuilt = tags_from_entity_list(row["tokens"], text)
        assert rebuilt.parsed and rebuilt.unaligned == 0
        assert rebuilt.tags == row["labels"], (row, text)


def test_adjacent_and_repeated_entities_keep_their_places():
    tokens = ["Japan", "beat", "Japan", "B", "team", "Smith", "Jones"]
    tags = ["B-LOC", "O", "B-ORG", "I-ORG", "O", "B-PER", "B-PER"]
    text = format_entity_list(tokens, tags)
    assert text == "location: Japan; organization: Japan B; person: Smith; person: Jones"
    assert tags_from_entity_list(tokens, text).tags == tags


def test_parser_accepts_codes_plurals_and_none():
    assert parse_entity_list("PER: Ann; locations: Rome\nextra line ignored") == [("PER", "Ann"), ("LOC", "Rome")]
    assert parse_entity_list("None.") == []
    assert parse_entity_list("   ") == []


@pytest.mark.parametrize("text", ["Ann is a person", "person: Ann; vehicle: car", "person:   ", "person Ann"])
def test_unparseable_outputs_count_as_no_entities(text):
    assert parse_entity_list(text) is None
    rebuilt = tags_from_entity_list(["Ann", "drove"], text)
    assert not rebuilt.parsed and rebuilt.tags == ["O", "O"]


def test_unaligned_entity_is_counted_not_tagged():
    rebuilt = tags_from_entity_list(["Ann", "drove"], "person: Ann; location: Paris")
    assert rebuilt.tags == ["B-PER", "O"] and rebuilt.unaligned == 1


def test_label_outside_tag_set_names_where():
    with pytest.raises(DataError, match=r"conll\.jsonl \(row 3\): label 'B-VEHICLE' at token 2 is outside the tag set"):
        format_entity_list(["a", "car"], ["O", "B-VEHICLE"], where="conll.jsonl (row 3)")
    with pytest.raises(DataError, match=r"label 'X-PER' at token 1"):
        ner_reference(["a"], ["X-PER"])


HAND_MADE = [
    # (tokens, gold tags, generated text)
    (["Ann", "met", "Bob", "in", "Rome"], ["B-PER", "O", "B-PER", "O", "B-LOC"], "person: Ann; location: Rome"),
    (["EU", "rejects", "German", "call"], ["B-ORG", "O", "B-MISC", "O"], "organization: EU; person: German"),
    (["New", "York", "Times"], ["B-ORG", "I-ORG", "I-ORG"], "location: New York"),
    (["nothing", "here"], ["O", "O"], "none"),
    (["Peter", "Blackburn"], ["B-PER", "I-PER"], "I cannot answer that"),
    (["Ann", "and", "Rome"], ["B-PER", "O", "B-LOC"], "person: Ann; location: Rome; person: Zed"),
]


def test_scores_equal_seqeval_on_hand_made_cases():
    from seqeval.metrics import f1_score, precision_score, recall_score

    preds = [text for _, _, text in HAND_MADE]
    refs = [[ner_reference(tokens, tags)] for tokens, tags, _ in HAND_MADE]
    stats = ner_stats(preds, refs)
    gold_tags = [tags for _, tags, _ in HAND_MADE]
    pred_tags = [tags_from_entity_list(tokens, text).tags for tokens, _, text in HAND_MADE]
    p, r, f = prf_from_sums(stats.sum(0))
    assert f[0] == pytest.approx(f1_score(gold_tags, pred_tags))
    assert p[0] == pytest.approx(precision_score(gold_tags, pred_tags))
    assert r[0] == pytest.approx(recall_score(gold_tags, pred_tags))
    # by hand: gold 9 entities (3+2+1+0+1+2), predicted 7 (Zed is unaligned), correct 5 (Ann, Rome, EU, Ann, Rome)
    assert stats.sum(0).tolist() == [5, 7, 9, 1, 1]
    assert f[0] == pytest.approx(2 * 5 / 16)
    d = details(stats)
    assert d["unparseable"] == 1 and d["unaligned"] == 1


def test_sentence_f1_of_an_empty_sentence_is_one():
    stats = ner_stats(["none", "person: Ann"], [[ner_reference(["x"], ["O"])], [ner_reference(["Ann"], ["B-PER"])]])
    assert sentence_f1(stats).tolist() == [1.0, 1.0]
    assert np.all(prf_from_sums(np.zeros(5))[2] == 0.0)


def test_non_ner_reference_is_a_clear_error():
    with pytest.raises(DataError, match=r"example 0: an NER reference must be JSON"):
        ner_stats(["person: Ann"], [["a plain summary"]])
