"""Where examples come from: local JSONL/JSON/CSV/TSV files, Hugging Face datasets, and built-in `dialogsum`.

Every source yields `Record`s (id, fields, references) per split name, so templates and splits never care
where the data came from. Local files are read by hand rather than through `datasets` because a malformed line
must name its file and line, which `datasets`' Arrow readers do not report.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tunebench.config import SourceConfig
from tunebench.errors import DataError
from tunebench.io import (
    attach_aligned_labels,
    json_item_line,
    read_delimited,
    read_json_records,
    read_jsonl,
    read_text,
)

FILE_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv", ".tab": "tsv"}
DIALOGSUM_HUB_ID = "knkarthick/dialogsum"
DIALOGSUM_LOCAL = {"validation": "dialogsum.dev.jsonl", "test": "dialogsum.test.jsonl"}


@dataclass(frozen=True)
class Record:
    """One source row after the field map: a stable id, template fields, and gold references when known."""

    id: str
    fields: dict[str, Any]
    references: tuple[str, ...] | None = None
    origin: str = field(default="", compare=False)
    row: int | None = field(default=None, compare=False)  # 1-based row in its file, for error messages


# ---------------------------------------------------------------------------------------------- file readers


LANGUAGE_NAMES = {
    "ar": "Arabic", "cs": "Czech", "de": "German", "en": "English", "es": "Spanish", "fi": "Finnish",
    "fr": "French", "hi": "Hindi", "it": "Italian", "ja": "Japanese", "nl": "Dutch", "pl": "Polish",
    "pt": "Portuguese", "ro": "Romanian", "ru": "Russian", "tr": "Turkish", "uk": "Ukrainian", "zh": "Chinese",
}
"""Language codes -> English names for templates ("Translate into German"); an unknown code stays as it is."""


def _text_lines(path: Path) -> list[str]:
    """The lines of a plain or gzipped (.gz) UTF-8 text file, without line ends."""
    lines = read_text(path).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


def read_parallel(source_path: Path, target_path: Path, source_lang: str, target_lang: str) -> list[dict[str, Any]]:
    """Pair line i of the source file with line i of the target file (plain text or .gz, one sentence a line).

    Rows: {source, target, source_lang, target_lang} with the languages' English names. Files of different line
    counts raise DataError naming both files, their counts and the first line without a partner; an empty line on either side names its file and line.
    """
    src, tgt = _text_lines(source_path), _text_lines(target_path)
    if len(src) != len(tgt):
        longer, shorter = (source_path, target_path) if len(src) > len(tgt) else (target_path, source_path)
        raise DataError(
            f"parallel files differ in length: {source_path} has {len(src)} lines, {target_path} has {len(tgt)} "
            f"({longer}:{min(len(src), len(tgt)) + 1} has no partner line in {shorter.name}); line i of each must "
            "be one sentence pair"
        )
    names = (LANGUAGE_NAMES.get(source_lang, source_lang), LANGUAGE_NAMES.get(target_lang, target_lang))
    rows = []
    for i, (s, t) in enumerate(zip(src, tgt, strict=True)):
        for path, text in ((source_path, s), (target_path, t)):
            if not text.strip():
                raise DataError(f"{path}:{i + 1}: empty line in a parallel text file; remove the pair from both files")
        rows.append({"source": s, "target": t, "source_lang": names[0], "target_lang": names[1]})
    return rows


def parallel_files(folder: Path, split: str, source_lang: str, target_lang: str) -> tuple[Path, Path]:
    """The two files of one split: <folder>/<split>.<lang>.gz, else <folder>/<split>.<lang>."""
    found = []
    for lang in (source_lang, target_lang):
        candidates = [folder / f"{split}.{lang}.gz", folder / f"{split}.{lang}"]
        path = next((c for c in candidates if c.is_file()), None)
        if path is None:
            raise DataError(
                f"{folder}: no file for split '{split}' in language '{lang}' (looked for "
                f"{candidates[0].name}, {candidates[1].name}); fix data.splits or data.parallel"
            )
        found.append(path)
    return found[0], found[1]


def read_file(path: Path, fmt: str) -> list[dict[str, Any]]:
    if fmt == "jsonl":
        return read_jsonl(path)
    if fmt == "json":
        return read_json_records(path)
    if fmt in ("csv", "tsv"):
        return read_delimited(path, "," if fmt == "csv" else "\t")
    raise DataError(f"{path}: unknown format '{fmt}'; set data.format to jsonl, json, csv or tsv")


def file_format(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    found = FILE_FORMATS.get(path.suffix.lower())
    if found is None:
        raise DataError(f"{path}: cannot tell the format from the extension; set data.format (jsonl, json, csv, tsv)")
    return found


# ---------------------------------------------------------------------------------------------- resolution


def resolve_path(source: str, data_dir: Path | None) -> Path | None:
    """A relative path resolves against the data directory, then the working directory; None if neither has it."""
    path = Path(source).expanduser()
    if path.is_absolute():
        return path if path.exists() else None
    for base in ([data_dir] if data_dir else []) + [Path.cwd()]:
        if (base / path).exists():
            return base / path
    return None


def _looks_like_path(source: str) -> bool:
    return (
        source.startswith((".", "/", "~"))
        or Path(source).suffix.lower() in FILE_FORMATS
        or source.count("/") > 1
        or "\\" in source
    )


def _is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and any((path / n).exists() for n in ("dataset_dict.json", "dataset_info.json", "state.json"))


# ---------------------------------------------------------------------------------------------- normalization


def apply_field_map(row: Mapping[str, Any], field_map: Mapping[str, str], where: str) -> dict[str, Any]:
    """Copy the row and add each template field from its source column (other columns stay usable)."""
    fields = dict(row)
    for template_field, column in field_map.items():
        if column not in row:
            raise DataError(
                f"{where}: data.field_map.{template_field} names column '{column}', which the data lacks "
                f"(columns: {', '.join(sorted(map(str, row))) or 'none'}); fix the field map"
            )
        fields[template_field] = row[column]
    return fields


def _as_references(value: Any, where: str, key: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, Iterable) and not isinstance(value, Mapping):
        refs = tuple(str(v) for v in value if v is not None and str(v).strip())
        if refs:
            return refs
    raise DataError(f"{where}: data.references_field '{key}' must hold a string or a non-empty list of strings")


def to_records(rows: Iterable[Mapping[str, Any]], cfg: SourceConfig, split: str, origin: str) -> list[Record]:
    """Field-map rows and give each an id (data.id_field or `<split>_<row index>`) and optional references."""
    records = []
    for i, row in enumerate(rows):
        where = f"{origin} (row {i + 1})"
        fields = apply_field_map(row, cfg.field_map, where)
        if cfg.id_field is not None:
            if row.get(cfg.id_field) is None:
                raise DataError(f"{where}: data.id_field '{cfg.id_field}' is missing; fix data.id_field or the data")
            rid = str(row[cfg.id_field])
        else:
            rid = f"{split}_{i}"
        refs = None
        if cfg.references_field is not None:
            if cfg.references_field not in row:
                raise DataError(f"{where}: data.references_field '{cfg.references_field}' is missing from the row")
            refs = _as_references(row[cfg.references_field], where, cfg.references_field)
        records.append(Record(rid, fields, refs, origin, i + 1))
    if cfg.id_field is not None:
        check_unique_ids([r.id for r in records], origin, f"data.id_field '{cfg.id_field}'")
    return records


def row_lines(origin: str | Path) -> list[int] | None:
    """The line on which each row of a JSONL/JSON/CSV/TSV file starts (the rows its reader returns), else None."""
    path = Path(origin)
    fmt = FILE_FORMATS.get(path.suffix.lower())
    if not path.is_file() or fmt is None:
        return None
    text = read_text(path)
    if fmt == "jsonl":
        return [k for k, line in enumerate(text.split("\n"), start=1) if line.strip()]
    if fmt == "json":
        try:
            return [json_item_line(text, i) for i in range(len(read_json_records(path)))]
        except (DataError, ValueError):
            return None
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="," if fmt == "csv" else "\t")
    lines, start = [], 1
    for values in reader:
        if values and not (len(values) == 1 and not values[0].strip()):
            lines.append(start)
        start = reader.line_num + 1
    return lines[1:]  # the header is no row


def check_unique_ids(ids: list[str], origin: str | Path, what: str) -> None:
    """Refuse a repeated example id, naming it, the file and both lines (rows when lines are unknown).

    Two rows with one id would be written twice to predictions.jsonl and paired wrongly by compare.
    """
    first: dict[str, int] = {}
    for i, rid in enumerate(ids):
        if rid not in first:
            first[rid] = i
            continue
        lines = row_lines(origin)
        if lines is not None and len(lines) == len(ids):
            where = f"{origin}:{lines[first[rid]]} and line {lines[i]}"
        else:
            where = f"{origin} rows {first[rid] + 1} and {i + 1}"
        raise DataError(f"{where}: both have the id {rid!r} ({what}); give every example its own id")


# ---------------------------------------------------------------------------------------------- dialogsum


def normalize_dialogsum_row(row: Mapping[str, Any], origin: str = "") -> Record:
    """Local DialogSum rows (dev: summary/topic; test: summary1..3/topic1..3) -> common fields + references."""
    if "summary1" in row:
        refs = tuple(row[k] for k in ("summary1", "summary2", "summary3") if row.get(k))
        summary, topic = row["summary1"], row.get("topic1", "")
    else:
        refs = (row["summary"],)
        summary, topic = row["summary"], row.get("topic", "")
    return Record(str(row["fname"]), {"dialogue": row["dialogue"], "summary": summary, "topic": topic}, refs, origin)


def group_repeated_references(rows: Iterable[Mapping[str, Any]], origin: str = "") -> list[Record]:
    """The Hub DialogSum test split repeats each dialogue once per reference: fold them into one record each.

    Rows with the same dialogue become one record (first summary/topic kept as fields) whose references list
    every summary in order; the id drops the per-reference suffix (test_0_1 -> test_0).
    """
    grouped: dict[str, tuple[str, dict[str, Any], list[str]]] = {}
    for row in rows:
        key = row["dialogue"]
        if key not in grouped:
            rid = re.sub(r"_\d+$", "", str(row.get("id", f"test_{len(grouped)}")))
            grouped[key] = (rid, {"dialogue": key, "summary": row["summary"], "topic": row.get("topic", "")}, [])
        grouped[key][2].append(row["summary"])
    return [Record(rid, fields, tuple(refs), origin) for rid, fields, refs in grouped.values()]


def dialogsum_records(split: str, data_dir: Path | None) -> list[Record]:
    """Built-in DialogSum: the local copy in <data_dir>/dialogsum for the splits it has, else the Hub data set.

    The local copy holds 'validation' (dev) and 'test'; 'train' (12,460 dialogues) exists only on the Hub.
    """
    local = data_dir / "dialogsum" if data_dir else None
    if local is not None and local.is_dir() and split in DIALOGSUM_LOCAL:
        path = local / DIALOGSUM_LOCAL[split]
        if not path.is_file():
            raise DataError(f"{path}: file not found; restore the DialogSum data set in the data directory")
        return [normalize_dialogsum_row(r, str(path)) for r in read_jsonl(path)]
    if local is not None and local.is_dir():
        hint = (f"{local} holds only 'validation' (dev) and 'test': set data.splits.train to validation, "
                "or allow Hub access")
    else:
        where = f"{local} does not exist" if local is not None else "no data directory is set"
        hint = f"{where}: set $TUNEBENCH_DATA_DIR or data_dir to the folder holding dialogsum/"
    rows = [dict(r) for r in _load_hub(DIALOGSUM_HUB_ID, None, split, hint)]
    origin = f"{DIALOGSUM_HUB_ID}:{split}"
    if split == "test":
        return group_repeated_references(rows, origin)
    return [Record(str(r["id"]), {k: r[k] for k in ("dialogue", "summary", "topic")}, (r["summary"],), origin)
            for r in rows]


# ---------------------------------------------------------------------------------------------- Hub / disk


def _load_hub(repo_id: str, subset: str | None, split: str,
              hint: str = "check data.source, the network, or point data.source at a local file") -> Any:
    from datasets import load_dataset

    try:
        return load_dataset(repo_id, subset, split=split)
    except ValueError as exc:
        if "split" in str(exc).lower():
            raise DataError(f"Hub dataset {repo_id}: no split '{split}' ({exc}); fix data.splits") from None
        raise DataError(f"Hub dataset {repo_id}: cannot load ({exc}); check data.source and data.subset") from None
    except Exception as exc:  # network, auth, missing repo: one sentence for the user
        raise DataError(
            f"Hub dataset {repo_id}: cannot load split '{split}' ({type(exc).__name__}: {exc}); {hint}"
        ) from None


def _load_disk(path: Path, split: str) -> Any:
    from datasets import Dataset, DatasetDict, load_from_disk

    data = load_from_disk(str(path))
    if isinstance(data, DatasetDict):
        if split not in data:
            raise DataError(f"{path}: no split '{split}' (has: {', '.join(data)}); fix data.splits")
        return data[split]
    assert isinstance(data, Dataset)
    return data


# ---------------------------------------------------------------------------------------------- entry point


def load_split(cfg: SourceConfig, split: str, data_dir: Path | None) -> list[Record]:
    """Read one named split of the configured source as records.

    A single file is one split (the one data.splits.train names); another split name is looked up as a file
    beside it (`test` -> test.jsonl). A folder holds `<split>.<ext>` files or a `save_to_disk` dataset, or with
    format `parallel` line-aligned `<split>.<lang>[.gz]` text files (see `read_parallel`).
    """
    if cfg.source == "dialogsum":  # ids and references are the data set's own
        return [replace(r, fields=apply_field_map(r.fields, cfg.field_map, f"{r.origin} ({r.id})"))
                for r in dialogsum_records(split, data_dir)]
    path = resolve_path(cfg.source, data_dir)
    if cfg.format == "parallel":
        if path is None or not path.is_dir():
            raise DataError(f"data.source {cfg.source}: format parallel needs a folder of <split>.<lang>[.gz] files "
                            f"(tried {', '.join(_tried(cfg.source, data_dir))})")
        pair = parallel_files(path, split, cfg.parallel.source_lang, cfg.parallel.target_lang)
        rows = read_parallel(*pair, cfg.parallel.source_lang, cfg.parallel.target_lang)
        return to_records(rows, cfg, split, str(pair[0]))
    if path is None:
        if cfg.format in ("jsonl", "json", "csv", "tsv") or _looks_like_path(cfg.source):
            hint = "" if data_dir is not None else "; no data directory is set: set --data-dir or $TUNEBENCH_DATA_DIR"
            raise DataError(f"data.source {cfg.source}: file not found (tried "
                            f"{', '.join(_tried(cfg.source, data_dir))}){hint}")
        rows = _load_hub(cfg.source, cfg.subset, split)
        return to_records(rows, cfg, split, f"{cfg.source}:{split}")
    if path.is_dir():
        if cfg.format == "hf" or _is_saved_dataset(path):
            return to_records(_load_disk(path, split), cfg, split, f"{path}:{split}")
        split_file = _split_file(path, split, cfg.format)
    elif split == cfg.splits.train:
        split_file = path
    else:
        split_file = _split_file(path.parent, split, cfg.format)
    rows = read_file(split_file, file_format(split_file, cfg.format))
    return to_records(_with_labels(rows, cfg, split, split_file, data_dir), cfg, split, str(split_file))


def _with_labels(rows: list[dict[str, Any]], cfg: SourceConfig, split: str, path: Path,
                 data_dir: Path | None) -> list[dict[str, Any]]:
    """The split's rows with their labels from the aligned labels file data.labels names, if any."""
    raw = (cfg.labels or {}).get(split)
    if raw is None:
        return rows
    labels = resolve_path(raw, data_dir)
    if labels is None or not labels.is_file():
        raise DataError(f"data.labels.{split}: labels file {raw} not found (tried {', '.join(_tried(raw, data_dir))})")
    return attach_aligned_labels(rows, path, labels, cfg.label_field)


