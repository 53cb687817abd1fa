"""Checkpoints without pickle: `checkpoints/step-N/` holds everything an exact resume needs.

The files of one checkpoint are named by `tunebench.rundir.CheckpointDir` (and listed in docs/formats.md):
the trainable weights, then the optimizer, scheduler, per-process RNG and `TrainerState` states, each a
`StateFiles` pair (`<stem>.safetensors` for its tensors, `<stem>.json` for the rest). A checkpoint is written
through `tunebench.io.atomic_dir`, so a kill never leaves half of one. Written by hand because `torch.save` and Accelerate's `save_state` pickle the optimizer and RNG state, and a
pickle from a shared run directory can run code on load. safetensors holds flat tensors only, so nested state
is split here: tensors go to the .safetensors file under a path-like key, and the JSON keeps the structure with a
`{"__tensor__": key}` marker in their place (and markers for tuples, int-keyed dicts and NumPy arrays).
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tunebench.errors import TunebenchError
from tunebench.io import atomic_dir, atomic_write_json
from tunebench.rundir import CheckpointDir, CheckpointRoot, StateFiles

FORMAT_VERSION = 1


class CheckpointError(TunebenchError):
    """A checkpoint that is missing, unreadable, or does not match the model being trained."""


# ---------------------------------------------------------------- nested state <-> (tensors, JSON)


def split_tensors(obj: Any, tensors: dict[str, torch.Tensor], prefix: str = "") -> Any:
    """Move every tensor of a nested state into `tensors` and return a JSON-able tree with markers."""
    if isinstance(obj, torch.Tensor):
        key = prefix or "_"
        tensors[key] = obj.detach().to("cpu").contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, dict):
        items = [[k, split_tensors(v, tensors, f"{prefix}.{k}" if prefix else str(k))] for k, v in obj.items()]
        if all(isinstance(k, str) for k in obj):
            return dict(items)
        return {"__items__": items}
    if isinstance(obj, list | tuple):
        items = [split_tensors(v, tensors, f"{prefix}.{i}" if prefix else str(i)) for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in a checkpoint without pickle")


def join_tensors(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of `split_tensors`."""
    if isinstance(tree, dict):
        if "__tensor__" in tree:
            return tensors[tree["__tensor__"]]
        if "__ndarray__" in tree:
            return np.asarray(tree["__ndarray__"], dtype=tree["dtype"])
        if "__tuple__" in tree:
            return tuple(join_tensors(v, tensors) for v in tree["__tuple__"])
        if "__items__" in tree:
            return {k: join_tensors(v, tensors) for k, v in tree["__items__"]}
        return {k: join_tensors(v, tensors) for k, v in tree.items()}
    if isinstance(tree, list):
        return [join_tensors(v, tensors) for v in tree]
    return tree


def _save_state(files: StateFiles, state: Any) -> None:
    tensors: dict[str, torch.Tensor] = {}
    tree = split_tensors(state, tensors)
    if tensors:
        save_file(tensors, str(files.tensors))
    files.tree.write_text(json.dumps(tree), encoding="utf-8")


def _load_state(files: StateFiles) -> Any:
    tensors = load_file(str(files.tensors)) if files.tensors.exists() else {}
    return join_tensors(json.loads(files.tree.read_text(encoding="utf-8")), tensors)


# ---------------------------------------------------------------- random number generators


def capture_rng() -> dict[str, Any]:
    """This process's Python, NumPy and torch (CPU and CUDA) generator states."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------- trainable weights


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters by name (detached); for LoRA this is the adapter, for full the whole model."""
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: torch.nn.Module, path: Path) -> None:
    """Copy saved trainable weights into `model` in place; names and shapes must match exactly."""
    saved = load_file(str(path))
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if saved.keys() != params.keys():
        missing = sorted(params.keys() - saved.keys())[:3]
        extra = sorted(saved.keys() - params.keys())[:3]
        raise CheckpointError(
            f"{path}: its weights do not match the model (missing {missing}, unexpected {extra}); "
            "resume with the config the run was started with"
        )
    with torch.no_grad():
        for name, param in params.items():
            if saved[name].shape != param.shape:
                raise CheckpointError(f"{path}: '{name}' has shape {tuple(saved[name].shape)}, the model "
                                      f"{tuple(param.shape)}; resume with the config the run was started with")
            param.copy_(saved[name])


# ---------------------------------------------------------------- whole checkpoints


def step_dir(root: Path, step: int) -> Path:
    """`root/step-<step>/` (CheckpointRoot names it)."""
    return CheckpointRoot(root).step(step).path


def save_checkpoint(
    root: Path,
    step: int,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    rng: list[dict[str, Any]],
    trainer_state: dict[str, Any],
) -> Path:
    """Write `root/step-N/` atomically; `rng` holds one generator state per process (index = rank)."""
    target = step_dir(root, step)
    with atomic_dir(target) as tmp:
        out = CheckpointDir(tmp)
        save_file({k: v.contiguous() for k, v in trainable_state(model).items()}, str(out.trainable))
        _save_state(out.optimizer, optimizer.state_dict())
        _save_state(out.scheduler, scheduler.state_dict())
        _save_state(out.rng, rng)
        _save_state(out.trainer_state, {"format": FORMAT_VERSION, "step": step, **trainer_state})
    return target


def load_checkpoint(
    path: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Restore weights, optimizer and scheduler in place; return (trainer_state, per-process RNG states)."""
    saved = CheckpointDir(path)
    try:
        trainer_state = _load_state(saved.trainer_state)
        load_trainable(model, saved.trainable)
        optimizer.load_state_dict(_load_state(saved.optimizer))
        scheduler.load_state_dict(_load_state(saved.scheduler))
        rng = _load_state(saved.rng)
    except (OSError, json.JSONDecodeError, KeyError, SafetensorError) as exc:
        raise CheckpointError(f"{path}: the checkpoint is incomplete or unreadable ({exc}); "
                              "delete it to resume from the one before") from None
    except ValueError as exc:  # the optimizer's parameter groups differ
        raise CheckpointError(f"{path}: the optimizer state does not match ({exc}); "
                              "resume with the config the run was started with") from None
    if trainer_state.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {trainer_state.get('format')} is not "
                              f"{FORMAT_VERSION}; start the run again without --resume")
    return trainer_state, rng


def list_checkpoints(root: Path) -> list[int]:
    """Steps of the complete checkpoints under `root`, ascending (temporary `.step-N.*` dirs are ignored)."""
    return CheckpointRoot(root).steps()


def latest_checkpoint(root: Path) -> Path | None:
    """The folder of the last saved step under `root`; None when there is none."""
    latest = CheckpointRoot(root).latest()
    return latest.path if latest is not None else None


def write_best(root: Path, step: int, metric: str, value: float) -> None:
    """`checkpoints/best.json` names the best step (a file rather than a symlink, so it survives copies)."""
    atomic_write_json(CheckpointRoot(root).best, {"step": step, "metric": metric, "value": value})


def prune_checkpoints(root: Path, keep_last: int, best_step: int | None) -> list[int]:
    """Delete all but the last `keep_last` checkpoints and the best one; return the deleted steps."""
    steps = list_checkpoints(root)
    keep = set(steps[-keep_last:]) | ({best_step} if best_step is not None else set())
    removed = [s for s in steps if s not in keep]
    for s in removed:
        shutil.rmtree(step_dir(root, s), ignore_errors=True)
    return removed
