"""One home for the run directory's layout: every file and folder of `runs/<name>/` is named here.

docs/formats.md describes what each file holds; code that reads or writes a run asks a `RunDir` (or the
`EvalDir`, `BenchDir` and `CompareDir` inside it, which also stand alone as `tunebench eval/bench/compare
--out` folders, and the `CheckpointRoot` and `CheckpointDir` of its checkpoints) for a path instead of spelling
it, so the layout changes in one place. `LAYOUT` is the
layout's version (results.json records it); the `*_SCHEMA` strings version the JSON documents a run holds.
Plain paths only: nothing here reads, writes or imports anything heavy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LAYOUT = "tunebench.run/1"
EVAL_SCHEMA = "tunebench.eval/1"
BENCH_SCHEMA = "tunebench.bench/1"
HELM_SCHEMA = "tunebench.helm/1"
COMPARE_SCHEMA = "tunebench.compare/1"
RESULTS_SCHEMA = "tunebench.results/1"
SWEEP_SCHEMA = "tunebench.sweep/1"

# The folders a training run's final output may live in: a PEFT adapter, or a full model.
TRAINED_OUTPUTS = ("adapter", "model")  # RunDir.adapter, RunDir.model


def samples_filename(task: str) -> str:
    """A benchmark task's per-sample log: `samples_<task>.jsonl`, characters unsafe in file names replaced."""
    return "samples_" + re.sub(r"[^A-Za-z0-9_.-]", "_", task) + ".jsonl"


def helm_samples_filename(task: str) -> str:
    """A task's HELM log (original and perturbed inputs): `samples_helm_<task>.jsonl`."""
    return samples_filename(f"helm_{task}")


class _Entry:
    """A file or folder at a fixed name inside a folder object: `scores = _Entry("scores.json")` gives
    `EvalDir(p).scores == p / "scores.json"`, and the class keeps the name (`EvalDir.scores.name`)."""

    def __init__(self, name: str, doc: str = "") -> None:
        self.name, self.__doc__ = name, doc or name

    def __get__(self, folder: Any, owner: type | None = None) -> Any:
        return self if folder is None else folder.path / self.name


@dataclass(frozen=True)
class EvalDir:
    """One evaluation (`eval/<system>/`, or `tunebench eval --out`): predictions, then scores.json last."""

    path: Path
    predictions = _Entry("predictions.jsonl")
    scores = _Entry("scores.json", "Written last, so its presence means the evaluation finished.")

    @property
    def name(self) -> str:
        return self.path.name

    def task(self, name: str) -> EvalDir:
        """One task of a multi-task `tunebench eval --out` folder: `<out>/<task>/`, an evaluation of its own."""
        return EvalDir(self.path / name)


@dataclass(frozen=True)
class BenchDir:
    """One model's benchmarks (`bench/<system>/`, or `tunebench bench --out`) and, with helm, its HELM view."""

    path: Path
    GENERATIONS = "helm_generations.jsonl"
    results = _Entry("results.json", "Written when every task is done, so its presence means a complete run.")
    partial = _Entry("results.partial.json", "The tasks an unfinished run completed; a rerun with the same model "
                     "and settings skips them.")
    helm = _Entry("helm.json")
    helm_generations = _Entry(GENERATIONS)

    def samples(self, task: str) -> Path:
        return self.path / samples_filename(task)

    def helm_samples(self, task: str) -> Path:
        return self.path / helm_samples_filename(task)


@dataclass(frozen=True)
class CompareDir:
    """Paired comparisons (`compare/`, or `tunebench compare --out`)."""

    path: Path
    comparison = _Entry("comparison.json")
    forgetting = _Entry("forgetting.json")
    tasks_root = _Entry("tasks", "Multi-task comparisons: `tasks/<task>/comparison.json`, one per task.")

    def task(self, name: str) -> CompareDir:
        """The comparison of one task of a mixture: `tasks/<task>/`."""
        return CompareDir(self.tasks_root / name)


@dataclass(frozen=True)
class TaskDir:
    """One task of a multi-task run (`tasks/<task>/`): its evaluations and their comparison, laid out as a
    single-task run's `eval/<system>/` and `compare/`."""

    path: Path
    eval_root = _Entry("eval")

    @property
    def name(self) -> str:
        return self.path.name

    def eval_dir(self, system: str) -> EvalDir:
        return EvalDir(self.eval_root / system)

    @property
    def compare_dir(self) -> CompareDir:
        return CompareDir(self.path / "compare")

    def evaluations(self) -> list[EvalDir]:
        """The task's finished evaluations (those with scores.json), by system name."""
        return _finished(self.eval_root)