def _tried(source: str, data_dir: Path | None) -> list[str]:
    path = Path(source).expanduser()
    if path.is_absolute():
        return [str(path)]
    return [str(base / path) for base in ([data_dir] if data_dir else []) + [Path.cwd()]]


def single_file_source(cfg: SourceConfig, data_dir: Path | None) -> Path | None:
    """The file `data.source` names when it is one local file (not a folder, built-in or Hub data set), else None."""
    if cfg.source == "dialogsum":
        return None
    path = resolve_path(cfg.source, data_dir)
    return path if path is not None and path.is_file() else None


def has_split_file(folder: Path, split: str, fmt: str) -> bool:
    """Whether `folder` holds a file for `split` (`test`, `test.jsonl`, `test.csv`, ...)."""
    try:
        _split_file(folder, split, fmt)
    except DataError:
        return False
    return True


def _split_file(folder: Path, split: str, fmt: str) -> Path:
    exact = folder / split
    if exact.is_file():
        return exact
    exts = [e for e, f in FILE_FORMATS.items() if fmt in ("auto", f)]
    for ext in exts:
        candidate = folder / f"{split}{ext}"
        if candidate.is_file():
            return candidate
    raise DataError(
        f"{folder}: no file for split '{split}' (looked for {split}{{{','.join(exts)}}}); add it, fix data.splits, "
        "or set that split to null to carve it from train"
    )
