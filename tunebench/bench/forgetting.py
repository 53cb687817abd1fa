"""What fine-tuning cost on general benchmarks: base vs tuned, per task and metric, with paired statistics.

Both runs must have scored the same examples (matched on sample ids) with the same task version, number of
demonstrations, protocol (chat template, demonstration sampler, limit) and precision; anything else is refused rather than
compared, since a delta between different example sets or prompts measures those, not the tuning. Every row says
whether it can measure a drop at all (`sensitivity.py`): a row at chance is "not measurable at this size", never
"no forgetting".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tunebench.bench.sensitivity import ALPHA, accuracy_sensitivity, chance_level, ratio_sensitivity
from tunebench.errors import DataError
from tunebench.evaluate.stats import paired_bootstrap
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


def _protocol(entry: dict[str, Any]) -> dict[str, Any] | None:
    return entry.get("protocol") if isinstance(entry.get("protocol"), dict) else None


def scored_precision(results: dict[str, Any], entry: dict[str, Any]) -> str | None:
    """The precision a task was scored in: its entry's `precision`, else (results written before benchmarks had
    one) the precision of the weights' dtype the results name (float32 -> fp32)."""
    if entry.get("precision"):
        return str(entry["precision"])
    from tunebench.models.precision import PRECISIONS

    dtype = (results.get("model") or {}).get("dtype") if isinstance(results.get("model"), dict) else None
    return next((name for name, p in PRECISIONS.items() if p.dtype == dtype), None)


def _check_same(task: str, b_entry: dict[str, Any], t_entry: dict[str, Any],
                precisions: tuple[str | None, str | None] = (None, None)) -> None:
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
    b_prec, t_prec = precisions
    if b_prec is not None and t_prec is not None and b_prec != t_prec:
        raise DataError(f"task '{task}': base was scored at precision {b_prec} and tuned at {t_prec}; rerun both "
                        "with the same bench.precision")
    b_proto, t_proto = _protocol(b_entry), _protocol(t_entry)
    if b_proto is not None and t_proto is not None:
        # a key one side lacks counts as None (results written before the key existed)
        differ = sorted(k for k in set(b_proto) | set(t_proto) if b_proto.get(k) != t_proto.get(k))
    else:
        differ = []
    if differ:
        what = "; ".join(f"{k}: base {b_proto.get(k)!r}, tuned {t_proto.get(k)!r}" for k in differ)
        raise DataError(f"task '{task}': base and tuned ran different protocols ({what}); rerun both the same way")


def _status(row: dict[str, Any]) -> str:
    if row["significant_drop"]:
        return "significant drop"
    if row["p_value"] is None:
        return "not measurable at this size"
    if row["metric"] == "kl":
        return "drift" if row["p_value"] < ALPHA else "no significant drift"
    return "no significant drop" if row["measurable"] else "not measurable at this size"


def _defined(test: dict[str, Any], n: int) -> dict[str, Any]:
    """`test` (a paired bootstrap's delta, ci95, p_value) with no interval and no p-value when fewer than two
    examples (documents) were paired: resampling one example always redraws it, so the bootstrap's interval has
    zero width and its p-value is its floor (1 / (resamples + 1)) whatever the data -- one question lost would read
    as a significant drop at p = 0.001. The delta stays; the row is "not measurable at this size"."""
    return test if n >= 2 else {**test, "ci95": None, "p_value": None}


def _significant(delta_worse: bool, p_value: float | None, alpha: float) -> bool:
    return bool(delta_worse and p_value is not None and p_value < alpha)


