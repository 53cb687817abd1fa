"""What each command prints when it ends: a short rich table of what it found, every interval labelled.

The numbers come from the same files the report reads (train_summary.json, comparison.json, forgetting.json,
bench results.json, helm.json) and are formatted by `tunebench.report.tables`, so the terminal, report.md and
report.html always agree.
"""

from __future__ import annotations

from statistics import NormalDist
from typing import Any

from tunebench.evaluate.verdicts import describe_degenerate, small_set_note
from tunebench.report.tables import (
    DASH,
    VERDICT_WORDS,
    digits_for,
    fmt_ci,
    fmt_num,
    fmt_p,
    fmt_signed,
    fmt_tests,
    forgetting_headline,
    forgetting_rows,
    verdict,
)

Z95 = NormalDist().inv_cdf(0.975)  # two-sided 95% normal quantile (1.95996...)


def _table(title: str, columns: list[str], rows: list[list[str]], left: int = 1) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i < left else "right")
    for row in rows:
        table.add_row(*row)
    return table


def normal_ci95(value: float, stderr: float, lo: float | None = 0.0, hi: float | None = 1.0) -> list[float]:
    """95% normal-approximation interval value ± z·stderr (z = Φ⁻¹(0.975)), clipped to the metric's range.

    Benchmarks report the standard error of a mean over examples, as lm-evaluation-harness does; this turns it
    into the 95% interval every other table shows.
    """
    low, high = value - Z95 * stderr, value + Z95 * stderr
    if lo is not None:
        low = max(lo, low)
    if hi is not None:
        high = min(hi, high)
    return [low, high]


def train_table(summary: dict[str, Any], output: str | None) -> Any:
    """Steps, examples, validation loss before → after, best step, speed, and where the weights went."""
    rows = [
        ["steps", f"{summary.get('steps')} of {summary.get('total_steps')}"],
        ["training examples", fmt_num(summary.get("examples"))],
        ["validation loss", f"{fmt_num(summary.get('initial_val_loss'))} → {fmt_num(summary.get('final_val_loss'))}"
         + (f" ({summary['val_loss_drop']:+.0%})" if isinstance(summary.get("val_loss_drop"), float) else "")],
        ["best", f"{summary.get('select_best_by')} at step {fmt_num(summary.get('best_step'))}"],
        ["tokens/s", fmt_num(summary.get("tokens_per_s"))],
        ["training time", f"{fmt_num(summary.get('train_time_s'))} s"],
        ["weights", str(output or summary.get("output_weights") or DASH)],
    ]
    if summary.get("stopped_early"):
        rows.append(["stopped early", "yes (no improvement)"])
    return _table("training", ["", ""], rows)


def warning_lines(systems: dict[str, Any], test_set: dict[str, Any] | None) -> list[str]:
    """Degenerate outputs (one line per system) and, for a small comparison, how its verdicts were made."""
    lines = [f"⚠ {describe_degenerate(name, flag)}" for name, s in systems.items()
             if (flag := (s.get("diagnostics") or {}).get("degenerate"))]
    if test_set and test_set.get("small"):
        lines.append(small_set_note(int(test_set["n"])))
    return lines


def comparison_table(comparison: dict[str, Any]) -> list[Any]:
    """Warnings first (degenerate outputs, a small test set), then one table per baseline/candidate pair: scores,
    Δ with its 95% CI, the deciding p-value with its test named, the other tests' p-values, and the verdict."""
    from rich.text import Text

    tables: list[Any] = [Text(line, style="bold yellow")
                         for line in warning_lines(comparison.get("systems") or {}, comparison.get("test_set"))]
    n = (comparison.get("test_set") or {}).get("n")
    for comp in comparison.get("comparisons", []):
        rows = []
        for metric, m in comp["metrics"].items():
            d = digits_for(m["baseline"], m["candidate"])
            rows.append([metric, fmt_num(m["baseline"], d), fmt_num(m["candidate"], d), fmt_signed(m["delta"], d),
                         fmt_ci(m["ci95"], d), f"{fmt_p(m['p_value'])} ({m.get('method', DASH)})", fmt_tests(m),
                         VERDICT_WORDS[verdict(m)]])
        title = f"{comp['candidate']} vs {comp['baseline']}" + (f" (n = {n})" if n else "")
        tables.append(_table(title, ["metric", "baseline", "candidate", "Δ", "95% CI of Δ", "p (test)",
                                     "other tests: p (test)", "verdict"], rows))
    return tables


