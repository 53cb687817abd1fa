"""Atomic writes, and readers whose errors name the file and line: JSON, JSONL, CSV/TSV, YAML, UTF-8 text.

Writes go to a temporary file and are renamed over the target, so results and checkpoints never end
half-written. Local files are read by hand rather than through `datasets`, because a malformed line must name
its file and line, which `datasets`' Arrow readers do not report.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tunebench.errors import DataError


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_STALE = re.compile(r"^\..+\.(\d+)\.[A-Za-z0-9_]{8}\.tmp$")  # .<target>.<pid>.<mkstemp/mkdtemp suffix>.tmp


def clean_stale_temps(folder: str | Path) -> int:
    """Remove the temporary files and dirs that killed writes left in `folder`; returns how many went.

    Only entries named as `atomic_write_text` / `atomic_dir` name them (`.<target>.<pid>.<random>.tmp`) whose
    process is gone are touched, so a user's own dot-files stay.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for entry in folder.iterdir():
        match = _STALE.match(entry.name)
        if match is None or _pid_alive(int(match.group(1))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed += 1
    return removed


def _tmp_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


def current_umask() -> int:
    """The process umask (read by setting and restoring it: POSIX offers no other way)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def plain_mode(*, directory: bool = False) -> int:
    """The permission bits a plain open() (0o666) or mkdir (0o777) gives under the current umask.

    Temporary files and folders are created private (0600 / 0700); what they become must not stay private.
    """
    return (0o777 if directory else 0o666) & ~current_umask()


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write text (UTF-8) to a temporary file beside `path`, fsync, then rename over it (mode as a plain open
    gives)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write bytes to a temporary file beside `path`, fsync, then rename over it (mode as a plain open gives)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_tmp_prefix(path), suffix=".tmp")
    try:
        os.fchmod(fd, plain_mode())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=_json_default) + "\n")


def atomic_write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    text = "".join(json.dumps(r, ensure_ascii=False, default=_json_default) + "\n" for r in rows)
    return atomic_write_text(path, text)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory that replaces `path` only when the block finishes without error.

    The directory gets the mode a plain mkdir gives under the umask (mkdtemp makes it 0700).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path.parent)
    old = path.with_name(f".{path.name}.old")
    if old.is_dir() and not path.exists():  # killed between the two renames below: the old copy is complete
        os.replace(old, path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=_tmp_prefix(path), suffix=".tmp"))
    try:
        tmp.chmod(plain_mode(directory=True))
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


BOM = b"\xef\xbb\xbf"  # a UTF-8 byte-order mark, which editors on Windows put first; every reader drops it


def read_text(path: str | Path, error: type[Exception] = DataError, what: str | None = None) -> str:
    """A UTF-8 text file without its byte-order mark (if any), gunzipped when its name ends in .gz; failures raise
    `error` naming the file and line.

    `what` names the file's role in messages ("the config"); without it the message names the line.
    """
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except OSError as exc:  # gzip.BadGzipFile is an OSError without strerror
        raise error(f"{path}: cannot read {what or 'the file'} ({getattr(exc, 'strerror', None) or exc})") from None
    except EOFError:
        raise error(f"{path}: truncated gzip file; restore it") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        if what:
            raise error(f"{path}: {what} is not valid UTF-8 (line {line}); re-save it as UTF-8") from None
        raise error(f"{path}:{line}: not valid UTF-8; re-save the file as UTF-8") from None


def read_json(path: str | Path, *, what: str = "", fix: str = "") -> Any:
    """Read one JSON document (a byte-order mark dropped); a missing, unreadable, non-UTF-8 or malformed file raises
    DataError naming the file (and line), what it holds (`what`, "benchmark results") and what to do (`fix`,
    "re-run `tunebench bench`")."""
    path = Path(path)
    then = f"; {fix}" if fix else ""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise DataError(f"{path}: cannot read {what + ' ' if what else ''}({exc.strerror}){then}") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not valid UTF-8{then}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON at line {exc.lineno} ({exc.msg}){then}") from None


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSONL file (a leading byte-order mark is dropped); a bad line raises DataError naming file and line."""
    path = Path(path)
    rows: list[dict[str, Any]] = []
    try:
        raw = path.read_bytes().removeprefix(BOM)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    for lineno, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            raise DataError(f"{path}:{lineno}: not valid UTF-8") from None
        try:
            row = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def read_delimited(path: Path, delimiter: str) -> list[dict[str, Any]]:
    """Read CSV/TSV with a header row; a row with the wrong number of columns names its line."""
    text = read_text(path)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    rows: list[dict[str, Any]] = []
    try:
        header = next(reader, None)
        if not header or not any(h.strip() for h in header):
            raise DataError(f"{path}:1: missing header row; the first line must name the columns")
        header = [h.strip() for h in header]
        check_header(header, path)
        for values in reader:
            if not values or (len(values) == 1 and not values[0].strip()):
                continue
            if len(values) != len(header):
                raise DataError(
                    f"{path}:{reader.line_num}: expected {len(header)} columns as in the header, "
                    f"found {len(values)}; check quoting of that row"
                )
            rows.append(dict(zip(header, values, strict=True)))
    except csv.Error as exc:
        raise DataError(f"{path}:{reader.line_num}: malformed row ({exc})") from None
    return rows


def check_header(header: list[str], path: Path) -> None:
    """Refuse a first row that is data, not column names: a cell with a line break, a long text or a number.

    Without this, a header-less CSV turns its first example into column names, and the error about a missing
    template field then quotes a whole dialogue as the list of columns.
    """
    for cell in header:
        numeric = cell.replace(".", "", 1).replace("-", "", 1).isdigit()
        if "\n" in cell or len(cell) > 64 or numeric:
            shown = cell if len(cell) <= 40 else cell[:37] + "..."
            raise DataError(f"{path}:1: the first row looks like data, not a header ({shown!r} is no column name); "
                            "add a header row naming the columns")


def read_json_records(path: Path, records_key: str | None = None) -> list[dict[str, Any]]:
    """A JSON array of objects, or an object holding one such array (e.g. {"examples": [...]}) under
    `records_key` or, when that is None, as its only list; errors name the file and line."""
    text = read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    if records_key is not None:
        if not isinstance(data, dict) or records_key not in data:
            raise DataError(f"{path}: no top-level key '{records_key}' (records_key) holding the records")
        data = data[records_key]
    elif isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataError(f"{path}: expected a JSON array of objects, or an object holding exactly one array")
        data = lists[0]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of objects, got {type(data).__name__}")
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            line = json_item_line(text, i)
            raise DataError(f"{path}:{line}: item {i} is {type(row).__name__}, expected a JSON object")
    return data


def json_item_line(text: str, index: int) -> int:
    """Best-effort line of the index-th item of the JSON array in `text`, for error messages."""
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    for i in range(index + 1):
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if i == index:
            return text.count("\n", 0, pos) + 1
        _, pos = decoder.raw_decode(text, pos)
    return 1


def read_yaml_mapping(path: str | Path, error: type[Exception], what: str, *, empty_ok: bool = False) -> dict[str, Any]:
    """A YAML file that must hold a mapping; failures raise `error` naming the file (and line, for bad YAML).

    `what` names the file's role in messages ("the config"); `empty_ok` reads an empty file as {}.
    """
    import yaml

    path = Path(path)
    text = read_text(path, error, what)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise error(f"{where}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if data is None and empty_ok:
        return {}
    if not isinstance(data, dict):
        raise error(f"{path}: {what} must be a mapping of keys, not {type(data).__name__}")
    return data


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, set | tuple):
        return list(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def attach_aligned_labels(
    rows: list[dict[str, Any]], data_path: str | Path, labels_path: str | Path, field: str = "label"
) -> list[dict[str, Any]]:
    """Copies of `rows` with `field` set from a labels file holding one label per line, line i for row i.

    The "aligned labels" source format (PIQA's `valid.jsonl` + `valid-labels.lst`). Trailing blank lines are
    ignored; any other difference in count raises DataError naming both files and both counts.
    """
    path = Path(labels_path)
    text = read_text(path, what="the labels file")
    labels = text.rstrip("\r\n").split("\n") if text.strip() else []
    labels = [label.rstrip("\r").strip() for label in labels]
    if len(labels) != len(rows):
        raise DataError(
            f"{path} has {len(labels)} labels but {data_path} has {len(rows)} records; the files must be "
            "line-aligned (one label per record)"
        )
    for lineno, label in enumerate(labels, start=1):
        if not label:
            raise DataError(f"{path}:{lineno}: empty label; every record needs one")
    return [{**row, field: label} for row, label in zip(rows, labels, strict=True)]
