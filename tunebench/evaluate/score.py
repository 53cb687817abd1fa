"""`tunebench score`: score a predictions JSONL against references, with intervals and signatures.

Predictions rows carry `id` and `prediction`; references come from a second JSONL (`id` plus `references`
(list) or `reference` (str)) or, when none is given, from the predictions rows themselves (predictions.jsonl
carries them). Rows are paired by id, never by position, and any id mismatch is an error that lists the ids.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunebench.errors import DataError
from tunebench.evaluate.metrics import METRICS, MetricSettings, score_corpus
from tunebench.io import read_jsonl

_SHOW_IDS = 10


@dataclass
class ScoringInputs:
    """Rows paired by id, in the predictions file's order (so a seeded interval from `tunebench score` on an
    eval's predictions.jsonl is the one its scores.json holds): ids, predictions, references, prompts."""

    ids: list[str]
    predictions: list[str]
    references: list[list[str]]
    prompts: list[str | None]


def _line_numbers(path: Path) -> list[int]:
    """Line number of each row read_jsonl returns (it skips blank lines)."""
    return [k for k, line in enumerate(path.read_bytes().split(b"\n"), start=1) if line.strip()]


def _row_id(row: dict[str, Any], path: Path, line: int) -> str:
    if "id" not in row or row["id"] is None or isinstance(row["id"], dict | list):
        raise DataError(f"{path}:{line}: the row has no 'id' (a string or number): add one to every row")
    return str(row["id"])


def _references(row: dict[str, Any], path: Path, line: int) -> list[str] | None:
    if "references" in row:
        refs = row["references"]
        if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs):
            raise DataError(f"{path}:{line}: 'references' must be a non-empty list of strings")
        return refs
    if "reference" in row:
        if not isinstance(row["reference"], str):
            raise DataError(f"{path}:{line}: 'reference' must be a string")
        return [row["reference"]]
    return None


def _id_list(ids: Sequence[str]) -> str:
    shown = ", ".join(ids[:_SHOW_IDS])
    return f"{shown}, ... ({len(ids)} in all)" if len(ids) > _SHOW_IDS else shown


def check_ids(pred_ids: Sequence[str], ref_ids: Sequence[str], pred_path: Path, ref_path: Path) -> None:
    """Raise DataError listing duplicated, missing and extra ids unless both files hold the same ids once."""
    problems = []
    for ids, path in (
        ((pred_ids, pred_path), (ref_ids, ref_path)) if ref_path != pred_path else ((pred_ids, pred_path),)
    ):
        dups = sorted(i for i, c in Counter(ids).items() if c > 1)
        if dups:
            problems.append(f"duplicated in {path}: {_id_list(dups)}")
    missing = sorted(set(ref_ids) - set(pred_ids))
    extra = sorted(set(pred_ids) - set(ref_ids))
    if missing:
        problems.append(f"missing from {pred_path}: {_id_list(missing)}")
    if extra:
        problems.append(f"not in {ref_path}: {_id_list(extra)}")
    if problems:
        raise DataError(f"ids of {pred_path} and {ref_path} do not match; " + "; ".join(problems))


