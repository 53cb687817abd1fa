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


def _perturbed(tags: list[str], k: int) -> list[str]:
    """A different tagging of one sentence, by hand rules: drop the first entity (k % 3 == 0), retype every
    entity to MISC/PER (1), or keep the gold tags (2)."""
    out = list(tags)
    if k % 3 == 0:
        first = next((i for i, t in enumerate(out) if t.startswith("B-")), None)
        if first is not None:
            out[first] = "O"
            j = first + 1
            while j < len(out) and out[j].startswith("I-"):
                out[j] = "O"
                j += 1
    elif k % 3 == 1:
        out = [t if t == "O" else t[:2] + ("PER" if t.endswith("MISC") else "MISC") for t in out]
    return out


def test_seqeval_metric_is_registered_and_equals_seqeval_on_conll_rows(data_dir):
    from seqeval.metrics import f1_score, precision_score, recall_score

    from tunebench.evaluate.metrics.registry import metric_class, score_corpus

    rows = [json.loads(line) for line in (data_dir / "conll2003/test.jsonl").read_text().splitlines()][:60]
    gold = [row["labels"] for row in rows]
    predicted = [_perturbed(row["labels"], k) for k, row in enumerate(rows)]
    texts = [format_entity_list(row["tokens"], tags) for row, tags in zip(rows, predicted, strict=True)]
    texts[4] = "I am not sure which names are in this sentence."  # unparseable: no entities, counted
    predicted[4] = ["O"] * len(gold[4])
    refs = [[ner_reference(row["tokens"], row["labels"])] for row in rows]
    scores = score_corpus(texts, refs, ["seqeval"], bootstrap=50, seed=1)["seqeval"]
    assert metric_class("seqeval").higher_is_better and metric_class("seqeval").scale == 1.0
    assert scores["score"] == pytest.approx(f1_score(gold, predicted))
    assert scores["f1"] == pytest.approx(f1_score(gold, predicted))
    assert scores["precision"] == pytest.approx(precision_score(gold, predicted))
    assert scores["recall"] == pytest.approx(recall_score(gold, predicted))
    assert scores["unparseable"] == 1 and scores["unaligned"] == 0
    assert scores["signature"].startswith("seqeval|scheme:IOB2|mode:default|avg:micro")
    assert scores["ci95"][0] <= scores["score"] <= scores["ci95"][1]


def test_conll2003_template_brings_seqeval_and_unknown_task_metrics_exit_2():
    from tunebench.config import config_from_dict
    from tunebench.errors import ConfigError

    cfg = config_from_dict({"data": {"source": "conll2003", "template": {"name": "conll2003"}}})
    assert cfg.eval.metrics == ["seqeval"]
    task = {"name": "conll2003", "source": "conll2003", "template": {"name": "conll2003"}, "metrics": ["seqevall"]}
    with pytest.raises(ConfigError) as err:
        config_from_dict({"data": {"tasks": [task]}}, "mix.yaml")
    assert str(err.value).startswith("mix.yaml: data.tasks.0.metrics: unknown metric 'seqevall'; did you mean "
                                     "'seqeval'?")
    assert err.value.exit_code == 2
    bad_template = {**task, "metrics": None, "template": {"name": "conll"}}
    with pytest.raises(ConfigError, match=r"^mix.yaml: data.tasks.0.template.name: unknown template 'conll'"):
        config_from_dict({"data": {"tasks": [bad_template]}}, "mix.yaml")


def test_report_counts_unparseable_outputs_per_system():
    from tunebench.report.tables import system_table

    def entry(score, unparseable):
        return {"score": score, "ci95": [score - 0.1, score + 0.1], "n": 100, "unparseable": unparseable}

    table = system_table({"systems": {"base-0shot": {"metrics": {"seqeval": entry(0.2, 37)}},
                                      "tuned": {"metrics": {"seqeval": entry(0.6, 2)}}}})
    assert [r["metric"] for r in table["rows"]] == ["seqeval", "seqeval: unparseable outputs"]
    assert table["rows"][1]["cells"] == ["37", "2"]
