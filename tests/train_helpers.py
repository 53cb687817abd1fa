"""Shared set-up of the training tests: a tiny run config on real DialogSum rows, and reading its log."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunebench.config import RunConfig, config_from_dict
from tunebench.io import read_jsonl


def make_cfg(tmp_path: Path, model_dir: Path, name: str = "run", **train_keys: Any) -> RunConfig:
    """A tiny run on real DialogSum rows: few examples, short sequences, no periodic checkpoints by default."""
    tree = {
        "name": name,
        "output_dir": str(tmp_path / "runs"),
        "seed": train_keys.pop("seed", 7),
        "model": {"ref": str(model_dir)},
        "data": {
            "source": "dialogsum",
            "splits": {"train": "validation", "validation": None, "test": "test"},
            "limits": {"train": train_keys.pop("n_train", 4), "validation": 2, "test": 1},
            "max_length": 96,
        },
        "train": {"method": "full", "batch_size": 2, "lr": 5e-3, "warmup_ratio": 0.0, "eval_every": None,
                  "save_every": None, "log_every": 1, **train_keys},
    }
    return config_from_dict(tree)


def losses(run_dir: Path, key: str = "loss") -> list[float]:
    return [r[key] for r in read_jsonl(run_dir / "train_log.jsonl") if key in r]


def free_port() -> int:
    """A TCP port no one listens on now (a fixed one collides with another test run on the same machine)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