def diagnostics_tables(diagnostics: dict[str, Any] | None, name: str = "predictions") -> list[Any]:
    """After an evaluation's or a score's table: the degenerate-output warning, the majority-label baseline of each
    label metric, and the per-label breakdown (tunebench.evaluate.verdicts.diagnostics' content)."""
    from rich.text import Text

    if not diagnostics:
        return []
    out: list[Any] = []
    if diagnostics.get("degenerate"):
        out.append(Text(f"⚠ {describe_degenerate(name, diagnostics['degenerate'])}", style="bold yellow"))
    labels = diagnostics.get("labels")
    if labels:
        baseline = ", ".join(f"{m} {fmt_num(v, 4)}" for m, v in labels["majority_baseline"].items())
        rows = [[label, fmt_num(v["precision"], 4), fmt_num(v["recall"], 4), fmt_num(v["f1"], 4),
                 fmt_num(v["support"]), fmt_num(v["predicted"])] for label, v in labels["per_label"].items()]
        out.append(_table(f"per label (majority label {labels['majority_label']!r}: {baseline})",
                          ["label", "precision", "recall", "F1", "support", "predicted"], rows))
    return out


def forgetting_table(rows: list[dict[str, Any]] | dict[str, Any]) -> list[Any]:
    """Benchmarks before and after tuning, as the report shows them: Δ with its paired-bootstrap 95% CI and p, the
    chance level, the minimum detectable drop and the verdict ("not measurable at this size" for a row that cannot
    see a drop), then the report's one-sentence forgetting headline, which speaks only from measurable rows.

    `rows`: forgetting.json's content (a list of rows, or {"rows": [...]} from comparing two bench folders).
    Returns renderables to print in order (the table, then the headline).
    """
    rows = rows["rows"] if isinstance(rows, dict) else rows
    results = {"forgetting": rows}
    out = [[r["task"], r["metric"], fmt_num(raw.get("n")), r["base"], r["tuned"], r["delta"], r["ci"], r["p"],
            fmt_num(raw.get("chance"), 2) if raw.get("chance") is not None else DASH,
            fmt_p(raw["above_chance_p"]) if raw.get("above_chance_p") is not None else DASH, r["mde"],
            ("DROP " if r["drop"] else "") + r["status"]]
           for r, raw in zip(forgetting_rows(results), rows, strict=True)]
    table = _table("forgetting (base → tuned)", ["task", "metric", "n", "base", "tuned", "Δ", "95% CI of Δ",
                                                "p (paired-bootstrap)", "chance", "p (base > chance)",
                                                "min. detectable drop", "verdict"], out, left=2)
    headline = forgetting_headline(results)
    return [table, headline] if headline else [table]


def bench_table(results: dict[str, Any]) -> Any:
    """One row per task and metric: n, shots, value and its 95% interval (normal approximation)."""
    rows = []
    for task, t in results.get("tasks", {}).items():
        for metric, m in (t.get("metrics") or {}).items():
            value = m.get("value") if isinstance(m, dict) else m
            stderr = m.get("stderr") if isinstance(m, dict) else None
            d = digits_for(value)
            ci = normal_ci95(value, stderr, hi=None if d == 2 else 1.0) if stderr is not None else None
            rows.append([task, metric, fmt_num(t.get("n")), fmt_num(t.get("shots")), fmt_num(value, d),
                         fmt_ci(ci, d) if ci else DASH])
    return _table("benchmarks", ["task", "metric", "n", "shots", "score", "95% CI (normal approx.)"], rows, left=2)


def helm_rows_table(helm: dict[str, Any]) -> Any:
    """The HELM-style summary of one model: accuracy, calibration, robustness, fairness, bias, toxicity, cost."""
    from tunebench.bench.helm.summary import summary_cells

    return _table("HELM-style view", ["metric", "value"], [[title, value] for title, value in summary_cells(helm)])
