"""The whole job as plain function calls on plain data: train → evaluate → compare → bench → report.

Evaluation, comparison, benchmark scoring and the HELM view return their rows and scores; this module is where they
are written (`write_evaluation`, `write_comparison`, `write_bench_task`, `write_benchmarks`, `write_helm`), at the
paths `RunDir` names, on the main process only. Each stage is skipped when its output is already there, so a killed `tunebench run`
picks up where it stopped (training itself resumes from its last checkpoint, benchmarks from their last task).
"""

from __future__ import annotations

import gc
from collections.abc import Mapping
from functools import partial
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunebench.config import EvalConfig, RunConfig, adopt_trained, dump_config, load_config, resolve_data_dir
from tunebench.errors import TunebenchError
from tunebench.io import atomic_write_json, atomic_write_jsonl, atomic_write_text, read_json
from tunebench.processes import barrier, from_main, is_main
from tunebench.rundir import BENCH_SCHEMA, BenchDir, CompareDir, EvalDir, RunDir

if TYPE_CHECKING:
    from tunebench.bench.helm.runner import HelmResults
    from tunebench.bench.runner import BenchResults
    from tunebench.evaluate.metrics import MetricStats
    from tunebench.evaluate.run_eval import Evaluation

DEMO_CONFIG = Path(str(resources.files("tunebench") / "configs" / "demo.yaml"))


