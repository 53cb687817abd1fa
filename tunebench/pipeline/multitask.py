"""What a multi-task run (`data.tasks`) adds to the pipeline: every task evaluated on its own split with its own
metrics (`tasks/<task>/`), the forgetting table of the mixture run, and the single-task twin of
`tunebench run --single-task TASK` (its config, and the side-by-side `single_vs_multi.json` of the two runs).
`pipeline.run` calls these; they write through `pipeline.write`.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

from tunebench.config import EvalConfig, RunConfig
from tunebench.io import read_json
from tunebench.pipeline.stages import (
    OneModel,
    base_and_tuned_benches,
    decide_eval_precision,
    eval_examples,
    evaluate_into,
    task_set_for,
)
from tunebench.pipeline.write import announce, write_comparison, write_forgetting
from tunebench.processes import from_main, is_main
from tunebench.rundir import EvalDir, RunDir


def task_eval_config(cfg: RunConfig, task) -> EvalConfig:
    """eval settings for one task of a mixture: its metrics, and its generation length and stop strings
    (the task's own, else its built-in template's length, else eval.generation's)."""
    from tunebench.data.templates import BUILTIN_TEMPLATES

    gen = cfg.eval.generation
    own = task.config.generation
    builtin = BUILTIN_TEMPLATES.get(task.config.template.name or "") if task.config.template.prompt is None else None
    max_new = own.max_new_tokens or (builtin.max_new_tokens if builtin else None) or gen.max_new_tokens
    stop = own.stop if own.stop is not None else gen.stop
    generation = gen.model_copy(update={"max_new_tokens": max_new, "stop": list(stop)})
    return cfg.eval.model_copy(update={"metrics": list(task.metrics), "generation": generation})


def evaluate_tasks(cfg: RunConfig, *, data_dir: Path | None, adapter: str | None, split: str | None,
                    limit: int | None, shots: int, out_dir: Path, rank: int = 0,
                    world_size: int = 1) -> dict[str, Any]:
    """`tunebench eval` of a mixture: every task on its own split with its own metrics, into out_dir/<task>/."""
    from tunebench.models.load import load_model

    task_set = task_set_for(cfg, data_dir)
    loaded = load_model(cfg.model, adapter=adapter, merge=adapter is not None)
    system = {"name": out_dir.name, "model": cfg.model.ref, "adapter": adapter, "shots": shots}
    out: dict[str, Any] = {}
    for task in task_set.tasks:
        task_cfg = cfg.model_copy(update={"eval": task_eval_config(cfg, task)})
        examples = eval_examples(task_cfg, task.splits, split, limit)
        if is_main(rank):
            announce(f"task {task.name}: evaluating on {len(examples)} {split or cfg.eval.split} examples")
        out[task.name] = evaluate_into(EvalDir(out_dir).task(task.name), task_cfg, loaded, examples, task.splits,
                                       {**system, "task": task.name}, shots, split, rank=rank,
                                       world_size=world_size).scores
    return {"tasks": out}


def evaluate_run_tasks(cfg: RunConfig, task_set, systems: list[tuple[str, str | None, int]],
                       models: OneModel, *, rank: int = 0, world_size: int = 1,
                       pinned: Mapping[str, str] | None = None, home: RunDir | None = None) -> None:
    """Every system on every task's test split, with the task's metrics: RUN/tasks/<task>/eval/<system>/ (the
    base systems' under `home` instead, run_all's `base`).

    Systems are the outer loop, so each model is loaded once. pinned: the precision each task requests instead
    of eval.precision (run_all's `precision`).
    """
    run = RunDir(cfg.run_dir)
    log = announce if is_main(rank) else (lambda message: None)
    precisions: dict[str, tuple[str | None, dict[str, Any]]] = {}
    for name, adapter, shots in systems:
        for task in task_set.tasks:
            out = (run if adapter or home is None else home).task_dir(task.name).eval_dir(name)
            if out.scores.is_file():
                log(f"evaluation {task.name}/{name} already done")
                continue
            task_cfg = cfg.model_copy(update={"eval": task_eval_config(cfg, task)})
            examples = eval_examples(task_cfg, task.splits)
            if task.name not in precisions:  # one precision for every system compared on a task, as run_all
                getters = [lambda a=a: models.get(a) for a in dict.fromkeys(a for _, a, _ in systems)]
                precisions[task.name] = from_main(partial(decide_eval_precision, getters, examples, task_cfg.eval,
                                                          seed=cfg.seed, pinned=(pinned or {}).get(task.name)),
                                                  rank, world_size)
            log(f"task {task.name}: evaluating {name} on {len(examples)} {cfg.eval.split} examples")
            system = {"name": name, "model": cfg.model.ref, "adapter": adapter, "shots": shots, "task": task.name}
            evaluate_into(out, task_cfg, models.get(adapter), examples, task.splits, system, shots, rank=rank,
                          world_size=world_size, precision=precisions[task.name])


def forgetting_only(run: RunDir, *, n_resamples: int, seed: int) -> None:
    """The forgetting table of a multi-task run (its evaluations are compared per task)."""
    bench_dirs = base_and_tuned_benches([run.path])
    if len(bench_dirs) == 2:
        from tunebench.bench.forgetting import forgetting_table

        base_dir, tuned_dir = bench_dirs
        write_forgetting(run.compare_dir,
                         forgetting_table(base_dir, tuned_dir, n_resamples=n_resamples, seed=seed))


def single_task_config(cfg: RunConfig, task: str, steps: int, size: int) -> RunConfig:
    """The single-task twin of a mixture run: the same config (model, method, seed, every task's splits and
    evaluation, benchmarks) trained on `task` alone for the mixture run's `steps` optimizer steps, one pass of
    the task's `size` training examples per epoch; named `<name>-single-<task>`. Raises ConfigError (exit 2)
    when the config is not a mixture or has no such task."""
    from tunebench.config import config_from_dict
    from tunebench.errors import ConfigError, did_you_mean

    names = [t.name for t in cfg.data.tasks]
    if task not in names:
        known = ", ".join(names) if names else "none: the config has no data.tasks"
        raise ConfigError(f"--single-task: '{task}' is not a task of the mixture (data.tasks: {known})"
                          + did_you_mean(task, names))
    tree = cfg.model_dump(mode="json")
    tree["name"] = f"{cfg.name}-single-{task}"
    tree["data"]["mixture"] = {"strategy": "weights", "examples_per_epoch": size}
    for entry in tree["data"]["tasks"]:
        entry["weight"] = 1.0 if entry["name"] == task else 0.0
    tree["train"]["max_steps"] = steps
    return config_from_dict(tree, f"--single-task {task}")


def single_vs_multi(single: RunDir, multi: RunDir, task: str, steps: int, *, n_resamples: int,
                    seed: int, base: RunDir | None = None) -> dict[str, Any]:
    """The side-by-side of a single-task run and its mixture run (`single_vs_multi.json`, docs/formats.md).

    Per task and metric: the base score and each tuned model's score with its 95% bootstrap interval, and the
    paired difference multi - single (paired bootstrap over the task's test examples, compare's statistics;
    comparison.json of each task under the mixture run's `single_vs_multi/tasks/<task>/`). Forgetting: each
    run's forgetting rows (tuned vs base) and the paired difference multi - single on the same samples.
    base: where the base model's evaluations are (a sweep's shared base folder; default: the mixture run).
    """
    from tunebench.bench.forgetting import forgetting_table
    from tunebench.evaluate.compare import compare_systems

    labels = ("single-task", "multi-task")
    tasks: list[dict[str, Any]] = []
    for task_dir in multi.task_dirs():
        pair = [single.task_dir(task_dir.name).eval_dir("tuned"), task_dir.eval_dir("tuned")]
        if not all(d.scores.is_file() for d in pair):
            continue
        out = multi.single_vs_multi_dir.task(task_dir.name)
        doc = compare_systems([d.path for d in pair], baseline=labels[0], labels=labels, n_resamples=n_resamples,
                              seed=seed)
        write_comparison(out, doc)
        evaluations = (base.task_dir(task_dir.name) if base is not None else task_dir).evaluations()
        base_scores = next((read_json(d.scores)["metrics"] for d in evaluations if d.name == "base-0shot"), {})
        (comp,) = doc["comparisons"]
        for metric, m in comp["metrics"].items():
            tasks.append({
                "task": task_dir.name, "metric": metric, "trained_on": "both" if task_dir.name == task else "multi",
                "base": (base_scores.get(metric) or {}).get("score"),
                "single": doc["systems"][labels[0]]["metrics"][metric]["score"],
                "single_ci95": doc["systems"][labels[0]]["metrics"][metric]["ci95"],
                "multi": doc["systems"][labels[1]]["metrics"][metric]["score"],
                "multi_ci95": doc["systems"][labels[1]]["metrics"][metric]["ci95"],
                "delta": m["delta"], "ci95": m["ci95"], "p_value": m["p_value"],
            })
    forgetting: list[dict[str, Any]] = []
    runs = {"single": single, "multi": multi}
    tables = {k: read_json(r.compare_dir.forgetting) for k, r in runs.items() if r.compare_dir.forgetting.is_file()}
    if len(tables) == 2 and all(r.bench_dir("tuned").results.is_file() for r in runs.values()):
        between = {(r["task"], r["metric"]): r for r in forgetting_table(
            single.bench_dir("tuned").path, multi.bench_dir("tuned").path, n_resamples=n_resamples, seed=seed)}
        singles = {(r["task"], r["metric"]): r for r in tables["single"]}
        for row in tables["multi"]:
            key = (row["task"], row["metric"])
            if key not in singles or key not in between:
                continue
            s, d = singles[key], between[key]
            forgetting.append({
                "task": row["task"], "metric": row["metric"], "n": row["n"], "base": row["base"],
                "higher_is_better": row["higher_is_better"],
                "single": s["tuned"], "single_delta": s["delta"], "single_p_value": s["p_value"],
                "single_status": s["status"],
                "multi": row["tuned"], "multi_delta": row["delta"], "multi_p_value": row["p_value"],
                "multi_status": row["status"],
                # KL is measured against the original base in each run, so only its difference is given
                **({"delta": row["tuned"] - s["tuned"], "ci95": None, "p_value": None} if row["metric"] == "kl"
                   else {"delta": d["delta"], "ci95": d["ci95"], "p_value": d["p_value"]}),
            })
    return {"schema": "tunebench.single_vs_multi/1", "single_task": task, "optimizer_steps": steps,
            "single_run": str(single.path.resolve()), "multi_run": str(multi.path.resolve()),
            "tasks": tasks, "forgetting": forgetting}
