"""Multi-task mixtures: how many examples of each task one epoch trains on, and which ones.

Mixing strategies (a registry, `MIXING_STRATEGIES`) turn task sizes into mixing rates, following T5
(Raffel et al. 2020, "Exploring the Limits of Transfer Learning ...", §3.5.2) and FLAN (Chung et al. 2022):

- `proportional`: examples-proportional mixing, rate_m = e_m / Σ e_n;
- `capped`: examples-proportional mixing with an artificial limit K, rate_m = min(e_m, K) / Σ min(e_n, K);
- `temperature`: temperature-scaled mixing, rate_m ∝ (min(e_m, K) / Σ min(e_n, K))^(1/T) (K = ∞ unless a cap is
  given); T = 1 is examples-proportional, T → ∞ equal mixing;
- `weights`: rate_m ∝ the task's configured weight (the fixed fractions other trainers offer).

An epoch holds `epoch_size` examples (default: Σ e_m, or Σ min(e_m, K) with a cap), split by the rates with
largest-remainder rounding. A task's examples come from its own endless stream, the concatenation of seeded
permutations of its examples (pass 0, 1, ...), and epoch k takes the k-th slice of that stream: every example is
seen once before any repeats, and the selection is a pure function of (seed, epoch), so a run resumed mid-epoch
replays the same examples (the batch order within the epoch is the batch sampler's, also a pure function of
(seed, epoch)). Written by hand because seqio's mixtures sample with replacement from tf.data streams, which
neither fix an epoch's composition nor make it reproducible from (seed, epoch) alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tunebench.errors import ConfigError

RateFn = Callable[[np.ndarray, np.ndarray, float | None, int | None], np.ndarray]


def _check_sizes(sizes: np.ndarray) -> None:
    if sizes.size == 0:
        raise ConfigError("data.tasks: a mixture needs at least one task")
    if (sizes < 0).any():
        raise ConfigError("data.tasks: task sizes must be >= 0")
    if sizes.sum() == 0:
        raise ConfigError("data.tasks: every task has 0 training examples; check each task's source and splits")


def _capped_sizes(sizes: np.ndarray, cap: int | None) -> np.ndarray:
    return sizes.astype(float) if cap is None else np.minimum(sizes, cap).astype(float)


def _proportional(sizes: np.ndarray, weights: np.ndarray, temperature: float | None, cap: int | None) -> np.ndarray:
    return sizes / sizes.sum()


def _capped(sizes: np.ndarray, weights: np.ndarray, temperature: float | None, cap: int | None) -> np.ndarray:
    if cap is None:
        raise ConfigError("data.mixture.cap: the 'capped' strategy needs a cap K (examples per task), e.g. cap: 3000")
    capped = _capped_sizes(sizes, cap)
    return capped / capped.sum()


def _temperature(sizes: np.ndarray, weights: np.ndarray, temperature: float | None, cap: int | None) -> np.ndarray:
    if temperature is None:
        raise ConfigError("data.mixture.temperature: the 'temperature' strategy needs a temperature T > 0, e.g. 2")
    capped = _capped_sizes(sizes, cap)
    rates = capped / capped.sum()
    scaled = np.where(rates > 0, rates ** (1.0 / temperature), 0.0)
    return scaled / scaled.sum()


def _weights(sizes: np.ndarray, weights: np.ndarray, temperature: float | None, cap: int | None) -> np.ndarray:
    usable = np.where(sizes > 0, weights, 0.0)
    if usable.sum() <= 0:
        raise ConfigError("data.tasks.*.weight: the 'weights' strategy needs a positive weight on a non-empty task")
    return usable / usable.sum()


@dataclass(frozen=True)
class MixingStrategy:
    """One way of turning task sizes (and weights, temperature, cap) into mixing rates that sum to 1."""

    name: str
    description: str
    rates: RateFn


MIXING_STRATEGIES: dict[str, MixingStrategy] = {
    s.name: s
    for s in (
        MixingStrategy("proportional", "rate ∝ task size (T5 examples-proportional mixing)", _proportional),
        MixingStrategy("temperature", "rate ∝ size^(1/T) (T5/FLAN temperature-scaled mixing; optional cap K)",
                       _temperature),
        MixingStrategy("capped", "rate ∝ min(size, K) (examples-proportional mixing with an artificial limit K)",
                       _capped),
        MixingStrategy("weights", "rate ∝ each task's weight", _weights),
    )
}


def get_strategy(name: str) -> MixingStrategy:
    """The registered strategy; ConfigError naming data.mixture.strategy and the known names otherwise."""
    try:
        return MIXING_STRATEGIES[name]
    except KeyError:
        raise ConfigError(
            f"data.mixture.strategy: unknown strategy {name!r}; choose one of {', '.join(MIXING_STRATEGIES)}"
        ) from None


def check_parameters(weights: Sequence[float], temperature: float | None, cap: int | None) -> None:
    """Reject weights that are negative or all zero, a temperature <= 0 and a cap < 1, naming the key."""
    for i, w in enumerate(weights):
        if not math.isfinite(w) or w < 0:
            raise ConfigError(f"data.tasks.{i}.weight: {w} is negative or not a number; weights must be >= 0")
    if weights and not any(w > 0 for w in weights):
        raise ConfigError("data.tasks.*.weight: every weight is 0; give at least one task a positive weight")
    if temperature is not None and not (math.isfinite(temperature) and temperature > 0):
        raise ConfigError(f"data.mixture.temperature: {temperature} must be a number > 0 (1 = proportional)")
    if cap is not None and cap < 1:
        raise ConfigError(f"data.mixture.cap: {cap} must be a positive number of examples")


def mixing_rates(strategy: str, sizes: Sequence[int], weights: Sequence[float] | None = None, *,
                 temperature: float | None = None, cap: int | None = None) -> np.ndarray:
    """Mixing rates, shape (M,), summing to 1, for M tasks of the given training sizes.

    Raises ConfigError for an unknown strategy, a missing or bad parameter, or bad weights.
    """
    w = [1.0] * len(sizes) if weights is None else [float(x) for x in weights]
    if len(w) != len(sizes):
        raise ValueError(f"{len(w)} weights for {len(sizes)} tasks")
    check_parameters(w, temperature, cap)
    arr = np.asarray(sizes, dtype=np.int64)
    _check_sizes(arr)
    return get_strategy(strategy).rates(arr, np.asarray(w, dtype=float), temperature, cap)


def largest_remainder(rates: np.ndarray, total: int) -> list[int]:
    """Integer counts summing to `total`, each floor(rate * total) plus one for the largest remainders.

    Ties go to the earlier task, so the result depends only on the rates (Hamilton's method of apportionment).
    """
    exact = rates * total
    counts = np.floor(exact).astype(np.int64)
    left = total - int(counts.sum())
    order = sorted(range(len(rates)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[:left]:
        counts[i] += 1
    return [int(c) for c in counts]


@dataclass(frozen=True)
class Mixture:
    """A mixture of M tasks: names, training sizes and per-epoch example counts.

    Global example indices number the tasks' training examples one task after another (task 0's examples are
    0..size_0-1, task 1's follow), the order of the concatenated training list the trainer sees.
    """

    names: tuple[str, ...]
    sizes: tuple[int, ...]
    strategy: str
    rates: tuple[float, ...]
    counts: tuple[int, ...]  # examples of each task per epoch
    temperature: float | None = None
    cap: int | None = None

    @property
    def epoch_size(self) -> int:
        return sum(self.counts)

    @property
    def offsets(self) -> list[int]:
        return [0, *np.cumsum(self.sizes).tolist()][:-1]

    def task_indices(self, task: int, seed: int, epoch: int) -> list[int]:
        """Indices (within the task, shape (counts[task],)) task `task` contributes to `epoch`.

        The epoch's slice [epoch*c, (epoch+1)*c) of the task's stream of seeded permutations; a task whose count
        equals its size contributes every example once per epoch, in index order.
        """
        n, c = self.sizes[task], self.counts[task]
        if c == 0 or n == 0:
            return []
        if c == n:
            return list(range(n))
        start, stop = epoch * c, (epoch + 1) * c
        out: list[int] = []
        for rep in range(start // n, (stop - 1) // n + 1):
            perm = np.random.default_rng([seed, task, rep]).permutation(n)
            lo, hi = max(start - rep * n, 0), min(stop - rep * n, n)
            out.extend(int(i) for i in perm[lo:hi])
        return out

    def epoch_indices(self, seed: int, epoch: int) -> list[int]:
        """Global indices of the examples of one epoch (shape (epoch_size,)), task by task.

        A pure function of (seed, epoch); a single task, or any mixture whose counts equal the sizes, gives
        every index once in order, so the batch sampler's order is exactly the single-task order.
        """
        out: list[int] = []
        for task, offset in enumerate(self.offsets):
            out.extend(offset + i for i in self.task_indices(task, seed, epoch))
        return out

    def composition(self, lengths: Sequence[int] | None = None, seed: int = 0) -> dict[str, Any]:
        """The mixture as data: per task its size, rate, examples per epoch, epochs of its data per epoch and,
        given token lengths of the global examples, its tokens in epoch 0 and share of the epoch's tokens.
        """
        tokens: list[int] | None = None
        if lengths is not None:
            tokens = [sum(lengths[self.offsets[t] + i] for i in self.task_indices(t, seed, 0))
                      for t in range(len(self.names))]
        total_tokens = sum(tokens) if tokens else 0
        tasks = []
        for t, name in enumerate(self.names):
            row: dict[str, Any] = {
                "task": name, "size": self.sizes[t], "rate": round(self.rates[t], 6),
                "examples_per_epoch": self.counts[t],
                "example_share": round(self.counts[t] / self.epoch_size, 6) if self.epoch_size else 0.0,
                "passes_per_epoch": round(self.counts[t] / self.sizes[t], 4) if self.sizes[t] else 0.0,
            }
            if tokens is not None:
                row["tokens_per_epoch"] = tokens[t]
                row["token_share"] = round(tokens[t] / total_tokens, 6) if total_tokens else 0.0
            tasks.append(row)
        return {"strategy": self.strategy, "temperature": self.temperature, "cap": self.cap,
                "epoch_size": self.epoch_size, "tasks": tasks}


def build_mixture(names: Sequence[str], sizes: Sequence[int], strategy: str = "proportional",
                  weights: Sequence[float] | None = None, *, temperature: float | None = None,
                  cap: int | None = None, epoch_size: int | None = None) -> Mixture:
    """The mixture of tasks `names` with training sizes `sizes`.

    epoch_size defaults to Σ size (Σ min(size, K) with a cap). Raises ConfigError on bad parameters and on
    duplicate task names.
    """
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            raise ConfigError(f"data.tasks.{i}.name: task name {name!r} is used twice; task names must be unique")
        seen.add(name)
    if len(names) != len(sizes):
        raise ValueError(f"{len(names)} task names for {len(sizes)} sizes")
    rates = mixing_rates(strategy, sizes, weights, temperature=temperature, cap=cap)
    if epoch_size is None:
        epoch_size = int(_capped_sizes(np.asarray(sizes), cap).sum())
    elif epoch_size < 1:
        raise ConfigError(f"data.mixture.examples_per_epoch: {epoch_size} must be a positive number of examples")
    counts = largest_remainder(rates, epoch_size)
    return Mixture(tuple(names), tuple(int(s) for s in sizes), strategy, tuple(float(r) for r in rates),
                   tuple(counts), temperature, cap)


def mixture_batches(mixture: Mixture, lengths: Sequence[int], batch_size: int, seed: int, epoch: int,
                    **kwargs: Any) -> list[list[int]]:
    """The batches (global example indices) of one epoch of the mixture: the epoch's examples, batched by
    tunebench.data.batching.epoch_batches. A pure function of (seed, epoch); for a single task exactly
    epoch_batches(lengths, ...), so single-task runs keep their batch order."""
    from tunebench.data.batching import epoch_batches

    idx = mixture.epoch_indices(seed, epoch)
    batches = epoch_batches([lengths[i] for i in idx], batch_size, seed, epoch, **kwargs)
    return [[idx[j] for j in batch] for batch in batches]


def format_composition(comp: Mapping[str, Any]) -> str:
    """The composition as a plain-text table, printed before training."""
    params = ", ".join(f"{k} {comp[k]}" for k in ("temperature", "cap") if comp.get(k) is not None)
    lines = [f"mixture: {comp['strategy']}{f' ({params})' if params else ''}, {comp['epoch_size']} examples per epoch"]
    has_tokens = bool(comp["tasks"]) and "token_share" in comp["tasks"][0]
    header = f"  {'task':<18} {'size':>8} {'per epoch':>10} {'share':>7} {'passes':>7}"
    lines.append(header + (f" {'tokens':>10} {'token share':>11}" if has_tokens else ""))
    for row in comp["tasks"]:
        line = (f"  {row['task']:<18} {row['size']:>8} {row['examples_per_epoch']:>10} "
                f"{row['example_share']:>7.1%} {row['passes_per_epoch']:>7.2f}")
        if has_tokens:
            line += f" {row['tokens_per_epoch']:>10} {row['token_share']:>11.1%}"
        lines.append(line)
    return "\n".join(lines)


def task_metrics(task: Any) -> list[str]:
    """A task's metrics: its own `metrics`, else its built-in template's (empty when neither has any)."""
    if task.metrics:
        return list(task.metrics)
    if task.template.prompt is None and task.template.name is not None:
        from tunebench.data.templates import BUILTIN_TEMPLATES

        builtin = BUILTIN_TEMPLATES.get(task.template.name)
        if builtin is not None:
            return list(builtin.metrics)
    return []


def check_mixture_config(data: Any) -> None:
    """Config-time checks of data.tasks and data.mixture (a DataConfig); ConfigError naming the key.

    Unknown strategy, bad temperature/cap/weights, a strategy missing its parameter, duplicate task names, an
    unknown template or metric name in a task, and a task without a metric (no `metrics` and a template that
    brings none).
    """
    mix = data.mixture
    strategy = get_strategy(mix.strategy)
    check_parameters([t.weight for t in data.tasks], mix.temperature, mix.cap)
    if mix.examples_per_epoch is not None and mix.examples_per_epoch < 1:
        raise ConfigError(f"data.mixture.examples_per_epoch: {mix.examples_per_epoch} must be a positive number")
    if not data.tasks:
        return
    if strategy.name == "temperature" and mix.temperature is None:
        raise ConfigError("data.mixture.temperature: the 'temperature' strategy needs a temperature T > 0, e.g. 2")
    if strategy.name == "capped" and mix.cap is None:
        raise ConfigError("data.mixture.cap: the 'capped' strategy needs a cap K (examples per task), e.g. cap: 3000")
    seen: dict[str, int] = {}
    for i, task in enumerate(data.tasks):
        if task.name in seen:
            raise ConfigError(f"data.tasks.{i}.name: task name {task.name!r} is used twice (also data.tasks."
                              f"{seen[task.name]}); task names must be unique")
        seen[task.name] = i
        if task.template.prompt is None:
            from tunebench.data.templates import BUILTIN_TEMPLATES
            from tunebench.evaluate.metrics.base import unknown_name_message

            if task.template.name not in BUILTIN_TEMPLATES:
                raise ConfigError(unknown_name_message(f"data.tasks.{i}.template.name", task.template.name,
                                                       list(BUILTIN_TEMPLATES), "template"))
        metrics = task_metrics(task)
        if not metrics:
            raise ConfigError(f"data.tasks.{i}.metrics: task {task.name!r} has no metric; give metrics (its "
                              "template brings none)")
        from tunebench.evaluate.metrics.registry import check_metric_names

        check_metric_names(metrics, f"data.tasks.{i}.metrics")
