"""Every bad input of a multi-task config (issue 10), end to end through the CLI: one sentence naming the key
(exit 2) or the file and line (exit 1, bad data), no traceback."""

from __future__ import annotations

import gzip
import json

import pytest
import yaml

from tunebench.cli import main

EMOTION = {"name": "emotion", "source": "emotion", "template": {"name": "emotion"}}
TRANSLATION = {"name": "multi30k_en_de", "source": "multi30k", "format": "parallel",
               "template": {"name": "translation"}, "splits": {"validation": "val", "test": "test_2016_flickr"}}


def _run_cli(tmp_path, capsys, tree: dict, *args: str) -> tuple[int, str]:
    path = tmp_path / "mix.yaml"
    path.write_text(yaml.safe_dump(tree))
    code = main([*args, str(path)])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, err  # one sentence
    return code, lines[0]


@pytest.mark.parametrize(
    ("tasks", "mixture", "message"),
    [
        ([{**EMOTION, "weight": -0.5}, TRANSLATION], {"strategy": "weights"}, "data.tasks.0.weight: -0.5 is negative"),
        ([{**EMOTION, "weight": 0}, {**TRANSLATION, "weight": 0}], {"strategy": "weights"},
         "data.tasks.*.weight: every weight is 0"),
        ([{"name": "csv", "source": "x.csv", "template": {"prompt": "{{ a }}", "completion": "{{ b }}"}}], {},
         "data.tasks.0.metrics: task 'csv' has no metric"),
        ([EMOTION, {**TRANSLATION, "name": "emotion"}], {}, "data.tasks.1.name: task name 'emotion' is used twice"),
        ([EMOTION, TRANSLATION], {"strategy": "temperature", "temperature": 0},
         "data.mixture.temperature: 0.0 must be a number > 0"),
        ([EMOTION, TRANSLATION], {"strategy": "temperature", "temperature": -2},
         "data.mixture.temperature: -2.0 must be a number > 0"),
    ],
    ids=["negative-weight", "all-zero-weights", "no-metric", "same-name", "temperature-0", "temperature-negative"],
)
def test_bad_mixture_key_exits_2_naming_the_key(tmp_path, capsys, tasks, mixture, message):
    tree = {"data": {"tasks": tasks, **({"mixture": mixture} if mixture else {})}}
    code, line = _run_cli(tmp_path, capsys, tree, "config", "show")
    assert code == 2
    assert line.startswith(f"error: {tmp_path / 'mix.yaml'}: {message}"), line


def test_parallel_files_of_different_lengths_name_both_files_and_the_line(tmp_path, capsys):
    folder = tmp_path / "pairs"
    folder.mkdir()
    for name, lines in (("train.en.gz", ["A dog.", "A cat.", "A bird."]), ("train.de.gz", ["Ein Hund.", "Eine Katze."]),
                        ("test.en", ["A fox."]), ("test.de", ["Ein Fuchs."])):
        data = "".join(line + "\n" for line in lines).encode()
        (folder / name).write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    task = {"name": "pairs", "source": str(folder), "format": "parallel", "template": {"name": "translation"}}
    code, line = _run_cli(tmp_path, capsys, {"data": {"tasks": [task]}}, "data", "preview")
    assert code == 1
    assert f"{folder / 'train.en.gz'} has 3 lines, {folder / 'train.de.gz'} has 2" in line
    assert f"({folder / 'train.en.gz'}:3 has no partner line in train.de.gz)" in line


def test_entity_label_outside_the_tag_set_names_file_and_row(tmp_path, capsys):
    folder = tmp_path / "ner"
    folder.mkdir()
    rows = {"train": [{"tokens": ["Ann", "runs"], "labels": ["B-PER", "O"]},
                      {"tokens": ["a", "Tesla"], "labels": ["O", "B-VEHICLE"]}],
            "test": [{"tokens": ["Rome"], "labels": ["B-LOC"]}]}
    for split, items in rows.items():
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
    task = {"name": "ner", "source": str(folder), "template": {"name": "conll2003"}}
    code, line = _run_cli(tmp_path, capsys, {"data": {"tasks": [task]}}, "data", "preview")
    assert code == 1
    assert f"{folder / 'train.jsonl'} (row 2)" in line and "label 'B-VEHICLE' at token 2 is outside the tag set" in line
