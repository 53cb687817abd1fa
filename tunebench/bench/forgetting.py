"""What fine-tuning cost on general benchmarks: base vs tuned, per task and metric, with paired statistics.

Both runs must have scored the same examples (matched on sample ids) with the same task version and number of
demonstrations; anything else is refused rather than compared, since a delta between different example sets measures the sets, not the tuning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunebench.errors import DataError
from tunebench.io import read_json, read_jsonl
from tunebench.rundir import BenchDir


def _results(bench_dir: Path) -> dict[str, Any]:
    path = BenchDir(Path(bench_dir)).results
    data = read_json(path, what="benchmark results", fix="run `tunebench bench` first")
    if not isinstance(data, dict) or not isinstance(data.get("tasks"), dict):
        raise DataError(f"{path}: not a tunebench benchmark results file (no 'tasks' mapping)")
    return data


def _samples(bench_dir: Path, task: str, entry: dict[str, Any]) -> dict[str, dict[str, Any]]:
    path = Path(bench_dir) / str(entry.get("samples", ""))
    by_id: dict[str, dict[str, Any]] = {}
    for row in read_jsonl(path):
        if row.get("id") in by_id:
            raise DataError(f"{path}: sample id {row.get('id')!r} appears twice; rerun task '{task}'")
        by_id[str(row.get("id"))] = row
    return by_id


def _values(rows: list[dict[str, Any]], metric: str, path_hint: str) -> list[float]:
    try:
        return [float(r["scores"][metric]) for r in rows]
    except (KeyError, TypeError, ValueError):
        raise DataError(f"{path_hint}: a sample lacks scores.{metric}; rerun the benchmark") from None


def forgetting_table(
    base_bench_dir: str | Path,
    tuned_bench_dir: str | Path,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> list[dict[str, Any]]:
    """One row per task and metric both runs have: base, tuned, delta (tuned - base), paired 95% interval,
    p-value, and whether it is a significant drop (delta < 0 and p < alpha)."""
    from tunebench.evaluate.stats import paired_bootstrap

    base, tuned = _results(Path(base_bench_dir)), _results(Path(tuned_bench_dir))
    rows: list[dict[str, Any]] = []
    for task, b_entry in base["tasks"].items():
        t_entry = tuned["tasks"].get(task)
        if t_entry is None:
            continue
        if b_entry.get("version") != t_entry.get("version"):
            raise DataError(
                f"task '{task}': base ran version {b_entry.get('version')} and tuned version "
                f"{t_entry.get('version')}; rerun both with the same spec"
            )
        if b_entry.get("shots") != t_entry.get("shots"):
            raise DataError(
                f"task '{task}': base ran {b_entry.get('shots')}-shot and tuned {t_entry.get('shots')}-shot; "
                "rerun both with the same --shots"
            )
        b_samples = _samples(Path(base_bench_dir), task, b_entry)
        t_samples = _samples(Path(tuned_bench_dir), task, t_entry)
        if set(b_samples) != set(t_samples):
            only_base = sorted(set(b_samples) - set(t_samples))
            only_tuned = sorted(set(t_samples) - set(b_samples))
            raise DataError(
                f"task '{task}': base and tuned scored different examples ({len(only_base)} only in base, e.g. "
                f"{only_base[:3]}; {len(only_tuned)} only in tuned, e.g. {only_tuned[:3]}); "
                "rerun both with the same --limit, --shots and seed"
            )
        ids = list(b_samples)
        for metric in b_entry.get("metrics", {}):
            if metric not in t_entry.get("metrics", {}):
                continue
            a = _values([b_samples[i] for i in ids], metric, f"{base_bench_dir}/{b_entry['samples']}")
            b = _values([t_samples[i] for i in ids], metric, f"{tuned_bench_dir}/{t_entry['samples']}")
            test = paired_bootstrap(a, b, n_resamples=n_resamples, seed=seed)
            rows.append({
                "task": task,
                "metric": metric,
                "n": len(ids),
                "base": sum(a) / len(a),
                "tuned": sum(b) / len(b),
                "delta": test["delta"],
                "ci95": test["ci95"],
                "p_value": test["p_value"],
                "significant_drop": bool(test["delta"] < 0 and test["p_value"] < alpha),
            })
    return rows
