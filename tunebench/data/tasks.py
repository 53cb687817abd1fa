"""The tasks of a run: a plain `data` section is a list of one task, `data.tasks` a mixture of several.

Each task builds its own disjoint splits (tunebench.data.prepare.build_splits) with its own template, and
carries the metrics and generation settings it is evaluated with. The trainer sees the tasks' training examples
one task after another; which of them an epoch trains on is the mixture's choice (tunebench.data.mixture).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunebench.config import SOURCE_KEYS, DataConfig, EvalConfig, TaskConfig
from tunebench.data.example import Example
from tunebench.data.mixture import Mixture, build_mixture, task_metrics
from tunebench.data.prepare import build_splits
from tunebench.data.splits import SplitResult


def single_task_name(data: DataConfig) -> str:
    """The name of a plain data section's one task: the source's file or folder name (`dialogsum`)."""
    stem = Path(data.source.rstrip("/")).name.split(".")[0] or "task"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem)


def task_configs(data: DataConfig, eval_cfg: EvalConfig) -> list[TaskConfig]:
    """data.tasks, or the plain data section as one task evaluated with eval.metrics (behaviour unchanged)."""
    if data.tasks:
        return list(data.tasks)
    fields = {k: getattr(data, k) for k in SOURCE_KEYS}
    return [TaskConfig(name=single_task_name(data), metrics=list(eval_cfg.metrics), **fields)]


@dataclass
class TaskData:
    """One task's splits and how it is evaluated."""

    name: str
    config: TaskConfig
    splits: SplitResult
    metrics: list[str]


@dataclass
class TaskSet:
    """Every task of a run, in config order."""

    tasks: list[TaskData]
    multitask: bool

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tasks]

    @property
    def train(self) -> list[Example]:
        """Training examples of every task, task after task (the mixture's global index order)."""
        return [ex for t in self.tasks for ex in t.splits.train]

    @property
    def validation(self) -> list[Example]:
        return [ex for t in self.tasks for ex in t.splits.validation]

    def stats(self) -> dict[str, Any]:
        """data_stats.json: a single task's split statistics as before; a mixture's per task."""
        if not self.multitask:
            return self.tasks[0].splits.stats
        return {"tasks": {t.name: t.splits.stats for t in self.tasks}}

    def task(self, name: str) -> TaskData:
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(name)


def build_task_set(data: DataConfig, eval_cfg: EvalConfig, data_dir: Path | None, seed: int) -> TaskSet:
    """Build every task's splits (a single task exactly as before)."""
    tasks = [TaskData(tc.name, tc, build_splits(tc, data_dir, seed), task_metrics(tc))
             for tc in task_configs(data, eval_cfg)]
    return TaskSet(tasks, data.multitask)


def mixture_for(data: DataConfig, names: list[str], sizes: list[int]) -> Mixture:
    """The configured mixture over tasks of the given (tokenized) training sizes."""
    mix = data.mixture
    weights = [t.weight for t in data.tasks] if data.tasks else [1.0] * len(names)
    return build_mixture(names, sizes, mix.strategy if data.tasks else "proportional", weights,
                         temperature=mix.temperature, cap=mix.cap,
                         epoch_size=mix.examples_per_epoch if data.tasks else None)
