"""The stages of one model, each computed by its own module and written through `pipeline.write`.

`evaluate_into` (one system's evaluation), `bench_into` and `bench_loaded` (benchmarks and the HELM view) and
`compare_paths` (`tunebench compare`) run a stage and hand its data to the writer; the helpers around them pick
the examples evaluated, load the data, keep one model in memory at a time (`OneModel`) and adopt a trained run's
model settings (`trained_settings`). The commands that string these together are in `pipeline.run`,
`pipeline.multitask` and `pipeline.sweep`.
"""

from __future__ import annotations

import gc
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunebench.config import EvalConfig, RunConfig, adopt_trained, load_config
from tunebench.errors import TunebenchError
from tunebench.io import read_json
from tunebench.pipeline.write import (
    announce,
    read_finished_tasks,
    write_bench_task,
    write_benchmarks,
    write_comparison,
    write_evaluation,
    write_forgetting,
    write_helm,
)
from tunebench.processes import from_main, is_main
from tunebench.rundir import BENCH_SCHEMA, BenchDir, CompareDir, EvalDir, RunDir

if TYPE_CHECKING:
    from tunebench.bench.runner import BenchResults
    from tunebench.evaluate.metrics import MetricStats
    from tunebench.evaluate.run_eval import Evaluation


def splits_for(cfg: RunConfig, data_dir: Path | None, only: str | None = None):
    from tunebench.data.prepare import build_splits

    return build_splits(cfg.data, data_dir, cfg.seed, only=only)


def task_set_for(cfg: RunConfig, data_dir: Path | None):
    from tunebench.data.tasks import build_task_set

    return build_task_set(cfg.data, cfg.eval, data_dir, cfg.seed)


def bench_tasks_for(cfg: RunConfig, data_dir: Path | None, tasks: list[str] | None = None, *,
                    key: str = "bench.tasks") -> list[Any]:
    """The benchmark tasks a command will score (`tasks`, default the config's bench.tasks) resolved to specs and
    checked against the model's family from its config alone (no weights loaded), so a task the model cannot be
    scored on is refused before training or evaluation starts. Raises ConfigError naming `key` (an unknown task,
    a perplexity task for a seq2seq model: `bench.spec.check_model_family`), ModelError for an unreadable model."""
    from tunebench.bench.spec import check_model_family, resolve_tasks
    from tunebench.models.load import detect_family, load_model_config

    specs = resolve_tasks(tasks or cfg.bench.tasks, data_dir)
    if any(s.output_type == "perplexity" for s in specs):
        check_model_family(specs, detect_family(load_model_config(cfg.model)), cfg.model.ref, key)
    return specs


def eval_examples(cfg: RunConfig, splits, split: str | None = None, limit: int | None = None):
    """The examples evaluated: `limit` (0 = all; None = the config's eval.limit) first ones of the split."""
    split = split or cfg.eval.split
    examples = list(getattr(splits, split))
    if not examples:
        raise TunebenchError(f"eval.split: the '{split}' split is empty; configure data.splits or data.fractions")
    limit = cfg.eval.limit if limit is None else limit
    return examples[:limit] if limit else examples


def trained_settings(cfg: RunConfig, adapter: str | None) -> None:
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


def read_summary(path: Path) -> dict[str, Any]:
    return read_json(path, what="the training summary", fix="train the run again or pass a finished run")


def decide_eval_precision(getters, examples, eval_cfg: EvalConfig, *, seed: int,
                          pinned: str | None = None) -> tuple[str | None, dict[str, Any]]:
    """`evaluate.parity.decide_precision` for the systems of one comparison, or, with `pinned` (a sweep's: the
    precision its shared base was evaluated in), that precision requested instead of eval.precision
    (parity-gated all the same) and the record saying so."""
    from tunebench.evaluate.parity import decide_precision

    if pinned is None:
        return decide_precision(getters, examples, eval_cfg, seed=seed)
    used, record = decide_precision(getters, examples, eval_cfg.model_copy(update={"precision": pinned}), seed=seed)
    return used, {**record, "requested": eval_cfg.precision, "pinned": pinned,
                  "reason": f"pinned to the sweep's shared base precision {pinned}; {record['reason']}"}


def bench_view(cfg: RunConfig, loaded):
    """The loaded model as benchmarks see it: plain prompts unless bench.chat_template asks for the chat template
    (and the model has one)."""
    import dataclasses

    if dataclasses.is_dataclass(loaded):
        return dataclasses.replace(loaded, use_chat=bool(cfg.bench.chat_template and loaded.use_chat))
    return loaded


def decide_bench_precisions(cfg: RunConfig, getters, tasks: list[str], *, data_dir: Path | None,
                            limit: int | None, limits: dict[str, int] | None, shots: int | None,
                            pinned: Mapping[str, str] | None = None, rank: int = 0,
                            world_size: int = 1) -> dict[str, tuple[str | None, dict[str, Any]]]:
    """`bench.parity.decide_bench_precision` on bench.precision for the models of `getters` (one model, or the
    base and tuned of a run) over `tasks` prepared as the benchmarks will score them; computed by the main process
    and shared with the others. pinned: per task, the precision the pair's other system was scored in."""
    from tunebench.bench.parity import decide_bench_precision
    from tunebench.bench.runner import prepare_tasks

    prepared = prepare_tasks(tasks, data_dir=data_dir, limit=limit, limits=limits, shots=shots, seed=cfg.seed)
    return from_main(partial(decide_bench_precision, getters, prepared, cfg.bench, seed=cfg.seed,
                             n_resamples=cfg.eval.bootstrap, pinned=pinned), rank, world_size)


