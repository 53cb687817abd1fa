"""`tunebench run` on a two-task mixture: trains a tiny model on the mixture and evaluates each task with its own
metrics, compares per task, and reports a section per task with a summary table."""

from __future__ import annotations

import json

import pytest
import yaml
from pipeline_helpers import build_splits_once, mixture_tasks

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
                *mixture_tasks({"train": 12, "validation": 4, "test": 6}, {"train": 4, "validation": 4, "test": 5},
                               emotion_variant="random", weight=1),
                # evaluated only (weight 0): seqeval on rebuilt tags, unparseable outputs counted
                {"name": "conll2003", "source": "conll2003", "template": {"name": "conll2003"},
                 "limits": {"train": 4, "validation": 2, "test": 4}, "generation": {"max_new_tokens": 8},
                 "weight": 0},
            ],
            "mixture": {"strategy": "weights", "examples_per_epoch": 12},
            "max_length": 128,
        },
        "train": {"method": "lora", "lora": {"r": 4, "alpha": 8}, "batch_size": 4, "max_steps": 3, "lr": 1e-3,
                  "eval_every": 3, "save_every": None},
        "eval": {"shots": [0], "bootstrap": 100, "generation": {"batch_size": 4}},
        "bench": {"tasks": ["sst2", "wikitext2"], "limit": 4, "shots": 0, "limits": {"wikitext2": 1}},
    }
    path = root / "mix.yaml"
    path.write_text(yaml.safe_dump(cfg))
    # the mixture run and its single-task twin (emotion alone, same optimizer steps), side by side
    with pytest.MonkeyPatch.context() as mp:
        build_splits_once(mp)  # each task's splits built once for the pipeline's stages and both trainings
        assert main(["run", str(path), "--data-dir", str(data_dir), "--single-task", "emotion"]) == 0
    return root / "runs" / "mix"


def test_mixture_composition_is_written(mix_run, capsys):
    mixture = json.loads((mix_run / "mixture.json").read_text())
    rows = {r["task"]: r for r in mixture["tasks"]}
    # weights 1:1 over 12 examples per epoch: 6 each; multi30k (4 examples) is upsampled 1.5x
    assert rows["emotion"]["examples_per_epoch"] == 6 and rows["multi30k_en_de"]["examples_per_epoch"] == 6
    assert rows["multi30k_en_de"]["passes_per_epoch"] == 1.5
    assert rows["emotion"]["token_share"] + rows["multi30k_en_de"]["token_share"] == pytest.approx(1.0, abs=1e-5)
    stats = json.loads((mix_run / "data_stats.json").read_text())
    assert set(stats["tasks"]) == {"emotion", "multi30k_en_de", "conll2003"}
    assert stats["mixture"]["epoch_size"] == 12 and rows["conll2003"]["examples_per_epoch"] == 0


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
    assert set(results["tasks"]) == {"emotion", "multi30k_en_de", "conll2003"}
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


def test_ner_task_is_scored_by_seqeval_with_unparseable_outputs_counted(mix_run):
    from seqeval.metrics import f1_score

    from tunebench.data.ner import tags_from_entity_list

    scores = json.loads((mix_run / "tasks/conll2003/eval/tuned/scores.json").read_text())
    assert set(scores["metrics"]) == {"seqeval"}
    preds = read_jsonl(mix_run / "tasks/conll2003/eval/tuned/predictions.jsonl")
    refs = [json.loads(p["references"][0]) for p in preds]
    rebuilt = [tags_from_entity_list(r["tokens"], p["prediction"]) for p, r in zip(preds, refs, strict=True)]
    entry = scores["metrics"]["seqeval"]
    assert entry["score"] == pytest.approx(f1_score([r["labels"] for r in refs], [t.tags for t in rebuilt]))
    assert entry["unparseable"] == sum(not t.parsed for t in rebuilt)
    assert "| seqeval: unparseable outputs |" in (mix_run / "report.md").read_text()


