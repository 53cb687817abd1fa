"""RunDir names every file and folder docs/formats.md documents, and finds the run a trained output belongs to."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tunebench.rundir import LAYOUT, BenchDir, CompareDir, EvalDir, RunDir, samples_filename

DOCS = Path(__file__).resolve().parents[1] / "docs" / "formats.md"


def _documented_names() -> set[str]:
    """The first word of each line of the run-directory block in docs/formats.md (files and folders)."""
    text = DOCS.read_text(encoding="utf-8")
    block = text.split("## Run directory", 1)[1].split("```", 2)[1]
    names = set()
    for line in block.splitlines():
        if line and not line.startswith(" "):
            names.update(re.findall(r"[\w./<>-]+(?:\.\w+|/)", line.split("  ")[0]))
    return names


def test_every_documented_path_is_named_by_the_run_dir(tmp_path):
    run = RunDir(tmp_path)
    named = {
        "config.yaml": run.config, "data_stats.json": run.data_stats, "train_log.jsonl": run.train_log,
        "loss_curve.png": run.loss_curve, "tensorboard/": run.tensorboard, "checkpoints/": run.checkpoints,
        "adapter/": run.adapter,
        "model/": run.model, "train_summary.json": run.train_summary, "eval/<system>/": run.eval_dir("<system>").path,
        "bench/<system>/": run.bench_dir("<system>").path, "compare/forgetting.json": run.compare_dir.forgetting,
        "compare/comparison.json": run.compare_dir.comparison, "results.json": run.results,
        "report.md": run.report_md, "report.html": run.report_html,
    }
    documented = {n for n in _documented_names() if not n.startswith("checkpoints/") or n == "checkpoints/"}
    assert documented <= set(named) | {"checkpoints/step-N/", "checkpoints/best"}
    for rel, path in named.items():
        assert path == tmp_path / rel.rstrip("/"), rel


def test_stage_folders_name_their_files(tmp_path):
    ev, bench, comp = EvalDir(tmp_path / "e"), BenchDir(tmp_path / "b"), CompareDir(tmp_path / "c")
    assert (ev.predictions.name, ev.scores.name, ev.name) == ("predictions.jsonl", "scores.json", "e")
    assert [p.name for p in (bench.results, bench.partial, bench.helm, bench.helm_generations)] == [
        "results.json", "results.partial.json", "helm.json", "helm_generations.jsonl"]
    assert bench.samples("bbh:date_understanding") == tmp_path / "b" / "samples_bbh_date_understanding.jsonl"
    assert bench.helm_samples("mmlu:x y") == tmp_path / "b" / "samples_helm_mmlu_x_y.jsonl"
    assert (comp.comparison.name, comp.forgetting.name) == ("comparison.json", "forgetting.json")
    assert samples_filename("a/../b") == "samples_a_.._b.jsonl"  # no folder separators survive
    assert LAYOUT == "tunebench.run/1"


def test_evaluations_lists_only_finished_ones_by_name(tmp_path):
    run = RunDir(tmp_path)
    assert run.evaluations() == [] and run.benchmarks() == []
    for name in ("tuned", "base-0shot", "half"):
        run.eval_dir(name).path.mkdir(parents=True)
    run.eval_dir("tuned").scores.write_text("{}")
    run.eval_dir("base-0shot").scores.write_text("{}")
    run.eval_dir("half").predictions.write_text("")  # no scores.json: unfinished
    (run.eval_root / "stray.txt").write_text("")
    assert [d.name for d in run.evaluations()] == ["base-0shot", "tuned"]
    run.bench_dir("base").path.mkdir(parents=True)
    assert run.benchmarks() == [BenchDir(tmp_path / "bench" / "base")]


@pytest.mark.parametrize("inside", ["", "adapter", "model", "checkpoints/step-4"])
def test_around_finds_the_run_from_its_outputs(tmp_path, inside):
    run = RunDir(tmp_path / "runs" / "r")
    (run.path / inside).mkdir(parents=True, exist_ok=True)
    assert RunDir.around(run.path / inside) is None  # no config.yaml yet: not a run
    run.config.write_text("name: r\n")
    assert RunDir.around(run.path / inside) == run


def test_around_does_not_climb_out_of_an_unrelated_folder(tmp_path):
    RunDir(tmp_path).config.write_text("name: outer\n")
    (tmp_path / "elsewhere" / "adapter").mkdir(parents=True)
    assert RunDir.around(tmp_path / "elsewhere" / "adapter") is None
    assert RunDir.around(tmp_path / "elsewhere") is None


def test_sweep_dir_names_its_runs_and_files(tmp_path):
    from tunebench.rundir import SweepDir

    sweep = SweepDir(str(tmp_path))
    assert sweep.base == RunDir(tmp_path / "base") and sweep.run("lora") == RunDir(tmp_path / "lora")
    assert sweep.compare_dir == CompareDir(tmp_path / "compare")
    assert sweep.single_run("lora", "dialogsum") == RunDir(tmp_path / "lora-single-dialogsum")
    assert (sweep.sweep_json, sweep.report_html, sweep.chart) == (
        tmp_path / "sweep.json", tmp_path / "report.html", tmp_path / "gain_vs_forgetting.png")
    for taken in ("base", "compare"):
        with pytest.raises(ValueError, match=taken):
            sweep.run(taken)