def recorded_bench_precisions(*bench_dirs: BenchDir) -> dict[str, str]:
    """{task: the precision it was scored in} from finished results.json files (the first that has a task wins)."""
    out: dict[str, str] = {}
    for bench_dir in bench_dirs:
        if bench_dir.results.is_file():
            tasks = read_json(bench_dir.results).get("tasks", {})
            for task, entry in tasks.items():
                if isinstance(entry, dict) and entry.get("precision"):
                    out.setdefault(task, entry["precision"])
    return out


class OneModel:
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
            announce(f"precision {used}: {record['reason']}")
        loaded = dataclasses.replace(loaded, model=precision_variant(loaded.model, used))
    evaluation = evaluate(loaded, examples, cfg=cfg.eval, system=system, shots=shots,
                          demos=list(splits.train) if shots else None, seed=cfg.seed,
                          context_budget=cfg.eval.context_budget, split=split or cfg.eval.split,
                          rank=rank, world_size=world_size,
                          precision_record=record if cfg.eval.precision is not None else None)
    if is_main(rank):
        write_evaluation(out, evaluation)
    return evaluation


def bench_into(out: BenchDir, loaded, tasks: list[str], *, data_dir: Path | None, limit: int | None,
               shots: int | None, seed: int = 0, progress: bool = True, rank: int = 0,
               world_size: int = 1, reference: Any | None = None,
               limits: dict[str, int] | None = None,
               precisions: Mapping[str, tuple[str | None, dict[str, Any]]] | None = None) -> dict[str, Any]:
    """Score benchmark tasks and write `out` (main process only): each task's log as it finishes, results.json
    at the end; tasks an interrupted run with the same model and settings finished are reused. precisions: each
    task's (precision, record) from `decide_bench_precision` (None: as loaded). Returns results.json's content."""
    from tunebench.bench.runner import run_benchmarks

    main = is_main(rank)

    def task_done(bench: BenchResults, task: str) -> None:
        if main:
            write_bench_task(out, bench, task)

    bench = run_benchmarks(loaded, tasks, data_dir=data_dir, limit=limit, shots=shots, seed=seed, progress=progress,
                           finished=read_finished_tasks(out), on_task=task_done, rank=rank, world_size=world_size,
                           reference=reference, limits=limits, precisions=precisions)
    if main:
        write_benchmarks(out, bench, samples=False)
    return bench.results


def bench_loaded(cfg: RunConfig, loaded, out_dir: Path, data_dir: Path | None,
                 train_summary: dict[str, Any] | None = None, *, tasks: list[str] | None = None,
                 limit: int | None = None, shots: int | None = None, helm: bool | None = None, rank: int = 0,
                 world_size: int = 1, reference: Any | None = None,
                 limits: dict[str, int] | None = None,
                 precisions: Mapping[str, tuple[str | None, dict[str, Any]]] | None = None) -> dict[str, Any]:
    """Benchmarks (and the HELM-style view when asked) for an already loaded model, written to `out_dir`.

    limit: examples per task (None: whole tasks). Prompts are plain unless bench.chat_template asks for the chat
    template (and the model has one). reference: the model perplexity tasks measure KL against. precisions: each
    task's (precision, record) decided for a pair of models (`decide_bench_precisions`); None decides for this
    model alone when bench.precision asks for one (probe and parity gate per task).
    """

    out = BenchDir(out_dir)
    tasks = tasks or cfg.bench.tasks
    limit = limit or None  # --limit 0 (or none): every example
    shots = shots if shots is not None else cfg.bench.shots
    loaded = bench_view(cfg, loaded)
    if precisions is None and cfg.bench.precision is not None:
        precisions = decide_bench_precisions(cfg, [lambda: loaded], tasks, data_dir=data_dir, limit=limit,
                                             limits=limits, shots=shots, rank=rank, world_size=world_size)
    results = bench_into(out, loaded, tasks, data_dir=data_dir, limit=limit, shots=shots, seed=cfg.seed,
                         rank=rank, world_size=world_size, reference=reference, limits=limits,
                         precisions=precisions)
    if cfg.bench.helm if helm is None else helm:
        from tunebench.bench.helm.runner import helm_evaluate

        view = helm_evaluate(loaded, tasks, data_dir=data_dir, limit=limit, seed=cfg.seed,
                             train_summary=train_summary, shots=shots, rank=rank, world_size=world_size)
        if is_main(rank):
            write_helm(out, view)
    return results


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
        return write_forgetting(CompareDir(out_dir), {
            "schema": "tunebench.forgetting/1", "base": str(base_dir.resolve()), "tuned": str(tuned_dir.resolve()),
            "n_resamples": n_resamples, "seed": seed, "rows": rows})

    per_task = _task_paths(paths)
    for task, task_paths in per_task.items():
        write_comparison(CompareDir(out_dir).task(task), compare_systems(task_paths, baseline=baseline,
                                                                         n_resamples=n_resamples, seed=seed))
    if not per_task:
        write_comparison(CompareDir(out_dir), compare_systems(paths, baseline=baseline, n_resamples=n_resamples,
                                                              seed=seed, computed=computed))
    bench_dirs = base_and_tuned_benches(paths)
    if len(bench_dirs) == 2:
        from tunebench.bench.forgetting import forgetting_table

        (base_dir, tuned_dir) = bench_dirs
        write_forgetting(CompareDir(out_dir),
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


def base_and_tuned_benches(paths: list[Path]) -> list[Path]:
    """The base and tuned benchmark dirs of a single run dir, when both ran."""
    if len(paths) != 1:
        return []
    found = [RunDir(paths[0]).bench_dir(name) for name in ("base", "tuned")]
    return [d.path for d in found] if all(d.results.is_file() for d in found) else []
