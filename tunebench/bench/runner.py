"""`tunebench bench`: run benchmark tasks on one loaded model and write results.json plus per-sample logs.

Every task is prepared (data read, demonstrations drawn, subset taken) before any is scored, so a missing
file or a broken spec fails in seconds, not after an hour of MMLU. Finished tasks are recorded in
results.partial.json; a rerun with the same model and settings skips them. results.json appears only when
every task is done, so its presence means a complete run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from tunebench.bench.instances import prepare_task
from tunebench.bench.scoring import score_task, subtask_breakdown
from tunebench.bench.spec import resolve_tasks
from tunebench.io import atomic_write_json, atomic_write_jsonl
from tunebench.rundir import BENCH_SCHEMA as SCHEMA
from tunebench.rundir import BenchDir, samples_filename


def model_info(loaded: Any) -> dict[str, Any]:
    """What identifies the scored model in results.json."""
    model = loaded.model
    return {
        "ref": getattr(loaded, "ref", None),
        "source": getattr(loaded, "source", None),
        "family": loaded.family,
        "use_chat": getattr(loaded, "use_chat", None),
        "system_prompt": getattr(loaded, "system_prompt", None),
        "adapter": bool(getattr(model, "peft_config", None)),
        "dtype": str(getattr(model, "dtype", "")).removeprefix("torch."),
    }


def run_benchmarks(
    loaded: Any,
    tasks: list[str],
    *,
    data_dir: Path | None,
    limit: int | None,
    shots: int | None,
    out_dir: Path,
    seed: int = 0,
    progress: bool = True,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Run `tasks` (names, `name:subtask`, `bbh:<task>`, or .yaml/.json paths); returns results.json's content.

    limit: a seeded subset per task (stratified across subtasks); shots: overrides every task's few-shot count.
    """
    out_dir = Path(out_dir)
    specs = list({spec.name: spec for spec in resolve_tasks(tasks, data_dir)}.values())
    prepared = [prepare_task(spec, data_dir=data_dir, shots=shots, limit=limit, seed=seed) for spec in specs]
    results: dict[str, Any] = {
        "schema": SCHEMA,
        "model": model_info(loaded),
        "settings": {"tasks": list(tasks), "limit": limit, "shots": shots, "seed": seed},
        "tasks": {},
    }
    finished = _finished_tasks(out_dir, results)
    for task in prepared:
        name = task.spec.name
        earlier = finished.get(name)
        if earlier is not None and earlier["version"] == task.spec.version and earlier["n"] == len(task.instances):
            results["tasks"][name] = earlier
            continue
        if progress:
            print(f"bench: {name} ({len(task.instances)} examples, {task.shots}-shot)", file=sys.stderr)
        scores = score_task(loaded, task, batch_size=batch_size, progress=progress, seed=seed)
        filename = samples_filename(name)
        atomic_write_jsonl(out_dir / filename, scores.samples)
        entry: dict[str, Any] = {
            "version": task.spec.version,
            "n": len(scores.samples),
            "shots": task.shots,
            "output_type": task.output_type,
            "metrics": scores.metrics,
            "samples": filename,
            "time_s": round(scores.time_s, 3),
        }
        if task.spec.subtasks is not None and len(task.spec.subtasks.values) > 1:
            entry["subtasks"] = subtask_breakdown(scores.samples, task.metrics)
        results["tasks"][name] = entry
        atomic_write_json(BenchDir(out_dir).partial, results)
    atomic_write_json(BenchDir(out_dir).results, results)
    BenchDir(out_dir).partial.unlink(missing_ok=True)
    return results


def _finished_tasks(out_dir: Path, results: dict[str, Any]) -> dict[str, Any]:
    """Tasks an interrupted run of the same model and settings finished (their sample logs still present)."""
    path = BenchDir(out_dir).partial
    try:
        earlier = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if earlier.get("model") != results["model"] or earlier.get("settings") != results["settings"]:
        return {}
    return {
        name: entry for name, entry in earlier.get("tasks", {}).items()
        if isinstance(entry, dict) and (out_dir / str(entry.get("samples"))).is_file()
    }
