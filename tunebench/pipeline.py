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

    _trained_settings(cfg, adapter)
    splits = _splits(cfg, resolve_data_dir(data_dir, cfg))
    examples = _eval_examples(cfg, splits, split, limit)
    loaded = load_model(cfg.model, adapter=adapter, merge=adapter is not None)
    system = {"name": out_dir.name, "model": cfg.model.ref, "adapter": adapter, "shots": shots}
    return _evaluate_system(cfg, loaded, examples, splits, out_dir, system, shots, split)


def _trained_settings(cfg: RunConfig, adapter: str | None) -> None:
    """Score a trained output with its run's base model and prompt format unless the config set them explicitly."""
    if adapter is not None:
        from tunebench.models.load import model_config_for_trained

        cfg.model = model_config_for_trained(cfg.model, adapter)


def compare_paths(paths: list[Path], out_dir: Path, *, baseline: str | None = None, n_resamples: int = 1000,
                  seed: int = 0) -> Path:
    """`tunebench compare`: paired statistics over evaluations, plus the forgetting table when both ran benches."""
    from tunebench.evaluate.compare import compare_systems

    compare_systems(paths, out_dir, baseline=baseline, n_resamples=n_resamples, seed=seed)
    bench_dirs = _bench_dirs(paths)
    if len(bench_dirs) == 2:
        from tunebench.bench.forgetting import forgetting_table

        (base_dir, tuned_dir) = bench_dirs
        atomic_write_json(out_dir / "forgetting.json",
                          forgetting_table(base_dir, tuned_dir, n_resamples=n_resamples, seed=seed))
    return out_dir / "comparison.json"


def _bench_dirs(paths: list[Path]) -> list[Path]:
    """The base and tuned benchmark dirs of a single run dir, when both ran."""
    if len(paths) != 1:
        return []
    found = [paths[0] / "bench" / name for name in ("base", "tuned")]
    return found if all((d / "results.json").is_file() for d in found) else []


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

    return json.loads(path.read_text(encoding="utf-8-sig"))


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

    summary_path = Path(adapter) / "train_summary.json" if adapter else None
    summary = _read_json(summary_path) if summary_path and summary_path.is_file() else None
    _trained_settings(cfg, adapter)
    loaded = load_model(cfg.model, adapter=adapter, merge=adapter is not None)
    return bench_loaded(cfg, loaded, out_dir, resolve_data_dir(data_dir, cfg),
                        summary, tasks=tasks, limit=limit, shots=shots, helm=helm)


def run_all(cfg: RunConfig, *, data_dir: str | Path | None = None) -> dict[str, Path]:
    """`tunebench run`: train, evaluate base (zero/few-shot) and tuned, compare, benchmark, report."""
    from tunebench.report.html import write_report
    from tunebench.train.loop import train

    resolved = resolve_data_dir(data_dir, cfg)
    run_dir = cfg.run_dir
    splits = _splits(cfg, resolved)  # bad data fails here, before anything in the run dir changes
    _prepare_run_dir(cfg)

    summary_path = run_dir / "train_summary.json"
    if summary_path.is_file():
        _log(f"training already done: {summary_path}")
    else:
        _log(f"training ({cfg.train.method}) → {run_dir}")
        result = train(cfg, data_dir=resolved, resume=(run_dir / "checkpoints").is_dir())
        if getattr(result, "interrupted", False):
            raise TunebenchError(f"training was interrupted; rerun the same command to resume from {run_dir}")

    examples = _eval_examples(cfg, splits)
    systems: list[tuple[str, str | None, int]] = [(f"base-{k}shot", None, k) for k in cfg.eval.shots]
    systems.append(("tuned", str(run_dir), 0))
    models = _OneModel(cfg)
    for name, adapter, shots in systems:
        out = run_dir / "eval" / name
        if (out / "scores.json").is_file():
            _log(f"evaluation {name} already done")
            continue
        _log(f"evaluating {name} on {len(examples)} {cfg.eval.split} examples")
        system = {"name": name, "model": cfg.model.ref, "adapter": adapter, "shots": shots}
        _evaluate_system(cfg, models.get(adapter), examples, splits, out, system, shots)

    if cfg.bench.enabled and cfg.bench.tasks:
        for name, adapter in (("tuned", str(run_dir)), ("base", None)):
            out = run_dir / "bench" / name
            if (out / "results.json").is_file():
                _log(f"benchmarks for {name} already done")
                continue
            _log(f"forgetting suite {','.join(cfg.bench.tasks)} on {name}")
            summary = _read_json(summary_path) if adapter else None
            bench_loaded(cfg, models.get(adapter), out, resolved, summary)
    models.release()

    _log("comparing systems")
    compare_paths([run_dir], run_dir / "compare", baseline=systems[0][0], n_resamples=cfg.eval.bootstrap,
                  seed=cfg.seed)
    _log("writing the report")
    return write_report(run_dir)


# What each later stage wrote, by the config section it depends on (compare and the report are always redone).
STAGE_OUTPUTS = {"eval": ("eval",), "bench": ("bench",)}
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
    for folder in (run_dir, run_dir / "checkpoints", run_dir / "compare", *run_dir.glob("eval/*"),
                   *run_dir.glob("bench/*")):
        clean_stale_temps(folder)  # what a kill during a write left behind
    saved_path = run_dir / "config.yaml"
    saved = read_saved_config(saved_path) if saved_path.is_file() else None
    changed = config_changes(saved, cfg) if saved is not None else []
    trained = (run_dir / "train_summary.json").exists() or bool(list_checkpoints(run_dir / "checkpoints"))
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
