"""`tunebench sweep --mixtures` on a tiny two-task mixture: every method trained on the mixture and on its first
task alone for the same optimizer steps, both against one shared base evaluated once per task, side by side per
method in sweep.json and the report; resumable; refused on a single-task config.

One mixture sweep (lora and freeze, --against lora), kept small: the single-task sweep's fixture (test_sweep.py)
cannot be extended to a mixture without changing what its tests read. Its methods train in the test's process
(`train_in_process`): what is tested here is what the sweep does with their runs; test_sweep.py's sweep trains
each method in its own process, as a user's does.
"""

import json
import shutil

import pytest
import yaml
from pipeline_helpers import build_splits_once, mixture_tasks, train_in_process

from tunebench.cli import main

METHODS = "lora,freeze"
TASKS = ("emotion", "multi30k_en_de")


class Spies:
    """Records every evaluation (as its folder relative to the sweep) and every method's training, and lets them
    run (training in this process, each task's splits built once: `build_splits_once`)."""

    def __init__(self, monkeypatch, sweep_dir):
        import tunebench.pipeline.multitask as multitask
        import tunebench.pipeline.run as run_stages
        import tunebench.pipeline.sweep as sweep_stages

        build_splits_once(monkeypatch)
        self.evaluated, self.trained = [], []
        evaluate_into = multitask.evaluate_into

        def spy_evaluate(out, *args, **kwargs):
            self.evaluated.append(str(out.path.relative_to(sweep_dir)))
            return evaluate_into(out, *args, **kwargs)

        def spy_train(method, run, data_dir):
            self.trained.append(method)
            return train_in_process(method, run, data_dir)

        for module in (multitask, run_stages):  # where a mixture's and a single task's evaluations are called
            monkeypatch.setattr(module, "evaluate_into", spy_evaluate)
        monkeypatch.setattr(sweep_stages, "_train_in_subprocess", spy_train)


def _config(root, tiny_causal_dir):
    return {
        "name": "mix",
        "output_dir": str(root / "runs"),
        "seed": 5,
        "model": {"ref": str(tiny_causal_dir)},
        "data": {
            "tasks": mixture_tasks({"train": 8, "validation": 2, "test": 4}, {"train": 4, "validation": 2, "test": 4}),
            "mixture": {"strategy": "weights", "examples_per_epoch": 8},
            "max_length": 128,
        },
        "train": {"lora": {"r": 4, "alpha": 8}, "batch_size": 4, "max_steps": 2, "eval_every": None,
                  "save_every": None},
        "eval": {"shots": [0], "bootstrap": 100, "precision": "fp32", "generation": {"batch_size": 4}},
        "bench": {"tasks": ["sst2"], "limit": 4, "shots": 0},
    }


@pytest.fixture(scope="module")
def mix_sweep(tmp_path_factory, tiny_causal_dir, data_dir):
    root = tmp_path_factory.mktemp("mixsweep")
    path = root / "mix.yaml"
    path.write_text(yaml.safe_dump(_config(root, tiny_causal_dir)))
    sweep_dir = root / "sweep"
    args = ["sweep", str(path), "--methods", METHODS, "--against", "lora", "--mixtures", "single", "--out",
            str(sweep_dir), "--data-dir", str(data_dir)]
    with pytest.MonkeyPatch.context() as mp:
        spies = Spies(mp, sweep_dir)
        code = main(args)
    return {"dir": sweep_dir, "code": code, "spies": spies, "args": args}


def _json(path):
    return json.loads(path.read_text())


def _score(path, metric):
    return _json(path)["metrics"][metric]["score"]


def test_base_is_evaluated_once_per_task_and_every_run_compared_with_it(mix_sweep):
    assert mix_sweep["code"] == 0
    spies = mix_sweep["spies"]
    assert spies.trained == ["lora", "lora-single-emotion", "freeze", "freeze-single-emotion"]
    runs = ("lora", "lora-single-emotion", "freeze", "freeze-single-emotion")
    assert sorted(spies.evaluated) == sorted([f"base/tasks/{t}/eval/base-0shot" for t in TASKS]
                                             + [f"{r}/tasks/{t}/eval/tuned" for r in runs for t in TASKS])
    for run in runs:
        for task in TASKS:
            comparison = _json(mix_sweep["dir"] / run / f"tasks/{task}/compare/comparison.json")
            base_path = comparison["systems"]["base-0shot"]["path"]
            assert base_path == str((mix_sweep["dir"] / f"base/tasks/{task}/eval/base-0shot").resolve())


def test_the_twin_trains_the_first_task_alone_for_the_mixture_runs_steps(mix_sweep):
    sweep_dir = mix_sweep["dir"]
    doc = _json(sweep_dir / "sweep.json")
    assert doc["shared"]["single_task"] == "emotion" and doc["shared"]["tasks"] == list(TASKS)
    assert doc["shared"]["pinned_precision"] == {"emotion": "fp32", "multi30k_en_de": "fp32"}
    for method in ("lora", "freeze"):
        multi, single = sweep_dir / method, sweep_dir / f"{method}-single-emotion"
        assert _json(single / "train_summary.json")["steps"] == _json(multi / "train_summary.json")["steps"] == 2
        assert _json(single / "train_summary.json")["method"] == method
        mixture = {r["task"]: r for r in _json(single / "mixture.json")["tasks"]}
        assert mixture["multi30k_en_de"]["examples_per_epoch"] == 0 and mixture["emotion"]["examples_per_epoch"] > 0


