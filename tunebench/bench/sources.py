"""Benchmark data readers: the few file shapes public benchmarks ship in, read into lists of records.

Hand-written rather than `datasets.load_dataset` because these files are small, the formats include SST-2's
`<label> <sentence>` lines and BBH's `{"examples": [...]}` that `datasets` does not read as-is, and errors must name
the file and line.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from tunebench.errors import DataError
from tunebench.io import read_jsonl, read_text


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


def read_records(fmt: str, path: Path, *, records_key: str | None = None) -> list[dict[str, Any]]:
    """All records of one file as dicts (column -> value)."""
    if fmt == "jsonl":
        return read_jsonl(path)
    if fmt == "json":
        return _read_json(path, records_key)
    if fmt in ("csv", "tsv"):
        return _read_csv(path, "," if fmt == "csv" else "\t")
    if fmt == "label_text":
        return _read_label_text(path)
    raise ValueError(f"unknown source format {fmt!r}")


def _read_json(path: Path, records_key: str | None) -> list[dict[str, Any]]:
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    if records_key is not None:
        if not isinstance(data, dict) or records_key not in data:
            raise DataError(f"{path}: no top-level key '{records_key}' (source.records_key) holding the records")
        data = data[records_key]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise DataError(f"{path}: expected a list of objects (set source.records_key if they sit under a key)")
    return data


def _read_csv(path: Path, delimiter: str) -> list[dict[str, Any]]:
    # StringIO, not splitlines(): fields may hold U+0085 or U+2028, which splitlines() treats as line breaks.
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""), delimiter=delimiter)
    if not reader.fieldnames:
        raise DataError(f"{path}: empty file; expected a header row naming the columns")
    from tunebench.data.sources import check_header

    check_header([h.strip() for h in reader.fieldnames], path)
    rows = []
    for row in reader:
        if None in row or any(v is None for v in row.values()):
            raise DataError(f"{path}:{reader.line_num}: the row has a different number of columns than the header")
        rows.append(dict(row))
    return rows


def _read_label_text(path: Path) -> list[dict[str, Any]]:
    rows = []
    for lineno, line in enumerate(read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        label, sep, text = line.strip().partition(" ")
        if not sep or not text.strip():
            raise DataError(f"{path}:{lineno}: expected '<label> <text>'")
        rows.append({"label": label, "text": text.strip()})
    return rows