def load_scoring_inputs(pred_path: Path, ref_path: Path | None = None) -> ScoringInputs:
    """Read and pair predictions and references by id, keeping the predictions file's order."""
    pred_path = Path(pred_path)
    rows = read_jsonl(pred_path)
    if not rows:
        raise DataError(f"{pred_path}: no rows to score")
    lines = _line_numbers(pred_path)
    pred_ids, preds, embedded, prompts = [], [], [], []
    for row, line in zip(rows, lines, strict=True):
        pred_ids.append(_row_id(row, pred_path, line))
        prediction = row.get("prediction")
        if not isinstance(prediction, str):
            raise DataError(
                f"{pred_path}:{line}: 'prediction' must be a string (use \"\" for an empty output)"
            )
        preds.append(prediction)
        embedded.append(_references(row, pred_path, line))
        prompts.append(row.get("prompt") if isinstance(row.get("prompt"), str) else None)
    if ref_path is None:
        for refs, line in zip(embedded, lines, strict=True):
            if refs is None:
                raise DataError(
                    f"{pred_path}:{line}: no 'references' in the row; give a reference file with --ref"
                )
        check_ids(pred_ids, pred_ids, pred_path, pred_path)
        return ScoringInputs(pred_ids, preds, embedded, prompts)  # type: ignore[arg-type]
    ref_path = Path(ref_path)
    ref_rows = read_jsonl(ref_path)
    ref_ids, refs_list = [], []
    for row, line in zip(ref_rows, _line_numbers(ref_path), strict=True):
        ref_ids.append(_row_id(row, ref_path, line))
        refs = _references(row, ref_path, line)
        if refs is None:
            raise DataError(
                f"{ref_path}:{line}: the row has neither 'references' (list) nor 'reference' (string)"
            )
        refs_list.append(refs)
    check_ids(pred_ids, ref_ids, pred_path, ref_path)
    by_id = dict(zip(ref_ids, refs_list, strict=True))
    return ScoringInputs(pred_ids, preds, [by_id[i] for i in pred_ids], prompts)


def hash_test_set(ids: Sequence[str], references: Sequence[Sequence[str]]) -> str:
    """SHA-256 over the sorted example ids and their references: equal hashes = the same test set."""
    items = sorted((str(i), list(r)) for i, r in zip(ids, references, strict=True))
    payload = json.dumps(items, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def score_files(
    pred_path: Path,
    ref_path: Path | None,
    metrics: Sequence[str] | str,
    *,
    stem: bool = True,
    bootstrap: int = 1000,
    seed: int = 0,
    settings: MetricSettings | None = None,
) -> dict[str, dict[str, Any]]:
    """Scores keyed by metric (scores.json's `metrics` shape, docs/formats.md) for two JSONL files.

    `settings` (tokenizers, target language; default: from `stem`) go to every metric."""
    return score_and_diagnose(pred_path, ref_path, metrics, stem=stem, bootstrap=bootstrap, seed=seed,
                              settings=settings)[0]


def score_and_diagnose(
    pred_path: Path,
    ref_path: Path | None,
    metrics: Sequence[str] | str,
    *,
    stem: bool = True,
    bootstrap: int = 1000,
    seed: int = 0,
    settings: MetricSettings | None = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """score_files' scores and the predictions' diagnostics (scores.json's `diagnostics`: degenerate outputs,
    per-label breakdown and majority-label baseline; tunebench.evaluate.verdicts)."""
    from tunebench.evaluate.metrics import expand_metrics_any
    from tunebench.evaluate.verdicts import diagnostics

    inputs = load_scoring_inputs(pred_path, ref_path)
    scores = score_corpus(
        inputs.predictions, inputs.references, metrics, stem=stem, bootstrap=bootstrap, seed=seed,
        settings=settings,
    )
    return scores, diagnostics(inputs.predictions, inputs.references, expand_metrics_any(metrics))


def _fmt(value: float, name: str) -> str:
    """A score as the metric prints it (its scale decides the decimals); an unregistered name gets 4."""
    cls = METRICS.get(name)
    return cls.format(value) if cls else f"{value:.4f}"


def render_score_table(result: dict[str, dict[str, Any]]) -> Any:
    """A rich Table of scores keyed by metric: score, 95% interval, P/R for ROUGE, n and signature."""
    from rich.table import Table

    table = Table(title="scores", show_lines=False)
    for column in ("metric", "score", "95% CI", "precision", "recall", "n", "signature"):
        table.add_column(column, justify="right" if column not in ("metric", "signature") else "left")
    for name, entry in result.items():
        ci = entry.get("ci95")
        table.add_row(
            name,
            _fmt(entry["score"], name),
            f"[{_fmt(ci[0], name)}, {_fmt(ci[1], name)}]" if ci else "-",
            _fmt(entry["precision"], name) if "precision" in entry else "",
            _fmt(entry["recall"], name) if "recall" in entry else "",
            str(entry.get("n", "")),
            entry.get("signature", ""),
        )
    return table
