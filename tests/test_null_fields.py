"""Null and blank fields: a null is absent to templates, an empty completion is dropped (or kept) and counted.

Right values: the rendered records written out by hand.
"""

from __future__ import annotations

import json

from tunebench.config import DataConfig
from tunebench.data.prepare import build_splits

ALPACA = {
    "prompt": "{{ instruction }}{% if input %}\nInput: {{ input }}{% endif %}",
    "completion": "{{ output }}",
}


def _data(tmp_path, rows, name="alpaca.jsonl", **keys):
    path = tmp_path / name
    if name.endswith(".jsonl"):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        path.write_text(rows)
    return DataConfig.model_validate({"source": str(path), "template": ALPACA, "splits": {"train": "train", "validation": None, "test": None},
                                      "fractions": {"validation": 0.0, "test": 0.0}, **keys})


ROWS = [
    {"instruction": "Say hi.", "input": None, "output": "hi"},
    {"instruction": "Echo this.", "input": "abc", "output": "abc"},
    {"instruction": "Say nothing.", "input": "x", "output": None},
    {"instruction": "Shout.", "input": None, "output": "HEY"},
]


def test_nulls_are_absent_and_empty_completions_dropped_and_counted(tmp_path):
    splits = build_splits(_data(tmp_path, ROWS), None, seed=0)
    rendered = sorted((e.prompt, e.completion) for e in splits.train)
    assert rendered == sorted([("Say hi.", "hi"), ("Echo this.\nInput: abc", "abc"), ("Shout.", "HEY")])
    assert not any("None" in p or "None" in c for p, c in rendered)
    assert splits.stats["null_fields"] == {"input": 2, "output": 1}
    assert splits.stats["empty_completions"] == {"dropped": {"train": 1, "validation": 0, "test": 0}}


def test_a_switch_keeps_empty_completions(tmp_path):
    splits = build_splits(_data(tmp_path, ROWS, keep_empty_completions=True), None, seed=0)
    assert ("Say nothing.\nInput: x", "") in [(e.prompt, e.completion) for e in splits.train]
    assert splits.stats["empty_completions"] == {"kept": {"train": 1, "validation": 0, "test": 0}}


def test_blank_csv_output_is_an_empty_completion(tmp_path):
    text = "instruction,input,output\nSay hi.,,hi\nSay nothing.,x,\n"
    splits = build_splits(_data(tmp_path, text, name="data.csv"), None, seed=0)
    assert [(e.prompt, e.completion) for e in splits.train] == [("Say hi.", "hi")]
    assert splits.stats["empty_completions"]["dropped"]["train"] == 1


def test_bench_templates_also_render_null_as_absent():
    from tunebench.bench.templates import render

    assert render("Q: {{ q }}{% if ctx %} ({{ ctx }}){% endif %}|{{ ctx }}|", {"q": "x", "ctx": None},
                  "spec.yaml", "doc_to_text", "row 1") == "Q: x||"