@dataclass(frozen=True)
class StateFiles:
    """A nested state stored without pickle (train/checkpoint.py): its tensors in `<stem>.safetensors` (absent
    when it holds none), its structure in `<stem>.json` with a marker where each tensor was."""

    tensors: Path
    tree: Path


class _State:
    """A `StateFiles` pair at a fixed stem inside a folder object: `rng = _State("rng")` gives
    `CheckpointDir(p).rng.tree == p / "rng.json"`, and the class keeps both names (`CheckpointDir.rng.names`)."""

    def __init__(self, stem: str, doc: str = "") -> None:
        self.stem, self.__doc__ = stem, doc or stem
        self.names = (f"{stem}.safetensors", f"{stem}.json")

    def __get__(self, folder: Any, owner: type | None = None) -> Any:
        if folder is None:
            return self
        return StateFiles(*(folder.path / name for name in self.names))


@dataclass(frozen=True)
class CheckpointDir:
    """One checkpoint, `checkpoints/step-N/`: everything an exact resume needs (train/checkpoint.py writes it, as
    one atomic folder)."""

    path: Path
    PREFIX = "step-"
    trainable = _Entry("trainable.safetensors", "Every trainable parameter by name: an adapter's weights, the "
                       "trained blocks, or the whole model.")
    optimizer = _State("optimizer", "AdamW's moments and step counts; its parameter groups in the JSON.")
    scheduler = _State("scheduler", "The learning-rate schedule's counters.")
    rng = _State("rng", "Generator states, one per process: torch's (CPU, CUDA), Python's and NumPy's.")
    trainer_state = _State("trainer_state", "The TrainerState (train/loop.py) and the checkpoint format.")

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def step(self) -> int:
        """The optimizer step the checkpoint was taken after (from its folder name, `step-N`)."""
        return int(self.path.name[len(self.PREFIX):])

    @classmethod
    def files(cls) -> list[str]:
        """Every file name a checkpoint may hold (a state without tensors has no .safetensors)."""
        return [cls.trainable.name, *(n for s in (cls.optimizer, cls.scheduler, cls.rng, cls.trainer_state)
                                      for n in s.names)]


