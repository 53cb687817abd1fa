"""`tunebench sweep`: one config trained with several methods (full, lora, adapter, ...) and compared, as data.

Every method gets the same data, seed, optimizer-step budget and evaluation: its config is the user's config with
`train.method` set. Its learning rate (issue 11) is the config's `train.lr` for the config's own `train.method`
only: every other method takes the methods table's `default_lr` (a full-weight method needs a rate ~10x smaller
than an adapter's), unless `--same-lr` asks for the config's rate for all; each row records the rate and its
source. This module holds the sweep's data and nothing that writes: the checked method list and --mixtures
option, each method's config, the precision every method is pinned to (`pinned_precision`), each method's row
read back from its finished run directory (`method_row`; a mixture's metrics per task, and with --mixtures its
single-task twin beside it), the progress lines with their ETA, and the `sweep.json` document.
`pipeline/sweep.py` (`run_sweep`) runs the stages and `pipeline/write.py` writes; `report/sweep.py` renders the
report.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tunebench import __version__
from tunebench.config import RunConfig, apply_overrides, load_config
from tunebench.errors import ConfigError, TunebenchError
from tunebench.io import read_json, read_yaml_mapping
from tunebench.rundir import SWEEP_SCHEMA, RunDir, SweepDir

# The methods a sweep runs when --methods is not given (issue 11's comparison).
DEFAULT_METHODS = ("full", "lora", "freeze", "adapter", "ia3", "prompt_tuning")
# The task metric a row's headline and the chart use, first found (summaries: ROUGE-L).
PRIMARY_TASK_METRICS = ("rougeL", "rougeLsum", "accuracy", "exact_match", "bleu", "rouge1")
# The forgetting measure the headline and the chart use, first found among the rows every method has:
# language-model drift first (word perplexity of a perplexity task), then benchmark accuracy.
PRIMARY_FORGETTING_METRICS = ("word_perplexity", "acc_norm", "acc")


def check_methods(names: list[str], option: str = "--methods") -> list[str]:
    """The methods named, each once, in the given order. ConfigError naming `option` for an unknown name (with
    did-you-mean and the known names) or an empty list."""
    from tunebench.errors import did_you_mean
    from tunebench.models.methods import method_names  # torch-free

    known = method_names()
    if not names:
        raise ConfigError(f"{option}: name at least one method; known methods: {', '.join(known)}")
    for name in names:
        if name not in known:  # did-you-mean is case-insensitive: LoRA -> lora
            raise ConfigError(f"{option}: unknown method '{name}'{did_you_mean(name, known)} known methods: "
                              f"{', '.join(known)}")
    return list(dict.fromkeys(names))


def check_against(against: str | None, methods: list[str]) -> None:
    """`--against M` must be one of the sweep's methods (ConfigError naming the option otherwise)."""
    if against is not None and against not in methods:
        raise ConfigError(f"--against: '{against}' is not one of the sweep's --methods ({', '.join(methods)})")


def mixtures_single_task(option: str | None, cfg: RunConfig) -> str | None:
    """The task of `--mixtures single[:TASK]` (bare `single`: the first of data.tasks); None without the option.

    ConfigError (exit 2) naming --mixtures for another form, a config without data.tasks (there is no mixture to
    set a single task beside) or a task the mixture does not have.
    """
    if option is None:
        return None
    kind, _, task = option.partition(":")
    if kind != "single" or (":" in option and not task):
        raise ConfigError(f"--mixtures: '{option}' is not 'single' or 'single:TASK' (the single-task twin of each "
                          "method: TASK alone, default the first of data.tasks)")
    if not cfg.data.multitask:
        raise ConfigError("--mixtures: the config trains one task (no data.tasks), so there is no mixture to set "
                          "beside a single task; give a multi-task config or leave --mixtures out")
    names = [t.name for t in cfg.data.tasks]
    task = task or names[0]
    if task not in names:
        raise ConfigError(f"--mixtures: '{task}' is not a task of the mixture (data.tasks: {', '.join(names)})")
    return task


