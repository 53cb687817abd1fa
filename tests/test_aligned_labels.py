"""The aligned-labels source format (labels in a separate line-aligned file): PIQA in task specs and run configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunebench.bench.instances import prepare_task
from tunebench.bench.spec import load_spec, resolve_tasks
from tunebench.errors import DataError


def test_builtin_piqa_reads_aligned_labels(data_dir: Path) -> None:
    (spec,) = resolve_tasks(["piqa"], data_dir)
    task = prepare_task(spec, data_dir=data_dir)
    records = [json.loads(line) for line in (data_dir / "piqa/valid.jsonl").read_text().splitlines()]
    labels = (data_dir / "piqa/valid-labels.lst").read_text().split()
    assert len(task.instances) == len(records) == len(labels) == 1838
    assert task.output_type == "multiple_choice" and task.metrics == ["acc", "acc_norm"]
    for i in (0, 1, 1837):
        inst = task.instances[i]
        assert inst.prompt == f"Question: {records[i]['goal']}\nAnswer:"
        assert inst.choices == (records[i]["sol1"], records[i]["sol2"]) and inst.target == int(labels[i])
        assert inst.target_delimiter == " "


def test_label_file_of_another_length_is_refused(tmp_path: Path) -> None:
    (tmp_path / "d.jsonl").write_text('{"q": "a"}\n{"q": "b"}\n')
    (tmp_path / "d.lst").write_text("0\n1\n0\n")
    spec_path = tmp_path / "t.yaml"
    spec_path.write_text(
        "name: t\nversion: 1\nsource: {format: jsonl, splits: {test: d.jsonl}, labels: {test: d.lst}}\n"
        "template: '{{ q }}'\noutput_type: multiple_choice\nchoices: [x, y]\ntarget: '{{ label }}'\n"
        "target_type: index\n"
    )
    with pytest.raises(DataError, match=r"d\.lst has 3 labels but .*d\.jsonl has 2 records"):
        prepare_task(load_spec(spec_path), data_dir=None)


def test_run_config_source_with_aligned_labels(data_dir: Path) -> None:
    from tunebench.config import DataConfig
    from tunebench.data.sources import load_split

    cfg = DataConfig(source="piqa/valid.jsonl", labels={"train": "piqa/valid-labels.lst"}, label_field="answer")
    records = load_split(cfg, "train", data_dir)
    assert len(records) == 1838 and records[0].fields["answer"] == "0" and records[1].fields["answer"] == "1"
    other = str(data_dir / "sst2/stsa.binary.dev")  # 872 lines
    short = DataConfig(source=str(data_dir / "piqa/valid.jsonl"), labels={"train": other})
    with pytest.raises(DataError, match=r"stsa\.binary\.dev has 872 labels but .*valid\.jsonl has 1838 records"):
        load_split(short, "train", data_dir)
