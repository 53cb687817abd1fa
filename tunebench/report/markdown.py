"""report.md: the same tables as report.html in plain Markdown, for terminals, diffs and pull requests.

Data text (model output, prompts, references) is HTML-escaped in table cells, because Markdown renderers pass
inline HTML through, and shown verbatim inside code fences longer than any backtick run it contains.
"""

from __future__ import annotations

import html
import re
from typing import Any

from tunebench.evaluate.verdicts import SMALL_TEST_SET
from tunebench.report import tables as t

PROMPT_CHARS = 600  # prompts are long dialogues; the HTML report shows them whole


def cell(text: Any) -> str:
    """One table cell: escaped HTML, escaped pipes, newlines as <br>."""
    escaped = html.escape(str(text), quote=False).replace("|", "\\|")
    return escaped.replace("\r\n", "\n").replace("\n", "<br>")


def _table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return lines + [""]


def _fenced(text: str, limit: int | None = None, lang: str = "text") -> list[str]:
    if limit is not None and len(text) > limit:
        text = text[:limit] + " …"
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence + lang, text, fence]


def _examples(title: str, examples: list[dict[str, Any]], baseline: str, candidate: str) -> list[str]:
    if not examples:
        return []
    lines = [f"#### {title}", ""]
    for i, ex in enumerate(examples, start=1):
        lines += [f"**{i}. example {cell(ex['id'])}, Δ {cell(ex['delta'])}**", "", "Prompt:"]
        lines += _fenced(ex["prompt"], PROMPT_CHARS)
        for k, ref in enumerate(ex["references"], start=1):
            lines += [f"Reference {k}:"] + _fenced(ref)
        lines += [f"{cell(baseline)}:"] + _fenced(ex["baseline"])
        lines += [f"{cell(candidate)}:"] + _fenced(ex["candidate"]) + [""]
    return lines


def _comparisons(results: dict[str, Any], level: str = "##") -> list[str]:
    lines = [f"{level} Comparisons", "", f"Significant: p < {t.ALPHA} by the paired test named in the 'test' column "
             f"(on a test set of fewer than {SMALL_TEST_SET} examples the more conservative of the paired bootstrap "
             "and approximate randomization); the 95% CI of Δ is the paired bootstrap's.", ""]
    for comp in t.comparison_tables(results):
        lines += [f"{level}# {cell(comp['title'])}", ""]
        headers = ["metric", comp["baseline"], comp["candidate"], "Δ", "95% CI", "p-value", "test", "verdict",
                   "other tests (p)"]
        lines += _table(headers, [[r["metric"], r["baseline"], r["candidate"], r["delta"], r["ci"], r["p"],
                                   r["method"], r["verdict"], r["other_tests"]] for r in comp["rows"]])
        if comp["win_tie_loss"]:
            lines += ["#### Win / tie / loss per example", ""]
            lines += _table(["metric", f"win ({comp['candidate']} better)", "tie", "loss"],
                            [[w["metric"], w["win"], w["tie"], w["loss"]] for w in comp["win_tie_loss"]])
        on = f" (by {comp['example_metric']})" if comp["example_metric"] else ""
        lines += _examples(f"Largest gains{on}", comp["gains"], comp["baseline"], comp["candidate"])
        lines += _examples(f"Largest losses{on}", comp["losses"], comp["baseline"], comp["candidate"])
    return lines


def _systems(results: dict[str, Any], level: str = "##") -> list[str]:
    table = t.system_table(results)
    lines = [f"{level} Systems (score [95% CI])", ""]
    lines += _table(["metric", *table["systems"], *([table["baseline"]] if table["baseline"] else [])],
                    [[r["metric"], *r["cells"]] for r in table["rows"]] + [["n", *table["n"]]])
    for labels in t.label_tables(results):
        lines += [f"{level}# Per-label breakdown: {cell(labels['system'])}", "",
                  f"Majority label: {cell(labels['majority_label'])}; predictions that are no test label: "
                  f"{labels['outside']}.", ""]
        lines += _table(["label", "precision", "recall", "F1", "support", "predicted"],
                        [[r["label"], r["precision"], r["recall"], r["f1"], r["support"], r["predicted"]]
                         for r in labels["rows"]])
    return lines


