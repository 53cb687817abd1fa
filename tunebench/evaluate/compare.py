"""`tunebench compare`: paired statistics between evaluations of the same test set.

Each system is an eval dir (predictions.jsonl + scores.json); a run dir stands for every eval/<system>/ in it.
Scores come from predictions.jsonl (or the statistics the evaluation computed from it and handed on) so that
every number in comparison.json comes from one computation with one seed: all systems and metrics share the same
bootstrap resample indices, which is what makes the deltas paired. Comparisons are refused when the test sets
(ids + references), the metric signatures or the precisions the systems were scored at differ, because such
numbers do not measure the same thing. The stage returns comparison.json's content; tunebench.pipeline writes it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tunebench.errors import ConfigError, DataError
from tunebench.evaluate.metrics import (
    METRICS,
    MetricSettings,
    MetricStats,
    compute_metric_stats,
    expand_metrics,
)
from tunebench.evaluate.metrics.signature import parse_signature, with_precision, without_precision
from tunebench.evaluate.score import ScoringInputs, hash_test_set, load_scoring_inputs
from tunebench.evaluate.stats import approximate_randomization_stats, bootstrap_ci, paired_bootstrap_stats
from tunebench.evaluate.verdicts import (
    BOOTSTRAP,
    RANDOMIZATION,
    SMALL_TEST_SET,
    decide,
    diagnostics,
    verdict_test,
)
from tunebench.rundir import COMPARE_SCHEMA as SCHEMA
from tunebench.rundir import EvalDir, RunDir

log = logging.getLogger(__name__)
N_EXAMPLES_SHOWN = 5
_TIE = 1e-12


@dataclass
class System:
    name: str
    path: Path
    inputs: ScoringInputs
    scores: dict[str, Any]  # scores.json


def _system_dirs(path: Path) -> list[Path]:
    if EvalDir(path).predictions.is_file():
        return [path]
    eval_root = RunDir(path).eval_root
    if eval_root.is_dir():
        dirs = [d for d in eval_root.iterdir() if EvalDir(d).predictions.is_file()]
        if dirs:
            return sorted(dirs, key=_run_order)
    raise DataError(
        f"{path}: neither an eval dir (predictions.jsonl + scores.json) nor a run dir with eval/<system>/; "
        "point compare at one of those"
    )


def _run_order(d: Path) -> tuple[int, int, str]:
    """base-0shot first (the default baseline), then base-kshot by k, then the rest by name."""
    name = d.name
    if name.startswith("base-") and name.endswith("shot") and name[5:-4].isdigit():
        return 0, int(name[5:-4]), name
    return 1, 0, name


def load_systems(paths: Sequence[Path], labels: Sequence[str] | None = None) -> list[System]:
    """Every system under `paths`, named by its eval dir (prefixed with the run dir when names repeat), or by
    `labels` (one per path, each path then one eval dir; DataError otherwise)."""
    dirs = [d for p in paths for d in _system_dirs(Path(p))]
    if labels is not None and len(labels) != len(dirs):
        raise DataError(f"{len(labels)} system labels for {len(dirs)} systems under {', '.join(map(str, paths))}")
    names = [d.name for d in dirs]
    systems = []
    for k, d in enumerate(dirs):
        # a repeated name gets its run's name (runs/<run>/eval/<system>) or, for a bare eval dir, its parent's
        origin = d.parent.parent if d.parent == RunDir(d.parent.parent).eval_root else d.parent
        name = d.name if names.count(d.name) == 1 else f"{origin.name}/{d.name}"
        name = labels[k] if labels is not None else name
        scores_path = EvalDir(d).scores
        try:
            scores = json.loads(scores_path.read_text(encoding="utf-8-sig"))
        except FileNotFoundError:
            raise DataError(
                f"{scores_path}: missing, so the evaluation did not finish; run it again"
            ) from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"{scores_path}: not valid JSON ({exc}); re-run the evaluation") from None
        systems.append(System(name, d, load_scoring_inputs(EvalDir(d).predictions), scores))
    if len({s.name for s in systems}) != len(systems):
        raise DataError("two systems share a name: " + ", ".join(str(s.path) for s in systems))
    return systems


def _check_test_sets(systems: list[System]) -> dict[str, Any]:
    """Refuse systems evaluated on different examples; return the shared test_set description."""
    stored = {s.name: (s.scores.get("test_set") or {}).get("hash") for s in systems}
    known = {h for h in stored.values() if h}
    recomputed = {s.name: hash_test_set(s.inputs.ids, s.inputs.references) for s in systems}
    if len(known) > 1 or len(set(recomputed.values())) > 1:
        base = systems[0]
        details = []
        for s in systems[1:]:
            ids_a, ids_b = set(base.inputs.ids), set(s.inputs.ids)
            details.append(
                f"{s.name} vs {base.name}: {len(ids_b - ids_a)} ids only in {s.name}, "
                f"{len(ids_a - ids_b)} only in {base.name}, "
                f"hash {recomputed[s.name][:12]} vs {recomputed[base.name][:12]}"
            )
        raise DataError(
            "the systems were evaluated on different test sets (ids or references differ): "
            + "; ".join(details)
            + "; evaluate them on the same split and limit"
        )
    first = systems[0].scores.get("test_set") or {}
    formats = {s.name: prompt_format(s.scores) for s in systems}
    return {
        "n": len(systems[0].inputs.ids),
        "hash": next(iter(known)) if known else recomputed[systems[0].name],
        "split": first.get("split"),
        "same_prompts": len({tuple(s.inputs.prompts) for s in systems}) == 1,
        "same_prompt_format": len({json.dumps(f, sort_keys=True) for f in formats.values()}) == 1,
        "prompt_formats": formats,
    }


def scored_precision(scores: dict[str, Any]) -> str | None:
    """The precision an evaluation's model computed in (fp32, bf16, fp16, int8): scores.json's
    generation.precision, else a metric signature's precision field, else bf16 where bf16 autocast was recorded;
    None when scores.json predates the record."""
    gen = scores.get("generation") or {}
    if gen.get("precision"):
        return str(gen["precision"])
    for entry in (scores.get("metrics") or {}).values():
        found = parse_signature(str((entry or {}).get("signature") or "")).get("precision")
        if found:
            return found
    return "bf16" if gen.get("bf16") else None


def _check_precisions(systems: list[System]) -> dict[str, str | None]:
    """Refuse systems scored at different precisions (ConfigError, exit 2): a delta between a bf16 system and an
    fp32 one measures the precision as much as the systems. Returns each system's precision."""
    found = {s.name: scored_precision(s.scores) for s in systems}
    known = {n: p for n, p in found.items() if p}
    if len(set(known.values())) > 1:
        a = next(iter(known))
        b = next(n for n in known if known[n] != known[a])
        raise ConfigError(f"{a} was scored at precision {known[a]} and {b} at {known[b]}: compare systems evaluated at one "
                          f"precision (set eval.precision alike and evaluate again)")
    return found


