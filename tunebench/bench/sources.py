"""Benchmark data: where a spec's files are, and the few shapes public benchmarks ship in, read into records.

The JSONL, JSON and CSV readers are tunebench.io's (shared with data/sources.py); only SST-2's `<label> <sentence>`
lines are read here. Hand-written rather than `datasets.load_dataset` because these files are small, the formats
include SST-2's lines and BBH's `{"examples": [...]}` that `datasets` does not read as-is, and errors must name the
file and line.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tunebench.errors import DataError
from tunebench.io import read_delimited, read_json_records, read_jsonl, read_text


def resolve_source_path(raw: str, *, data_dir: Path | None, spec_origin: str, where: str) -> Path:
    """Absolute paths as given; relative ones under the data dir, else beside the spec file.

    `where` says which spec key asked (e.g. "cb: source.splits.validation") so a missing file names both.
    """
    path = Path(raw).expanduser()
    if path.is_absolute():
        candidates = [path]
    else:
        candidates = [data_dir / path] if data_dir is not None else []
        origin = Path(spec_origin)
        if origin.suffix in (".yaml", ".yml"):
            candidates.append(origin.parent / path)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    if not candidates:
        raise DataError(
            f"{where}: benchmark data file '{raw}' is relative and no data directory is set; "
            "set --data-dir or $TUNEBENCH_DATA_DIR"
        )
    looked = " or ".join(str(c) for c in candidates)
    hint = "" if data_dir is not None or path.is_absolute() else (
        "; no data directory is set: set --data-dir or $TUNEBENCH_DATA_DIR if the file lives there")
    raise DataError(f"{where}: benchmark data file not found at {looked}; put the file there or fix the path{hint}")


def read_records(
    fmt: str, path: Path, *, records_key: str | None = None, documents: str = "file"
) -> list[dict[str, Any]]:
    """All records of one file as dicts (column -> value); `text` files as documents {"text", "title"}."""
    if fmt == "text":
        return read_documents(path, documents)
    if fmt == "jsonl":
        return read_jsonl(path)
    if fmt == "json":
        return read_json_records(path, records_key)
    if fmt in ("csv", "tsv"):
        return read_delimited(path, "," if fmt == "csv" else "\t")
    if fmt == "label_text":
        return _read_label_text(path)
    raise ValueError(f"unknown source format {fmt!r}")


_WIKITEXT_ARTICLE = re.compile(r"^ = [^=].* = $")


def read_documents(path: Path, documents: str = "file") -> list[dict[str, Any]]:
    """A plain UTF-8 text file cut into documents: the whole file, each non-blank line, each blank-line-separated
    paragraph, or each WikiText article (lines from one ' = Title = ' line to the next, kept verbatim with their
    newlines, as lm-eval's `wikitext_document_level` pages). Raises DataError for an empty or non-UTF-8 file."""
    text = read_text(path)
    if not text.strip():
        raise DataError(f"{path}: empty text file; nothing to score")
    if documents == "file":
        return [{"text": text, "title": path.stem}]
    if documents == "lines":
        return [{"text": line, "title": f"line {i}"} for i, line in enumerate(text.split("\n"), 1) if line.strip()]
    if documents == "paragraphs":
        parts = [p.strip("\n") for p in re.split(r"\n\s*\n", text)]
        return [{"text": p, "title": f"paragraph {i}"} for i, p in enumerate((p for p in parts if p.strip()), 1)]
    pages: list[list[str]] = []
    for line in text.splitlines(keepends=True):
        if _WIKITEXT_ARTICLE.match(line.rstrip("\n")) or not pages:
            pages.append([])
        pages[-1].append(line)
    out = []
    for lines in pages:
        page = "".join(lines)
        if not page.strip():
            continue
        first = lines[0].rstrip("\n")
        title = first.strip(" =") if _WIKITEXT_ARTICLE.match(first) else "(before the first title)"
        out.append({"text": page, "title": title})
    return out



def _read_label_text(path: Path) -> list[dict[str, Any]]:
    """SST-2's `<label> <sentence>` lines."""
    rows = []
    for lineno, line in enumerate(read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        label, sep, text = line.strip().partition(" ")
        if not sep or not text.strip():
            raise DataError(f"{path}:{lineno}: expected '<label> <text>'")
        rows.append({"label": label, "text": text.strip()})
    return rows
