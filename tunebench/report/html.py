"""report.html, one self-contained file (inline CSS, charts as base64 PNG data URIs), and render_report.

The template is rendered by Jinja2's immutable sandbox with autoescape forced on (its `.j2` suffix would slip past
select_autoescape) and StrictUndefined, so model output and data text are always escaped and a template
typo fails loudly instead of printing nothing. The page's Content-Security-Policy allows no scripts and no
network requests, so even a file edited by hand cannot phone home.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunebench.evaluate.verdicts import SMALL_TEST_SET
from tunebench.report import tables
from tunebench.report.markdown import render_markdown
from tunebench.report.plots import pick_distribution_metric, render_plots
from tunebench.report.results import build_results

TEMPLATE = "report.html.j2"


def _environment() -> Any:
    from jinja2 import PackageLoader, StrictUndefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(loader=PackageLoader("tunebench.report", "templates"), autoescape=True,
                                        undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(num=tables.fmt_num, value=tables.fmt_value)
    return env


def render_html(results: dict[str, Any], plots: dict[str, bytes] | None = None) -> str:
    """The report page; `plots` defaults to every chart the results support."""
    if plots is None:
        plots = render_plots(results)
    context = {
        "r": results,
        "alpha": tables.ALPHA,
        "small_n": SMALL_TEST_SET,
        "test_set": tables.describe_test_set(results),
        "headline": tables.headline(results),
        "systems": tables.system_table(results),
        "labels": tables.label_tables(results),
        "comparisons": tables.comparison_tables(results),
        "training": tables.training_rows(results),
        "bench": tables.bench_table(results), "bench_note": tables.BENCH_NOTE,
        "forgetting": tables.forgetting_rows(results),
        "helm": tables.helm_table(results),
        "signatures": tables.signature_rows(results),
        "config": tables.config_text(results),
        "task_summary": tables.task_summary_rows(results),
        "mixture": results.get("mixture"),
        "mixture_rows": tables.mixture_rows(results),
        "svm": tables.single_vs_multi_rows(results),
        "svm_task_headers": tables.SINGLE_VS_MULTI_TASK_HEADERS,
        "svm_forgetting_headers": tables.SINGLE_VS_MULTI_FORGETTING_HEADERS,
        "tasks": [{"name": name, "systems": tables.system_table(sub), "comparisons": tables.comparison_tables(sub),
                   "warnings": sub["warnings"]} for name, sub in (results.get("tasks") or {}).items()],
        "dist_metric": pick_distribution_metric(results["systems"]),
        "plots": {name: base64.b64encode(png).decode("ascii") for name, png in plots.items()},
    }
    return _environment().get_template(TEMPLATE).render(**context)


@dataclass
class Report:
    """The report of one directory: results.json's content, report.md's text and report.html's page."""

    results: dict[str, Any]
    markdown: str
    html: str


def render_report(run_dir: Path) -> Report:
    """The report of a run, compare or eval directory, all rendered in memory (the pipeline writes it).

    Raises DataError naming the file when something the directory holds cannot be read.
    """
    results = build_results(Path(run_dir))
    return Report(results, render_markdown(results), render_html(results))
