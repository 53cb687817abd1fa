"""`tunebench sweep`: every method trained and evaluated like `tunebench run`, against one shared base.

The sweep's data (checked methods, per-method configs, rows, ETA, the sweep.json document) is `tunebench.sweep`'s;
this module runs the stages: the shared base folder, a training process per method, `run_all` for the rest (a
mixture's per task), with --mixtures each method's single-task twin, the method-vs-method comparison, and hands
what they return to `pipeline.write`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunebench.config import RunConfig, resolve_data_dir
from tunebench.errors import TunebenchError
from tunebench.io import read_json
from tunebench.pipeline.multitask import single_task_config, single_vs_multi
from tunebench.pipeline.run import run_all
from tunebench.pipeline.stages import bench_tasks_for, eval_examples, read_summary, splits_for, task_set_for
from tunebench.pipeline.write import (
    announce,
    record_base_config,
    record_run_config,
    write_comparison,
    write_report,
    write_single_vs_multi,
    write_sweep_json,
    write_sweep_report,
)
from tunebench.rundir import RunDir


def run_sweep(config: str | Path | None, overrides: list[str], methods: list[str], *,
              data_dir: str | Path | None = None, out: str | Path | None = None,
              against: str | None = None, same_lr: bool = False, mixtures: str | None = None) -> dict[str, Any]:
    """`tunebench sweep`: train and evaluate `methods` on the same data, seed, step budget and evaluation, each in
    `SWEEP/<method>/`, against the base model evaluated and benchmarked once in `SWEEP/base/`; then sweep.json,
    the pairwise comparison against `against` (SWEEP/compare/) and report.html. Learning rates: `sweep.method_lrs`
    (the config's train.lr for its own method, every other method its default unless `same_lr`). A mixture config
    (data.tasks) is evaluated and compared per task; with `mixtures` (`single` or `single:TASK`) every method also
    trains its single-task twin `SWEEP/<method>-single-<task>/` (`single_task_config`: the same config on TASK
    alone for the mixture run's optimizer steps) and its row carries the mixture-vs-single-task side by side
    (`single_vs_multi`, also the method's own single_vs_multi.json).

    Resumable: a method whose run finished is only read back; a killed one resumes from its last checkpoint; a
    method that fails (e.g. one that does not apply to the model) is recorded as failed with its one-sentence
    error and the others still run. Each method trains in a fresh process, so its peak memory and speed are its
    own. Every method's evaluations request the precision its shared base was evaluated in (`pinned_precision`).
    Raises ConfigError for an unknown method in --methods or --against, a --mixtures the config cannot take, or
    methods whose runs in the sweep folder were trained with other settings (before anything runs or changes). Returns sweep.json's content.
    """
    from tunebench import sweep as sw
    from tunebench.config import load_config
    from tunebench.rundir import SweepDir

    methods = sw.check_methods(methods)
    sw.check_against(against, methods)
    rates = sw.method_lrs(config, overrides, methods, same_lr=same_lr)
    cfg = load_config(config, overrides)
    single_task = sw.mixtures_single_task(mixtures, cfg)
    sweep = SweepDir(Path(out or sw.default_sweep_dir(cfg)).expanduser().resolve())
    resolved = resolve_data_dir(data_dir, cfg)
    if cfg.data.multitask:  # bad data fails here, before any training
        task_set_for(cfg, resolved)
    else:
        eval_examples(cfg, splits_for(cfg, resolved))
    if cfg.bench.enabled and cfg.bench.tasks:  # a task the model cannot be scored on, before any training
        bench_tasks_for(cfg, resolved)
    _check_trained_methods(config, overrides, methods, sweep, rates, out_given=out is not None)
    record_base_config(sw.base_config(config, overrides, sweep))
    eta, rows = sw.Eta(len(methods)), []

    def document(pairwise: list[dict[str, Any]]) -> dict[str, Any]:
        return sw.sweep_document(sweep, config=None if config is None else str(config), methods=methods,
                                 against=against, rows=rows, pairwise=pairwise, cfg=cfg,
                                 precision=sw.pinned_precision(cfg, sweep.base), single_task=single_task)

    announce(f"sweep of {len(methods)} methods ({', '.join(methods)}) → {sweep.path}"
             + (f", each also trained on {single_task} alone" if single_task else ""))
    for i, method in enumerate(methods, 1):
        run = sweep.run(method)
        was_done = _method_finished(run, cfg) and (
            single_task is None or (_method_finished(sweep.single_run(method, single_task), cfg)
                                    and run.single_vs_multi.is_file()))
        eta.start()
        base_before = sw.shared_base_seconds(sweep.base)
        lr, lr_source = rates[method]
        announce(f"[{i}/{len(methods)}] {method} (lr {lr:g}, {lr_source}): " + (
            "finished earlier, reading it back" if was_done else f"starting → {run.path}"))
        try:
            method_cfg = sw.method_config(config, overrides, method, sweep, lr)
            record_run_config(method_cfg)
            if not run.trained():  # not yet, or interrupted: `train --resume` continues from its checkpoint
                _train_in_subprocess(method, run, resolved)
            run_all(method_cfg, data_dir=resolved, base=sweep.base, precision=sw.pinned_precision(cfg, sweep.base))
            row = sw.method_row(method, run, lr=lr, lr_source=lr_source, tasks=_task_names(cfg))
        except TunebenchError as exc:
            row = sw.failed_row(method, exc, exc.exit_code, lr=lr, lr_source=lr_source)
        if single_task is not None and row["status"] == "done":
            twin = sweep.single_run(method, single_task)
            try:
                row["single_vs_multi"] = sw.single_vs_multi_entry(
                    single_task, twin, _single_task_twin(sweep, method, method_cfg, single_task, resolved))
            except TunebenchError as exc:
                row["single_vs_multi"] = sw.failed_single_vs_multi(single_task, twin, exc, exc.exit_code)
        took = eta.finish(ran=not was_done or row["status"] != "done",
                          shared=sw.shared_base_seconds(sweep.base) - base_before)
        row["seconds"] = round(took, 1)
        rows.append(row)
        line = sw.headline(row, sw.primary_task_metric(rows), sw.primary_forgetting(rows))
        announce(f"[{i}/{len(methods)}] {method} {'done' if row['status'] == 'done' else 'failed'} in "
                 f"{sw.format_duration(took)}: {line}; {eta.text()}")
        write_sweep_json(sweep, document([]))  # what is finished so far, for a killed sweep
    doc = document(_pairwise(sweep, rows, against, cfg))
    write_sweep_report(sweep, doc)
    return doc


def _check_trained_methods(config: str | Path | None, overrides: list[str], methods: list[str], sweep: Any,
                           rates: dict[str, tuple[float, str]], *, out_given: bool) -> None:
    """Refuse, before anything in the sweep folder changes, a sweep whose methods' runs were trained with other
    settings (seed, model, data or train keys, learning rate included): ConfigError (exit 2) naming the methods
    and the changed keys. Each method would otherwise be refused one by one only after the shared base's
    evaluations had been removed for the new settings, and sweep.json and report.html of the finished sweep
    replaced by failed rows. A method whose config cannot load is left to the sweep, which records it as failed."""
    from tunebench.errors import ConfigError
    from tunebench.pipeline.write import trained_with_other_settings
    from tunebench.sweep import method_config

    conflicts = []
    for method in methods:
        try:
            other = trained_with_other_settings(method_config(config, overrides, method, sweep, rates[method][0]))
        except ConfigError:
            continue
        if other:
            conflicts.append(f"{method} ({other})")
    if conflicts:
        fix = "--out NEW_FOLDER" if out_given else "--set name=NEW_NAME or --out NEW_FOLDER"
        raise ConfigError(f"{sweep.path} holds methods trained with other settings: {'; '.join(conflicts)}; their "
                          f"results would not match this config: restore those keys, or sweep into a new folder "
                          f"({fix})")


def _task_names(cfg: RunConfig) -> list[str] | None:
    """The mixture's task names, in config order; None for a single-task config."""
    return [t.name for t in cfg.data.tasks] if cfg.data.multitask else None


def _single_task_twin(sweep: Any, method: str, method_cfg: RunConfig, task: str,
                      data_dir: Path | None) -> dict[str, Any]:
    """A sweep method's single-task twin, trained (in its own process), evaluated and compared with the shared
    base like the method, then set beside the method's mixture run: returns single_vs_multi.json's content,
    written to the mixture run (whose report is written again to show it)."""
    from tunebench.sweep import pinned_precision

    multi, twin = sweep.run(method), sweep.single_run(method, task)
    steps = read_summary(multi.train_summary)["steps"]
    size = next(r["size"] for r in read_json(multi.mixture)["tasks"] if r["task"] == task)
    twin_cfg = single_task_config(method_cfg, task, steps, size)
    twin_cfg.output_dir, twin_cfg.name = str(twin.path.parent), twin.path.name
    record_run_config(twin_cfg)
    if not twin.trained():
        announce(f"{method}: single-task twin, {task} alone for {steps} optimizer steps → {twin.path}")
        _train_in_subprocess(twin.path.name, twin, data_dir)
    run_all(twin_cfg, data_dir=data_dir, base=sweep.base, precision=pinned_precision(method_cfg, sweep.base))
    doc = single_vs_multi(twin, multi, task, steps, n_resamples=method_cfg.eval.bootstrap, seed=method_cfg.seed,
                          base=sweep.base)
    write_single_vs_multi(multi, doc)
    write_report(multi.path)
    return doc


def _method_finished(run: RunDir, cfg: RunConfig) -> bool:
    """Every stage of a sweep method's run is there (training, tuned evaluation, benchmarks, comparison; a
    mixture's per task)."""
    owners = [run.task_dir(t.name) for t in cfg.data.tasks] if cfg.data.multitask else [run]
    needed = [p for o in owners for p in (o.eval_dir("tuned").scores, o.compare_dir.comparison)]
    if cfg.bench.enabled and cfg.bench.tasks:
        needed.append(run.bench_dir("tuned").results)
    return run.trained() and all(p.is_file() for p in needed)


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


def _pairwise(sweep: Any, rows: list[dict[str, Any]], against: str | None, cfg: RunConfig) -> list[dict[str, Any]]:
    """Each finished method against `against`: task-metric deltas (paired bootstrap over the same test examples,
    SWEEP/compare/comparison.json; a mixture's per task, SWEEP/compare/tasks/<task>/, its metrics named
    `<task>/<metric>`) and benchmark deltas (paired over the same benchmark examples; KL rows left out, since
    both measure drift from the base, not from each other)."""
    done = [r["method"] for r in rows if r["status"] == "done"]
    if against is None or against not in done or len(done) < 2:
        return []
    from tunebench.bench.forgetting import forgetting_table
    from tunebench.evaluate.compare import compare_systems
    from tunebench.sweep import task_key

    order = [against, *(m for m in done if m != against)]
    metrics: dict[str, dict[str, Any]] = {m: {} for m in order[1:]}
    win_tie_loss: dict[str, Any] = {}
    for task in _task_names(cfg) or [None]:
        owners = [sweep.run(m) if task is None else sweep.run(m).task_dir(task) for m in order]
        doc = compare_systems([o.eval_dir("tuned").path for o in owners], labels=[f"{m}/tuned" for m in order],
                              baseline=f"{against}/tuned", n_resamples=cfg.eval.bootstrap, seed=cfg.seed)
        write_comparison(sweep.compare_dir if task is None else sweep.compare_dir.task(task), doc)
        for comp in doc["comparisons"]:
            method = comp["candidate"].split("/")[0]
            metrics[method].update({task_key(task, name): v if task is None else {**v, "task": task, "metric": name}
                                    for name, v in comp["metrics"].items()})
            if task is None:
                win_tie_loss[method] = comp.get("win_tie_loss")
    out = []
    for method in order[1:]:
        a_bench, m_bench = sweep.run(against).bench_dir("tuned"), sweep.run(method).bench_dir("tuned")
        bench = []
        if a_bench.results.is_file() and m_bench.results.is_file():
            bench = [r for r in forgetting_table(a_bench.path, m_bench.path, n_resamples=cfg.eval.bootstrap,
                                                 seed=cfg.seed) if r["metric"] != "kl"]
        out.append({"baseline": against, "candidate": method, "metrics": metrics[method],
                    "win_tie_loss": win_tie_loss.get(method), "benchmarks": bench})
    return out