def _log(message: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[bold cyan]tunebench[/] {message}")


def _splits(cfg: RunConfig, data_dir: Path | None, only: str | None = None):
    from tunebench.data.prepare import build_splits

    return build_splits(cfg.data, data_dir, cfg.seed, only=only)


def _task_set(cfg: RunConfig, data_dir: Path | None):
    from tunebench.data.tasks import build_task_set

    return build_task_set(cfg.data, cfg.eval, data_dir, cfg.seed)


def task_eval_config(cfg: RunConfig, task) -> EvalConfig:
    """eval settings for one task of a mixture: its metrics, and its generation length and stop strings
    (the task's own, else its built-in template's length, else eval.generation's)."""
    from tunebench.data.templates import BUILTIN_TEMPLATES

    gen = cfg.eval.generation
    own = task.config.generation
    builtin = BUILTIN_TEMPLATES.get(task.config.template.name or "") if task.config.template.prompt is None else None
    max_new = own.max_new_tokens or (builtin.max_new_tokens if builtin else None) or gen.max_new_tokens
    stop = own.stop if own.stop is not None else gen.stop
    generation = gen.model_copy(update={"max_new_tokens": max_new, "stop": list(stop)})
    return cfg.eval.model_copy(update={"metrics": list(task.metrics), "generation": generation})


def _eval_examples(cfg: RunConfig, splits, split: str | None = None, limit: int | None = None):
    """The examples evaluated: `limit` (0 = all; None = the config's eval.limit) first ones of the split."""
    split = split or cfg.eval.split
    examples = list(getattr(splits, split))
    if not examples:
        raise TunebenchError(f"eval.split: the '{split}' split is empty; configure data.splits or data.fractions")
    limit = cfg.eval.limit if limit is None else limit
    return examples[:limit] if limit else examples


# ---- the writers: the one place evaluation, benchmark and HELM results reach the disk


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
    """`tunebench report`: results.json, report.md and report.html for a run, compare, eval or bench directory.

    The default place is the directory itself, except for a bench folder, whose own results.json must stay: its
    report goes to DIR/report/. Everything is rendered before anything is written, so a failure never leaves a
    half-updated set; a results.json of another kind (a benchmark's) is never overwritten (DataError).
    """
    from tunebench.errors import DataError
    from tunebench.report.html import render_report

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


# ---- the stages, each computed and then written


def evaluate_into(out: EvalDir, cfg: RunConfig, loaded, examples, splits, system: dict[str, Any], shots: int,
                  split: str | None = None, *, rank: int = 0, world_size: int = 1,
                  precision: tuple[str | None, dict[str, Any]] | None = None) -> Evaluation:
    """Evaluate one system and write its folder (main process only); returns the Evaluation (its statistics
    go on to compare).

    precision: (name, record) from `evaluate.parity.decide_precision`, shared by the systems of one comparison;
    None decides for this model alone (eval.precision: probe and parity gate).
    """
    import dataclasses

    from tunebench.evaluate.parity import decide_precision
    from tunebench.evaluate.run_eval import evaluate
    from tunebench.models.precision import precision_variant

    used, record = precision or from_main(
        partial(decide_precision, [lambda: loaded], examples, cfg.eval, seed=cfg.seed), rank, world_size)
    if used is not None:
        if is_main(rank):
            _log(f"precision {used}: {record['reason']}")
        loaded = dataclasses.replace(loaded, model=precision_variant(loaded.model, used))
    evaluation = evaluate(loaded, examples, cfg=cfg.eval, system=system, shots=shots,
                          demos=list(splits.train) if shots else None, seed=cfg.seed,
                          context_budget=cfg.eval.context_budget, split=split or cfg.eval.split,
                          rank=rank, world_size=world_size,
                          precision_record=record if cfg.eval.precision is not None else None)
    if is_main(rank):
        write_evaluation(out, evaluation)
    return evaluation


def evaluate_reference(cfg: RunConfig, *, data_dir: str | Path | None, adapter: str | None, split: str | None,
                       limit: int | None, shots: int, out_dir: Path, rank: int = 0,
                       world_size: int = 1) -> dict[str, Any]:
    """`tunebench eval`: one model (optionally with an adapter) on one split, written to `out_dir`."""
    from tunebench.models.load import load_model

    _trained_settings(cfg, adapter)
    if cfg.data.multitask:
        return _evaluate_tasks(cfg, data_dir=resolve_data_dir(data_dir, cfg), adapter=adapter, split=split,
                               limit=limit, shots=shots, out_dir=out_dir, rank=rank, world_size=world_size)
    split = split or cfg.eval.split
    # Zero-shot on the test split reads only the test split: no train split is loaded (or downloaded).
    splits = _splits(cfg, resolve_data_dir(data_dir, cfg), only="test" if split == "test" and not shots else None)
    examples = _eval_examples(cfg, splits, split, limit)
    loaded = load_model(cfg.model, adapter=adapter, merge=adapter is not None)
    system = {"name": out_dir.name, "model": cfg.model.ref, "adapter": adapter, "shots": shots}
    return evaluate_into(EvalDir(out_dir), cfg, loaded, examples, splits, system, shots, split,
                         rank=rank, world_size=world_size).scores


def parity_reference(cfg: RunConfig, *, data_dir: str | Path | None, adapter: str | None, precision: str,
                     limit: int | None = None) -> dict[str, Any]:
    """`tunebench parity`: the parity gate of `precision` for the config's model (plus `adapter`) on the
    eval split's calibration slice (eval.parity); returns the verdict (evaluate.parity.GateResult as a dict),
    from the cache when this (model, adapter, precision, task) was gated before."""
    from tunebench.evaluate.parity import parity_gate
    from tunebench.models.load import load_model

    _trained_settings(cfg, adapter)
    splits = _splits(cfg, resolve_data_dir(data_dir, cfg), only="test" if cfg.eval.split == "test" else None)
    examples = _eval_examples(cfg, splits, limit=limit)
    loaded = load_model(cfg.model, adapter=adapter, merge=adapter is not None)
    return parity_gate(loaded, examples, cfg.eval, precision, seed=cfg.seed).as_dict()


def _trained_settings(cfg: RunConfig, adapter: str | None) -> None:
    """Score a trained output with its run's base model and prompt format unless the config set them explicitly."""
    if adapter is None:
        return
    from tunebench.models.load import TRAINED_SETTINGS, run_config_path

    recorded = run_config_path(adapter)
    if recorded is None:  # a bare adapter folder: nothing recorded to adopt
        return
    trained = load_config(recorded)
    cfg.model = adopt_trained(cfg.model, trained.model, TRAINED_SETTINGS, "model", recorded.parent)
    cfg.data = adopt_trained(cfg.data, trained.data, ("template",), "data", recorded.parent)


def _evaluate_tasks(cfg: RunConfig, *, data_dir: Path | None, adapter: str | None, split: str | None,
                    limit: int | None, shots: int, out_dir: Path, rank: int = 0,
                    world_size: int = 1) -> dict[str, Any]:
    """`tunebench eval` of a mixture: every task on its own split with its own metrics, into out_dir/<task>/."""
    from tunebench.models.load import load_model

    task_set = _task_set(cfg, data_dir)
    loaded = load_model(cfg.model, adapter=adapter, merge=adapter is not None)
    system = {"name": out_dir.name, "model": cfg.model.ref, "adapter": adapter, "shots": shots}
    out: dict[str, Any] = {}
    for task in task_set.tasks:
        task_cfg = cfg.model_copy(update={"eval": task_eval_config(cfg, task)})
        examples = _eval_examples(task_cfg, task.splits, split, limit)
        if is_main(rank):
            _log(f"task {task.name}: evaluating on {len(examples)} {split or cfg.eval.split} examples")
        out[task.name] = evaluate_into(EvalDir(out_dir).task(task.name), task_cfg, loaded, examples, task.splits,
                                       {**system, "task": task.name}, shots, split, rank=rank,
                                       world_size=world_size).scores
    return {"tasks": out}


def write_comparison(out: CompareDir, comparison: dict[str, Any]) -> Path:
    """comparison.json (compare_systems' result)."""
    return atomic_write_json(out.comparison, comparison)


def compare_paths(paths: list[Path], out_dir: Path, *, baseline: str | None = None, n_resamples: int = 1000,
                  seed: int = 0, computed: Mapping[Path, Mapping[str, MetricStats]] | None = None) -> Path:
    """`tunebench compare`: paired statistics over evaluations, plus the forgetting table when both ran benches.

    computed: statistics evaluations of this process already hold (Evaluation.stats by eval dir), handed to
    compare_systems so they are not computed again.

    Two benchmark folders (`tunebench bench --out` of the base model, then of the tuned one) give the forgetting
    table alone: out_dir/forgetting.json, whose path is returned. Multi-task runs (RUN/tasks/<task>/eval/) or
    multi-task evaluations (DIR/<task>/) are compared task by task into out_dir/tasks/<task>/.
    """
    from tunebench.evaluate.compare import compare_systems

    if len(paths) == 2 and all(_is_bench_dir(p) for p in paths):
        from tunebench.bench.forgetting import forgetting_table

        base_dir, tuned_dir = paths
        rows = forgetting_table(base_dir, tuned_dir, n_resamples=n_resamples, seed=seed)
        if not rows:
            raise TunebenchError(f"{base_dir} and {tuned_dir} share no benchmark task with the same metric; "
                                 "run both with the same --tasks")
        return atomic_write_json(CompareDir(out_dir).forgetting, {
            "schema": "tunebench.forgetting/1", "base": str(base_dir.resolve()), "tuned": str(tuned_dir.resolve()),
            "n_resamples": n_resamples, "seed": seed, "rows": rows})

    per_task = _task_paths(paths)
    for task, task_paths in per_task.items():
        write_comparison(CompareDir(out_dir).task(task), compare_systems(task_paths, baseline=baseline,
                                                                         n_resamples=n_resamples, seed=seed))
    if not per_task:
        write_comparison(CompareDir(out_dir), compare_systems(paths, baseline=baseline, n_resamples=n_resamples,
                                                              seed=seed, computed=computed))
    bench_dirs = _bench_dirs(paths)
    if len(bench_dirs) == 2:
        from tunebench.bench.forgetting import forgetting_table

        (base_dir, tuned_dir) = bench_dirs
        atomic_write_json(CompareDir(out_dir).forgetting,
                          forgetting_table(base_dir, tuned_dir, n_resamples=n_resamples, seed=seed))
    return CompareDir(out_dir).comparison


def _is_bench_dir(path: Path) -> bool:
    """A `tunebench bench --out` folder: results.json of the benchmark schema."""
    results = BenchDir(path).results
    if not results.is_file():
        return False
    try:
        return read_json(results).get("schema") == BENCH_SCHEMA
    except (TunebenchError, AttributeError):
        return False


def _task_paths(paths: list[Path]) -> dict[str, list[Path]]:
    """{task: its eval paths} when every path is a multi-task run (its tasks/<task>/) or a multi-task
    `tunebench eval --out` folder (its <task>/ evaluations); else {}."""
    found: dict[str, list[Path]] = {}
    for path in paths:
        run = RunDir(path)
        if EvalDir(path).predictions.is_file() or run.eval_root.is_dir():
            return {}
        tasks = {t.name: t.path for t in run.task_dirs() if t.eval_root.is_dir()}
        if not tasks and path.is_dir():
            tasks = {d.name: d for d in sorted(path.iterdir()) if EvalDir(d).predictions.is_file()}
        if not tasks:
            return {}
        for name, d in tasks.items():
            found.setdefault(name, []).append(d)
    return found


def _bench_dirs(paths: list[Path]) -> list[Path]:
    """The base and tuned benchmark dirs of a single run dir, when both ran."""
    if len(paths) != 1:
        return []
    found = [RunDir(paths[0]).bench_dir(name) for name in ("base", "tuned")]
    return [d.path for d in found] if all(d.results.is_file() for d in found) else []


class _OneModel:
    """Keeps one loaded model at a time: the base for base systems, base + adapter for tuned ones."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg, self.adapter, self.loaded, self.merge = cfg, None, None, True

    def get(self, adapter: str | None, merge: bool = True):
        from tunebench.models.load import load_model

        if self.loaded is None or adapter != self.adapter or merge != self.merge:
            self.release()
            # LoRA merged into the base for evaluation: same outputs, faster generation and scoring. Unmerged
            # when perplexity tasks measure KL against the adapter's own base (adapter disabled).
            self.adapter, self.merge = adapter, merge
            self.loaded = load_model(self.cfg.model, adapter=adapter, merge=adapter is not None and merge)
        return self.loaded

    def release(self) -> None:
        self.loaded = None
        gc.collect()


def _read_summary(path: Path) -> dict[str, Any]:
    return read_json(path, what="the training summary", fix="train the run again or pass a finished run")


def bench_into(out: BenchDir, loaded, tasks: list[str], *, data_dir: Path | None, limit: int | None,
               shots: int | None, seed: int = 0, progress: bool = True, rank: int = 0,
               world_size: int = 1, reference: Any | None = None,
               limits: dict[str, int] | None = None) -> dict[str, Any]:
    """Score benchmark tasks and write `out` (main process only): each task's log as it finishes, results.json
    at the end; tasks an interrupted run with the same model and settings finished are reused. Returns
    results.json's content."""
    from tunebench.bench.runner import run_benchmarks

    main = is_main(rank)

    def task_done(bench: BenchResults, task: str) -> None:
        if main:
            write_bench_task(out, bench, task)

    bench = run_benchmarks(loaded, tasks, data_dir=data_dir, limit=limit, shots=shots, seed=seed, progress=progress,
                           finished=read_finished_tasks(out), on_task=task_done, rank=rank, world_size=world_size,
                           reference=reference, limits=limits)
    if main:
        write_benchmarks(out, bench, samples=False)
    return bench.results


def bench_loaded(cfg: RunConfig, loaded, out_dir: Path, data_dir: Path | None,
                 train_summary: dict[str, Any] | None = None, *, tasks: list[str] | None = None,
                 limit: int | None = None, shots: int | None = None, helm: bool | None = None, rank: int = 0,
                 world_size: int = 1, reference: Any | None = None,
                 limits: dict[str, int] | None = None) -> dict[str, Any]:
    """Benchmarks (and the HELM-style view when asked) for an already loaded model, written to `out_dir`.

    limit: examples per task (None: whole tasks). Prompts are plain unless bench.chat_template asks for the chat
    template (and the model has one). reference: the model perplexity tasks measure KL against.
    """
    import dataclasses

    out = BenchDir(out_dir)
    tasks = tasks or cfg.bench.tasks
    limit = limit or None  # --limit 0 (or none): every example
    shots = shots if shots is not None else cfg.bench.shots
    if dataclasses.is_dataclass(loaded):
        loaded = dataclasses.replace(loaded, use_chat=bool(cfg.bench.chat_template and loaded.use_chat))
    results = bench_into(out, loaded, tasks, data_dir=data_dir, limit=limit, shots=shots, seed=cfg.seed,
                         rank=rank, world_size=world_size, reference=reference, limits=limits)
    if cfg.bench.helm if helm is None else helm:
        from tunebench.bench.helm.runner import helm_evaluate

        view = helm_evaluate(loaded, tasks, data_dir=data_dir, limit=limit, seed=cfg.seed,
                             train_summary=train_summary, shots=shots, rank=rank, world_size=world_size)
        if is_main(rank):
            write_helm(out, view)
    return results


def bench_reference(cfg: RunConfig, *, tasks: list[str], data_dir: str | Path | None, adapter: str | None,
                    limit: int | None, shots: int | None, out_dir: Path, helm: bool = False, rank: int = 0,
                    world_size: int = 1, reference: str | None = None) -> dict[str, Any]:
    """`tunebench bench`: benchmark suites (and optionally the HELM-style view) for one model, whole tasks unless
    `limit`. reference: a model whose KL to this one perplexity tasks measure (an adapter's own base without)."""
    from tunebench.bench.spec import resolve_tasks
    from tunebench.models.load import load_model

    resolved = resolve_data_dir(data_dir, cfg)
    summary_path = RunDir(adapter).train_summary if adapter else None
    summary = _read_summary(summary_path) if summary_path and summary_path.is_file() else None
    _trained_settings(cfg, adapter)
    # Perplexity tasks measure KL against the adapter's own base: keep the adapter unmerged for them.
    drift = any(s.output_type == "perplexity" for s in resolve_tasks(tasks or cfg.bench.tasks, resolved))
    loaded = load_model(cfg.model, adapter=adapter, merge=adapter is not None and not drift)
    ref = load_model(cfg.model.model_copy(update={"ref": reference})) if reference else None
    return bench_loaded(cfg, loaded, out_dir, resolved, summary, tasks=tasks, limit=limit, shots=shots, helm=helm,
                        rank=rank, world_size=world_size, reference=ref)


def run_all(cfg: RunConfig, *, data_dir: str | Path | None = None, rank: int = 0,
            world_size: int = 1, base: RunDir | None = None) -> dict[str, Path]:
    """`tunebench run`: train, evaluate base (zero/few-shot) and tuned, compare, benchmark, report.

    `rank` of `world_size` processes (`accelerate launch`): training is data-parallel, evaluation and benchmarks
    are sharded and gathered, and the main process alone writes the run directory and reports progress; the
    others return an empty dict. base: where the base model's evaluations and benchmarks live (default: the run
    directory itself); a sweep passes its shared `base/` folder, so the base is evaluated once for every method
    (whichever comes first).
    """
    from tunebench.train.loop import train

    main = is_main(rank)
    log = _log if main else (lambda message: None)

    resolved = resolve_data_dir(data_dir, cfg)
    run_dir = cfg.run_dir
    run = RunDir(run_dir)
    home = base or run  # the base systems' folders
    # Every split and benchmark the run needs is checked before minutes of training, not after.
    # Bad data fails here, before anything in the run dir changes.
    prepared = _task_set(cfg, resolved) if cfg.data.multitask else _splits(cfg, resolved)
    examples = None if cfg.data.multitask else _eval_examples(cfg, prepared)
    if cfg.bench.enabled and cfg.bench.tasks:
        from tunebench.bench.spec import resolve_tasks

        resolve_tasks(cfg.bench.tasks, resolved)
    if main:
        _prepare_run_dir(cfg)
    barrier(world_size)

    summary_path = run.train_summary
    if summary_path.is_file():
        log(f"training already done: {summary_path}")
    else:
        log(f"training ({cfg.train.method}) → {run_dir}")
        result = train(cfg, data_dir=resolved, resume=run.checkpoints.is_dir())
        if getattr(result, "interrupted", False):
            raise TunebenchError(f"training was interrupted; rerun the same command to resume from {run_dir}")

    systems: list[tuple[str, str | None, int]] = [(f"base-{k}shot", None, k) for k in cfg.eval.shots]
    systems.append(("tuned", str(run_dir), 0))
    models = _OneModel(cfg)
    precision = None
    computed: dict[Path, Any] = {}  # each evaluation's statistics, for compare (resumed ones are recomputed)
    if cfg.data.multitask:
        _evaluate_run_tasks(cfg, prepared, systems, models, rank=rank, world_size=world_size)
    else:
        for name, adapter, shots in systems:
            out = (run if adapter else home).eval_dir(name)
            if out.scores.is_file():
                log(f"evaluation {name} already done")
                continue
            if precision is None:  # one precision for every system compared: a fast one only where all pass
                from tunebench.evaluate.parity import decide_precision

                getters = [lambda a=a: models.get(a) for a in dict.fromkeys(a for _, a, _ in systems)]
                precision = from_main(partial(decide_precision, getters, examples, cfg.eval, seed=cfg.seed), rank,
                                      world_size)
            log(f"evaluating {name} on {len(examples)} {cfg.eval.split} examples")
            system = {"name": name, "model": cfg.model.ref, "adapter": adapter, "shots": shots}
            computed[out.path] = evaluate_into(out, cfg, models.get(adapter), examples, prepared, system, shots,
                                               rank=rank, world_size=world_size, precision=precision).stats

    if cfg.bench.enabled and cfg.bench.tasks:
        from tunebench.bench.spec import resolve_tasks
        from tunebench.models.methods import attached_method

        drift = any(s.output_type == "perplexity" for s in resolve_tasks(cfg.bench.tasks, resolved))
        for name, adapter in (("tuned", str(run_dir)), ("base", None)):
            bench_dir = (run if adapter else home).bench_dir(name)
            if bench_dir.results.is_file():
                log(f"benchmarks for {name} already done")
                continue
            log(f"forgetting suite {','.join(cfg.bench.tasks)} on {name}")
            summary = _read_summary(summary_path) if adapter else None
            loaded = models.get(adapter, merge=not drift)
            reference = None
            if drift and adapter is not None and attached_method(loaded.model) is None:
                from tunebench.models.load import load_model

                reference = load_model(cfg.model)  # a full fine-tune: KL needs the base as a second copy
            bench_loaded(cfg, loaded, bench_dir.path, resolved, summary, limit=cfg.bench.limit, limits=cfg.bench.limits,
                         reference=reference, rank=rank, world_size=world_size)
            reference = None
    models.release()
    if not main:
        barrier(world_size)  # returns once the main process has written the comparison and the report
        return {}

    log("comparing systems")
    if cfg.data.multitask:
        for task in cfg.data.tasks:
            task_dir = run.task_dir(task.name)
            compare_paths([task_dir.path], task_dir.compare_dir.path, baseline=systems[0][0],
                          n_resamples=cfg.eval.bootstrap, seed=cfg.seed)
        _forgetting_only(run, n_resamples=cfg.eval.bootstrap, seed=cfg.seed)
    elif base is None:
        compare_paths([run_dir], run.compare_dir.path, baseline=systems[0][0], n_resamples=cfg.eval.bootstrap,
                      seed=cfg.seed, computed=computed)
    else:
        _compare_with_base(cfg, run, base, [name for name, adapter, _ in systems if adapter is None])
    log("writing the report")
    paths = write_report(run_dir)
    barrier(world_size)
    return paths


def single_task_config(cfg: RunConfig, task: str, steps: int, size: int) -> RunConfig:
    """The single-task twin of a mixture run: the same config (model, method, seed, every task's splits and
    evaluation, benchmarks) trained on `task` alone for the mixture run's `steps` optimizer steps, one pass of
    the task's `size` training examples per epoch; named `<name>-single-<task>`. Raises ConfigError (exit 2)
    when the config is not a mixture or has no such task."""
    from tunebench.config import config_from_dict
    from tunebench.errors import ConfigError

    names = [t.name for t in cfg.data.tasks]
    if task not in names:
        known = ", ".join(names) if names else "none: the config has no data.tasks"
        raise ConfigError(f"--single-task: '{task}' is not a task of the mixture (data.tasks: {known})")
    tree = cfg.model_dump(mode="json")
    tree["name"] = f"{cfg.name}-single-{task}"
    tree["data"]["mixture"] = {"strategy": "weights", "examples_per_epoch": size}
    for entry in tree["data"]["tasks"]:
        entry["weight"] = 1.0 if entry["name"] == task else 0.0
    tree["train"]["max_steps"] = steps
    return config_from_dict(tree, f"--single-task {task}")


def run_single_vs_multi(cfg: RunConfig, task: str, *, data_dir: str | Path | None = None, rank: int = 0,
                        world_size: int = 1) -> dict[str, Path]:
    """`tunebench run CONFIG --single-task TASK`: the mixture run, then the same config trained on TASK alone
    with the same optimizer-step budget (`single_task_config`), then both side by side in the mixture run's
    report: every task's scores of each model with the paired difference multi - single, and each model's
    forgetting suite. The base evaluations are the same model on the same test sets: the single-task run takes
    the mixture run's instead of computing them again. Processes as in `run_all` (the others return {})."""
    import shutil

    single_task_config(cfg, task, 1, 1)  # a bad task name fails before minutes of training
    run_all(cfg, data_dir=data_dir, rank=rank, world_size=world_size)
    multi = RunDir(cfg.run_dir)
    steps = _read_summary(multi.train_summary)["steps"]
    size = next(r["size"] for r in read_json(multi.mixture)["tasks"] if r["task"] == task)
    single_cfg = single_task_config(cfg, task, steps, size)
    single = RunDir(single_cfg.run_dir)
    if is_main(rank):
        _log(f"single-task run: {task} alone for {steps} optimizer steps → {single.path}")
        for base_dir in [d for t in multi.task_dirs() for d in t.evaluations() if d.name.startswith("base-")]:
            target = single.task_dir(base_dir.path.parent.parent.name).eval_dir(base_dir.name)
            if not target.scores.is_file():
                shutil.copytree(base_dir.path, target.path, dirs_exist_ok=True)
        if multi.bench_dir("base").results.is_file() and not single.bench_dir("base").results.is_file():
            shutil.copytree(multi.bench_dir("base").path, single.bench_dir("base").path, dirs_exist_ok=True)
    barrier(world_size)
    run_all(single_cfg, data_dir=data_dir, rank=rank, world_size=world_size)
    if not is_main(rank):
        return {}
    _log("single-task vs multi-task")
    atomic_write_json(multi.single_vs_multi, single_vs_multi(single, multi, task, steps,
                                                              n_resamples=cfg.eval.bootstrap, seed=cfg.seed))
    return write_report(multi.path)


def single_vs_multi(single: RunDir, multi: RunDir, task: str, steps: int, *, n_resamples: int,
                    seed: int) -> dict[str, Any]:
    """The side-by-side of a single-task run and its mixture run (`single_vs_multi.json`, docs/formats.md).

    Per task and metric: the base score and each tuned model's score with its 95% bootstrap interval, and the
    paired difference multi - single (paired bootstrap over the task's test examples, compare's statistics;
    comparison.json of each task under the mixture run's `single_vs_multi/tasks/<task>/`). Forgetting: each
    run's forgetting rows (tuned vs base) and the paired difference multi - single on the same samples.
    """
    from tunebench.bench.forgetting import forgetting_table
    from tunebench.evaluate.compare import compare_systems

    labels = ("single-task", "multi-task")
    tasks: list[dict[str, Any]] = []
    for task_dir in multi.task_dirs():
        pair = [single.task_dir(task_dir.name).eval_dir("tuned"), task_dir.eval_dir("tuned")]
        if not all(d.scores.is_file() for d in pair):
            continue
        out = multi.single_vs_multi_dir.task(task_dir.name)
        doc = compare_systems([d.path for d in pair], baseline=labels[0], labels=labels, n_resamples=n_resamples,
                              seed=seed)
        write_comparison(out, doc)
        base = next((read_json(d.scores)["metrics"] for d in task_dir.evaluations() if d.name == "base-0shot"), {})
        (comp,) = doc["comparisons"]
        for metric, m in comp["metrics"].items():
            tasks.append({
                "task": task_dir.name, "metric": metric, "trained_on": "both" if task_dir.name == task else "multi",
                "base": (base.get(metric) or {}).get("score"),
                "single": doc["systems"][labels[0]]["metrics"][metric]["score"],
                "single_ci95": doc["systems"][labels[0]]["metrics"][metric]["ci95"],
                "multi": doc["systems"][labels[1]]["metrics"][metric]["score"],
                "multi_ci95": doc["systems"][labels[1]]["metrics"][metric]["ci95"],
                "delta": m["delta"], "ci95": m["ci95"], "p_value": m["p_value"],
            })
    forgetting: list[dict[str, Any]] = []
    runs = {"single": single, "multi": multi}
    tables = {k: read_json(r.compare_dir.forgetting) for k, r in runs.items() if r.compare_dir.forgetting.is_file()}
    if len(tables) == 2 and all(r.bench_dir("tuned").results.is_file() for r in runs.values()):
        between = {(r["task"], r["metric"]): r for r in forgetting_table(
            single.bench_dir("tuned").path, multi.bench_dir("tuned").path, n_resamples=n_resamples, seed=seed)}
        singles = {(r["task"], r["metric"]): r for r in tables["single"]}
        for row in tables["multi"]:
            key = (row["task"], row["metric"])
            if key not in singles or key not in between:
                continue
            s, d = singles[key], between[key]
            forgetting.append({
                "task": row["task"], "metric": row["metric"], "n": row["n"], "base": row["base"],
                "higher_is_better": row["higher_is_better"],
                "single": s["tuned"], "single_delta": s["delta"], "single_p_value": s["p_value"],
                "single_status": s["status"],
                "multi": row["tuned"], "multi_delta": row["delta"], "multi_p_value": row["p_value"],
                "multi_status": row["status"],
                # KL is measured against the original base in each run, so only its difference is given
                **({"delta": row["tuned"] - s["tuned"], "ci95": None, "p_value": None} if row["metric"] == "kl"
                   else {"delta": d["delta"], "ci95": d["ci95"], "p_value": d["p_value"]}),
            })
    return {"schema": "tunebench.single_vs_multi/1", "single_task": task, "optimizer_steps": steps,
            "single_run": str(single.path.resolve()), "multi_run": str(multi.path.resolve()),
            "tasks": tasks, "forgetting": forgetting}


def _evaluate_run_tasks(cfg: RunConfig, task_set, systems: list[tuple[str, str | None, int]],
                        models: _OneModel, *, rank: int = 0, world_size: int = 1) -> None:
    """Every system on every task's test split, with the task's metrics: RUN/tasks/<task>/eval/<system>/.

    Systems are the outer loop, so each model is loaded once.
    """
    run = RunDir(cfg.run_dir)
    log = _log if is_main(rank) else (lambda message: None)
    precisions: dict[str, tuple[str | None, dict[str, Any]]] = {}
    for name, adapter, shots in systems:
        for task in task_set.tasks:
            out = run.task_dir(task.name).eval_dir(name)
            if out.scores.is_file():
                log(f"evaluation {task.name}/{name} already done")
                continue
            task_cfg = cfg.model_copy(update={"eval": task_eval_config(cfg, task)})
            examples = _eval_examples(task_cfg, task.splits)
            if task.name not in precisions:  # one precision for every system compared on a task, as run_all
                from tunebench.evaluate.parity import decide_precision

                getters = [lambda a=a: models.get(a) for a in dict.fromkeys(a for _, a, _ in systems)]
                precisions[task.name] = from_main(partial(decide_precision, getters, examples, task_cfg.eval,
                                                          seed=cfg.seed), rank, world_size)
            log(f"task {task.name}: evaluating {name} on {len(examples)} {cfg.eval.split} examples")
            system = {"name": name, "model": cfg.model.ref, "adapter": adapter, "shots": shots, "task": task.name}
            evaluate_into(out, task_cfg, models.get(adapter), examples, task.splits, system, shots, rank=rank,
                          world_size=world_size, precision=precisions[task.name])


def _forgetting_only(run: RunDir, *, n_resamples: int, seed: int) -> None:
    """The forgetting table of a multi-task run (its evaluations are compared per task)."""
    bench_dirs = _bench_dirs([run.path])
    if len(bench_dirs) == 2:
        from tunebench.bench.forgetting import forgetting_table

        base_dir, tuned_dir = bench_dirs
        atomic_write_json(run.compare_dir.forgetting,
                          forgetting_table(base_dir, tuned_dir, n_resamples=n_resamples, seed=seed))


def _compare_with_base(cfg: RunConfig, run: RunDir, base: RunDir, base_systems: list[str]) -> None:
    """A run's comparison against base evaluations kept elsewhere (a sweep's shared base): comparison.json over
    the base systems and the run's tuned one, forgetting.json from the base's and the run's benchmarks."""
    paths = [base.eval_dir(name).path.resolve() for name in base_systems] + [run.eval_dir("tuned").path.resolve()]
    compare_paths(paths, run.compare_dir.path, baseline=base_systems[0], n_resamples=cfg.eval.bootstrap,
                  seed=cfg.seed)
    base_bench, tuned_bench = base.bench_dir("base"), run.bench_dir("tuned")
    if base_bench.results.is_file() and tuned_bench.results.is_file():
        from tunebench.bench.forgetting import forgetting_table

        atomic_write_json(run.compare_dir.forgetting, forgetting_table(
            base_bench.path.resolve(), tuned_bench.path.resolve(), n_resamples=cfg.eval.bootstrap, seed=cfg.seed))


# What each later stage wrote, by the config section it depends on (compare and the report are always redone).
STAGE_OUTPUTS = {"eval": (RunDir.eval_root.name, RunDir.tasks_root.name), "bench": (RunDir.bench_root.name,)}
# Keys of a stage section that leave that stage's outputs unchanged (used only by the always-redone compare).
COMPARE_ONLY_KEYS = ("eval.bootstrap",)


def _prepare_run_dir(cfg: RunConfig) -> None:
    """Create the run dir and record the resolved config, keeping config.yaml true to the results beside it.

    On a run dir that already holds a run: a change of a key that training depends on (seed, model, data, train)
    is refused, naming the keys; a change of eval or bench settings removes exactly those stages' outputs, so
    they are redone under the new settings, before the new config is recorded. Nothing is written when nothing
    changed. A fresh run dir just gets its config.yaml.
    """
    import shutil

    from tunebench.errors import ConfigError
    from tunebench.io import clean_stale_temps
    from tunebench.train.checkpoint import list_checkpoints
    from tunebench.train.rundir import RESUME_KEYS, config_changes, describe_changes, read_saved_config

    run_dir = cfg.run_dir
    run = RunDir(run_dir)
    task_evals = [p for t in run.task_dirs() for p in t.eval_root.glob("*")]
    for folder in (run.path, run.checkpoints, run.compare_dir.path, *run.eval_root.glob("*"), *task_evals,
                   *run.bench_root.glob("*")):
        clean_stale_temps(folder)  # what a kill during a write left behind
    saved_path = run.config
    saved = read_saved_config(saved_path) if saved_path.is_file() else None
    changed = config_changes(saved, cfg) if saved is not None else []
    trained = run.train_summary.exists() or bool(list_checkpoints(run.checkpoints))
    if saved is not None and trained:
        retrain = [k for k in changed if k.split(".")[0] in RESUME_KEYS]
        if retrain:
            raise ConfigError(
                f"{run_dir} holds a run trained with other settings ({describe_changes(saved, cfg, retrain)}); "
                "its results would not match this config: restore those keys, or start a new run with "
                "--set name=NEW_NAME"
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
                        _log(f"{section} settings changed ({describe_changes(saved, cfg, changed)}): "
                             f"redoing {name}/")
                        shutil.rmtree(run_dir / name)
        atomic_write_text(saved_path, dump_config(cfg))
    except OSError as exc:
        raise TunebenchError(f"output directory {run_dir} is not writable ({exc.strerror}); "
                             "set output_dir or --set output_dir=PATH") from None


# ---- the method sweep: every method trained and evaluated like `run`, against one shared base


def run_sweep(config: str | Path | None, overrides: list[str], methods: list[str], *,
              data_dir: str | Path | None = None, out: str | Path | None = None,
              against: str | None = None) -> dict[str, Any]:
    """`tunebench sweep`: train and evaluate `methods` on the same data, seed, step budget and evaluation, each in
    `SWEEP/<method>/`, against the base model evaluated and benchmarked once in `SWEEP/base/`; then sweep.json,
    the pairwise comparison against `against` (SWEEP/compare/) and report.html.

    Resumable: a method whose run finished is only read back; a killed one resumes from its last checkpoint; a
    method that fails (e.g. one that does not apply to the model) is recorded as failed with its one-sentence
    error and the others still run. Each method trains in a fresh process, so its peak memory and speed are its
    own. Raises ConfigError for an unknown method in --methods or --against (before anything runs).
    Returns sweep.json's content.
    """
    from tunebench import sweep as sw
    from tunebench.config import load_config
    from tunebench.rundir import SweepDir

    methods = sw.check_methods(methods)
    sw.check_against(against, methods)
    cfg = load_config(config, overrides)
    if cfg.data.multitask:
        from tunebench.errors import ConfigError

        raise ConfigError("data.tasks: a sweep compares methods on one task; give a single-task config (a mixture "
                          "sweep is not supported yet)")
    sweep = SweepDir(Path(out or sw.default_sweep_dir(cfg)).expanduser().resolve())
    resolved = resolve_data_dir(data_dir, cfg)
    _eval_examples(cfg, _splits(cfg, resolved))  # bad data fails here, before any training
    if cfg.bench.enabled and cfg.bench.tasks:
        from tunebench.bench.spec import resolve_tasks

        resolve_tasks(cfg.bench.tasks, resolved)
    _prepare_base_dir(sw.base_config(config, overrides, sweep))
    lr_source = "config" if sw.config_sets_lr(config, overrides) else "method default"
    eta, rows = sw.Eta(len(methods)), []

    def document(pairwise: list[dict[str, Any]]) -> dict[str, Any]:
        return sw.sweep_document(sweep, config=None if config is None else str(config), methods=methods,
                                 against=against, rows=rows, pairwise=pairwise, cfg=cfg)

    _log(f"sweep of {len(methods)} methods ({', '.join(methods)}) → {sweep.path}")
    for i, method in enumerate(methods, 1):
        run = sweep.run(method)
        was_done = _method_finished(run, cfg)
        eta.start()
        _log(f"[{i}/{len(methods)}] {method}: " + ("finished earlier, reading it back" if was_done else
                                                    f"starting → {run.path}"))
        lr = None
        try:
            method_cfg = sw.method_config(config, overrides, method, sweep)
            lr = method_cfg.train.lr
            _prepare_run_dir(method_cfg)
            if not run.train_summary.is_file():
                _train_in_subprocess(method, run, resolved)
            run_all(method_cfg, data_dir=resolved, base=sweep.base)
            took = eta.finish(ran=not was_done)
            row = sw.method_row(method, run, lr=lr, lr_source=lr_source, seconds=took)
        except TunebenchError as exc:
            took = eta.finish(ran=True)
            row = sw.failed_row(method, exc, exc.exit_code, lr=lr, lr_source=lr_source)
        rows.append(row)
        line = sw.headline(row, sw.primary_task_metric(rows), sw.primary_forgetting(rows))
        _log(f"[{i}/{len(methods)}] {method} {'done' if row['status'] == 'done' else 'failed'} in "
             f"{sw.format_duration(took)}: {line}; {eta.text()}")
        atomic_write_json(sweep.sweep_json, document([]))  # what is finished so far, for a killed sweep
    doc = document(_pairwise(sweep, rows, against, cfg))
    write_sweep_report(sweep, doc)
    return doc


def write_sweep_report(sweep: Any, doc: dict[str, Any]) -> dict[str, Path]:
    """sweep.json, the gain-vs-forgetting chart and report.html of a sweep folder, all rendered first."""
    from tunebench.io import atomic_write_bytes
    from tunebench.report.sweep import gain_forgetting_png, render_sweep_html

    chart = gain_forgetting_png(doc)
    html = render_sweep_html(doc, chart)
    paths = {"sweep": atomic_write_json(sweep.sweep_json, doc)}
    if chart is not None:
        paths["chart"] = atomic_write_bytes(sweep.chart, chart)
    paths["html"] = atomic_write_text(sweep.report_html, html)
    return paths


def _method_finished(run: RunDir, cfg: RunConfig) -> bool:
    """Every stage of a sweep method's run is there (training, tuned evaluation, benchmarks, comparison)."""
    needed = [run.train_summary, run.eval_dir("tuned").scores, run.compare_dir.comparison]
    if cfg.bench.enabled and cfg.bench.tasks:
        needed.append(run.bench_dir("tuned").results)
    return all(p.is_file() for p in needed)


class _MethodFailed(TunebenchError):
    """A sweep method's training process failed; `exit_code` is the one it exited with."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _train_in_subprocess(method: str, run: RunDir, data_dir: Path | None) -> None:
    """`tunebench train RUN/config.yaml --resume` in a fresh process, its progress passed through to stderr.

    A process per method makes the recorded peak memory that method's own (the peak RSS of a process never goes
    down, so methods trained one after another in one process would all report the largest). Raises
    _MethodFailed with the child's one-sentence error (and its exit code) when training fails, KeyboardInterrupt
    when it was interrupted (its checkpoint is kept: rerunning the sweep resumes it).
    """
    import codecs
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "tunebench", "train", str(run.config), "--resume"]
    if data_dir is not None:
        cmd += ["--data-dir", str(data_dir)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    decoder, tail = codecs.getincrementaldecoder("utf-8")(errors="replace"), ""
    try:
        assert proc.stderr is not None
        while chunk := os.read(proc.stderr.fileno(), 65536):
            text = decoder.decode(chunk)
            sys.stderr.write(text)
            tail = (tail + text)[-8192:]
        code = proc.wait()
    except KeyboardInterrupt:
        proc.wait()  # the child got the same Ctrl-C: let it save its checkpoint
        raise
    if code == 0:
        return
    if code == 130:
        raise KeyboardInterrupt
    errors = [line[len("error: "):] for line in tail.splitlines() if line.startswith("error: ")]
    message = errors[-1] if errors else f"training exited with status {code} (its output is above)"
    raise _MethodFailed(f"method '{method}': {message}", code if code in (1, 2) else 1)


def _prepare_base_dir(cfg: RunConfig) -> None:
    """A sweep's shared base folder: record the config; a change of what the base's results depend on (seed,
    model, data and eval for evaluations; seed, model and bench for benchmarks) removes those results first."""
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
                            (run.bench_root, {"seed", "model", "bench"})):
        if sections & depends and folder.exists():
            _log(f"the base model's settings changed ({', '.join(changed[:4])}): redoing {folder}")
            shutil.rmtree(folder)
    atomic_write_text(run.config, dump_config(cfg))


def _pairwise(sweep: Any, rows: list[dict[str, Any]], against: str | None, cfg: RunConfig) -> list[dict[str, Any]]:
    """Each finished method against `against`: task-metric deltas (paired bootstrap over the same test examples,
    SWEEP/compare/comparison.json) and benchmark deltas (paired over the same benchmark examples; KL rows left
    out, since both measure drift from the base, not from each other)."""
    done = [r["method"] for r in rows if r["status"] == "done"]
    if against is None or against not in done or len(done) < 2:
        return []
    from tunebench.bench.forgetting import forgetting_table
    from tunebench.evaluate.compare import compare_systems

    others = [m for m in done if m != against]
    paths = [sweep.run(m).eval_dir("tuned").path for m in (against, *others)]
    doc = compare_systems(paths, baseline=f"{against}/tuned", n_resamples=cfg.eval.bootstrap, seed=cfg.seed)
    write_comparison(sweep.compare_dir, doc)
    out = []
    for comp in doc["comparisons"]:
        method = comp["candidate"].split("/")[0]
        a_bench, m_bench = sweep.run(against).bench_dir("tuned"), sweep.run(method).bench_dir("tuned")
        bench = []
        if a_bench.results.is_file() and m_bench.results.is_file():
            bench = [r for r in forgetting_table(a_bench.path, m_bench.path, n_resamples=cfg.eval.bootstrap,
                                                 seed=cfg.seed) if r["metric"] != "kl"]
        out.append({"baseline": against, "candidate": method, "metrics": comp["metrics"],
                    "win_tie_loss": comp.get("win_tie_loss"), "benchmarks": bench})
    return out