def prompt_format(scores: dict[str, Any]) -> dict[str, Any]:
    """How an evaluation wrapped its prompts: {"prompt_format": chat | plain | None, "system_prompt": ...}.

    None means scores.json predates the record. Two systems scored in different formats (a tuned model in a chat
    template it never saw, say) measure the format as much as the tuning, so compare and the report flag it.
    """
    gen = scores.get("generation") or {}
    return {"prompt_format": gen.get("prompt_format"), "system_prompt": gen.get("system_prompt")}


def _metrics_and_settings(
    systems: list[System], metrics: Sequence[str] | None
) -> tuple[list[str], MetricSettings]:
    """Metrics to compare (default: those every scores.json holds) and the settings their signatures name
    (each metric class reads its own fields back: ROUGE stemming and tokenizer, BLEU tokenizer)."""
    if metrics is None:
        stored = [set(s.scores.get("metrics", {})) for s in systems]
        common = [m for m in systems[0].scores.get("metrics", {}) if all(m in names for names in stored)]
        if not common:
            where = EvalDir(systems[0].path).scores
            raise DataError(f"{where}: no metric is common to all systems; name the metrics to compare")
        metrics = common
    names = expand_metrics(list(metrics))
    for name in names:
        sigs = {s.name: without_precision(s.scores.get("metrics", {}).get(name, {}).get("signature") or "")
                for s in systems}
        present = {k: v for k, v in sigs.items() if v}
        if len(set(present.values())) > 1:
            listed = "; ".join(f"{k}: {v}" for k, v in present.items())
            raise DataError(
                f"metric {name} was computed with different settings ({listed}); re-score them alike"
            )
    settings: dict[str, Any] = {}
    for s in systems:
        for m in names:
            signature = s.scores.get("metrics", {}).get(m, {}).get("signature")
            if signature:
                settings.update(METRICS[m].settings_from_signature(parse_signature(signature)))
    return names, MetricSettings(**settings)