def test_rows_carry_mixture_vs_single_task(mix_sweep):
    sweep_dir = mix_sweep["dir"]
    doc = _json(sweep_dir / "sweep.json")
    rows = {r["method"]: r for r in doc["rows"]}
    for method, row in rows.items():
        multi, single, base = sweep_dir / method, sweep_dir / f"{method}-single-emotion", sweep_dir / "base"
        # the mixture run against the base, per task: keys <task>/<metric>, deltas from the two scores.json
        assert set(row["task"]) == {"emotion/accuracy", "emotion/macro_f1", "multi30k_en_de/bleu",
                                    "multi30k_en_de/chrf"}
        for key, entry in row["task"].items():
            task, metric = key.split("/")
            assert (entry["task"], entry["metric"]) == (task, metric)
            assert entry["delta"] == pytest.approx(
                _score(multi / f"tasks/{task}/eval/tuned/scores.json", metric)
                - _score(base / f"tasks/{task}/eval/base-0shot/scores.json", metric), abs=1e-9)
        svm = row["single_vs_multi"]
        assert (svm["status"], svm["task"], svm["run_dir"], svm["optimizer_steps"]) == (
            "done", "emotion", f"{method}-single-emotion", 2)
        assert svm == {**svm, "tasks": _json(multi / "single_vs_multi.json")["tasks"]}
        assert {(t["task"], t["metric"]) for t in svm["tasks"]} == {tuple(k.split("/")) for k in row["task"]}
        for t in svm["tasks"]:
            rel = f"tasks/{t['task']}/eval"
            assert t["single"] == pytest.approx(_score(single / rel / "tuned/scores.json", t["metric"]))
            assert t["multi"] == pytest.approx(_score(multi / rel / "tuned/scores.json", t["metric"]))
            assert t["base"] == pytest.approx(_score(base / rel / "base-0shot/scores.json", t["metric"]))
            assert t["delta"] == pytest.approx(t["multi"] - t["single"], abs=1e-9)
            assert t["trained_on"] == ("both" if t["task"] == "emotion" else "multi")
        # forgetting of each: the twin's and the mixture run's own forgetting tables
        own = {k: {(f["task"], f["metric"]): f for f in _json(d / "compare/forgetting.json")}
               for k, d in (("single", single), ("multi", multi))}
        assert ("sst2", "acc") in {(f["task"], f["metric"]) for f in svm["forgetting"]}
        for f in svm["forgetting"]:
            key = (f["task"], f["metric"])
            assert f["single"] == own["single"][key]["tuned"] and f["multi"] == own["multi"][key]["tuned"]
            assert f["single_delta"] == own["single"][key]["delta"] and f["multi_delta"] == own["multi"][key]["delta"]
    assert doc["task_metric"] == "emotion/accuracy"
    (pair,) = doc["pairwise"]  # freeze against lora, per task on the same examples
    assert (pair["baseline"], pair["candidate"]) == ("lora", "freeze")
    assert pair["metrics"]["multi30k_en_de/bleu"]["delta"] == pytest.approx(
        _score(sweep_dir / "freeze/tasks/multi30k_en_de/eval/tuned/scores.json", "bleu")
        - _score(sweep_dir / "lora/tasks/multi30k_en_de/eval/tuned/scores.json", "bleu"), abs=1e-9)
    assert (sweep_dir / "compare/tasks/emotion/comparison.json").is_file()


def test_report_shows_mixture_vs_single_task_per_method(mix_sweep):
    html = (mix_sweep["dir"] / "report.html").read_text()
    assert "Mixture vs single task" in html
    assert "lora: mixture vs emotion alone (2 optimizer steps each)" in html
    assert "freeze: mixture vs emotion alone" in html and "mixture only" in html
    assert "Single-task vs multi-task" in (mix_sweep["dir"] / "lora/report.html").read_text()


def test_rerun_finishes_only_the_missing_single_task_twin(mix_sweep, monkeypatch):
    sweep_dir = mix_sweep["dir"]
    kept = [sweep_dir / rel for rel in ("lora/train_summary.json", "lora/tasks/emotion/eval/tuned/scores.json",
                                         "freeze-single-emotion/tasks/emotion/eval/tuned/scores.json",
                                         "base/tasks/emotion/eval/base-0shot/scores.json")]
    before = [p.stat().st_mtime_ns for p in kept]
    shutil.rmtree(sweep_dir / "lora-single-emotion")  # killed before lora's twin existed
    spies = Spies(monkeypatch, sweep_dir)
    assert main(mix_sweep["args"]) == 0
    assert spies.trained == ["lora-single-emotion"]
    assert sorted(spies.evaluated) == [f"lora-single-emotion/tasks/{t}/eval/tuned" for t in TASKS]
    assert [p.stat().st_mtime_ns for p in kept] == before
    assert all(r["single_vs_multi"]["status"] == "done" for r in _json(sweep_dir / "sweep.json")["rows"])


def test_mixtures_refused_where_it_cannot_apply(tmp_path, tiny_causal_dir, capsys):
    single = tmp_path / "single.yaml"
    single.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "runs"), "model": {"ref": str(tiny_causal_dir)},
                                      "data": {"source": "dialogsum"}}))
    assert main(["sweep", str(single), "--methods", "lora", "--mixtures", "single"]) == 2
    err = capsys.readouterr().err
    assert "--mixtures: the config trains one task (no data.tasks), so there is no mixture" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    mixture = tmp_path / "mix.yaml"
    mixture.write_text(yaml.safe_dump(_config(tmp_path, tiny_causal_dir)))
    assert main(["sweep", str(mixture), "--methods", "lora", "--mixtures", "single:dialogsum"]) == 2
    assert ("--mixtures: 'dialogsum' is not a task of the mixture (data.tasks: emotion, multi30k_en_de)"
            in capsys.readouterr().err)
    assert main(["sweep", str(mixture), "--methods", "lora", "--mixtures", "pairs"]) == 2
    assert "--mixtures: 'pairs' is not 'single' or 'single:TASK'" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