def task_key(task: str | None, metric: str) -> str:
    """How a row names a task metric: the metric itself for a single-task config, `<task>/<metric>` in a
    mixture."""
    return metric if task is None else f"{task}/{metric}"


LR_FROM_CONFIG = "config"  # the config's train.lr, for the config's own train.method
LR_SAME = "config (--same-lr)"  # the config's train.lr given to another method because --same-lr asked
LR_DEFAULT = "method default"  # the methods table's default_lr


def method_lrs(path: str | Path | None, overrides: list[str], methods: list[str], *,
               same_lr: bool = False) -> dict[str, tuple[float, str]]:
    """Each method's learning rate and its source (LR_FROM_CONFIG, LR_SAME or LR_DEFAULT), from the user's config
    (file plus --set): the config's `train.lr` applies to the config's `train.method` only (or to every method
    with `same_lr`); the others take the methods table's `default_lr`. Raises ConfigError for `same_lr` when the
    config sets no `train.lr` (there is no one rate to share)."""
    from tunebench.config import TrainConfig
    from tunebench.models.methods import METHODS  # torch-free

    tree = read_yaml_mapping(path, ConfigError, "the config", empty_ok=True) if path is not None else {}
    apply_overrides(tree, list(overrides))
    train = tree.get("train") if isinstance(tree.get("train"), dict) else {}
    lr, own = train.get("lr"), train.get("method") or TrainConfig.model_fields["method"].default
    if same_lr and lr is None:
        raise ConfigError("--same-lr: the config sets no train.lr to give every method; set train.lr or drop "
                          "--same-lr")
    rates: dict[str, tuple[float, str]] = {}
    for method in methods:
        if lr is not None and (same_lr or method == own):
            rates[method] = (float(lr), LR_FROM_CONFIG if method == own else LR_SAME)
        else:
            rates[method] = (METHODS[method].default_lr, LR_DEFAULT)
    return rates


def method_config(path: str | Path | None, overrides: list[str], method: str, sweep: SweepDir,
                  lr: float) -> RunConfig:
    """The user's config trained with `method` at learning rate `lr` (method_lrs), its run directory
    `sweep/<method>/` (output_dir and name set). Raises ConfigError for a config the method cannot take."""
    cfg = load_config(path, [*overrides, f"train.method={method}", f"train.lr={lr!r}"])
    run = sweep.run(method)
    cfg.output_dir, cfg.name = str(run.path.parent), run.path.name
    return cfg


def base_config(path: str | Path | None, overrides: list[str], sweep: SweepDir) -> RunConfig:
    """The user's config with its run directory at `sweep/base/`: where the base model's evaluations go."""
    cfg = load_config(path, overrides)
    cfg.output_dir, cfg.name = str(sweep.path), sweep.base.path.name
    return cfg


def pinned_precision(cfg: RunConfig, base: RunDir) -> str | dict[str, str] | None:
    """The precision every method of a sweep evaluates in: the one its shared base was evaluated in (its first
    base system's scores.json; per task for a mixture), once that evaluation exists; None before it, or when
    eval.precision is unset (each model computes as loaded).

    Resolved once, when the base is evaluated (by the first method: base and tuned model gated together) and
    read back for every later method and every rerun, so an `auto` probe that would pick another precision later
    (available memory changes what fits) never leaves a method's evaluation at another precision than the base's,
    which compare would refuse.
    """
    from tunebench.evaluate.compare import scored_precision

    if cfg.eval.precision is None:
        return None
    first = f"base-{cfg.eval.shots[0]}shot"

    def read(eval_dir: Any) -> str | None:
        if not eval_dir.scores.is_file():
            return None
        return scored_precision(read_json(eval_dir.scores, what="the shared base's scores",
                                          fix="delete the sweep's base/ folder to evaluate the base again"))

    if not cfg.data.multitask:
        return read(base.eval_dir(first))
    found = {t.name: read(base.task_dir(t.name).eval_dir(first)) for t in cfg.data.tasks}
    return {name: p for name, p in found.items() if p is not None} or None


def default_sweep_dir(cfg: RunConfig) -> Path:
    """`<output_dir>/<name>-sweep` for a config's name and output_dir."""
    return Path(cfg.output_dir) / f"{cfg.name}-sweep"


