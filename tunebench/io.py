"""Atomic writes and line-numbered JSONL reads: results and checkpoints never end half-written."""

from __future__ import annotations

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


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write text to a temporary file beside `path`, fsync, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_tmp_prefix(path), suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
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
    """Yield a temporary directory that replaces `path` only when the block finishes without error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path.parent)
    old = path.with_name(f".{path.name}.old")
    if old.is_dir() and not path.exists():  # killed between the two renames below: the old copy is complete
        os.replace(old, path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=_tmp_prefix(path), suffix=".tmp"))
    try:
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
    """A UTF-8 text file without its byte-order mark (if any); failures raise `error` naming the file and line.

    `what` names the file's role in messages ("the config"); without it the message names the line.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise error(f"{path}: cannot read {what or 'the file'} ({exc.strerror})") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        if what:
            raise error(f"{path}: {what} is not valid UTF-8 (line {line}); re-save it as UTF-8") from None
        raise error(f"{path}:{line}: not valid UTF-8; re-save the file as UTF-8") from None


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
