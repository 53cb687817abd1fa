"""What a run tells the user while and after it trains: the JSONL log, TensorBoard events, the progress bar and
the loss curve.

The log is rewritten atomically on every row (a few thousand short lines at most), so a killed run never leaves
a half-written line, and a resumed run can drop the rows logged after its last checkpoint. The same rows go to
TensorBoard event files (`torch.utils.tensorboard.SummaryWriter`), so `tensorboard --logdir` over a sweep folder
shows every method's curves together.
"""

from __future__ import annotations

import io
import math
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


# train_log.jsonl key -> TensorBoard tag; `gen_metric` rows add `gen/<metric>` (the validation generation metric).
TENSORBOARD_TAGS = {"loss": "train/loss", "val_loss": "val/loss", "lr": "train/lr",
                    "tokens_per_s": "train/tokens_per_s", "grad_norm": "train/grad_norm"}


class TensorBoardLog:
    """TensorBoard event files of one run: every numeric row `TrainLog` gets, as scalars at its `step`.

    A resumed run passes `purge_step` (its checkpoint's step + 1): TensorBoard then drops the events an earlier,
    killed process wrote after that checkpoint, as `TrainLog.resume` drops those rows. Only the main process
    writes (the caller creates this there alone).
    """

    def __init__(self, log_dir: Path, purge_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        log_dir.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def append(self, row: dict[str, Any]) -> None:
        step = row.get("step")
        if not isinstance(step, int):
            return
        for key, tag in TENSORBOARD_TAGS.items():
            if _is_num(row.get(key)):
                self.writer.add_scalar(tag, row[key], step)
        for name, value in (row.get("gen_metric") or {}).items():
            if _is_num(value):
                self.writer.add_scalar(f"gen/{name}", value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


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


def _is_num(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def loss_curves_png(log: list[dict[str, Any]], title: str = "") -> bytes | None:
    """Train loss per logged step and validation loss per evaluation; generation metrics in a second panel.

    `log` holds train_log.jsonl rows; None when no finite loss was logged yet. Drawn on a matplotlib `Figure`
    with the Agg canvas, not pyplot: no global figure state, safe in library calls and parallel tests.
    """
    train = [(r["step"], r["loss"]) for r in log if _is_num(r.get("loss")) and _is_num(r.get("step"))]
    val = [(r["step"], r["val_loss"]) for r in log if _is_num(r.get("val_loss")) and _is_num(r.get("step"))]
    gen: dict[str, list[tuple[float, float]]] = {}
    for r in log:
        if isinstance(r.get("gen_metric"), dict) and _is_num(r.get("step")):
            for name, value in r["gen_metric"].items():
                if _is_num(value):
                    gen.setdefault(name, []).append((r["step"], value))
    if not train and not val:
        return None
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11 if gen else 7, 3.6), layout="constrained")
    if title:
        fig.suptitle(title)
    axes = fig.subplots(1, 2 if gen else 1, squeeze=False)[0]
    ax = axes[0]
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", linewidth=1.2, color="#3b6fb6")
    if val:
        ax.plot(*zip(*val, strict=True), label="validation loss", marker="o", linewidth=1.5, color="#e07b39")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title("Loss")
    ax.grid(alpha=0.3)
    ax.legend()
    if gen:
        for name, points in gen.items():
            axes[1].plot(*zip(*points, strict=True), marker="o", label=name)
        axes[1].set_xlabel("optimizer step")
        axes[1].set_title("Validation generation metric")
        axes[1].grid(alpha=0.3)
        axes[1].legend()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    return buf.getvalue()


def write_loss_curve(log: TrainLog, path: Path, title: str = "") -> Path | None:
    """Write `loss_curves_png` of the log to `path` atomically; None (nothing written) before any loss."""
    png = loss_curves_png(log.rows, title)
    if png is None:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")  # write then rename, like tunebench.io does for text
    tmp.write_bytes(png)
    tmp.replace(path)
    return path
