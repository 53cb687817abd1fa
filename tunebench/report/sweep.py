"""The sweep report: one table row per method, the task-gain-vs-forgetting chart, pairwise deltas (--against),
and with --mixtures each method's mixture run beside its single-task twin.

Rendered from sweep.json's content alone (`tunebench.sweep.sweep_document`), through the report package's one
sandboxed, autoescaping Jinja environment, so a method's error text or a task name is always escaped. The chart
is a matplotlib `Figure` on the Agg canvas (no pyplot state), inlined as a data URI like every report chart.
"""

from __future__ import annotations

import base64
import math
from typing import Any

from tunebench.report.tables import DASH, digits_for, fmt_ci, fmt_num, fmt_p, fmt_signed
from tunebench.sweep import forgetting_entry, format_duration

TEMPLATE = "sweep.html.j2"


def _is_num(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _delta_cell(entry: dict[str, Any] | None, value_key: str = "delta") -> dict[str, str]:
    """Delta, interval and p-value of one comparison entry, formatted with the digits of its scale."""
    if not entry:
        return {"delta": DASH, "ci": DASH, "p": DASH, "verdict": "ns"}
    d = digits_for(entry.get("baseline", entry.get("base")), entry.get("candidate", entry.get("tuned")))
    rel = entry.get("relative_delta")
    delta = fmt_signed(entry.get(value_key), d) + (f" ({100 * rel:+.1f}%)" if _is_num(rel) else "")
    p = entry.get("p_value")
    better = entry.get("higher_is_better", True)
    sign = (entry.get("delta") or 0) * (1 if better else -1)
    verdict = "ns" if p is None or p >= 0.05 else ("gain" if sign > 0 else "loss")
    return {"delta": delta, "ci": fmt_ci(entry.get("ci95"), d), "p": fmt_p(p), "verdict": verdict}


def _with_direction(entry: dict[str, Any] | None, metric: str) -> dict[str, Any] | None:
    """A task metric's comparison entry with its direction from the metric registry (TER: lower is better)."""
    if entry is None:
        return None
    from tunebench.errors import TunebenchError
    from tunebench.evaluate.metrics import metric_class

    try:  # a mixture's entries name their metric (their key is <task>/<metric>)
        return {**entry, "higher_is_better": metric_class(entry.get("metric") or metric).higher_is_better}
    except TunebenchError:
        return entry


def _memory(row: dict[str, Any]) -> str:
    """Peak memory of a method's training: GPU memory (torch's allocator) on a GPU, else resident memory."""
    if _is_num(row.get("peak_gpu_gib")):
        return f"{row['peak_gpu_gib']:.2f} GiB GPU"
    return f"{row['peak_rss_gib']:.2f} GiB" if _is_num(row.get("peak_rss_gib")) else DASH


def sweep_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The table's rows as strings: one per method (failed ones with their error), shared by terminal and HTML."""
    task_metrics = [m for r in doc["rows"] for m in r["task"]]
    task_metrics = list(dict.fromkeys(task_metrics))
    measures = list(dict.fromkeys((f["task"], f["metric"]) for r in doc["rows"] for f in r["forgetting"]))
    out = []
    for r in doc["rows"]:
        base = {"method": r["method"], "status": r["status"], "error": r.get("error"),
                "lr": fmt_num(r.get("lr")) if r.get("lr") is not None else DASH, "lr_source": r.get("lr_source")}
        if r["status"] != "done":
            out.append({**base, "task": [], "forgetting": []})
            continue
        trainable = r.get("trainable_params")
        pct = r.get("trainable_pct")
        out.append({
            **base,
            "trainable": f"{fmt_num(trainable)} ({pct:.3g}%)" if trainable is not None and pct is not None else DASH,
            "memory": _memory(r),
            "time": format_duration(r["train_time_s"]) if _is_num(r.get("train_time_s")) else DASH,
            "tokens_per_s": fmt_num(r.get("tokens_per_s")),
            "task": [{"metric": m, **_delta_cell(_with_direction(r["task"].get(m), m))} for m in task_metrics],
            "forgetting": [{"task": t, "metric": m, **_delta_cell(forgetting_entry(r, (t, m)))}
                           for t, m in measures],
        })
    return out


def _score_ci(value: Any, ci: Any, digits: int) -> str:
    return f"{fmt_num(value, digits)} {fmt_ci(ci, digits)}" if _is_num(value) else DASH


def single_vs_multi_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Per method of a `--mixtures` sweep: its mixture run beside its single-task twin, as strings. Task rows:
    base, single-task and multi-task scores with their 95% intervals, multi - single (paired bootstrap) with
    interval and p-value; forgetting rows: each model's delta from the base and multi - single."""
    out = []
    for r in doc["rows"]:
        entry = r.get("single_vs_multi")
        if r["status"] != "done" or not entry:
            continue
        tasks = []
        for t in entry["tasks"]:
            d = digits_for(t.get("single"), t.get("multi"))
            cell = _delta_cell(_with_direction({**t, "baseline": t.get("single"), "candidate": t.get("multi")},
                                               t["metric"]))
            tasks.append({"task": t["task"], "metric": t["metric"],
                          "trained_on": "both" if t.get("trained_on") == "both" else "mixture only",
                          "base": fmt_num(t.get("base"), d) if _is_num(t.get("base")) else DASH,
                          "single": _score_ci(t.get("single"), t.get("single_ci95"), d),
                          "multi": _score_ci(t.get("multi"), t.get("multi_ci95"), d), **cell})
        forgetting = []
        for f in entry["forgetting"]:
            d = digits_for(f.get("single"), f.get("multi"))
            forgetting.append({
                "task": f["task"], "metric": f["metric"], "base": fmt_num(f.get("base"), d),
                "single": f"{fmt_num(f.get('single'), d)} ({fmt_signed(f.get('single_delta'), d)}, "
                          f"p {fmt_p(f.get('single_p_value'))})",
                "multi": f"{fmt_num(f.get('multi'), d)} ({fmt_signed(f.get('multi_delta'), d)}, "
                         f"p {fmt_p(f.get('multi_p_value'))})",
                **_delta_cell({**f, "baseline": f.get("single"), "candidate": f.get("multi")})})
        out.append({"method": r["method"], "task": entry["task"], "status": entry["status"],
                    "error": entry.get("error"), "run_dir": entry.get("run_dir"),
                    "steps": entry.get("optimizer_steps"), "tasks": tasks, "forgetting": forgetting})
    return out


def pairwise_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Method-vs-method deltas (candidate minus the --against method) for task metrics and benchmarks."""
    out = []
    for pair in doc.get("pairwise") or []:
        cells = [{"what": m, **_delta_cell(_with_direction(v, m))} for m, v in pair["metrics"].items()]
        cells += [{"what": f"{b['task']} {b['metric']}", **_delta_cell(b)} for b in pair.get("benchmarks") or []]
        out.append({"baseline": pair["baseline"], "candidate": pair["candidate"], "cells": cells})
    return out


def pairwise_missing(doc: dict[str, Any]) -> str | None:
    """Why a sweep asked for `--against M` has no method-vs-method comparison, as one sentence; None when it has
    one or none was asked. Without it the report and the terminal said nothing about the comparison asked for."""
    against = doc.get("against")
    if not against or doc.get("pairwise"):
        return None
    done = [r["method"] for r in doc.get("rows") or [] if r.get("status") == "done"]
    if against not in done:
        reason = f"{against} did not finish (its row says why)"
    elif len(done) < 2:
        reason = "no other method finished"
    else:
        reason = "the sweep stopped before comparing them (rerun the same sweep command)"
    return f"--against {against}: no method-vs-method comparison, because {reason}"


def _interval(entry: dict[str, Any], sign: float) -> tuple[float, list[list[float]] | None]:
    """(value, matplotlib error bar) of a delta with its 95% interval, times `sign`."""
    value = sign * entry["delta"]
    ci = entry.get("ci95")
    if not (ci and len(ci) == 2 and _is_num(ci[0]) and _is_num(ci[1])):
        return value, None
    lo, hi = sorted((sign * ci[0], sign * ci[1]))
    return value, [[max(0.0, value - lo)], [max(0.0, hi - value)]]


def gain_forgetting_png(doc: dict[str, Any]) -> bytes | None:
    """Task gain (y: tuned - base of the primary task metric) against forgetting (x: the primary forgetting
    measure's change, signed so that right is worse), one point per method with both 95% intervals as error
    bars, marker area proportional to the square root of the trainable parameters. None without the data."""
    metric, measure = doc.get("task_metric"), doc.get("forgetting_measure")
    points = []
    for r in doc["rows"]:
        t = r["task"].get(metric) if metric and r["status"] == "done" else None
        f = forgetting_entry(r, tuple(measure)) if measure and r["status"] == "done" else None
        if t and f and _is_num(t.get("delta")) and _is_num(f.get("delta")):
            points.append((r, t, f))
    if not points:
        return None
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.6), layout="constrained")
    ax = fig.subplots()
    largest = max(math.sqrt(r.get("trainable_params") or 1) for r, _, _ in points)
    for r, t, f in points:
        x, xerr = _interval(f, 1.0 if not f.get("higher_is_better", True) else -1.0)
        y, yerr = _interval(t, 1.0)
        size = 40 + 460 * math.sqrt(r.get("trainable_params") or 1) / largest
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="none", ecolor="#9aa3ad", capsize=3, linewidth=1)
        ax.scatter([x], [y], s=size, alpha=0.75, label=f"{r['method']} ({fmt_num(r.get('trainable_params'))} "
                   "trainable)")
        ax.annotate(r["method"], (x, y), textcoords="offset points", xytext=(6, 6), fontsize="small")
    ax.axhline(0, color="black", linewidth=0.7)
    ax.axvline(0, color="black", linewidth=0.7)
    direction = "increase" if not points[0][2].get("higher_is_better", True) else "drop"
    ax.set_xlabel(f"forgetting: {measure[0]} {measure[1]} {direction} vs base (right = worse)")
    ax.set_ylabel(f"task gain: Δ {metric} vs base")
    ax.set_title("Task gain vs forgetting (bars: 95% intervals; marker size: trainable parameters)",
                 fontsize="medium")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", markerscale=0.4)
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    return buf.getvalue()


def render_sweep_html(doc: dict[str, Any], chart: bytes | None = None) -> str:
    """report.html of a sweep folder (self-contained: inline CSS, the chart as a data URI, no scripts)."""
    from tunebench.report.html import _environment

    context = {
        "d": doc, "rows": sweep_rows(doc), "pairwise": pairwise_rows(doc), "pairwise_missing": pairwise_missing(doc),
        "mixtures": single_vs_multi_rows(doc),
        "chart": base64.b64encode(chart).decode("ascii") if chart else None,
    }
    return _environment().get_template(TEMPLATE).render(**context)


def sweep_table(doc: dict[str, Any]) -> Any:
    """The terminal's summary of a sweep: one rich table row per method."""
    from rich.table import Table

    metric, measure = doc.get("task_metric"), doc.get("forgetting_measure")
    table = Table(title="Sweep: every method against the same base", title_justify="left")
    columns = ["method", "trainable", "peak mem", "train time", "tok/s", "lr"]
    if metric:
        columns += [f"Δ {metric} [95% CI]"]
    if measure:
        columns += [f"Δ {measure[0]} {measure[1]} [95% CI]"]
    for i, c in enumerate(columns):
        table.add_column(c, justify="left" if i == 0 else "right")
    for row in sweep_rows(doc):
        if row["status"] != "done":
            table.add_row(row["method"], f"FAILED: {row['error']}", "", "", "", row["lr"], *[""] * (len(columns) - 6))
            continue
        cells = [row["method"], row["trainable"], row["memory"], row["time"], row["tokens_per_s"], row["lr"]]
        if metric:
            t = next((c for c in row["task"] if c["metric"] == metric), None)
            cells.append(f"{t['delta']} {t['ci']}" if t else DASH)
        if measure:
            f = next((c for c in row["forgetting"] if [c["task"], c["metric"]] == list(measure)), None)
            cells.append(f"{f['delta']} {f['ci']}" if f else DASH)
        table.add_row(*cells)
    return table
