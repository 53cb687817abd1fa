"""`tunebench bench`'s stage: score benchmark tasks on one loaded model; returns results.json and sample logs.

Every task is prepared (data read, demonstrations drawn, subset taken) before any is scored, so a missing
file or a broken spec fails in seconds, not after an hour of MMLU. The stage writes nothing: after each task
it hands the results so far to `on_task`, through which the pipeline records finished tasks
(results.partial.json), and a rerun that passes those back as `finished`, with the same model and settings,
skips them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunebench import software_versions
from tunebench.bench.chat_format import CHAT_FORMAT
from tunebench.bench.instances import PreparedTask, prepare_task
from tunebench.bench.scoring import score_task, subtask_breakdown
from tunebench.bench.sensitivity import accuracy_sensitivity, chance_level
from tunebench.bench.spec import resolve_tasks
from tunebench.models.precision import model_precision
from tunebench.processes import check_rank, is_main
from tunebench.rundir import BENCH_SCHEMA as SCHEMA
from tunebench.rundir import samples_filename


@dataclass
class BenchResults:
    """results.json's content, and the per-sample log rows of the tasks scored in this call (file name -> rows;
    tasks reused from `finished` have theirs on disk already)."""

    results: dict[str, Any]
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def model_info(loaded: Any) -> dict[str, Any]:
    """What identifies the scored model in results.json: reference, trained output applied, precision.

    `adapter` is the trained output's folder (an adapter, merged or attached, or a full model), else "attached"
    for a model carrying an unmerged adapter of any method in the methods table, else None;
    `dtype` is the precision the weights were scored in.
    """
    from tunebench.models.methods import attached_method

    model = loaded.model
    attached = attached_method(model) is not None
    adapter = getattr(loaded, "adapter", None)
    return {
        "ref": getattr(loaded, "ref", None),
        "source": getattr(loaded, "source", None),
        "family": loaded.family,
        "use_chat": getattr(loaded, "use_chat", None),
        "system_prompt": getattr(loaded, "system_prompt", None),
        "adapter": adapter if adapter is not None else ("attached" if attached else None),
        "adapter_merged": bool(getattr(loaded, "merged", False)),
        "dtype": str(getattr(model, "dtype", "")).removeprefix("torch."),
    }


def run_benchmarks(
    loaded: Any,
    tasks: list[str],
    *,
    data_dir: Path | None,
    limit: int | None,
    shots: int | None,
    seed: int = 0,
    progress: bool = True,
    batch_size: int = 16,
    finished: Mapping[str, Any] | None = None,
    on_task: Callable[[BenchResults, str], None] | None = None,
    rank: int = 0,
    world_size: int = 1,
    reference: Any | None = None,
    limits: dict[str, int] | None = None,
    precisions: Mapping[str, tuple[str | None, dict[str, Any]]] | None = None,
) -> BenchResults:
    """Run `tasks` (names, `name:subtask`, `bbh:<task>`, or .yaml/.json paths); returns results and sample logs.

    limit: a seeded subset per task (stratified across subtasks; documents for perplexity tasks); shots: overrides
    every task's few-shot count. reference: a LoadedModel that perplexity tasks measure KL(reference ‖ model)
    against (None: the model's own adapter disabled, when it is a PEFT model). limits: per-task overrides of
    limit, keyed by task name.
    finished: an earlier, unfinished call's results (results.partial.json); its tasks are reused when the
    model, the settings, the task version and the example count agree. on_task(results so far, task name) runs
    after each scored task. `rank` of `world_size`: each process scores its shard of every task and every
    process returns the whole results (bench.scoring.score_task); only the main one prints progress. Raises ConfigError/DataError (bad task, missing data) before scoring anything.
    precisions: {task: (precision, decision record)} from `bench.parity.decide_bench_precision`: the task is
    scored by the model (and the KL reference) converted to that precision (`models.precision.precision_variant`);
    a task absent or None is scored as loaded. Each task's entry records the precision it was scored in
    (`precision`) and, where one was asked for, the decision (`precision_choice`).
    """
    check_rank(rank, world_size)
    progress = progress and is_main(rank)
    limits = dict(limits or {})
    prepared = prepare_tasks(tasks, data_dir=data_dir, limit=limit, limits=limits, shots=shots, seed=seed)
    task_limit = {task.spec.name: limits.get(task.spec.name, limit) for task in prepared}
    precisions = dict(precisions or {})
    out = BenchResults({
        "schema": SCHEMA,
        "model": model_info(loaded),
        "settings": {"tasks": list(tasks), "limit": limit, "limits": limits, "shots": shots, "seed": seed,
                     "chat_template": bool(getattr(loaded, "use_chat", False))},
        "software": software_versions(),
        "tasks": {},
    })
    reusable = _reusable_tasks(finished, out.results)
    variants = _Variants(loaded, reference)
    for task in prepared:
        name = task.spec.name
        used, record = precisions.get(name, (None, None))
        scored_in = used or model_precision(loaded.model)
        earlier = reusable.get(name)
        if earlier is not None and earlier["version"] == task.spec.version and earlier["n"] == len(task.instances) \
                and earlier.get("precision") == scored_in:
            out.results["tasks"][name] = earlier
            continue
        if progress:
            print(f"bench: {name} ({len(task.instances)} examples, {task.shots}-shot)", file=sys.stderr)
            if record is not None and record.get("requested") is not None:
                print(f"bench: {name} in {scored_in}: {record['reason']}", file=sys.stderr)
        model, ref = variants.get(used)
        scores = score_task(model, task, batch_size=batch_size, progress=progress, seed=seed, reference=ref,
                            rank=rank, world_size=world_size)
        filename = samples_filename(name)
        out.samples[filename] = scores.samples
        entry: dict[str, Any] = {
            "version": task.spec.version,
            "n": len(scores.samples),
            "shots": task.shots,
            "output_type": task.output_type,
            "metrics": scores.metrics,
            "samples": filename,
            "time_s": round(scores.time_s, 3),
            "protocol": protocol(loaded, task, task_limit[name]),
            "precision": scored_in,
        }
        if record is not None and record.get("requested") is not None:
            entry["precision_choice"] = record
        if task.output_type == "multiple_choice":
            entry["sensitivity"] = base_sensitivity(scores.samples, task.metrics)
        if task.spec.subtasks is not None and len(task.spec.subtasks.values) > 1:
            entry["subtasks"] = subtask_breakdown(scores.samples, task.metrics)
        out.results["tasks"][name] = entry
        if on_task is not None:
            on_task(out, name)
    return out


def prepare_tasks(tasks: list[str], *, data_dir: Path | None, limit: int | None, limits: Mapping[str, int] | None,
                  shots: int | None, seed: int) -> list[PreparedTask]:
    """Every task of `tasks` prepared (data read, demonstrations drawn, seeded subset of `limits[name]`, else
    `limit`, taken), duplicates once; ConfigError/DataError before anything is scored."""
    specs = list({spec.name: spec for spec in resolve_tasks(tasks, data_dir)}.values())
    return [prepare_task(spec, data_dir=data_dir, shots=shots, limit=(limits or {}).get(spec.name, limit), seed=seed)
            for spec in specs]


class _Variants:
    """The scored model and its KL reference in each precision asked for, each converted once per call."""

    def __init__(self, loaded: Any, reference: Any | None) -> None:
        self.loaded, self.reference = loaded, reference
        self.made: dict[str, tuple[Any, Any | None]] = {}

    def get(self, precision: str | None) -> tuple[Any, Any | None]:
        import dataclasses

        if precision is None:
            return self.loaded, self.reference
        if precision not in self.made:
            from tunebench.models.precision import precision_variant

            def convert(loaded: Any) -> Any:
                return dataclasses.replace(loaded, model=precision_variant(loaded.model, precision))

            self.made = {precision: (convert(self.loaded),  # one conversion held at a time
                                     convert(self.reference) if self.reference is not None else None)}
        return self.made[precision]


def protocol(loaded: Any, task: PreparedTask, limit: int | None) -> dict[str, Any]:
    """How a task was run, beyond its spec version: two runs compare only when these agree. `chat_format` names
    how chat-templated prompts were laid out (None without the chat template)."""
    chat = bool(getattr(loaded, "use_chat", False))
    return {"chat_template": chat, "chat_format": CHAT_FORMAT if chat else None,
            "fewshot_sampler": task.spec.fewshot.sampler, "shots": task.shots, "limit": limit}


def base_sensitivity(samples: list[dict[str, Any]], metrics: list[str]) -> dict[str, Any]:
    """Per accuracy metric: chance level, above-chance test and the minimum detectable drop for a later paired
    comparison of this size (from this model's accuracy; see bench/sensitivity.py)."""
    chance = chance_level(samples)
    return {m: accuracy_sensitivity([float(s["scores"][m]) for s in samples], None, chance)
            for m in metrics if m in ("acc", "acc_norm")}



def _reusable_tasks(finished: Mapping[str, Any] | None, results: dict[str, Any]) -> dict[str, Any]:
    """The finished tasks of an earlier call with the same model and settings."""
    if not finished or finished.get("model") != results["model"] or finished.get("settings") != results["settings"]:
        return {}
    tasks = finished.get("tasks")
    return {name: entry for name, entry in tasks.items() if isinstance(entry, dict)} if isinstance(tasks, dict) else {}