def test_single_task_twin_has_the_same_budget_and_is_reported_beside(mix_run):
    single = mix_run.parent / "mix-single-emotion"
    multi_summary = json.loads((mix_run / "train_summary.json").read_text())
    single_summary = json.loads((single / "train_summary.json").read_text())
    assert single_summary["steps"] == multi_summary["steps"] == 3
    assert single_summary["method"] == multi_summary["method"] == "lora"
    mixture = {r["task"]: r for r in json.loads((single / "mixture.json").read_text())["tasks"]}
    assert mixture["emotion"]["examples_per_epoch"] == 12 and mixture["multi30k_en_de"]["examples_per_epoch"] == 0
    # the base is the same model on the same test sets: taken from the mixture run
    for task in ("emotion", "multi30k_en_de", "conll2003"):
        rel = f"tasks/{task}/eval/base-0shot/predictions.jsonl"
        assert (single / rel).read_text() == (mix_run / rel).read_text()
    svm = json.loads((mix_run / "single_vs_multi.json").read_text())
    assert svm["single_task"] == "emotion" and svm["optimizer_steps"] == 3
    rows = {(r["task"], r["metric"]): r for r in svm["tasks"]}
    assert set(rows) == {("emotion", "accuracy"), ("emotion", "macro_f1"), ("multi30k_en_de", "bleu"),
                         ("multi30k_en_de", "chrf"), ("conll2003", "seqeval")}
    for (task, metric), row in rows.items():
        single_score = json.loads((single / f"tasks/{task}/eval/tuned/scores.json").read_text())
        multi_score = json.loads((mix_run / f"tasks/{task}/eval/tuned/scores.json").read_text())
        base_score = json.loads((mix_run / f"tasks/{task}/eval/base-0shot/scores.json").read_text())
        assert row["single"] == pytest.approx(single_score["metrics"][metric]["score"])
        assert row["multi"] == pytest.approx(multi_score["metrics"][metric]["score"])
        assert row["base"] == pytest.approx(base_score["metrics"][metric]["score"])
        assert row["delta"] == pytest.approx(row["multi"] - row["single"], abs=1e-9)
        assert row["trained_on"] == ("both" if task == "emotion" else "multi")
    single_forgetting = {(r["task"], r["metric"]): r for r in json.loads((single / "compare/forgetting.json").read_text())}
    multi_forgetting = {(r["task"], r["metric"]): r for r in json.loads((mix_run / "compare/forgetting.json").read_text())}
    assert {("sst2", "acc"), ("wikitext2", "word_perplexity")} <= {(r["task"], r["metric"]) for r in svm["forgetting"]}
    for row in svm["forgetting"]:
        key = (row["task"], row["metric"])
        assert row["single"] == single_forgetting[key]["tuned"] and row["multi"] == multi_forgetting[key]["tuned"]
        assert row["base"] == multi_forgetting[key]["base"] == pytest.approx(single_forgetting[key]["base"])
        assert row["delta"] == pytest.approx(row["multi"] - row["single"], rel=1e-6, abs=1e-9)
    report = (mix_run / "report.md").read_text()
    assert "## Single-task vs multi-task" in report and "### Forgetting suite of each" in report
    assert "Single-task vs multi-task" in (mix_run / "report.html").read_text()


def test_single_task_must_name_a_task_of_the_mixture(tmp_path, capsys):
    path = tmp_path / "mix.yaml"
    path.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "runs"), "data": {"tasks": [
        {"name": "emotion", "source": "emotion", "template": {"name": "emotion"}}]}}))
    assert main(["run", str(path), "--single-task", "dialogsum"]) == 2
    err = capsys.readouterr().err
    assert "--single-task: 'dialogsum' is not a task of the mixture (data.tasks: emotion)" in err
    assert not (tmp_path / "runs").exists()


def test_single_task_empty_is_refused_and_a_misspelt_one_gets_did_you_mean(tmp_path, capsys):
    path = tmp_path / "mix.yaml"
    path.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "runs"), "data": {"tasks": [
        {"name": "emotion", "source": "emotion", "template": {"name": "emotion"}},
        {"name": "dialogsum", "source": "dialogsum"}]}}))
    with pytest.raises(SystemExit) as exit_:  # an empty name used to run the mixture alone, without the twin
        main(["run", str(path), "--single-task", ""])
    assert exit_.value.code == 2
    assert "--single-task: expected a name, got an empty value" in capsys.readouterr().err
    assert main(["run", str(path), "--single-task", "dialogsumm"]) == 2
    err = capsys.readouterr().err
    assert "--single-task: 'dialogsumm' is not a task of the mixture" in err and "did you mean 'dialogsum'?" in err
    assert not (tmp_path / "runs").exists()