def _aligned(system: System, order: list[str]) -> ScoringInputs:
    position = {i: k for k, i in enumerate(system.inputs.ids)}
    take = [position[i] for i in order]
    inp = system.inputs
    return ScoringInputs(
        order,
        [inp.predictions[k] for k in take],
        [inp.references[k] for k in take],
        [inp.prompts[k] for k in take],
    )


def _per_example(ms: MetricStats) -> np.ndarray:
    """Values for win/tie/loss: the metric's per-example score, or what stands for it (macro-F1: correctness)."""
    return ms.metric.paired_values(ms.stats)


def _examples(
    metric: str, base: ScoringInputs, cand: ScoringInputs, values_a: np.ndarray, values_b: np.ndarray
) -> dict[str, Any]:
    delta = values_b - values_a
    order = np.argsort(-delta, kind="stable")

    def row(k: int) -> dict[str, Any]:
        item = {
            "id": base.ids[k],
            "prompt": base.prompts[k],
            "references": base.references[k],
            "baseline": base.predictions[k],
            "candidate": cand.predictions[k],
            "baseline_score": float(values_a[k]),
            "candidate_score": float(values_b[k]),
            "delta": float(delta[k]),
        }
        if cand.prompts[k] != base.prompts[k]:
            item["candidate_prompt"] = cand.prompts[k]
        return item

    gains = [row(int(k)) for k in order[:N_EXAMPLES_SHOWN] if delta[k] > _TIE]
    losses = [row(int(k)) for k in order[::-1][:N_EXAMPLES_SHOWN] if delta[k] < -_TIE]
    return {"metric": metric, "gains": gains, "losses": losses}


def _pair(
    base: System,
    cand: System,
    stats: dict[str, dict[str, MetricStats]],
    inputs: dict[str, ScoringInputs],
    names: list[str],
    n_resamples: int,
    seed: int,
    degenerate: Mapping[str, Any],
) -> dict[str, Any]:
    """One baseline/candidate pair: per metric the bootstrap delta and interval, both paired tests' p-values,
    the test that decides (tunebench.evaluate.verdicts.verdict_test) and the verdict; win/tie/loss; examples."""
    metrics, wtl = {}, {}
    for m in names:
        a, b = stats[base.name][m], stats[cand.name][m]
        bs = paired_bootstrap_stats(a.stats, b.stats, a.score_fn, n_resamples=n_resamples, seed=seed)
        ar = approximate_randomization_stats(a.stats, b.stats, a.score_fn, n_trials=n_resamples, seed=seed)
        p_values = {BOOTSTRAP: bs["p_value"], RANDOMIZATION: ar["p_value"]}
        test = verdict_test(p_values, len(a.stats))
        metrics[m] = {
            "baseline": a.score(),
            "candidate": b.score(),
            "delta": bs["delta"],
            "ci95": bs["ci95"],
            "ci95_method": BOOTSTRAP,
            "p_value": p_values[test],
            "method": test,
            "p_values": p_values,
            "p_value_ar": ar["p_value"],
            "verdict": decide(bs["delta"], p_values[test], candidate_degenerate=degenerate.get(cand.name) is not None,
                              higher_is_better=a.metric.higher_is_better),
            "n_resamples": n_resamples,
        }
        d = _per_example(b) - _per_example(a)
        wtl[m] = {
            "win": int((d > _TIE).sum()),
            "tie": int((np.abs(d) <= _TIE).sum()),
            "loss": int((d < -_TIE).sum()),
        }
    shown = "rougeL" if "rougeL" in names else names[0]
    examples = _examples(
        shown,
        inputs[base.name],
        inputs[cand.name],
        _per_example(stats[base.name][shown]),
        _per_example(stats[cand.name][shown]),
    )
    return {
        "baseline": base.name,
        "candidate": cand.name,
        "metrics": metrics,
        "win_tie_loss": wtl,
        "examples": examples,
    }


