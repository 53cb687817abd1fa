"""`tunebench sweep`: every method trained and evaluated like `tunebench run`, against one shared base.

The sweep's data (checked methods, per-method configs, rows, ETA, the sweep.json document) is `tunebench.sweep`'s;
this module runs the stages: the shared base folder, a training process per method, `run_all` for the rest, the
method-vs-method comparison, and hands what they return to `pipeline.write`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunebench.config import RunConfig, resolve_data_dir
from tunebench.errors import TunebenchError
from tunebench.pipeline.run import run_all
from tunebench.pipeline.stages import eval_examples, splits_for
from tunebench.pipeline.write import (
    announce,
    prepare_base_dir,
    prepare_run_dir,
    write_comparison,
    write_sweep_json,
    write_sweep_report,
)
from tunebench.rundir import RunDir


def run_sweep(config: str | Path | None, overrides: list[str], methods: list[str], *,
              data_dir: str | Path | None = None, out: str | Path | None = None,
              against: str | None = None, same_lr: bool = False) -> dict[str, Any]:
    """`tunebench sweep`: train and evaluate `methods` on the same data, seed, step budget and evaluation, each in
    `SWEEP/<method>/`, against the base model evaluated and benchmarked once in `SWEEP/base/`; then sweep.json,
    the pairwise comparison against `against` (SWEEP/compare/) and report.html. Learning rates: `sweep.method_lrs`
    (the config's train.lr for its own method, every other method its default unless `same_lr`).

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
    rates = sw.method_lrs(config, overrides, methods, same_lr=same_lr)
    cfg = load_config(config, overrides)
    if cfg.data.multitask:
        from tunebench.errors import ConfigError

        raise ConfigError("data.tasks: a sweep compares methods on one task; give a single-task config (a mixture "
                          "sweep is not supported yet)")
    sweep = SweepDir(Path(out or sw.default_sweep_dir(cfg)).expanduser().resolve())
    resolved = resolve_data_dir(data_dir, cfg)
    eval_examples(cfg, splits_for(cfg, resolved))  # bad data fails here, before any training
    if cfg.bench.enabled and cfg.bench.tasks:
        from tunebench.bench.spec import resolve_tasks

        resolve_tasks(cfg.bench.tasks, resolved)
    prepare_base_dir(sw.base_config(config, overrides, sweep))
    eta, rows = sw.Eta(len(methods)), []

    def document(pairwise: list[dict[str, Any]]) -> dict[str, Any]:
        return sw.sweep_document(sweep, config=None if config is None else str(config), methods=methods,
                                 against=against, rows=rows, pairwise=pairwise, cfg=cfg)

    announce(f"sweep of {len(methods)} methods ({', '.join(methods)}) → {sweep.path}")
    for i, method in enumerate(methods, 1):
        run = sweep.run(method)
        was_done = _method_finished(run, cfg)
        eta.start()
        lr, lr_source = rates[method]
        announce(f"[{i}/{len(methods)}] {method} (lr {lr:g}, {lr_source}): " + (
            "finished earlier, reading it back" if was_done else f"starting → {run.path}"))
        try:
            method_cfg = sw.method_config(config, overrides, method, sweep, lr)
            prepare_run_dir(method_cfg)
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
        announce(f"[{i}/{len(methods)}] {method} {'done' if row['status'] == 'done' else 'failed'} in "
             f"{sw.format_duration(took)}: {line}; {eta.text()}")
        write_sweep_json(sweep, document([]))  # what is finished so far, for a killed sweep
    doc = document(_pairwise(sweep, rows, against, cfg))
    write_sweep_report(sweep, doc)
    return doc


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
