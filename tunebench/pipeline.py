"""The whole job as plain function calls on plain data: train → evaluate → compare → bench → report.

Each stage writes into the run directory and is skipped when its output is already there, so a killed
`tunebench run` picks up where it stopped (training itself resumes from its last checkpoint).
"""

from __future__ import annotations

import gc
from importlib import resources
from pathlib import Path
from typing import Any

from tunebench.config import RunConfig, dump_config, resolve_data_dir
from tunebench.errors import TunebenchError
from tunebench.io import atomic_write_json, atomic_write_text
from tunebench.rundir import CompareDir, RunDir

DEMO_CONFIG = Path(str(resources.files("tunebench") / "configs" / "demo.yaml"))


def _log(message: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[bold cyan]tunebench[/] {message}")


def _splits(cfg: RunConfig, data_dir: Path | None):
    from tunebench.data.prepare import build_splits

    return build_splits(cfg.data, data_dir, cfg.seed)


def _eval_examples(cfg: RunConfig, splits, split: str | None = None, limit: int | None = None):
    split = split or cfg.eval.split
    examples = list(getattr(splits, split))
    if not examples:
        raise TunebenchError(f"eval.split: the '{split}' split is empty; configure data.splits or data.fractions")
    limit = limit or cfg.eval.limit
    return examples[:limit] if limit else examples


def _evaluate_system(cfg: RunConfig, loaded, examples, splits, out_dir: Path, system: dict[str, Any],
                     shots: int, split: str | None = None) -> dict[str, Any]:
    from tunebench.evaluate.run_eval import evaluate

    return evaluate(loaded, examples, cfg=cfg.eval, out_dir=out_dir, system=system, shots=shots,
                    demos=list(splits.train) if shots else None, seed=cfg.seed,
                    context_budget=cfg.eval.context_budget, split=split or cfg.eval.split)


def evaluate_reference(cfg: RunConfig, *, data_dir: str | Path | None, adapter: str | None, split: str | None,
                       limit: int | None, shots: int, out_dir: Path) -> dict[str, Any]:
    """`tunebench eval`: one model (optionally with an adapter) on one split."""
    from tunebench.models.load import load_model

    splits = _splits(cfg, resolve_data_dir(data_dir, cfg))
    examples = _eval_examples(cfg, splits, split, limit)
    loaded = load_model(cfg.model, adapter=adapter, merge=adapter is not None)
    system = {"name": out_dir.name, "model": cfg.model.ref, "adapter": adapter, "shots": shots}
    return _evaluate_system(cfg, loaded, examples, splits, out_dir, system, shots, split)


def compare_paths(paths: list[Path], out_dir: Path, *, baseline: str | None = None, n_resamples: int = 1000,
                  seed: int = 0) -> Path:
    """`tunebench compare`: paired statistics over evaluations, plus the forgetting table when both ran benches."""
    from tunebench.evaluate.compare import compare_systems

    compare_systems(paths, out_dir, baseline=baseline, n_resamples=n_resamples, seed=seed)
    bench_dirs = _bench_dirs(paths)
    if len(bench_dirs) == 2:
        from tunebench.bench.forgetting import forgetting_table

        (base_dir, tuned_dir) = bench_dirs
        atomic_write_json(CompareDir(out_dir).forgetting,
                          forgetting_table(base_dir, tuned_dir, n_resamples=n_resamples, seed=seed))
    return CompareDir(out_dir).comparison


def _bench_dirs(paths: list[Path]) -> list[Path]:
    """The base and tuned benchmark dirs of a single run dir, when both ran."""
    if len(paths) != 1:
        return []
    found = [RunDir(paths[0]).bench_dir(name) for name in ("base", "tuned")]
    return [d.path for d in found] if all(d.results.is_file() for d in found) else []


class _OneModel:
    """Keeps one loaded model at a time: the base for base systems, base + adapter for tuned ones."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg, self.adapter, self.loaded = cfg, None, None

    def get(self, adapter: str | None):
        from tunebench.models.load import load_model

        if self.loaded is None or adapter != self.adapter:
            self.release()
            # LoRA merged into the base for evaluation: same outputs, faster generation and scoring.
            self.adapter, self.loaded = adapter, load_model(self.cfg.model, adapter=adapter, merge=adapter is not None)
        return self.loaded

    def release(self) -> None:
        self.loaded = None
        gc.collect()


def _read_json(path: Path) -> dict[str, Any]:
    import json

    return json.loads(path.read_text(encoding="utf-8"))


def bench_loaded(cfg: RunConfig, loaded, out_dir: Path, data_dir: Path | None,
                 train_summary: dict[str, Any] | None = None, *, tasks: list[str] | None = None,
                 limit: int | None = None, shots: int | None = None, helm: bool | None = None) -> dict[str, Any]:
    """Benchmarks (and the HELM-style view when asked) for an already loaded model."""
    from tunebench.bench.runner import run_benchmarks

    tasks = tasks or cfg.bench.tasks
    limit = limit if limit is not None else cfg.bench.limit
    results = run_benchmarks(loaded, tasks, data_dir=data_dir, limit=limit,
                             shots=shots if shots is not None else cfg.bench.shots, out_dir=out_dir, seed=cfg.seed)
    if cfg.bench.helm if helm is None else helm:
        from tunebench.bench.helm.runner import helm_evaluate

        helm_evaluate(loaded, tasks, data_dir=data_dir, limit=limit, out_dir=out_dir, seed=cfg.seed,
                      train_summary=train_summary, shots=shots if shots is not None else cfg.bench.shots)
    return results


def bench_reference(cfg: RunConfig, *, tasks: list[str], data_dir: str | Path | None, adapter: str | None,
                    limit: int | None, shots: int | None, out_dir: Path, helm: bool = False) -> dict[str, Any]:
    """`tunebench bench`: benchmark suites (and optionally the HELM-style view) for one model."""
    from tunebench.models.load import load_model

    summary_path = RunDir(adapter).train_summary if adapter else None
    summary = _read_json(summary_path) if summary_path and summary_path.is_file() else None
    loaded = load_model(cfg.model, adapter=adapter, merge=adapter is not None)
    return bench_loaded(cfg, loaded, out_dir, resolve_data_dir(data_dir, cfg),
                        summary, tasks=tasks, limit=limit, shots=shots, helm=helm)


def run_all(cfg: RunConfig, *, data_dir: str | Path | None = None) -> dict[str, Path]:
    """`tunebench run`: train, evaluate base (zero/few-shot) and tuned, compare, benchmark, report."""
    from tunebench.report.html import write_report
    from tunebench.train.loop import train

    resolved = resolve_data_dir(data_dir, cfg)
    run_dir = cfg.run_dir
    run = RunDir(run_dir)
    _prepare_run_dir(cfg)

    summary_path = run.train_summary
    if summary_path.is_file():
        _log(f"training already done: {summary_path}")
    else:
        _log(f"training ({cfg.train.method}) → {run_dir}")
        result = train(cfg, data_dir=resolved, resume=run.checkpoints.is_dir())
        if getattr(result, "interrupted", False):
            raise TunebenchError(f"training was interrupted; rerun the same command to resume from {run_dir}")

    splits = _splits(cfg, resolved)
    examples = _eval_examples(cfg, splits)
    systems: list[tuple[str, str | None, int]] = [(f"base-{k}shot", None, k) for k in cfg.eval.shots]
    systems.append(("tuned", str(run_dir), 0))
    models = _OneModel(cfg)
    for name, adapter, shots in systems:
        out = run.eval_dir(name)
        if out.scores.is_file():
            _log(f"evaluation {name} already done")
            continue
        _log(f"evaluating {name} on {len(examples)} {cfg.eval.split} examples")
        system = {"name": name, "model": cfg.model.ref, "adapter": adapter, "shots": shots}
        _evaluate_system(cfg, models.get(adapter), examples, splits, out.path, system, shots)

    if cfg.bench.enabled and cfg.bench.tasks:
        for name, adapter in (("tuned", str(run_dir)), ("base", None)):
            bench_dir = run.bench_dir(name)
            if bench_dir.results.is_file():
                _log(f"benchmarks for {name} already done")
                continue
            _log(f"forgetting suite {','.join(cfg.bench.tasks)} on {name}")
            summary = _read_json(summary_path) if adapter else None
            bench_loaded(cfg, models.get(adapter), bench_dir.path, resolved, summary)
    models.release()

    _log("comparing systems")
    compare_paths([run_dir], run.compare_dir.path, baseline=systems[0][0], n_resamples=cfg.eval.bootstrap,
                  seed=cfg.seed)
    _log("writing the report")
    return write_report(run_dir)


def _prepare_run_dir(cfg: RunConfig) -> None:
    """Create the run dir (clear error when unwritable) and record the resolved config."""
    run_dir = cfg.run_dir
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(RunDir(run_dir).config, dump_config(cfg))
    except OSError as exc:
        raise TunebenchError(f"output directory {run_dir} is not writable ({exc.strerror}); "
                             "set output_dir or --set output_dir=PATH") from None
