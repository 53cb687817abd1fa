"""Rows and formatted numbers shared by report.md and report.html, so both reports always say the same thing.

Everything here returns plain strings; escaping is left to each renderer (Jinja2 autoescape for HTML,
markdown.py's cell escaping for Markdown).
"""

from __future__ import annotations

import math
from typing import Any

from tunebench.evaluate.verdicts import ALPHA, VERDICTS, describe_degenerate, small_set_note

DASH = "—"
VERDICT_WORDS = {"gain": "significant gain", "loss": "significant loss", "n.s.": "not significant",
                 "degenerate": "not a gain: degenerate outputs"}
LIST_CELL_MAX = 8  # longer lists (per-instance values) are summarized by their length, not spelled out


def digits_for(*values: Any) -> int:
    """Decimals for one row of related numbers: 4 on a [0, 1] scale (ROUGE, accuracy), 2 on [0, 100] (BLEU)."""
    scale = max((abs(v) for v in values if isinstance(v, int | float) and math.isfinite(v)), default=0.0)
    return 4 if scale <= 1.0 else 2


def fmt_num(x: Any, digits: int | None = None) -> str:
    """A number for a table; `digits` fixes the decimals so a row's score, delta and interval line up."""
    if x is None:
        return DASH
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if not isinstance(x, float):
        return str(x)
    if math.isnan(x) or math.isinf(x):
        return str(x)
    if digits is not None:
        return f"{x:,.{digits}f}"
    if x != 0 and abs(x) < 1e-3:
        return f"{x:.3g}"
    return f"{x:.4f}" if abs(x) < 10 else f"{x:.2f}" if abs(x) < 1000 else f"{x:,.1f}"


def fmt_signed(x: Any, digits: int | None = None) -> str:
    text = fmt_num(x, digits)
    return f"+{text}" if isinstance(x, int | float) and not isinstance(x, bool) and x > 0 else text


def fmt_ci(ci: Any, digits: int | None = None) -> str:
    if not ci or len(ci) != 2 or ci[0] is None or ci[1] is None:
        return DASH
    return f"[{fmt_num(ci[0], digits)}, {fmt_num(ci[1], digits)}]"


def fmt_p(p: Any) -> str:
    if p is None:
        return DASH
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def fmt_value(v: Any) -> str:
    """Any JSON value as one line: numbers formatted, lists joined, mappings as k=v pairs."""
    if isinstance(v, list):
        if len(v) > LIST_CELL_MAX:
            return f"[{len(v)} values]"
        return ", ".join(fmt_value(x) for x in v) if v else DASH
    if isinstance(v, dict):
        return "; ".join(f"{k}={fmt_value(x)}" for k, x in v.items()) if v else DASH
    return fmt_num(v)


