"""The run directory around a training run: checks before it starts, the summary after it ends."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from tunebench.config import RunConfig, dump_config
from tunebench.errors import ConfigError, TunebenchError
from tunebench.io import atomic_write_text, clean_stale_temps
from tunebench.rundir import CheckpointRoot, RunDir

# Sections whose change makes a resumed run differ from the interrupted one.
RESUME_KEYS = ("seed", "model", "data", "train")
# Keys that only say where things are, not what is computed: never a change of the run.
LOCATION_KEYS = ("name", "output_dir", "data_dir")


class RunDirError(TunebenchError):
    """The run directory cannot be written, or already holds a run that would be overwritten."""


def prepare_run_dir(cfg: RunConfig, *, resume: bool, write: bool) -> Path:
    """Check the run directory is writable and free (or resumable), then write config.yaml.

    `write` is False on all but the main process, which only checks.
    """
    run_dir = cfg.run_dir
    paths = RunDir(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=run_dir, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise RunDirError(f"{run_dir}: cannot write the run directory ({exc.strerror}); "
                          "set output_dir or name to a writable place") from None
    has_run = bool(CheckpointRoot(paths.checkpoints).steps()) or paths.train_summary.exists()
    if has_run and not resume:
        raise RunDirError(f"{run_dir} already holds a training run: pass --resume to continue it, or set "
                          "another name or output_dir")
    if resume and paths.config.exists():
        check_resume_config(paths.config, cfg)
    if write:
        for folder in (run_dir, paths.checkpoints):  # what a kill during a write left behind
            clean_stale_temps(folder)
        atomic_write_text(paths.config, dump_config(cfg))
    return run_dir


def check_resume_config(path: Path, cfg: RunConfig) -> None:
    """A resumed run must train what the interrupted one trained: same seed, model, data and train keys."""
    changed = [k for k in config_changes(read_saved_config(path), cfg) if k.split(".")[0] in RESUME_KEYS]
    if changed:
        raise ConfigError(f"{path}: --resume needs the config the run started with, but {', '.join(changed[:4])} "
                          "changed; restore them or train under another name")


def read_saved_config(path: Path) -> dict[str, Any]:
    """The config tree a run directory recorded (config.yaml), as plain data; {} for an empty file."""
    from tunebench.io import read_yaml_mapping

    return read_yaml_mapping(path, ConfigError, "the run's recorded config", empty_ok=True)


def config_changes(saved: dict[str, Any], cfg: RunConfig) -> list[str]:
    """Dotted keys whose value in `cfg` differs from the recorded tree `saved` (location keys excluded).

    A key the recorded config lacks (written before the key existed) counts as its default, and
    `model.dtype: auto` compares equal to float32 (what training loads for auto).
    """
    current = cfg.model_dump(mode="json")
    saved = _with_defaults(saved, RunConfig().model_dump(mode="json"))
    return [key for section in sorted(saved.keys() | current.keys()) if section not in LOCATION_KEYS
            for key in _diff(_as_trained(saved, section), _as_trained(current, section), section)]


def _as_trained(tree: dict[str, Any], section: str) -> Any:
    value = tree.get(section)
    if section == "model" and isinstance(value, dict) and value.get("dtype") == "auto":
        return {**value, "dtype": "float32"}
    return value


def describe_changes(saved: dict[str, Any], cfg: RunConfig, keys: list[str], limit: int = 4) -> str:
    """'train.lr 0.05 -> 0.5, eval.limit None -> 2' for the first `limit` keys."""
    current = cfg.model_dump(mode="json")

    def get(tree: Any, dotted: str) -> Any:
        for part in dotted.split("."):
            tree = tree.get(part) if isinstance(tree, dict) else None
        return tree

    text = ", ".join(f"{k} {get(saved, k)!r} -> {get(current, k)!r}" for k in keys[:limit])
    return text + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _with_defaults(saved: Any, defaults: Any) -> Any:
    if not (isinstance(saved, dict) and isinstance(defaults, dict)):
        return saved
    return {**defaults, **{k: _with_defaults(v, defaults.get(k)) for k, v in saved.items()}}


def _diff(old: Any, new: Any, prefix: str) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [k for key in sorted(old.keys() | new.keys())
                for k in _diff(old.get(key), new.get(key), f"{prefix}.{key}")]
    return [] if old == new else [prefix]


def relative_drop(initial: float | None, final: float | None) -> float | None:
    """(initial - final) / initial: 0.25 means the validation loss ended 25% below where it started."""
    if initial is None or final is None or initial == 0:
        return None
    return round((initial - final) / initial, 4)