def _comparison_to_base(compare_dir: Any) -> dict[str, Any] | None:
    """The tuned-vs-base entry of a method's comparison.json (baseline: the first base system)."""
    doc = read_json(compare_dir.comparison, what="the method's comparison", fix="rerun the sweep to redo it")
    return next((c for c in doc.get("comparisons", []) if c.get("candidate") == "tuned"), None)


def _forgetting_rows(run: RunDir) -> list[dict[str, Any]]:
    path = run.compare_dir.forgetting
    if not path.is_file():
        return []
    doc = read_json(path, what="the method's forgetting table", fix="rerun the sweep to redo it")
    rows = doc.get("rows") if isinstance(doc, dict) else doc
    return rows if isinstance(rows, list) else []


def method_row(method: str, run: RunDir, *, lr: float, lr_source: str, seconds: float | None = None,
               tasks: list[str] | None = None) -> dict[str, Any]:
    """One row of the sweep table, read from a method's finished run directory (`tasks`: a mixture's task names,
    whose comparisons are per task and whose metrics are keyed `<task>/<metric>`, `task_key`).

    Sizes (trainable parameters: count and % of the model's parameters), cost (peak resident memory in GiB, and
    the peak of torch's CUDA allocator when the method trained on a GPU, training seconds of the optimizer steps and training tokens per second, from train_summary.json), the
    learning rate used and where it came from, the task metrics against the base model (base, tuned, delta,
    paired-bootstrap 95% interval, p: comparison.json) and the forgetting rows (LM drift and benchmark deltas with
    95% intervals: forgetting.json). Raises DataError naming a file that cannot be read.
    """
    summary = read_json(run.train_summary, what="the training summary", fix="rerun the sweep to train it again")
    trainable, total = summary.get("trainable_params"), summary.get("total_params")
    task: dict[str, Any] = {}
    comparison: dict[str, Any] = {}
    for name in tasks or [None]:
        comparison = _comparison_to_base(run.compare_dir if name is None else run.task_dir(name).compare_dir) or {}
        task.update({task_key(name, m): {k: v.get(k) for k in ("baseline", "candidate", "delta", "ci95", "p_value")}
                     | ({} if name is None else {"task": name, "metric": m})
                     for m, v in (comparison.get("metrics") or {}).items()})
    forgetting = [{k: r.get(k) for k in ("task", "metric", "n", "base", "tuned", "delta", "relative_delta", "ci95",
                                         "p_value", "higher_is_better", "significant_drop", "status")}
                  for r in _forgetting_rows(run)]
    return {
        "method": method, "status": "done", "error": None, "exit_code": 0, "run_dir": run.path.name,
        "lr": lr, "lr_source": lr_source,
        "trainable_params": trainable, "total_params": total,
        "trainable_pct": round(100.0 * trainable / total, 4) if trainable and total else None,
        "peak_rss_gib": summary.get("peak_rss_gib"), "peak_gpu_gib": summary.get("peak_gpu_gib"),
        "train_time_s": summary.get("train_time_s"),
        "tokens_per_s": summary.get("tokens_per_s"), "steps": summary.get("steps"),
        "train_tokens": summary.get("train_tokens"), "device": summary.get("device"),
        "baseline": comparison.get("baseline"), "task": task, "forgetting": forgetting,
        "seconds": None if seconds is None else round(seconds, 1),
    }


def failed_row(method: str, error: TunebenchError | str, exit_code: int, *, lr: float | None = None,
               lr_source: str | None = None) -> dict[str, Any]:
    """The row of a method that did not finish: its one-sentence error and the exit code it would have had."""
    return {"method": method, "status": "failed", "error": str(error), "exit_code": exit_code, "run_dir": method,
            "lr": lr, "lr_source": lr_source, "task": {}, "forgetting": []}


