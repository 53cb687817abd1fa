"""Smaller kinds of bad input (issue 13 B.10): byte-order marks, leftovers of killed writes, header-less CSV,
a benchmark file missing while no data directory is set."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from tunebench.config import DataConfig, load_config
from tunebench.errors import DataError
from tunebench.io import BOM, atomic_dir, atomic_write_text, clean_stale_temps


def _data_cfg(path):
    return DataConfig.model_validate({"source": str(path), "template": {"prompt": "{{ q }}", "completion": "{{ a }}"},
                                      "splits": {"train": "train", "validation": None, "test": None},
                                      "fractions": {"validation": 0, "test": 0}})


def test_every_text_reader_drops_a_byte_order_mark(tmp_path):
    from tunebench.bench.spec import load_spec
    from tunebench.data.prepare import build_splits
    from tunebench.evaluate.score import load_scoring_inputs

    rows = [{"id": "a", "q": "1", "a": "x", "prediction": "x", "references": ["x"]},
            {"id": "b", "q": "2", "a": "y", "prediction": "z", "references": ["y"]}]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    plain, marked = tmp_path / "plain.jsonl", tmp_path / "marked.jsonl"
    plain.write_text(text)
    marked.write_bytes(BOM + text.encode())
    expected = [(e.prompt, e.completion) for e in build_splits(_data_cfg(plain), None, 0).train]
    assert [(e.prompt, e.completion) for e in build_splits(_data_cfg(marked), None, 0).train] == expected
    assert load_scoring_inputs(marked) == load_scoring_inputs(plain)  # predictions

    config = tmp_path / "run.yaml"
    config.write_bytes(BOM + b"seed: 9\n")
    assert load_config(config).seed == 9
    spec = {"name": "t", "version": "1", "source": {"format": "jsonl", "splits": {"test": "marked.jsonl"}},
            "output_type": "generate", "template": "{{ q }}", "target": "{{ a }}"}
    spec_path = tmp_path / "t.yaml"
    spec_path.write_bytes(BOM + yaml.safe_dump(spec).encode())
    assert load_spec(str(spec_path)).name == "t"


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    return int(proc.stdout)


def test_leftovers_of_a_killed_write_are_cleaned_at_the_next_start(tmp_path):
    dead = _dead_pid()
    stale_file = tmp_path / f".config.yaml.{dead}.ab12cd34.tmp"
    stale_file.write_text("half")
    stale_dir = tmp_path / f".adapter.{dead}.ef56gh78.tmp"
    stale_dir.mkdir()
    (stale_dir / "adapter_model.safetensors").write_bytes(b"half")
    live = tmp_path / f".report.md.{__import__('os').getpid()}.ij90kl12.tmp"  # a write still under way
    live.write_text("in progress")
    users = tmp_path / ".notes.tmp"  # not ours: never touched
    users.write_text("mine")
    atomic_write_text(tmp_path / "results.json", "{}")
    assert not stale_file.exists() and not stale_dir.exists()
    assert live.exists() and users.read_text() == "mine"
    assert clean_stale_temps(tmp_path) == 0


def test_atomic_dir_killed_between_renames_keeps_the_last_complete_copy(tmp_path):
    old = tmp_path / ".model.old"  # atomic_dir had moved the old copy aside when the kill came
    old.mkdir()
    (old / "weights").write_text("v1")
    with atomic_dir(tmp_path / "model") as tmp:
        assert (tmp_path / "model" / "weights").read_text() == "v1"  # restored before the new write starts
        (tmp / "weights").write_text("v2")
    assert (tmp_path / "model" / "weights").read_text() == "v2" and not old.exists()


def test_csv_without_header_says_the_first_row_looks_like_data(tmp_path):
    from tunebench.data.prepare import build_splits

    dialogue = "#Person1#: Hello, how are you doing today? #Person2#: Fine, thanks, and you? " * 3
    path = tmp_path / "train.csv"
    path.write_text(f'"{dialogue}",They greet.\n"{dialogue}",They greet again.\n')
    with pytest.raises(DataError, match=r"train\.csv:1: the first row looks like data, not a header") as info:
        build_splits(_data_cfg(path), None, 0)
    assert len(str(info.value)) < 250 and dialogue not in str(info.value)


def test_missing_benchmark_file_without_data_dir_names_the_options(tmp_path):
    from tunebench.bench.instances import prepare_task
    from tunebench.bench.spec import load_spec

    spec = {"name": "t", "version": "1", "source": {"format": "jsonl", "splits": {"test": "t/missing.jsonl"}},
            "output_type": "generate", "template": "{{ q }}", "target": "{{ a }}"}
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(DataError, match=r"--data-dir or \$TUNEBENCH_DATA_DIR"):
        prepare_task(load_spec(str(tmp_path / "t.yaml")), data_dir=None)