def _tasks(results: dict[str, Any]) -> list[str]:
    """A mixture: the composition, the per-task summary table, then one section per task."""
    lines: list[str] = []
    if results.get("mixture"):
        mix = results["mixture"]
        lines += ["## Training mixture", "", f"Strategy {cell(mix['strategy'])}, {mix['epoch_size']} examples per "
                  "epoch.", ""]
        lines += _table(["task", "train size", "examples per epoch", "share of examples", "share of tokens"],
                        t.mixture_rows(results))
    rows = t.task_summary_rows(results)
    if rows:
        lines += ["## Tasks: summary", ""]
        lines += _table(["task", "metric", "base", "tuned", "Δ [95% CI]", "p", "verdict"],
                        [[r["task"], r["metric"], r["baseline"], r["candidate"], r["delta"], r["p"], r["verdict"]]
                         for r in rows])
    for task, sub in results["tasks"].items():
        lines += [f"## Task: {cell(task)}", ""]
        lines += [f"> **Warning:** {cell(w)}" for w in sub["warnings"]] + ([""] if sub["warnings"] else [])
        test_set = t.describe_test_set(sub)
        if test_set:
            lines += [f"Test set: {cell(test_set)}", ""]
        if sub["systems"]:
            lines += _systems(sub, "###")
        if sub["comparisons"]:
            lines += _comparisons(sub, "###")
    return lines


def _benchmarks(results: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    if results["benchmarks"]:
        bench = t.bench_table(results)
        lines += ["## Benchmarks", "", t.BENCH_NOTE, ""]
        lines += _table(["task", "metric", "n", "shots", "version", *bench["systems"]],
                        [[r["task"], r["metric"], r["n"], r["shots"], r["version"], *r["cells"]]
                         for r in bench["rows"]])
    if results["forgetting"]:
        lines += ["## Forgetting (tuned vs base)", ""]
        lines += _table(["task", "metric", "base", "tuned", "Δ", "95% CI", "p-value (paired-bootstrap)", "chance",
                         "min. detectable drop", "verdict"],
                        [[r["task"], r["metric"], r["base"], r["tuned"], r["delta"], r["ci"], r["p"], r["chance"],
                          r["mde"], ("YES ⚠ " if r["drop"] else "") + r["status"]] for r in t.forgetting_rows(results)])
        lines += ["", "Minimum detectable drop: 80% power, two-sided 5% paired test at this size (Connor 1987 for "
                  "accuracy; relative for perplexity). A row is measurable when its base is significantly above "
                  "chance and such a drop fits above chance; other rows say nothing about forgetting.", ""]
    if results["helm"]:
        helm = t.helm_table(results)
        lines += ["## HELM-style summary", ""]
        lines += _table(["metric", *helm["systems"]], [[r["metric"], *r["cells"]] for r in helm["rows"]])
    return lines


def _single_vs_multi(results: dict[str, Any]) -> list[str]:
    """`run --single-task`: the single-task twin beside the mixture run, same model, method, seed and steps."""
    svm = results["single_vs_multi"]
    rows = t.single_vs_multi_rows(results)
    lines = ["## Single-task vs multi-task", "",
             f"Both trained from the same base with the same method, seed and {svm['optimizer_steps']} optimizer "
             f"steps: single-task on {cell(svm['single_task'])} alone ({cell(svm['single_run'])}), multi-task on "
             "the mixture (this run). Δ is paired over each test set's examples.", ""]
    lines += _table(t.SINGLE_VS_MULTI_TASK_HEADERS, rows["tasks"])
    if rows["forgetting"]:
        lines += ["### Forgetting suite of each", ""]
        lines += _table(t.SINGLE_VS_MULTI_FORGETTING_HEADERS, rows["forgetting"])
    return lines


def render_markdown(results: dict[str, Any]) -> str:
    """The whole report as Markdown text."""
    src = results["source"]
    lines = [f"# tunebench report: {cell(results['run_name'])}", "",
             f"Generated {results['created']} by tunebench {results['tunebench_version']} from "
             f"{cell(src['dir'])} ({src['kind']} directory); data: {results['schema']} in results.json. "
             "Charts are in report.html.", ""]
    lines += [f"> **Warning:** {cell(w)}" for w in results["warnings"]] + ([""] if results["warnings"] else [])
    test_set = t.describe_test_set(results)
    if test_set:
        lines += [f"Test set: {cell(test_set)}", ""]
    headline = t.headline(results)
    if headline:
        lines += ["## Headline", ""] + [f"- {cell(h)}" for h in headline] + [""]
    if results["systems"]:
        lines += _systems(results)
    if results["comparisons"]:
        lines += _comparisons(results)
    if results.get("tasks"):
        lines += _tasks(results)
    if results["training"]:
        lines += ["## Training", ""]
        lines += _table(["key", "value"], [list(r) for r in t.training_rows(results)])
    lines += _benchmarks(results)
    if results.get("single_vs_multi"):
        lines += _single_vs_multi(results)
    lines += ["## Signatures", ""]
    lines += _table(["system", "metric", "signature"],
                    [[r["system"], r["metric"], r["signature"]] for r in t.signature_rows(results)])
    config = t.config_text(results)
    if config is not None:
        lines += ["## Config", ""] + _fenced(config.rstrip("\n"), lang="yaml")
    return "\n".join(lines).rstrip() + "\n"
