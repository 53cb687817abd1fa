"""What a run tells the user while and after it trains: the JSONL log, the progress bar and the loss curve.

The log is rewritten atomically on every row (a few thousand short lines at most), so a killed run never leaves
a half-written line, and a resumed run can drop the rows logged after its last checkpoint.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tunebench.io import atomic_write_jsonl, read_jsonl


class TrainLog:
    """`train_log.jsonl`: one object per logged training step or evaluation, each with its `step`."""

    def __init__(self, path: Path, rows: list[dict[str, Any]] | None = None) -> None:
        self.path = path
        self.rows: list[dict[str, Any]] = list(rows or [])

    @classmethod
    def resume(cls, path: Path, up_to_step: int) -> TrainLog:
        """Reopen a run's log keeping only rows up to the checkpoint it resumes from."""
        rows = read_jsonl(path) if path.exists() else []
        log = cls(path, [r for r in rows if r.get("step", 0) <= up_to_step])
        log.flush()
        return log

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self.flush()

    def flush(self) -> None:
        atomic_write_jsonl(self.path, self.rows)

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of every row that has `key`."""
        picked = [(r["step"], r[key]) for r in self.rows if r.get(key) is not None]
        return [s for s, _ in picked], [v for _, v in picked]


class Throughput:
    """Tokens per second over a sliding window of recent steps (the whole-run rate hides slowdowns)."""

    def __init__(self, window: int = 20) -> None:
        self.window = window
        self.marks: list[tuple[float, int]] = [(time.perf_counter(), 0)]
        self.total = 0

    def add(self, tokens: int) -> None:
        self.total += tokens
        self.marks.append((time.perf_counter(), self.total))
        del self.marks[: -self.window - 1]

    def rate(self) -> float:
        (t0, n0), (t1, n1) = self.marks[0], self.marks[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0


class ProgressBar:
    """A tqdm bar over optimizer steps with loss, learning rate and tokens/s; tqdm supplies the ETA."""

    def __init__(self, total: int, initial: int, enabled: bool) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True,
                        desc="train")

    def update(self, loss: float | None, lr: float, tokens_per_s: float) -> None:
        fields = {"lr": f"{lr:.2e}", "tok/s": f"{tokens_per_s:.0f}"}
        if loss is not None:
            fields = {"loss": f"{loss:.4f}", **fields}
        self.bar.set_postfix(fields, refresh=False)
        self.bar.update(1)

    def write(self, message: str) -> None:
        """Print above the bar without breaking it."""
        if not self.bar.disable:
            self.bar.write(message)

    def close(self) -> None:
        self.bar.close()


def plot_loss_curve(log: TrainLog, path: Path, title: str = "") -> Path | None:
    """Train and validation loss against the optimizer step, as a PNG; None when nothing was logged yet."""
    train_steps, train_loss = log.series("loss")
    val_steps, val_loss = log.series("val_loss")
    if not train_steps and not val_steps:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train_steps:
        ax.plot(train_steps, train_loss, label="train", color="#1f77b4", linewidth=1.2)
    if val_steps:
        ax.plot(val_steps, val_loss, label="validation", color="#d62728", marker="o", markersize=3, linewidth=1.4)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (cross-entropy per completion token)")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")  # write then rename, like tunebench.io does for text
    fig.savefig(tmp, format="png")
    plt.close(fig)
    tmp.replace(path)
    return path