@dataclass(frozen=True)
class CheckpointRoot:
    """`checkpoints/` of a run: one `CheckpointDir` per saved step, and best.json naming the best one."""

    path: Path
    best = _Entry("best.json", "{step, metric, value} of the best checkpoint (a file, not a symlink, so it "
                  "survives copies).")

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    def step(self, step: int) -> CheckpointDir:
        """The checkpoint of optimizer step `step`: `step-<step>/`."""
        return CheckpointDir(self.path / f"{CheckpointDir.PREFIX}{step}")

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints, ascending: `step-N` folders only (the temporary `.step-N.*` folder of
        a write in progress or killed is none)."""
        if not self.path.is_dir():
            return []
        pattern = re.compile(rf"^{re.escape(CheckpointDir.PREFIX)}(\d+)$")
        return sorted(int(m.group(1)) for p in self.path.iterdir() if p.is_dir() and (m := pattern.match(p.name)))

    def latest(self) -> CheckpointDir | None:
        """The checkpoint of the last saved step; None when there is none."""
        steps = self.steps()
        return self.step(steps[-1]) if steps else None


def _finished(eval_root: Path) -> list[EvalDir]:
    """The evaluations under `eval_root` that finished (scores.json written), by system name."""
    if not eval_root.is_dir():
        return []
    found = (EvalDir(p) for p in sorted(eval_root.iterdir()) if p.is_dir())
    return [d for d in found if d.scores.is_file()]


@dataclass(frozen=True)
class RunDir:
    """`runs/<name>/`: the resolved config, training's files, evaluations, benchmarks, comparisons, report."""

    path: Path
    config = _Entry("config.yaml", "The resolved config, every default filled in.")
    data_stats = _Entry("data_stats.json")
    train_log = _Entry("train_log.jsonl")
    tensorboard = _Entry("tensorboard", "TensorBoard event files of training (main process only).")
    loss_curve = _Entry("loss_curve.png")
    checkpoints = _Entry("checkpoints", "`step-N/` folders and best.json (`CheckpointRoot`, `CheckpointDir`).")
    adapter = _Entry("adapter", "The trained PEFT adapter (methods saved as adapters).")
    model = _Entry("model", "The trained full model (methods saved as whole models).")
    train_summary = _Entry("train_summary.json", "Written when training finished, or was interrupted (then with "
                           "`interrupted: true`; `trained()` tells the two apart).")
    mixture = _Entry("mixture.json", "A multi-task run's mixture: examples and tokens per task per epoch.")
    eval_root = _Entry("eval")
    tasks_root = _Entry("tasks", "A multi-task run's per-task evaluations and comparisons (`TaskDir`).")
    single_vs_multi = _Entry("single_vs_multi.json", "`run --single-task`: the mixture run beside its single-task "
                             "twin (per-task comparisons in single_vs_multi/tasks/<task>/).")
    bench_root = _Entry("bench")
    results = _Entry("results.json")
    report_md = _Entry("report.md")
    report_html = _Entry("report.html")

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    def eval_dir(self, system: str) -> EvalDir:
        return EvalDir(self.eval_root / system)

    def bench_dir(self, system: str) -> BenchDir:
        return BenchDir(self.bench_root / system)

    def trained(self) -> bool:
        """Whether training finished and saved its output: train_summary.json is there and does not record an
        interrupted run. An interrupted run (Ctrl-C, a sweep killed mid-method) writes its summary too, with
        `interrupted: true` and no adapter or model, and is resumed from its last checkpoint instead of being
        evaluated. A summary that cannot be read counts as not finished (training resumes and rewrites it)."""
        import json

        try:
            summary = json.loads(self.train_summary.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return isinstance(summary, dict) and not summary.get("interrupted", False)

    @property
    def compare_dir(self) -> CompareDir:
        return CompareDir(self.path / "compare")

    def evaluations(self) -> list[EvalDir]:
        """The finished evaluations (those with scores.json), by system name."""
        return _finished(self.eval_root)

    @property
    def single_vs_multi_dir(self) -> CompareDir:
        """`run --single-task`: the per-task comparisons of the single-task twin and the mixture run."""
        return CompareDir(self.path / "single_vs_multi")

    def task_dir(self, task: str) -> TaskDir:
        """One task of a multi-task run: `tasks/<task>/`."""
        return TaskDir(self.tasks_root / task)

    def task_dirs(self) -> list[TaskDir]:
        """Every `tasks/<task>/` folder of a multi-task run, by task name (empty for a single-task run)."""
        if not self.tasks_root.is_dir():
            return []
        return [TaskDir(p) for p in sorted(self.tasks_root.iterdir()) if p.is_dir()]

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
        if path.parent.name == cls.checkpoints.name:
            candidates.append(path.parent.parent)
        return next((cls(p) for p in candidates if cls(p).config.is_file()), None)


@dataclass(frozen=True)
class SweepDir:
    """`tunebench sweep --out`: one run directory per method, the base model's shared evaluations, the report.

    `<method>/` is a full `RunDir` (trained with that method, its own tuned evaluation, benchmarks and comparison
    against the shared base); `base/` is a `RunDir` holding only the base model's `eval/` and `bench/`, computed
    once for every method; `compare/` holds the method-vs-method comparison (`--against`).
    """

    path: Path
    BASE = "base"
    sweep_json = _Entry("sweep.json", "Rewritten after every method, so it always describes the finished ones.")
    report_html = _Entry("report.html")
    chart = _Entry("gain_vs_forgetting.png")

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def base(self) -> RunDir:
        return RunDir(self.path / self.BASE)

    def run(self, method: str) -> RunDir:
        """The run directory of one method (`<sweep>/<method>/`)."""
        if method in (self.BASE, "compare"):
            raise ValueError(f"a method cannot be named {method!r} inside a sweep folder")
        return RunDir(self.path / method)

    def single_run(self, method: str, task: str) -> RunDir:
        """A mixture method's single-task twin (`sweep --mixtures single:TASK`): `<sweep>/<method>-single-<task>/`,
        named as `run --single-task` names its twin."""
        return RunDir(self.run(method).path.parent / f"{method}-single-{task}")

    @property
    def compare_dir(self) -> CompareDir:
        return CompareDir(self.path / "compare")
