"""`tunebench run` on an existing run directory: the stored config.yaml always describes the stored results.

The right value is the stored config read back against the stored results (scores.json's test-set size,
train_summary.json, the adapter's bytes), never what the new command asked for.
"""

import json
import shutil

import pytest
import yaml

from tunebench.cli import main


def _tree(root, tiny_causal_dir, **eval_keys):
    return {
        "name": "tiny",
        "output_dir": str(root / "runs"),
        "seed": 5,
        "model": {"ref": str(tiny_causal_dir)},
        "data": {"source": "dialogsum", "splits": {"train": "validation", "validation": None, "test": "test"},
                 "fractions": {"validation": 0.2}, "limits": {"train": 8, "validation": 2, "test": 3},
                 "max_length": 128},
        "train": {"method": "lora", "lora": {"r": 4}, "batch_size": 4, "max_steps": 2, "lr": 1e-3,
                  "eval_every": None, "save_every": 1},
        "eval": {"limit": 1, "shots": [0], "bootstrap": 50, "generation": {"max_new_tokens": 4},
                 **eval_keys},
        "bench": {"enabled": False},
    }


@pytest.fixture
def finished(tmp_path, tiny_causal_dir, data_dir):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(_tree(tmp_path, tiny_causal_dir)))
    assert main(["run", str(path), "--data-dir", str(data_dir)]) == 0
    return tmp_path / "runs" / "tiny", path


def _snapshot(run_dir):
    return {p.relative_to(run_dir).as_posix(): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def _stored(run_dir):
    return yaml.safe_load((run_dir / "config.yaml").read_text())


def test_training_change_is_refused_and_leaves_the_run_untouched(finished, data_dir, capsys):
    run_dir, path = finished
    before = _snapshot(run_dir)
    assert main(["run", str(path), "--data-dir", str(data_dir), "--set", "train.lr=0.5"]) == 2
    err = capsys.readouterr().err
    assert "train.lr" in err and "name=" in err and "Traceback" not in err
    assert _snapshot(run_dir) == before


def test_killed_run_refuses_a_training_change(finished, data_dir, capsys):
    run_dir, path = finished
    (run_dir / "train_summary.json").unlink()  # as if killed after the last checkpoint
    shutil.rmtree(run_dir / "adapter")
    before = _snapshot(run_dir)
    assert main(["run", str(path), "--data-dir", str(data_dir), "--set", "train.lr=0.5"]) == 2
    assert "train.lr" in capsys.readouterr().err
    assert _snapshot(run_dir) == before


def test_eval_change_reruns_only_evaluation(finished, data_dir, capsys):
    run_dir, path = finished
    stored = _stored(run_dir)
    del stored["data"]["keep_empty_completions"]  # as written before the key existed: counts as its default
    (run_dir / "config.yaml").write_text(yaml.safe_dump(stored, sort_keys=False))
    before = _snapshot(run_dir)
    assert main(["run", str(path), "--data-dir", str(data_dir), "--set", "eval.limit=2"]) == 0
    after = _snapshot(run_dir)
    for kept in ("train_summary.json", "adapter/adapter_model.safetensors", "train_log.jsonl"):
        assert after[kept] == before[kept], kept
    stored = _stored(run_dir)
    for system in ("base-0shot", "tuned"):
        scores = json.loads((run_dir / "eval" / system / "scores.json").read_text())
        assert scores["test_set"]["n"] == stored["eval"]["limit"] == 2
    results = json.loads((run_dir / "results.json").read_text())
    assert results["config"]["eval"]["limit"] == 2
    assert {s["test_set"]["n"] for s in results["systems"].values()} == {2}
    assert results["test_set"]["n"] == 2


def test_bad_data_on_a_finished_run_leaves_it_untouched(finished, data_dir, tmp_path, capsys):
    run_dir, path = finished
    before = _snapshot(run_dir)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"dialogue": "a", "summary": "b"}\n{not json\n')
    tree = yaml.safe_load(path.read_text())
    tree["data"] = {"source": str(bad), "field_map": {"input": "dialogue", "output": "summary"}}
    path.write_text(yaml.safe_dump(tree))
    assert main(["run", str(path), "--data-dir", str(data_dir)]) in (1, 2)
    assert "Traceback" not in capsys.readouterr().err
    assert _snapshot(run_dir) == before
