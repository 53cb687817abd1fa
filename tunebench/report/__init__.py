"""The report stage: results.json (schema in docs/results_schema.md), report.md and a self-contained report.html."""

from tunebench.report.html import Report, render_html, render_report
from tunebench.report.markdown import render_markdown
from tunebench.report.results import SCHEMA, build_results, validate_results

__all__ = ["SCHEMA", "Report", "build_results", "render_html", "render_markdown", "render_report", "validate_results"]