def single_vs_multi_entry(task: str, twin: RunDir, doc: dict[str, Any]) -> dict[str, Any]:
    """A mixture method's `single_vs_multi` (sweep --mixtures): its single-task twin's run folder, the optimizer
    steps both trained, and single_vs_multi.json's rows (per task and metric: base, single, multi with their 95%
    intervals, multi - single paired; per forgetting measure: each model's delta from the base and multi -
    single)."""
    return {"task": task, "status": "done", "error": None, "exit_code": 0, "run_dir": twin.path.name,
            "optimizer_steps": doc.get("optimizer_steps"), "tasks": doc.get("tasks") or [],
            "forgetting": doc.get("forgetting") or []}


def failed_single_vs_multi(task: str, twin: RunDir, error: TunebenchError | str, exit_code: int) -> dict[str, Any]:
    """The `single_vs_multi` of a method whose single-task twin did not finish: its one-sentence error."""
    return {"task": task, "status": "failed", "error": str(error), "exit_code": exit_code,
            "run_dir": twin.path.name, "optimizer_steps": None, "tasks": [], "forgetting": []}


def primary_task_metric(rows: list[dict[str, Any]]) -> str | None:
    """The task metric the headline and chart use: the first of PRIMARY_TASK_METRICS every finished row has (in
    a mixture, `<task>/<metric>` of the first task that has it)."""
    done = [r for r in rows if r["status"] == "done"]
    shared = [m for m in (done[0]["task"] if done else {}) if all(m in r["task"] for r in done)]
    for metric in PRIMARY_TASK_METRICS:
        for key in shared:
            if key.rsplit("/", 1)[-1] == metric:
                return key
    return shared[0] if shared else None


def primary_forgetting(rows: list[dict[str, Any]]) -> tuple[str, str] | None:
    """(task, metric) of the forgetting measure the headline and chart use: a row every finished method has,
    by PRIMARY_FORGETTING_METRICS, never the KL row (a drift without a direction of better)."""
    done = [r for r in rows if r["status"] == "done"]
    if not done:
        return None
    keys = [(f["task"], f["metric"]) for f in done[0]["forgetting"] if f["metric"] != "kl"]
    shared = [k for k in keys if all(any((f["task"], f["metric"]) == k for f in r["forgetting"]) for r in done)]
    for metric in PRIMARY_FORGETTING_METRICS:
        for key in shared:
            if key[1] == metric:
                return key
    return shared[0] if shared else None


def forgetting_entry(row: dict[str, Any], key: tuple[str, str] | None) -> dict[str, Any] | None:
    if key is None:
        return None
    return next((f for f in row["forgetting"] if (f["task"], f["metric"]) == key), None)


def _fmt(x: Any) -> str:
    from tunebench.report.tables import fmt_num

    return fmt_num(x)


def headline(row: dict[str, Any], task_metric: str | None, forgetting: tuple[str, str] | None) -> str:
    """A method's end-of-run line: task delta with its 95% interval, the forgetting measure, cost."""
    from tunebench.report.tables import fmt_ci, fmt_signed

    if row["status"] != "done":
        return f"FAILED (exit {row['exit_code']}): {row['error']}"
    parts = []
    t = row["task"].get(task_metric) if task_metric else None
    if t:
        parts.append(f"{task_metric} {fmt_signed(t['delta'])} {fmt_ci(t['ci95'])} vs base")
    f = forgetting_entry(row, forgetting)
    if f:
        rel = f.get("relative_delta")
        parts.append(f"{f['task']} {f['metric']} {fmt_signed(f['delta'])}"
                     + (f" ({100 * rel:+.1f}%)" if rel is not None else "") + f" {fmt_ci(f['ci95'])}")
    twin = row.get("single_vs_multi")
    if twin and twin["status"] != "done":
        parts.append(f"single-task twin FAILED: {twin['error']}")
    elif twin:
        own = [t for t in twin["tasks"] if t.get("trained_on") == "both"]
        pick = next((t for m in PRIMARY_TASK_METRICS for t in own if t["metric"] == m), own[0] if own else None)
        if pick:
            parts.append(f"mixture - {twin['task']} alone: {pick['metric']} {fmt_signed(pick['delta'])} "
                         f"{fmt_ci(pick['ci95'])}")
    if row.get("tokens_per_s") is not None:
        parts.append(f"{_fmt(row['tokens_per_s'])} tok/s")
    if row.get("trainable_pct") is not None:
        parts.append(f"{row['trainable_pct']:.3g}% trainable")
    return ", ".join(parts) if parts else "done"