def forgetting_table(
    base_bench_dir: str | Path,
    tuned_bench_dir: str | Path,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = ALPHA,
) -> list[dict[str, Any]]:
    """One row per task and metric both runs have: base, tuned, delta (tuned - base), paired 95% interval, p-value,
    whether it is a significant drop (worse in the metric's direction and p < alpha), and whether the row can
    measure a drop at all (chance level, above-chance test, minimum detectable drop: `bench/sensitivity.py`).

    Perplexity tasks give ratio metrics (NLL per token, perplexities; lower is better) paired over documents, with
    the relative change, and the mean KL(base ‖ tuned) per token when the tuned run measured it (base: 0).
    Raises DataError when the runs scored different examples, versions, shots, protocols or precisions.
    """
    base, tuned = _results(Path(base_bench_dir)), _results(Path(tuned_bench_dir))
    rows: list[dict[str, Any]] = []
    for task, b_entry in base["tasks"].items():
        t_entry = tuned["tasks"].get(task)
        if t_entry is None:
            continue
        _check_same(task, b_entry, t_entry, (scored_precision(base, b_entry), scored_precision(tuned, t_entry)))
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
        b_rows, t_rows = [b_samples[i] for i in ids], [t_samples[i] for i in ids]
        if b_entry.get("output_type") == "perplexity":
            rows.extend(_perplexity_rows(task, b_entry, t_entry, b_rows, t_rows, n_resamples, seed, alpha))
            continue
        chance = chance_level(b_rows)
        for metric in b_entry.get("metrics", {}):
            if metric not in t_entry.get("metrics", {}):
                continue
            a = _values(b_rows, metric, f"{base_bench_dir}/{b_entry['samples']}")
            b = _values(t_rows, metric, f"{tuned_bench_dir}/{t_entry['samples']}")
            test = _defined(paired_bootstrap(a, b, n_resamples=n_resamples, seed=seed), len(ids))
            binary = all(v in (0.0, 1.0) for v in a + b)
            sens = accuracy_sensitivity(a, b, chance if metric in ("acc", "acc_norm") else None, alpha=alpha) \
                if binary else {"chance": None, "measurable": True}
            row = {
                "task": task, "metric": metric, "n": len(ids), "base": sum(a) / len(a), "tuned": sum(b) / len(b),
                "delta": test["delta"], "ci95": test["ci95"], "p_value": test["p_value"], "higher_is_better": True,
                "significant_drop": _significant(test["delta"] < 0, test["p_value"], alpha), **sens,
            }
            row["status"] = _status(row)
            rows.append(row)
    return rows


def _perplexity_rows(task: str, b_entry: dict[str, Any], t_entry: dict[str, Any], b_rows: list[dict[str, Any]],
                     t_rows: list[dict[str, Any]], n_resamples: int, seed: int, alpha: float) -> list[dict[str, Any]]:
    from tunebench.bench.perplexity import PERPLEXITY_METRICS
    from tunebench.evaluate.stats import paired_bootstrap_stats

    out = []
    names = [m for m in PERPLEXITY_METRICS if m in t_entry.get("metrics", {})]
    for name in names:
        metric = PERPLEXITY_METRICS[name]
        if name == "kl":  # the tuned run measured KL(base ‖ tuned); the base against itself is 0
            if any("kl" not in r for r in t_rows):
                continue
            a = np.column_stack([np.zeros(len(t_rows)), metric.stats(t_rows)[:, 1]])
        elif name in b_entry.get("metrics", {}):
            a = metric.stats(b_rows)
        else:
            continue
        b = metric.stats(t_rows)
        test = _defined(paired_bootstrap_stats(a, b, metric.score_sums, n_resamples=n_resamples, seed=seed),
                        len(b_rows))
        base_value = float(metric.score_sums(a.sum(0, keepdims=True))[0])
        worse = test["delta"] > 0 if not metric.higher_is_better else test["delta"] < 0
        row = {
            "task": task, "metric": name, "n": len(b_rows), "base": base_value,
            "tuned": float(metric.score_sums(b.sum(0, keepdims=True))[0]), "delta": test["delta"],
            "relative_delta": test["delta"] / base_value if base_value else None,
            "ci95": test["ci95"], "p_value": test["p_value"], "higher_is_better": metric.higher_is_better,
            "significant_drop": _significant(name != "kl" and worse, test["p_value"], alpha),
            **ratio_sensitivity(base_value, test["ci95"], len(b_rows)),
        }
        if name == "kl":
            row["mde"] = row["mde_relative"] = None
        row["status"] = _status(row)
        out.append(row)
    return out
