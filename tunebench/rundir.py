"""One home for the run directory's layout: every file and folder of `runs/<name>/` is named here.

docs/formats.md describes what each file holds; code that reads or writes a run asks a `RunDir` (or the
`EvalDir`, `BenchDir` and `CompareDir` inside it, which also stand alone as `tunebench eval/bench/compare
--out` folders) for a path instead of spelling it, so the layout changes in one place. `LAYOUT` is the
layout's version (results.json records it); the `*_SCHEMA` strings version the JSON documents a run holds.
Plain paths only: nothing here reads, writes or imports anything heavy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

LAYOUT = "tunebench.run/1"
EVAL_SCHEMA = "tunebench.eval/1"
BENCH_SCHEMA = "tunebench.bench/1"
HELM_SCHEMA = "tunebench.helm/1"
COMPARE_SCHEMA = "tunebench.compare/1"
RESULTS_SCHEMA = "tunebench.results/1"

# The folders a training run's final output may live in: a PEFT adapter, or a full model.
TRAINED_OUTPUTS = ("adapter", "model")


def samples_filename(task: str) -> str:
    """A benchmark task's per-sample log: `samples_<task>.jsonl`, characters unsafe in file names replaced."""
    return "samples_" + re.sub(r"[^A-Za-z0-9_.-]", "_", task) + ".jsonl"


def helm_samples_filename(task: str) -> str:
    """A task's HELM log (original and perturbed inputs): `samples_helm_<task>.jsonl`."""
    return samples_filename(f"helm_{task}")


@dataclass(frozen=True)
class EvalDir:
    """One evaluation (`eval/<system>/`, or `tunebench eval --out`): predictions, then scores.json last."""

    path: Path

    @property
    def predictions(self) -> Path:
        return self.path / "predictions.jsonl"

    @property
    def scores(self) -> Path:
        """Written last, so its presence means the evaluation finished."""
        return self.path / "scores.json"

    @property
    def name(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class BenchDir:
    """One model's benchmarks (`bench/<system>/`, or `tunebench bench --out`) and, with helm, its HELM view."""

    path: Path
    GENERATIONS = "helm_generations.jsonl"

    @property
    def results(self) -> Path:
        """Written when every task is done, so its presence means a complete run."""
        return self.path / "results.json"

    @property
    def partial(self) -> Path:
        """The tasks an unfinished run completed; a rerun with the same model and settings skips them."""
        return self.path / "results.partial.json"

    @property
    def helm(self) -> Path:
        return self.path / "helm.json"

    @property
    def helm_generations(self) -> Path:
        return self.path / self.GENERATIONS

    def samples(self, task: str) -> Path:
        return self.path / samples_filename(task)

    def helm_samples(self, task: str) -> Path:
        return self.path / helm_samples_filename(task)


@dataclass(frozen=True)
class CompareDir:
    """Paired comparisons (`compare/`, or `tunebench compare --out`)."""

    path: Path

    @property
    def comparison(self) -> Path:
        return self.path / "comparison.json"

    @property
    def forgetting(self) -> Path:
        return self.path / "forgetting.json"


@dataclass(frozen=True)
class RunDir:
    """`runs/<name>/`: the resolved config, training's files, evaluations, benchmarks, comparisons, report."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def data_stats(self) -> Path:
        return self.root / "data_stats.json"

    @property
    def train_log(self) -> Path:
        return self.root / "train_log.jsonl"

    @property
    def loss_curve(self) -> Path:
        return self.root / "loss_curve.png"

    @property
    def checkpoints(self) -> Path:
        """`step-N/` folders and best.json; their contents are train/checkpoint.py's format."""
        return self.root / "checkpoints"

    @property
    def adapter(self) -> Path:
        return self.root / "adapter"

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def train_summary(self) -> Path:
        """Written when training finished."""
        return self.root / "train_summary.json"

    @property
    def eval_root(self) -> Path:
        return self.root / "eval"

    def eval_dir(self, system: str) -> EvalDir:
        return EvalDir(self.eval_root / system)

    @property
    def bench_root(self) -> Path:
        return self.root / "bench"

    def bench_dir(self, system: str) -> BenchDir:
        return BenchDir(self.bench_root / system)

    @property
    def compare_dir(self) -> CompareDir:
        return CompareDir(self.root / "compare")

    @property
    def results(self) -> Path:
        return self.root / "results.json"

    @property
    def report_md(self) -> Path:
        return self.root / "report.md"

    @property
    def report_html(self) -> Path:
        return self.root / "report.html"

    def evaluations(self) -> list[EvalDir]:
        """The finished evaluations (those with scores.json), by system name."""
        if not self.eval_root.is_dir():
            return []
        found = (EvalDir(p) for p in sorted(self.eval_root.iterdir()) if p.is_dir())
        return [d for d in found if d.scores.is_file()]

    def benchmarks(self) -> list[BenchDir]:
        """Every `bench/<system>/` folder, by system name (finished or not)."""
        if not self.bench_root.is_dir():
            return []
        return [BenchDir(p) for p in sorted(self.bench_root.iterdir()) if p.is_dir()]

    @classmethod
    def around(cls, path: str | Path) -> RunDir | None:
        """The run a trained output belongs to (the run dir itself, its adapter/ or model/, or a checkpoint),
        identified by its config.yaml; None for an adapter or model folder outside a run."""
        path = Path(path).expanduser()
        candidates = [path]
        if path.name in TRAINED_OUTPUTS:
            candidates.append(path.parent)
        if path.parent.name == cls(path.parent.parent).checkpoints.name:
            candidates.append(path.parent.parent)
        return next((cls(p) for p in candidates if cls(p).config.is_file()), None)
