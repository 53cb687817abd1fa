"""The report's charts as PNG bytes, ready to inline as data URIs so report.html needs no other file.

Figures are matplotlib.figure.Figure objects rendered by the Agg canvas, not pyplot: no global figure
state and no display backend, which keeps library calls and parallel tests safe. matplotlib is imported
inside the functions so that commands which never plot start fast.
"""

from __future__ import annotations

import io
import math
from typing import Any

from tunebench.report.tables import verdict
from tunebench.train.progress import loss_curves_png  # one loss-curve plotter, shared with training

# Preferred per-example metric for the distribution plot: ROUGE-L first, as the summarization headline.
DIST_METRICS = ("rougeL", "rougeLsum", "rouge1", "rouge2")
VERDICT_COLORS = {"gain": "#2a9d55", "loss": "#c8453b", "n.s.": "#9aa3ad", "degenerate": "#e0a800"}
VERDICT_LABELS = {"gain": "significant gain", "loss": "significant loss", "n.s.": "not significant",
                  "degenerate": "degenerate outputs"}


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    return buf.getvalue()


def _is_num(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def delta_chart_png(comparisons: list[dict[str, Any]]) -> bytes | None:
    """One panel per metric (scales differ: ROUGE in [0, 1], BLEU in [0, 100]); bars are deltas, whiskers 95% CIs."""
    from matplotlib.patches import Patch

    metrics: list[str] = []
    for comp in comparisons:
        metrics.extend(m for m in comp["metrics"] if m not in metrics)
    if not metrics:
        return None
    labels = [f"{c['candidate']} vs {c['baseline']}" for c in comparisons]
    ncols = min(3, len(metrics))
    nrows = math.ceil(len(metrics) / ncols)
    fig = _figure(4.3 * ncols, (0.45 * len(comparisons) + 1.5) * nrows + 0.4)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i, metric in enumerate(metrics):
        ax = axes[i // ncols][i % ncols]
        for j, comp in enumerate(comparisons):
            m = comp["metrics"].get(metric)
            if m is None or not _is_num(m.get("delta")):
                continue
            delta, ci = m["delta"], m.get("ci95")
            xerr = None
            if ci and len(ci) == 2 and _is_num(ci[0]) and _is_num(ci[1]):
                xerr = [[max(0.0, delta - ci[0])], [max(0.0, ci[1] - delta)]]
            ax.barh(j, delta, xerr=xerr, height=0.6, capsize=4, color=VERDICT_COLORS[verdict(m)])
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_yticks(range(len(labels)), labels)
        ax.set_ylim(len(labels) - 0.5, -0.5)
        ax.set_title(f"Δ {metric}")
        ax.grid(axis="x", alpha=0.3)
    for k in range(len(metrics), nrows * ncols):
        axes[k // ncols][k % ncols].set_visible(False)
    handles = [Patch(color=VERDICT_COLORS[v], label=VERDICT_LABELS[v]) for v in VERDICT_COLORS]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False)
    return _png(fig)


def pick_distribution_metric(systems: dict[str, Any]) -> str | None:
    """The metric to show per-example distributions for: preferred ROUGE first, else any per-example metric."""
    available = [m for s in systems.values() for m in s.get("per_example", {}) if s["per_example"][m]]
    for metric in DIST_METRICS:
        if metric in available:
            return metric
    return available[0] if available else None


def score_distribution_png(per_example: dict[str, list[float]], metric: str) -> bytes | None:
    """Histogram and box plot of one per-example metric for every system (base, few-shot, tuned)."""
    import numpy as np

    data = {name: [v for v in values if _is_num(v)] for name, values in per_example.items()}
    data = {name: values for name, values in data.items() if values}
    if not data:
        return None
    fig = _figure(11, 3.8)
    ax_hist, ax_box = fig.subplots(1, 2, width_ratios=[3, 2])
    everything = [v for values in data.values() for v in values]
    bounded = min(everything) >= 0.0 and max(everything) <= 1.0
    bins = np.linspace(0.0, 1.0, 21) if bounded else 20
    for name, values in data.items():
        ax_hist.hist(values, bins=bins, histtype="step", linewidth=1.8,
                     label=f"{name} (mean {np.mean(values):.3f}, n={len(values)})")
    ax_hist.set_xlabel(f"per-example {metric}")
    ax_hist.set_ylabel("examples")
    ax_hist.legend(fontsize="small")
    ax_hist.grid(alpha=0.3)
    ax_box.boxplot(list(data.values()), showmeans=True)
    ax_box.set_xticks(range(1, len(data) + 1), list(data))
    ax_box.set_ylabel(metric)
    ax_box.set_title("median, quartiles, mean (triangle)", fontsize="small")
    ax_box.grid(axis="y", alpha=0.3)
    return _png(fig)


def render_plots(results: dict[str, Any]) -> dict[str, bytes]:
    """Every chart the results support, keyed by name; charts without data are left out."""
    plots: dict[str, bytes | None] = {"deltas": delta_chart_png(results["comparisons"])}
    if results.get("training"):
        plots["loss"] = loss_curves_png(results["training"]["log"])
    metric = pick_distribution_metric(results["systems"])
    if metric is not None:
        per_example = {n: s["per_example"].get(metric, []) for n, s in results["systems"].items()}
        plots["distribution"] = score_distribution_png(per_example, metric)
    return {name: png for name, png in plots.items() if png is not None}
