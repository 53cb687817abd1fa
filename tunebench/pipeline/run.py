"""The commands as plain function calls on plain data: `tunebench run` and `demo` (train → evaluate → compare →
bench → report), `eval`, `bench`, `parity`, and `run --single-task` (a mixture run beside its single-task twin).

Each stage is skipped when its output is already there, so a killed `tunebench run` picks up where it stopped
(training itself resumes from its last checkpoint, benchmarks from their last task). Under `accelerate launch`
every process computes its shard and the main process alone writes, through `pipeline.write`.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any

from tunebench.config import RunConfig, resolve_data_dir
from tunebench.errors import TunebenchError
from tunebench.io import read_json
from tunebench.pipeline.multitask import (
    evaluate_run_tasks,
    evaluate_tasks,
    forgetting_only,
    single_task_config,
    single_vs_multi,
)
from tunebench.pipeline.stages import (
    OneModel,
    bench_loaded,
    bench_tasks_for,
    bench_view,
    compare_paths,
    decide_bench_precisions,
    decide_eval_precision,
    eval_examples,
    evaluate_into,
    read_summary,
    recorded_bench_precisions,
    splits_for,
    task_set_for,
    trained_settings,
)
from tunebench.pipeline.write import (
    announce,
    copy_base_results,
    record_run_config,
    write_forgetting,
    write_report,
    write_single_vs_multi,
)
from tunebench.processes import barrier, from_main, is_main
from tunebench.rundir import EvalDir, RunDir

DEMO_CONFIG = Path(str(resources.files("tunebench") / "configs" / "demo.yaml"))


def evaluate_reference(cfg: RunConfig, *, data_dir: str | Path | None, adapter: str | None, split: str | None,
                       limit: int | None, shots: int, out_dir: Path, rank: int = 0,
                       world_size: int = 1) -> dict[str, Any]:
    """`tunebench eval`: one model (optionally with an adapter) on one split, written to `out_dir`."""
    from tunebench.models.load import load_model

    trained_settings(cfg, adapter)
    if cfg.data.multitask:
        return evaluate_tasks(cfg, data_dir=resolve_data_dir(data_dir, cfg), adapter=adapter, split=split,
                               limit=limit, shots=shots, out_dir=out_dir, rank=rank, world_size=world_size)
    split = split or cfg.eval.split
    # Zero-shot on the test split reads only the test split: no train split is loaded (or downloaded).
    splits = splits_for(cfg, resolve_data_dir(data_dir, cfg), only="test" if split == "test" and not shots else None)
    examples = eval_examples(cfg, splits, split, limit)
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

    trained_settings(cfg, adapter)
    splits = splits_for(cfg, resolve_data_dir(data_dir, cfg), only="test" if cfg.eval.split == "test" else None)
    examples = eval_examples(cfg, splits, limit=limit)
    loaded = load_model(cfg.model, adapter=adapter, merge=adapter is not None)
    return parity_gate(loaded, examples, cfg.eval, precision, seed=cfg.seed).as_dict()


def bench_reference(cfg: RunConfig, *, tasks: list[str], data_dir: str | Path | None, adapter: str | None,
                    limit: int | None, shots: int | None, out_dir: Path, helm: bool = False, rank: int = 0,
                    world_size: int = 1, reference: str | None = None) -> dict[str, Any]:
    """`tunebench bench`: benchmark suites (and optionally the HELM-style view) for one model, whole tasks unless
    `limit`. reference: a model whose KL to this one perplexity tasks measure (an adapter's own base without)."""
    from tunebench.models.load import load_model

    resolved = resolve_data_dir(data_dir, cfg)
    summary_path = RunDir(adapter).train_summary if adapter else None
    summary = read_summary(summary_path) if summary_path and summary_path.is_file() else None
    trained_settings(cfg, adapter)
    # Perplexity tasks measure KL against the adapter's own base: keep the adapter unmerged for them.
    drift = any(s.output_type == "perplexity" for s in bench_tasks_for(cfg, resolved, tasks, key="--tasks"))
    loaded = load_model(cfg.model, adapter=adapter, merge=adapter is not None and not drift)
    ref = load_model(cfg.model.model_copy(update={"ref": reference})) if reference else None
    return bench_loaded(cfg, loaded, out_dir, resolved, summary, tasks=tasks, limit=limit, shots=shots, helm=helm,
                        rank=rank, world_size=world_size, reference=ref)


def run_all(cfg: RunConfig, *, data_dir: str | Path | None = None, rank: int = 0,
            world_size: int = 1, base: RunDir | None = None,
            precision: str | Mapping[str, str] | None = None) -> dict[str, Path]:
    """`tunebench run`: train, evaluate base (zero/few-shot) and tuned, compare, benchmark, report.

    `rank` of `world_size` processes (`accelerate launch`): training is data-parallel, evaluation and benchmarks
    are sharded and gathered, and the main process alone writes the run directory and reports progress; the
    others return an empty dict. base: where the base model's evaluations and benchmarks live (default: the run
    directory itself); a sweep passes its shared `base/` folder, so the base is evaluated once for every method
    (whichever comes first). precision: the precision the evaluations request instead of eval.precision (a
    mixture's: per task name), still parity-gated: a sweep pins every method to its shared base's, so an `auto`
    probe that would pick differently later cannot leave a method's evaluation unlike the base's.
    """
    from tunebench.train.loop import train

    main = is_main(rank)
    log = announce if main else (lambda message: None)

    resolved = resolve_data_dir(data_dir, cfg)
    run_dir = cfg.run_dir
    run = RunDir(run_dir)
    home = base or run  # the base systems' folders
    # Every split and benchmark the run needs is checked before minutes of training, not after.
    # Bad data fails here, before anything in the run dir changes.
    prepared = task_set_for(cfg, resolved) if cfg.data.multitask else splits_for(cfg, resolved)
    examples = None if cfg.data.multitask else eval_examples(cfg, prepared)
    if cfg.bench.enabled and cfg.bench.tasks:
        bench_tasks_for(cfg, resolved)
    if main:
        record_run_config(cfg)
    barrier(world_size)

    summary_path = run.train_summary
    if run.trained():
        log(f"trained model found in {run_dir} ({summary_path.name}); evaluating it")
    else:
        log(f"training ({cfg.train.method}) → {run_dir}")
        result = train(cfg, data_dir=resolved, resume=run.checkpoints.is_dir())
        if getattr(result, "interrupted", False):
            raise TunebenchError(f"training was interrupted; rerun the same command to resume from {run_dir}")

    systems: list[tuple[str, str | None, int]] = [(f"base-{k}shot", None, k) for k in cfg.eval.shots]
    systems.append(("tuned", str(run_dir), 0))
    models = OneModel(cfg)
    decided = None
    computed: dict[Path, Any] = {}  # each evaluation's statistics, for compare (resumed ones are recomputed)
    if cfg.data.multitask:
        evaluate_run_tasks(cfg, prepared, systems, models, rank=rank, world_size=world_size,
                           pinned=precision if isinstance(precision, Mapping) else None, home=home)
    else:
        for name, adapter, shots in systems:
            out = (run if adapter else home).eval_dir(name)
            if out.scores.is_file():
                log(f"evaluation {name} already done")
                continue
            if decided is None:  # one precision for every system compared: a fast one only where all pass
                getters = [lambda a=a: models.get(a) for a in dict.fromkeys(a for _, a, _ in systems)]
                decided = from_main(partial(decide_eval_precision, getters, examples, cfg.eval, seed=cfg.seed,
                                            pinned=precision if isinstance(precision, str) else None), rank,
                                    world_size)
            log(f"evaluating {name} on {len(examples)} {cfg.eval.split} examples")
            system = {"name": name, "model": cfg.model.ref, "adapter": adapter, "shots": shots}
            computed[out.path] = evaluate_into(out, cfg, models.get(adapter), examples, prepared, system, shots,
                                               rank=rank, world_size=world_size, precision=decided).stats

    if cfg.bench.enabled and cfg.bench.tasks:
        from tunebench.bench.spec import resolve_tasks
        from tunebench.models.methods import attached_method

        drift = any(s.output_type == "perplexity" for s in resolve_tasks(cfg.bench.tasks, resolved))
        pair = (("tuned", str(run_dir)), ("base", None))
        dirs = {name: (run if adapter else home).bench_dir(name) for name, adapter in pair}
        bench_precisions = None
        if cfg.bench.precision is not None and not all(d.results.is_file() for d in dirs.values()):
            # one decision for base and tuned: a fast precision per task only where both pass its gate; a side
            # scored earlier (a sweep's shared base, a resumed run) pins the other to its precision
            # the base first: the tuned model, gated last, is the one in memory when its benchmarks start
            getters = [lambda a=a: bench_view(cfg, models.get(a, merge=not drift)) for _, a in reversed(pair)]
            bench_precisions = decide_bench_precisions(
                cfg, getters, cfg.bench.tasks, data_dir=resolved, limit=cfg.bench.limit, limits=cfg.bench.limits,
                shots=cfg.bench.shots, pinned=recorded_bench_precisions(*dirs.values()), rank=rank,
                world_size=world_size)
        for name, adapter in pair:
            bench_dir = dirs[name]
            if bench_dir.results.is_file():
                log(f"benchmarks for {name} already done")
                continue
            log(f"forgetting suite {','.join(cfg.bench.tasks)} on {name}")
            summary = read_summary(summary_path) if adapter else None
            loaded = models.get(adapter, merge=not drift)
            reference = None
            if drift and adapter is not None and attached_method(loaded.model) is None:
                from tunebench.models.load import load_model

                reference = load_model(cfg.model)  # a full fine-tune: KL needs the base as a second copy
            bench_loaded(cfg, loaded, bench_dir.path, resolved, summary, limit=cfg.bench.limit, limits=cfg.bench.limits,
                         reference=reference, rank=rank, world_size=world_size, precisions=bench_precisions)
            reference = None
    models.release()
    if not main:
        barrier(world_size)  # returns once the main process has written the comparison and the report
        return {}

    log("comparing systems")
    if base is not None:
        compare_with_base(cfg, run, base, [name for name, adapter, _ in systems if adapter is None])
    elif cfg.data.multitask:
        for task in cfg.data.tasks:
            task_dir = run.task_dir(task.name)
            compare_paths([task_dir.path], task_dir.compare_dir.path, baseline=systems[0][0],
                          n_resamples=cfg.eval.bootstrap, seed=cfg.seed)
        forgetting_only(run, n_resamples=cfg.eval.bootstrap, seed=cfg.seed)
    else:
        compare_paths([run_dir], run.compare_dir.path, baseline=systems[0][0], n_resamples=cfg.eval.bootstrap,
                      seed=cfg.seed, computed=computed)
    log("writing the report")
    paths = write_report(run_dir)
    barrier(world_size)
    return paths


def compare_with_base(cfg: RunConfig, run: RunDir, base: RunDir, base_systems: list[str]) -> None:
    """A run's comparison against base evaluations kept elsewhere (a sweep's shared base): comparison.json over
    the base systems and the run's tuned one (a mixture: per task, tasks/<task>/compare/), forgetting.json from
    the base's and the run's benchmarks."""
    pairs = [(base.task_dir(t.name), run.task_dir(t.name)) for t in cfg.data.tasks] if cfg.data.multitask \
        else [(base, run)]
    for home, own in pairs:
        paths = [home.eval_dir(name).path.resolve() for name in base_systems] + [own.eval_dir("tuned").path.resolve()]
        compare_paths(paths, own.compare_dir.path, baseline=base_systems[0], n_resamples=cfg.eval.bootstrap,
                      seed=cfg.seed)
    base_bench, tuned_bench = base.bench_dir("base"), run.bench_dir("tuned")
    if base_bench.results.is_file() and tuned_bench.results.is_file():
        from tunebench.bench.forgetting import forgetting_table

        write_forgetting(run.compare_dir, forgetting_table(
            base_bench.path.resolve(), tuned_bench.path.resolve(), n_resamples=cfg.eval.bootstrap, seed=cfg.seed))


def run_single_vs_multi(cfg: RunConfig, task: str, *, data_dir: str | Path | None = None, rank: int = 0,
                        world_size: int = 1) -> dict[str, Path]:
    """`tunebench run CONFIG --single-task TASK`: the mixture run, then the same config trained on TASK alone
    with the same optimizer-step budget (`single_task_config`), then both side by side in the mixture run's
    report: every task's scores of each model with the paired difference multi - single, and each model's
    forgetting suite. The base evaluations are the same model on the same test sets: the single-task run takes
    the mixture run's instead of computing them again. Processes as in `run_all` (the others return {})."""
    single_task_config(cfg, task, 1, 1)  # a bad task name fails before minutes of training
    run_all(cfg, data_dir=data_dir, rank=rank, world_size=world_size)
    multi = RunDir(cfg.run_dir)
    steps = read_summary(multi.train_summary)["steps"]
    size = next(r["size"] for r in read_json(multi.mixture)["tasks"] if r["task"] == task)
    single_cfg = single_task_config(cfg, task, steps, size)
    single = RunDir(single_cfg.run_dir)
    if is_main(rank):
        announce(f"single-task run: {task} alone for {steps} optimizer steps → {single.path}")
        copy_base_results(multi, single)
    barrier(world_size)
    run_all(single_cfg, data_dir=data_dir, rank=rank, world_size=world_size)
    if not is_main(rank):
        return {}
    announce("single-task vs multi-task")
    write_single_vs_multi(multi, single_vs_multi(single, multi, task, steps, n_resamples=cfg.eval.bootstrap,
                                                 seed=cfg.seed))
    return write_report(multi.path)