def flatten(tree: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested mappings as dotted keys, so summaries of any depth fit a two-column table."""
    if not isinstance(tree, dict):
        return [(prefix, tree)] if prefix else []
    out: list[tuple[str, Any]] = []
    for key, value in tree.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        out.extend(flatten(value, path) if isinstance(value, dict) and value else [(path, value)])
    return out


def verdict(entry: dict[str, Any]) -> str:
    """'gain', 'loss', 'n.s.' or 'degenerate': the verdict compare recorded (tunebench.evaluate.verdicts: the
    conservative test on small sets, degenerate outputs); for older files the stage's own `significant` flag when
    given, else p < ALPHA."""
    if entry.get("verdict") in VERDICTS:
        return str(entry["verdict"])
    p, delta = entry.get("p_value"), entry.get("delta")
    significant = entry.get("significant")
    if significant is None:
        significant = p is not None and p < ALPHA
    if not significant or not delta:
        return "n.s."
    return "gain" if delta > 0 else "loss"


def _labels(system: dict[str, Any]) -> dict[str, Any] | None:
    return (system.get("diagnostics") or {}).get("labels")


def majority_baselines(results: dict[str, Any]) -> dict[str, float]:
    """{label metric: the score of always answering the most frequent test label} (empty when no system is
    scored on labels); every system of a report shares its test set, so the first system's baseline is theirs."""
    found = next((_labels(s) for s in results["systems"].values() if _labels(s)), None)
    return dict(found["majority_baseline"]) if found else {}


def system_table(results: dict[str, Any]) -> dict[str, Any]:
    """Scores with 95% intervals, one row per metric and one column per system, plus each system's n; a metric
    that counts unparseable outputs (seqeval) gets a row with the counts; for a classification task a last column
    holds each label metric's majority-label baseline (`baseline` is None otherwise)."""
    systems = list(results["systems"])
    metrics: list[str] = []
    for system in results["systems"].values():
        metrics.extend(m for m in system["metrics"] if m not in metrics)
    majority = majority_baselines(results)
    rows = []
    for metric in metrics:
        cells = []
        for name in systems:
            m = results["systems"][name]["metrics"].get(metric)
            d = digits_for(m.get("score")) if m else 4
            cells.append(DASH if m is None else f"{fmt_num(m.get('score'), d)} {fmt_ci(m.get('ci95'), d)}")
        if majority:
            cells.append(fmt_num(majority[metric], 4) if metric in majority else DASH)
        rows.append({"metric": metric, "cells": cells})
        counted = [results["systems"][name]["metrics"].get(metric) or {} for name in systems]
        if any("unparseable" in m for m in counted):  # NER: outputs that were no entity list, scored as none
            rows.append({"metric": f"{metric}: unparseable outputs",
                         "cells": [fmt_num(m["unparseable"]) if "unparseable" in m else DASH for m in counted]
                         + ([DASH] if majority else [])})
    sizes = []
    for name in systems:
        ns = sorted({m.get("n") for m in results["systems"][name]["metrics"].values() if m.get("n") is not None})
        sizes.append(", ".join(fmt_num(n) for n in ns) or DASH)
    if majority:
        sizes.append(DASH)
    return {"systems": systems, "rows": rows, "n": sizes,
            "baseline": "majority-label baseline" if majority else None}


def label_tables(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Per system of a classification task: precision, recall, F1, support and times predicted per gold label,
    the majority label, and how many predictions were no gold label at all."""
    tables = []
    for name, system in results["systems"].items():
        labels = _labels(system)
        if not labels:
            continue
        rows = [{"label": label, **{k: fmt_num(float(v[k]), 4) for k in ("precision", "recall", "f1")},
                 "support": fmt_num(int(v["support"])), "predicted": fmt_num(int(v["predicted"]))}
                for label, v in labels["per_label"].items()]
        tables.append({"system": name, "rows": rows, "majority_label": str(labels["majority_label"]),
                       "outside": fmt_num(int(labels.get("outside_labels") or 0))})
    return tables


def degenerate_lines(results: dict[str, Any]) -> list[str]:
    """One warning per system whose outputs are degenerate (tunebench.evaluate.verdicts.degenerate_outputs)."""
    return [f"⚠ {describe_degenerate(name, flag)}." for name, system in results["systems"].items()
            if (flag := (system.get("diagnostics") or {}).get("degenerate"))]


def fmt_named_p(m: dict[str, Any]) -> str:
    """The deciding p-value with the test it comes from: `0.0420 (approximate-randomization)`."""
    return f"{fmt_p(m['p_value'])} ({m['method']})" if m.get("method") else fmt_p(m["p_value"])


def fmt_tests(m: dict[str, Any]) -> str:
    """The p-values of the tests that did not decide the verdict, each named: `0.0010 (paired-bootstrap)`."""
    others = {test: p for test, p in (m.get("p_values") or {}).items() if test != m.get("method")}
    if not others and m.get("p_value_ar") is not None and m.get("method") != "approximate-randomization":
        others = {"approximate-randomization": m["p_value_ar"]}
    return "; ".join(f"{fmt_p(p)} ({test})" for test, p in others.items()) or DASH


def _example(ex: dict[str, Any]) -> dict[str, Any]:
    refs = ex.get("references") or []
    return {"id": str(ex.get("id", DASH)), "prompt": str(ex.get("prompt") or ""),
            "references": [str(r) for r in (refs if isinstance(refs, list) else [refs])],
            "baseline": str(ex.get("baseline") or ""), "candidate": str(ex.get("candidate") or ""),
            "delta": fmt_signed(ex.get("delta"))}


def comparison_tables(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One table per baseline/candidate pair: deltas with intervals and p-values, win/tie/loss, examples."""
    tables = []
    for comp in results["comparisons"]:
        rows = []
        for metric, m in comp["metrics"].items():
            d = digits_for(m["baseline"], m["candidate"])
            rows.append({"metric": metric, "baseline": fmt_num(m["baseline"], d),
                         "candidate": fmt_num(m["candidate"], d), "delta": fmt_signed(m["delta"], d),
                         "ci": fmt_ci(m["ci95"], d), "p": fmt_p(m["p_value"]), "method": str(m["method"]),
                         "other_tests": fmt_tests(m), "verdict": verdict(m)})
        wtl = [{"metric": metric, "win": fmt_num(c.get("win")), "tie": fmt_num(c.get("tie")),
                "loss": fmt_num(c.get("loss"))} for metric, c in comp["win_tie_loss"].items()]
        examples = comp["examples"]
        tables.append({
            "title": f"{comp['candidate']} vs {comp['baseline']}",
            "baseline": comp["baseline"], "candidate": comp["candidate"], "rows": rows, "win_tie_loss": wtl,
            "example_metric": examples.get("metric"),
            "gains": [_example(e) for e in examples["gains"]],
            "losses": [_example(e) for e in examples["losses"]],
        })
    return tables


def headline(results: dict[str, Any]) -> list[str]:
    """What a reader must know first: degenerate outputs, a small test set, then one sentence per comparison and
    metric (each p-value with its test, the majority-label baseline beside a label metric); then forgetting."""
    lines = degenerate_lines(results)
    test_set = results.get("test_set") or {}
    if results["comparisons"] and test_set.get("small"):
        note = small_set_note(int(test_set["n"]))
        lines.append(note[0].upper() + note[1:] + ".")
    majority = majority_baselines(results)
    for comp in results["comparisons"]:
        for metric, m in comp["metrics"].items():
            word = VERDICT_WORDS[verdict(m)]
            d = digits_for(m["baseline"], m["candidate"])
            test = f", {m['method']}" if m.get("method") else ""
            beside = f"; majority-label baseline {fmt_num(majority[metric], d)}" if metric in majority else ""
            lines.append(f"{comp['candidate']} vs {comp['baseline']}, {metric}: {fmt_num(m['baseline'], d)} → "
                         f"{fmt_num(m['candidate'], d)} (Δ {fmt_signed(m['delta'], d)}, 95% CI "
                         f"{fmt_ci(m['ci95'], d)}, p = {fmt_p(m['p_value'])}{test}{beside}): {word}")
    forgetting = forgetting_headline(results)
    if forgetting is not None:
        lines.append(forgetting)
    return lines


def task_summary_rows(results: dict[str, Any]) -> list[dict[str, str]]:
    """One row per task and metric of a mixture: base, tuned, Δ [95% CI], p (the first comparison per task)."""
    rows = []
    for task, sub in (results.get("tasks") or {}).items():
        if not sub["comparisons"]:
            continue
        comp = next((c for c in sub["comparisons"] if c["candidate"] == "tuned"), sub["comparisons"][0])
        for metric, m in comp["metrics"].items():
            d = digits_for(m["baseline"], m["candidate"])
            rows.append({"task": task, "metric": metric, "baseline": fmt_num(m["baseline"], d),
                         "candidate": fmt_num(m["candidate"], d),
                         "delta": f"{fmt_signed(m['delta'], d)} {fmt_ci(m['ci95'], d)}", "p": fmt_named_p(m),
                         "verdict": verdict(m), "pair": f"{comp['candidate']} vs {comp['baseline']}"})
    return rows


def mixture_rows(results: dict[str, Any]) -> list[list[str]]:
    """The training mixture's composition: task, size, examples per epoch, share of examples and of tokens."""
    mixture = results.get("mixture") or {}
    return [[r["task"], fmt_num(r["size"]), fmt_num(r["examples_per_epoch"]), f"{r['example_share']:.1%}",
             f"{r['token_share']:.1%}" if "token_share" in r else DASH] for r in mixture.get("tasks", [])]


def single_vs_multi_rows(results: dict[str, Any]) -> dict[str, list[list[str]]]:
    """`run --single-task`: per task and metric base, single-task, multi-task (each [95% CI]) and the paired
    difference multi - single [CI] with p; per forgetting-suite row base, each tuned model with its Δ vs base
    and verdict, and multi - single."""
    svm = results.get("single_vs_multi") or {}
    tasks = []
    for r in svm.get("tasks", []):
        d = digits_for(r["base"], r["single"], r["multi"])
        trained = "yes" if r["trained_on"] == "both" else "no"
        tasks.append([r["task"], r["metric"], trained, fmt_num(r["base"], d),
                      f"{fmt_num(r['single'], d)} {fmt_ci(r['single_ci95'], d)}",
                      f"{fmt_num(r['multi'], d)} {fmt_ci(r['multi_ci95'], d)}",
                      f"{fmt_signed(r['delta'], d)} {fmt_ci(r['ci95'], d)}", fmt_p(r["p_value"]), verdict(r)])
    forgetting = []
    for r in svm.get("forgetting", []):
        d = digits_for(r["base"], r["single"], r["multi"])
        forgetting.append([r["task"], r["metric"], fmt_num(r["base"], d),
                           f"{fmt_num(r['single'], d)} ({fmt_signed(r['single_delta'], d)}, {r['single_status']})",
                           f"{fmt_num(r['multi'], d)} ({fmt_signed(r['multi_delta'], d)}, {r['multi_status']})",
                           f"{fmt_signed(r['delta'], d)} {fmt_ci(r['ci95'], d)}", fmt_p(r["p_value"])])
    return {"tasks": tasks, "forgetting": forgetting}


SINGLE_VS_MULTI_TASK_HEADERS = ["task", "metric", "in single-task training", "base", "single-task [95% CI]",
                                "multi-task [95% CI]", "multi − single [95% CI]", "p", "verdict"]
SINGLE_VS_MULTI_FORGETTING_HEADERS = ["task", "metric", "base", "single-task (Δ vs base, verdict)",
                                      "multi-task (Δ vs base, verdict)", "multi − single [95% CI]", "p"]


def training_rows(results: dict[str, Any]) -> list[tuple[str, str]]:
    training = results.get("training") or {}
    return [(k, fmt_value(v)) for k, v in flatten(training.get("summary") or {})]


BENCH_NOTE = ("Scores ± their standard error over examples (lm-evaluation-harness's convention); a 95% interval is "
              "about ± 1.96 standard errors.")


def bench_table(results: dict[str, Any]) -> dict[str, Any]:
    """Benchmark scores with rows (task, metric) and one column per system: value ± stderr."""
    systems = list(results["benchmarks"])
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for col, system in enumerate(systems):
        for task, t in results["benchmarks"][system]["tasks"].items():
            for metric, m in (t.get("metrics") or {}).items():
                row = rows.setdefault((task, metric), {
                    "task": task, "metric": metric, "n": fmt_num(t.get("n")), "shots": fmt_num(t.get("shots")),
                    "version": fmt_value(t.get("version")), "cells": [DASH] * len(systems)})
                value = m.get("value") if isinstance(m, dict) else m
                stderr = m.get("stderr") if isinstance(m, dict) else None
                d = digits_for(value)
                row["cells"][col] = fmt_num(value, d) + (f" ± {fmt_num(stderr, d)}" if stderr is not None else "")
    return {"systems": systems, "rows": list(rows.values())}


def _status(r: dict[str, Any]) -> str:
    """A forgetting row's verdict; rows written before sensitivity existed say only what their test says."""
    if r.get("status"):
        return str(r["status"])
    return "significant drop" if r.get("significant_drop") else "no significant drop (sensitivity unknown)"


def fmt_mde(r: dict[str, Any]) -> str:
    """The minimum detectable drop: accuracy points, or relative for perplexity-type rows."""
    if r.get("mde_relative") is not None:
        return f"{100 * r['mde_relative']:.1f}%"
    if r.get("mde") is None:
        return DASH
    return f"{100 * r['mde']:.1f} pts" if r.get("chance") is not None or r.get("discordance") is not None \
        else fmt_num(r["mde"])


def fmt_chance(r: dict[str, Any], who: str = "base") -> str:
    """Chance level with the one-sided test that `who` (the base of a comparison; `model` for one model's
    benchmark) scores above it."""
    if r.get("chance") is None:
        return DASH
    above = r.get("above_chance_p")
    return f"{fmt_num(r['chance'], 2)} ({who} above chance: p {fmt_p(above)})" if above is not None \
        else fmt_num(r["chance"], 2)


def forgetting_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for r in results["forgetting"]:
        d = digits_for(r["base"], r["tuned"])
        rel = r.get("relative_delta")
        delta = fmt_signed(r["delta"], d) + (f" ({100 * rel:+.1f}%)" if rel is not None else "")
        rows.append({"task": str(r["task"]), "metric": str(r["metric"]), "base": fmt_num(r["base"], d),
                     "tuned": fmt_num(r["tuned"], d), "delta": delta, "ci": fmt_ci(r["ci95"], d),
                     "p": fmt_p(r["p_value"]), "drop": bool(r["significant_drop"]), "chance": fmt_chance(r),
                     "mde": fmt_mde(r), "status": _status(r),
                     "measurable": bool(r.get("measurable", True))})
    return rows


def forgetting_headline(results: dict[str, Any]) -> str | None:
    """One sentence on forgetting that speaks only from rows able to measure a drop, and says so when none is."""
    rows = results.get("forgetting") or []
    if not rows:
        return None
    rated = [r for r in rows if r.get("metric") != "kl"]
    measurable = [r for r in rated if r.get("measurable", True)]
    unmeasurable = sorted({f"{r['task']} {r['metric']}" for r in rated if not r.get("measurable", True)})
    skipped = f"; not measurable at this size: {', '.join(unmeasurable)}" if unmeasurable else ""
    drops = [r for r in rated if r.get("significant_drop")]
    if drops:
        named = ", ".join(f"{r['task']} {r['metric']} ({fmt_signed(r['delta'], digits_for(r['base']))}, "
                          f"p = {fmt_p(r['p_value'])}, paired-bootstrap)" for r in drops)
        return f"Forgetting: significant drop on {named}{skipped}."
    if not measurable:
        return ("Forgetting: no row of the suite can measure a drop at this size (bases at chance or too few "
                f"examples), so nothing can be said about forgetting{skipped.replace('; n', ': n', 1)}.")
    sizes = ", ".join(f"{r['task']} {r['metric']} ≥ {fmt_mde(r)}" for r in measurable if r.get("mde") is not None)
    return (f"Forgetting: no significant drop on the {len(measurable)} measurable rows"
            + (f" (smallest detectable drops: {sizes})" if sizes else "") + f"{skipped}.")


def bench_summary_lines(results: dict[str, Any]) -> list[str]:
    """`tunebench bench` output: each task's metrics, and for accuracy its chance level, above-chance test and
    the minimum drop a paired comparison of this size would detect (so a suite can be sized before training)."""
    lines = []
    for task, res in results["tasks"].items():
        parts = []
        for name, m in res["metrics"].items():
            value = m.get("value")
            if m.get("stderr") is not None:
                parts.append(f"{name} {value:.4f} ± {m['stderr']:.4f}")
            else:
                parts.append(f"{name} {fmt_num(value)} {fmt_ci(m.get('ci95'))}".rstrip(f" {DASH}"))
        lines.append(f"{task:32s} n={res['n']:<6d} {', '.join(parts)}")
        if res.get("precision_choice"):
            lines.append(f"{'':32s}   precision {res['precision']}: {res['precision_choice']['reason']}")
        for name, sens in (res.get("sensitivity") or {}).items():
            verdict_ = "measurable" if sens.get("measurable") else "not measurable at this size"
            chance = fmt_chance(sens, "model") if sens.get("chance") is not None else "unknown"
            drop = (f"minimum detectable drop {fmt_mde(sens)} at 80% power" if fmt_mde(sens) != DASH else
                    f"no drop is detectable at 80% power with n={res['n']}")
            lines.append(f"{'':32s}   {name}: chance {chance}, {drop} ({verdict_})")
    return lines


def helm_table(results: dict[str, Any]) -> dict[str, Any]:
    """HELM-style summaries: one row per HELM column (accuracy, ECE, robustness, ...), one column per model."""
    from tunebench.bench.helm.summary import summary_cells

    systems = list(results["helm"])
    cells = {system: summary_cells(results["helm"][system]) for system in systems}
    titles = [title for title, _ in cells[systems[0]]] if systems else []
    return {"systems": systems, "rows": [{"metric": title, "cells": [cells[s][i][1] for s in systems]}
                                         for i, title in enumerate(titles)]}


def signature_rows(results: dict[str, Any]) -> list[dict[str, str]]:
    """Every score's signature (and each benchmark task's version): what a number means travels with it."""
    rows = [{"system": name, "metric": metric, "signature": str(m.get("signature") or DASH)}
            for name, system in results["systems"].items() for metric, m in system["metrics"].items()]
    for comp in results["comparisons"]:
        for metric, m in comp["metrics"].items():
            rows.append({"system": f"{comp['candidate']} vs {comp['baseline']}", "metric": f"Δ {metric}",
                         "signature": str(m.get("signature") or f"method:{m['method']}")})
    for system, doc in results["benchmarks"].items():
        for task, t in doc["tasks"].items():
            precision = f"|precision:{t['precision']}" if t.get("precision") else ""  # absent before it was kept
            rows.append({"system": f"bench/{system}", "metric": task,
                         "signature": f"version:{fmt_value(t.get('version'))}|shots:{fmt_num(t.get('shots'))}"
                                      f"|n:{fmt_num(t.get('n'))}{precision}"})
    return rows


def describe_test_set(results: dict[str, Any]) -> str | None:
    ts = results.get("test_set")
    if not isinstance(ts, dict):
        return None
    return ", ".join(f"{k}={fmt_value(v)}" for k, v in ts.items())


def config_text(results: dict[str, Any]) -> str | None:
    """The resolved run config as YAML, for the reader who wants to reproduce the run."""
    if results.get("config") is None:
        return None
    import yaml

    return yaml.safe_dump(results["config"], sort_keys=False, allow_unicode=True)