def _system_stats(
    system: System,
    aligned: ScoringInputs,
    names: list[str],
    settings: MetricSettings,
    known: Mapping[str, MetricStats] | None,
) -> dict[str, MetricStats]:
    """A system's statistics in the baseline's example order: the evaluation's own (rows reordered) when they
    match what would be computed here, else computed from its predictions."""
    stored = system.scores.get("metrics", {})
    if known and all(m in known and known[m].signature == without_precision(stored.get(m, {}).get("signature") or "")
                     for m in names):
        position = {i: k for k, i in enumerate(system.inputs.ids)}
        take = [position[i] for i in aligned.ids]
        if all(len(known[m].stats) == len(position) for m in names):
            return {m: MetricStats(known[m].metric, known[m].stats[take], known[m].signature) for m in names}
    return compute_metric_stats(aligned.predictions, aligned.references, names, settings=settings, warn=False)


def compare_systems(
    paths: list[Path],
    *,
    baseline: str | None = None,
    metrics: list[str] | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    computed: Mapping[Path, Mapping[str, MetricStats]] | None = None,
    labels: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Compare every system against the baseline (default: the first; base-0shot in a run dir).

    `computed`: statistics the evaluations already computed (tunebench.evaluate.metrics.compute_metric_stats
    over the rows of predictions.jsonl, in file order; `Evaluation.stats`), keyed by eval dir; a system's are
    used instead of being recomputed when they cover the compared metrics with the signatures compare would give
    them. Returns comparison.json's content (schema tunebench.compare/1, docs/formats.md); the caller writes it
    (tunebench.pipeline.compare_paths). Each system carries its diagnostics (degenerate outputs, per-label
    breakdown and majority-label baseline: tunebench.evaluate.verdicts); on a small test set each verdict uses
    the more conservative paired test, and a gain of degenerate outputs is never called a gain.
    Raises DataError for fewer than two systems, an unknown baseline, different test sets or signatures.
    `labels`: system names, one per path (for eval dirs whose own names repeat, e.g. two runs' `tuned`).
    """
    systems = load_systems(paths, labels)
    if len(systems) < 2:
        where = ", ".join(map(str, paths))
        raise DataError(f"compare needs at least two systems, found {len(systems)} under {where}")
    names_by = {s.name: s for s in systems}
    if baseline is not None and baseline not in names_by:
        raise DataError(f"baseline {baseline!r} is not one of the systems: {', '.join(names_by)}")
    base = names_by[baseline] if baseline else systems[0]
    test_set = _check_test_sets(systems)
    precisions = _check_precisions(systems)
    test_set["small"] = test_set["n"] < SMALL_TEST_SET
    if not test_set["same_prompt_format"]:
        listed = ", ".join(f"{n}: {f['prompt_format']}" + (f" (system prompt {f['system_prompt']!r})"
                                                            if f["system_prompt"] else "")
                           for n, f in test_set["prompt_formats"].items())
        log.warning("the systems were prompted in different formats (%s): deltas include the format's effect",
                    listed)
    names, settings = _metrics_and_settings(systems, metrics)
    order = base.inputs.ids
    inputs = {s.name: _aligned(s, order) for s in systems}
    stats = {s.name: _system_stats(s, inputs[s.name], names, settings, (computed or {}).get(Path(s.path)))
             for s in systems}
    checks = {s.name: diagnostics(inputs[s.name].predictions, inputs[s.name].references, names) for s in systems}
    degenerate = {name: d["degenerate"] for name, d in checks.items() if d["degenerate"] is not None}
    return {
        "schema": SCHEMA,
        "test_set": test_set,
        "seed": seed,
        "n_resamples": n_resamples,
        "systems": {
            s.name: {
                "path": str(s.path),
                "system": s.scores.get("system", {}),
                "metrics": {
                    m: {
                        "score": ms.score(),
                        "ci95": bootstrap_ci(ms.stats, ms.score_fn, n_resamples=n_resamples, seed=seed),
                        "signature": (with_precision(ms.signature, precisions[s.name]) if precisions[s.name]
                                      else ms.signature),
                    }
                    for m, ms in stats[s.name].items()
                },
                "diagnostics": checks[s.name],
            }
            for s in systems
        },
        "comparisons": [
            _pair(base, s, stats, inputs, names, n_resamples, seed, degenerate)
            for s in systems if s.name != base.name
        ],
    }
