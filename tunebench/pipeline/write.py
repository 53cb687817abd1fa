"""The one place the pipeline writes: every file of a run directory the stages produce reaches the disk here.

Evaluation, comparison, benchmark scoring, the HELM view, the report and the sweep's document are computed by
stages that return data; these functions write them at the paths `tunebench.rundir` names, each atomically and
the summary file last (scores.json, results.json, helm.json, sweep.json), so its presence means the stage
finished. Callers write on the main process only. `record_run_config` keeps a run directory's config.yaml true to
the results beside it (the trainer's own check of the run directory before it trains is
`train.rundir.prepare_run_dir`). Besides the run directory, the pipeline's only other output is its progress
lines on stderr (`announce`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunebench.config import RunConfig, dump_config
from tunebench.errors import TunebenchError
from tunebench.io import atomic_write_json, atomic_write_jsonl, atomic_write_text, read_json
from tunebench.rundir import BenchDir, CheckpointRoot, CompareDir, EvalDir, RunDir

if TYPE_CHECKING:
    from tunebench.bench.helm.runner import HelmResults
    from tunebench.bench.runner import BenchResults
    from tunebench.evaluate.run_eval import Evaluation
    from tunebench.rundir import SweepDir


def announce(message: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[bold cyan]tunebench[/] {message}")


def write_evaluation(out: EvalDir, evaluation: Evaluation) -> None:
    """predictions.jsonl, then scores.json (last, so its presence means the evaluation finished)."""
    atomic_write_jsonl(out.predictions, evaluation.predictions)
    atomic_write_json(out.scores, evaluation.scores)


def write_bench_task(out: BenchDir, bench: BenchResults, task: str) -> None:
    """One finished task: its sample log, then results.partial.json naming it, so a rerun skips it."""
    filename = bench.results["tasks"][task]["samples"]
    atomic_write_jsonl(out.path / filename, bench.samples[filename])
    atomic_write_json(out.partial, bench.results)


def write_benchmarks(out: BenchDir, bench: BenchResults, *, samples: bool = True) -> None:
    """Every sample log (unless `write_bench_task` wrote them already), then results.json; the partial record
    goes, since results.json (written only when every task is done) now says the same."""
    if samples:
        for filename, rows in bench.samples.items():
            atomic_write_jsonl(out.path / filename, rows)
    atomic_write_json(out.results, bench.results)
    out.partial.unlink(missing_ok=True)


def read_finished_tasks(out: BenchDir) -> dict[str, Any] | None:
    """The partial record of an unfinished benchmark run, keeping only tasks whose sample logs are still there;
    None when there is none or it cannot be read (the tasks are then scored again)."""
    try:
        earlier = read_json(out.partial)
    except TunebenchError:
        return None
    if not isinstance(earlier, dict) or not isinstance(earlier.get("tasks"), dict):
        return None
    kept = {name: entry for name, entry in earlier["tasks"].items()
            if isinstance(entry, dict) and (out.path / str(entry.get("samples"))).is_file()}
    return {**earlier, "tasks": kept}


def write_helm(out: BenchDir, helm: HelmResults) -> None:
    """The HELM sample logs, then helm.json."""
    for filename, rows in helm.samples.items():
        atomic_write_jsonl(out.path / filename, rows)
    atomic_write_json(out.helm, helm.helm)


def write_report(run_dir: Path, out_dir: Path | None = None) -> dict[str, Path]:
    """`tunebench report`: results.json, report.md and report.html for a run, compare, eval or bench directory;
    for a sweep folder, its report from sweep.json (`rewrite_sweep_report`).

    The default place is the directory itself, except for a bench folder, whose own results.json must stay: its
    report goes to DIR/report/. Everything is rendered before anything is written, so a failure never leaves a
    half-updated set; a results.json of another kind (a benchmark's) is never overwritten (DataError).
    """
    from tunebench.errors import DataError
    from tunebench.report.html import render_report
    from tunebench.rundir import SweepDir

    if SweepDir(run_dir).sweep_json.is_file():
        return rewrite_sweep_report(Path(run_dir), out_dir)
    report = render_report(Path(run_dir))
    default = Path(run_dir) / "report" if report.results["source"]["kind"] == "bench" else Path(run_dir)
    out = RunDir(Path(out_dir) if out_dir is not None else default)
    if out.results.is_file():
        try:
            schema = read_json(out.results).get("schema")
        except (TunebenchError, AttributeError):
            schema = None
        if schema != report.results["schema"]:
            raise DataError(f"{out.results} is not a report's results.json (schema {schema!r}); it is kept: choose "
                            "another --out for the report")
    return {
        "results": atomic_write_json(out.results, report.results),
        "markdown": atomic_write_text(out.report_md, report.markdown),
        "html": atomic_write_text(out.report_html, report.html),
    }


def write_comparison(out: CompareDir, comparison: dict[str, Any]) -> Path:
    """comparison.json (compare_systems' result)."""
    return atomic_write_json(out.comparison, comparison)


def write_forgetting(out: CompareDir, forgetting: dict[str, Any] | list[dict[str, Any]]) -> Path:
    """forgetting.json: the forgetting table's rows (bench.forgetting.forgetting_table), or for two benchmark
    folders compared alone the rows with their settings (`tunebench.forgetting/1`)."""
    return atomic_write_json(out.forgetting, forgetting)


def write_single_vs_multi(run: RunDir, doc: dict[str, Any]) -> Path:
    """single_vs_multi.json of a mixture run (multitask.single_vs_multi's result)."""
    return atomic_write_json(run.single_vs_multi, doc)


def copy_base_results(source: RunDir, target: RunDir) -> None:
    """The base model's evaluations (every task's `base-*` systems) and benchmarks of `source` into `target`
    where `target` has not finished them: the single-task twin of a mixture run evaluates the same base model on
    the same test sets, so it takes the mixture run's instead of computing them again."""
    import shutil

    for base_dir in [d for t in source.task_dirs() for d in t.evaluations() if d.name.startswith("base-")]:
        copied = target.task_dir(base_dir.path.parent.parent.name).eval_dir(base_dir.name)
        if not copied.scores.is_file():
            shutil.copytree(base_dir.path, copied.path, dirs_exist_ok=True)
    if source.bench_dir("base").results.is_file() and not target.bench_dir("base").results.is_file():
        shutil.copytree(source.bench_dir("base").path, target.bench_dir("base").path, dirs_exist_ok=True)


# What each later stage wrote, by the config section it depends on (compare and the report are always redone).
STAGE_OUTPUTS = {"eval": (RunDir.eval_root.name, RunDir.tasks_root.name), "bench": (RunDir.bench_root.name,)}


# Keys of a stage section that leave that stage's outputs unchanged (used only by the always-redone compare).
COMPARE_ONLY_KEYS = ("eval.bootstrap",)


def trained_with_other_settings(cfg: RunConfig) -> str | None:
    """The training keys (seed, model, data, train) in which `cfg` differs from the run its run dir already holds
    (trained, or with checkpoints), described as 'train.max_steps 3 -> 4'; None for a dir without such a run or
    a run trained with the same settings. Reads config.yaml; ConfigError when it cannot be read."""
    from tunebench.train.rundir import RESUME_KEYS, config_changes, describe_changes, read_saved_config

    run = RunDir(cfg.run_dir)
    if not run.config.is_file() or not (run.train_summary.exists() or CheckpointRoot(run.checkpoints).steps()):
        return None
    saved = read_saved_config(run.config)
    retrain = [k for k in config_changes(saved, cfg) if k.split(".")[0] in RESUME_KEYS]
    return describe_changes(saved, cfg, retrain) if retrain else None


def record_run_config(cfg: RunConfig) -> None:
    """Record the resolved config in the run dir (creating it), keeping config.yaml true to the results beside it.

    On a run dir that already holds a run: a change of a key that training depends on (seed, model, data, train)
    is refused (ConfigError naming the keys); a change of eval or bench settings removes exactly those stages'
    outputs, so they are redone under the new settings, before the new config is recorded. Nothing is written
    when nothing changed. A fresh run dir just gets its config.yaml. Raises TunebenchError when the run dir is not
    writable. Called by the pipeline before its stages; training's own check of the run dir (free or resumable,
    writable on every process) is `train.rundir.prepare_run_dir`.
    """
    import shutil

    from tunebench.errors import ConfigError
    from tunebench.io import clean_stale_temps
    from tunebench.train.rundir import config_changes, describe_changes, read_saved_config

    run_dir = cfg.run_dir
    run = RunDir(run_dir)
    task_evals = [p for t in run.task_dirs() for p in t.eval_root.glob("*")]
    for folder in (run.path, run.checkpoints, run.compare_dir.path, *run.eval_root.glob("*"), *task_evals,
                   *run.bench_root.glob("*")):
        clean_stale_temps(folder)  # what a kill during a write left behind
    saved_path = run.config
    saved = read_saved_config(saved_path) if saved_path.is_file() else None
    changed = config_changes(saved, cfg) if saved is not None else []
    if other := trained_with_other_settings(cfg):
        raise ConfigError(
            f"{run_dir} holds a run trained with other settings ({other}); its results would not match this "
            "config: restore those keys, or start a new run with --set name=NEW_NAME"
        )
    if saved is not None and not changed:
        return
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        sections = {k.split(".")[0] for k in changed if k not in COMPARE_ONLY_KEYS}
        for section, outputs in STAGE_OUTPUTS.items():
            if section in sections:
                for name in outputs:
                    if (run_dir / name).exists():
                        announce(f"{section} settings changed ({describe_changes(saved, cfg, changed)}): "
                             f"redoing {name}/")
                        shutil.rmtree(run_dir / name)
        atomic_write_text(saved_path, dump_config(cfg))
    except OSError as exc:
        raise TunebenchError(f"output directory {run_dir} is not writable ({exc.strerror}); "
                             "set output_dir or --set output_dir=PATH") from None


def record_base_config(cfg: RunConfig) -> None:
    """Record the config of a sweep's shared base folder (`record_run_config`'s counterpart for a folder that
    is never trained): a change of what the base's results depend on (seed, model, data and eval for
    evaluations; seed, model and bench for benchmarks) removes those results first."""
    import shutil

    from tunebench.train.rundir import config_changes, read_saved_config

    run = RunDir(cfg.run_dir)
    saved = read_saved_config(run.config) if run.config.is_file() else None
    changed = [k for k in config_changes(saved, cfg) if k.split(".")[0] != "train" and k not in COMPARE_ONLY_KEYS] \
        if saved is not None else []
    if saved is not None and not changed:
        return
    sections = {k.split(".")[0] for k in changed}
    for folder, depends in ((run.eval_root, {"seed", "model", "data", "eval"}),
                            (run.tasks_root, {"seed", "model", "data", "eval"}),
                            (run.bench_root, {"seed", "model", "bench"})):
        if sections & depends and folder.exists():
            announce(f"the base model's settings changed ({', '.join(changed[:4])}): redoing {folder}")
            shutil.rmtree(folder)
    atomic_write_text(run.config, dump_config(cfg))


def write_sweep_json(sweep: SweepDir, doc: dict[str, Any]) -> Path:
    """sweep.json alone: rewritten after every method, so a killed sweep still describes the finished ones."""
    return atomic_write_json(sweep.sweep_json, doc)


def write_sweep_report(sweep: SweepDir, doc: dict[str, Any], *, out: SweepDir | None = None) -> dict[str, Path]:
    """sweep.json, the gain-vs-forgetting chart and report.html of a sweep folder, all rendered first.

    out: where the chart and report.html go instead (`tunebench report SWEEP`); sweep.json, the data, is then
    not written.
    """
    from tunebench.io import atomic_write_bytes
    from tunebench.report.sweep import gain_forgetting_png, render_sweep_html

    chart = gain_forgetting_png(doc)
    html = render_sweep_html(doc, chart)
    paths = {"sweep": atomic_write_json(sweep.sweep_json, doc)} if out is None else {}
    target = sweep if out is None else out
    if chart is not None:
        paths["chart"] = atomic_write_bytes(target.chart, chart)
    paths["html"] = atomic_write_text(target.report_html, html)
    return paths


def rewrite_sweep_report(sweep_dir: Path, out_dir: Path | None = None) -> dict[str, Path]:
    """`tunebench report SWEEP`: the chart and report.html rendered again from the sweep's stored sweep.json
    (in place, or into `out_dir`), nothing trained or evaluated. Raises DataError for a sweep.json that cannot
    be read or is not a sweep's (schema tunebench.sweep/1)."""
    from tunebench.errors import DataError
    from tunebench.rundir import SWEEP_SCHEMA, SweepDir

    sweep = SweepDir(sweep_dir)
    doc = read_json(sweep.sweep_json, what="the sweep's data", fix="rerun the sweep to write it again")
    if not isinstance(doc, dict) or doc.get("schema") != SWEEP_SCHEMA or not isinstance(doc.get("rows"), list):
        schema = doc.get("schema") if isinstance(doc, dict) else None
        raise DataError(f"{sweep.sweep_json} is not a sweep's data (schema {schema!r}, expected {SWEEP_SCHEMA}); "
                        "rerun the sweep to write it again")
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        return write_sweep_report(sweep, doc, out=SweepDir(out_dir))
    return {**write_sweep_report(sweep, doc, out=sweep), "sweep": sweep.sweep_json}
