"""`tunebench run` on a two-task mixture: trains a tiny model on the mixture and evaluates each task with its own
metrics, compares per task, and reports a section per task with a summary table."""

from __future__ import annotations

import json

import pytest
import yaml

from tunebench.cli import main
from tunebench.io import read_jsonl


@pytest.fixture(scope="module")
def mix_run(tmp_path_factory, tiny_causal_dir, data_dir):
    root = tmp_path_factory.mktemp("multitask")
    cfg = {
        "name": "mix",
        "output_dir": str(root / "runs"),
        "seed": 5,
        "model": {"ref": str(tiny_causal_dir)},
        "data": {
            "tasks": [
                {"name": "emotion", "source": "emotion", "template": {"name": "emotion", "variant": "random"},
                 "splits": {"validation": "validation"}, "limits": {"train": 12, "validation": 4, "test": 6},
                 "weight": 1},
                {"name": "multi30k_en_de", "source": "multi30k", "format": "parallel",
                 "template": {"name": "translation"}, "splits": {"validation": "val", "test": "test_2016_flickr"},
                 "limits": {"train": 4, "validation": 4, "test": 5}, "generation": {"max_new_tokens": 6},
                 "weight": 1},
            ],
            "mixture": {"strategy": "weights", "examples_per_epoch": 12},
            "max_length": 128,
        },
        "train": {"method": "lora", "lora": {"r": 4, "alpha": 8}, "batch_size": 4, "max_steps": 3, "lr": 1e-3,
                  "eval_every": 3, "save_every": None},
        "eval": {"shots": [0], "bootstrap": 100, "generation": {"batch_size": 4}},
        "bench": {"enabled": False},
    }
    path = root / "mix.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path), "--data-dir", str(data_dir)]) == 0
    return root / "runs" / "mix"


def test_mixture_composition_is_written(mix_run, capsys):
    mixture = json.loads((mix_run / "mixture.json").read_text())
    rows = {r["task"]: r for r in mixture["tasks"]}
    # weights 1:1 over 12 examples per epoch: 6 each; multi30k (4 examples) is upsampled 1.5x
    assert rows["emotion"]["examples_per_epoch"] == 6 and rows["multi30k_en_de"]["examples_per_epoch"] == 6
    assert rows["multi30k_en_de"]["passes_per_epoch"] == 1.5
    assert rows["emotion"]["token_share"] + rows["multi30k_en_de"]["token_share"] == pytest.approx(1.0, abs=1e-5)
    stats = json.loads((mix_run / "data_stats.json").read_text())
    assert set(stats["tasks"]) == {"emotion", "multi30k_en_de"} and stats["mixture"]["epoch_size"] == 12


def test_each_task_is_evaluated_with_its_own_metrics(mix_run):
    emotion = json.loads((mix_run / "tasks/emotion/eval/tuned/scores.json").read_text())
    assert set(emotion["metrics"]) == {"accuracy", "macro_f1"}
    assert emotion["metrics"]["accuracy"]["n"] == 6
    translation = json.loads((mix_run / "tasks/multi30k_en_de/eval/base-0shot/scores.json").read_text())
    assert set(translation["metrics"]) == {"bleu", "chrf"}
    assert translation["generation"]["max_new_tokens"] == 6  # the task's own setting
    assert emotion["generation"]["max_new_tokens"] == 8  # the emotion template's
    preds = read_jsonl(mix_run / "tasks/multi30k_en_de/eval/tuned/predictions.jsonl")
    assert len(preds) == 5 and preds[0]["references"][0].startswith("Ein ")


def test_tasks_are_compared_and_reported_per_task(mix_run):
    for task in ("emotion", "multi30k_en_de"):
        comparison = json.loads((mix_run / f"tasks/{task}/compare/comparison.json").read_text())
        assert [c["candidate"] for c in comparison["comparisons"]] == ["tuned"]
    results = json.loads((mix_run / "results.json").read_text())
    assert set(results["tasks"]) == {"emotion", "multi30k_en_de"}
    report = (mix_run / "report.md").read_text()
    assert "## Tasks: summary" in report and "## Task: emotion" in report and "## Task: multi30k_en_de" in report
    assert "## Training mixture" in report
    summary = report.split("## Tasks: summary")[1].split("## Task:")[0]
    assert "| emotion | accuracy |" in summary and "| multi30k_en_de | chrf |" in summary
    html = (mix_run / "report.html").read_text()
    assert "Task: multi30k_en_de" in html


def test_compare_command_on_a_multitask_run(mix_run, tmp_path):
    assert main(["compare", str(mix_run), "--out", str(tmp_path / "cmp")]) == 0
    assert (tmp_path / "cmp/tasks/emotion/comparison.json").is_file()
    assert main(["report", str(tmp_path / "cmp")]) == 0
    assert "## Task: emotion" in (tmp_path / "cmp/report.md").read_text()