def format_duration(seconds: float) -> str:
    """'42s', '3m05s', '1h02m'."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def shared_base_seconds(base: RunDir) -> float:
    """Seconds of work recorded in the sweep's shared base folder so far: each evaluation's generation time
    (`scores.json` gen_time_s) and each benchmark task's scoring time (`results.json` tasks.*.time_s), 0 where
    nothing is written yet. The difference before and after a method is the base work that method did."""
    total = 0.0
    if not base.path.is_dir():
        return total
    for path in base.path.rglob("scores.json"):
        total += float(_read_or_empty(path).get("gen_time_s") or 0.0)
    for path in base.path.rglob("results.json"):
        tasks = _read_or_empty(path).get("tasks") or {}
        total += sum(float(t.get("time_s") or 0.0) for t in tasks.values() if isinstance(t, dict))
    return total


def _read_or_empty(path: Path) -> dict[str, Any]:
    try:
        data = read_json(path)
    except TunebenchError:  # only an estimate: an unreadable file counts nothing
        return {}
    return data if isinstance(data, dict) else {}


@dataclass
class Eta:
    """Overall ETA of a sweep: the mean time of the methods run so far in this invocation, times those left
    (methods finished by an earlier invocation take no time and do not count). The shared base's evaluation,
    done once inside the first method that needs it, is left out of that method's time for the estimate
    (`finish(shared=...)`), since no later method repeats it."""

    remaining: int
    durations: list[float] = field(default_factory=list)
    started: float = 0.0

    def start(self) -> None:
        self.started = time.perf_counter()

    def finish(self, ran: bool, shared: float = 0.0) -> float:
        """Close the current method; `ran`: it did work now (not only found finished); `shared`: seconds of it
        spent on the shared base (`shared_base_seconds` after minus before). Returns its seconds, all included."""
        took = time.perf_counter() - self.started
        self.remaining -= 1
        if ran:
            self.durations.append(max(0.0, took - shared))
        return took

    def text(self) -> str:
        if self.remaining <= 0:
            return "sweep finished"
        if not self.durations:
            return f"{self.remaining} method(s) left"
        eta = sum(self.durations) / len(self.durations) * self.remaining
        return f"{self.remaining} method(s) left, ETA ~{format_duration(eta)}"


def sweep_document(sweep: SweepDir, *, config: str | None, methods: list[str], against: str | None,
                   rows: list[dict[str, Any]], pairwise: list[dict[str, Any]], cfg: RunConfig,
                   precision: str | dict[str, str] | None = None, single_task: str | None = None) -> dict[str, Any]:
    """sweep.json's content (schema tunebench.sweep/1, docs/formats.md): settings (with the precision every
    method was pinned to: `pinned_precision`; a mixture's tasks and the --mixtures single task), one row per
    method, pairwise."""
    return {
        "schema": SWEEP_SCHEMA, "tunebench_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "dir": str(sweep.path), "config": config, "methods": methods, "against": against,
        "shared": {"model": cfg.model.ref, "seed": cfg.seed, "max_steps": cfg.train.max_steps,
                   "epochs": cfg.train.epochs, "batch_size": cfg.train.batch_size, "grad_accum": cfg.train.grad_accum,
                   "eval_split": cfg.eval.split, "eval_limit": cfg.eval.limit, "bench_tasks": list(cfg.bench.tasks)
                   if cfg.bench.enabled else [], "base_dir": sweep.base.path.name,
                   "precision": cfg.eval.precision, "pinned_precision": precision,
                   "tasks": [t.name for t in cfg.data.tasks] if cfg.data.multitask else None,
                   "single_task": single_task},
        "task_metric": primary_task_metric(rows),
        "forgetting_measure": list(primary_forgetting(rows) or []) or None,
        "rows": rows,
        "pairwise": pairwise,
    }
