"""Bad rows in a user's data: nulls are absent to templates, empty completions dropped (or kept) and counted,
repeated ids refused naming the id, the file and both lines.

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


# --- duplicate ids (issue 13 A.5), in the same file: both are faults of a user's data rows ------------------------


def test_duplicate_ids_are_refused_naming_the_id_file_and_both_lines(tmp_path):
    import pytest

    from tunebench.errors import DataError

    path = tmp_path / "eval.jsonl"
    path.write_text('{"id": "a", "q": "1", "a": "x"}\n\n{"id": "b", "q": "2", "a": "y"}\n'
                    '{"id": "a", "q": "3", "a": "z"}\n')
    cfg = DataConfig.model_validate({
        "source": str(path), "id_field": "id", "template": {"prompt": "{{ q }}", "completion": "{{ a }}"},
        "splits": {"train": "train", "validation": None, "test": None}, "fractions": {"validation": 0, "test": 0}})
    with pytest.raises(DataError, match=rf"^{path}:1 and line 4: both have the id 'a'"):
        build_splits(cfg, None, seed=0)
    csv_path = tmp_path / "eval.csv"
    csv_path.write_text('id,q,a\nk,"multi\nline",x\nm,2,y\nk,3,z\n')
    with pytest.raises(DataError, match=rf"^{csv_path}:2 and line 5: both have the id 'k'"):
        build_splits(cfg.model_copy(update={"source": str(csv_path)}), None, seed=0)


def test_duplicate_ids_in_a_benchmark_file_are_refused(tmp_path):
    import pytest
    import yaml

    from tunebench.bench.instances import prepare_task
    from tunebench.bench.spec import resolve_tasks
    from tunebench.errors import DataError

    rows = [{"q": "1", "a": "x", "uid": "u1"}, {"q": "2", "a": "y", "uid": "u2"}, {"q": "3", "a": "z", "uid": "u1"}]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = {"name": "t", "version": "1", "source": {"format": "jsonl", "splits": {"test": "t.jsonl"}},
            "id_field": "uid", "output_type": "generate", "template": "{{ q }}", "target": "{{ a }}"}
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(spec))
    (resolved,) = resolve_tasks([str(tmp_path / "t.yaml")], None)
    with pytest.raises(DataError, match=r"t\.jsonl:1 and line 3: both have the id 'u1'"):
        prepare_task(resolved, data_dir=None)
