"""Efficiency: what an evaluation cost (latency, throughput, peak memory) and, for tuned models, what training cost.

Peak memory is the largest resident set size sampled by a background thread while the measured block runs,
not the process-lifetime peak from getrusage: in `tunebench run` the same process trained the model first, and
that peak would hide the evaluation's own footprint. On a GPU the CUDA allocator's peak is reported as well.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from tunebench.memory import rss_bytes

# What train_summary.json (tunebench.train.loop) says training cost, copied into the efficiency entry.
TRAIN_SUMMARY_KEYS = ("trainable_params", "total_params", "train_time_s")


@dataclass
class Measurement:
    """Counters of one measured block: examples and tokens processed, wall time, peak memory."""

    examples: int = 0
    tokens: int = 0
    seconds: float = 0.0
    peak_rss_bytes: int = 0
    peak_gpu_bytes: int | None = None

    def add(self, examples: int = 0, tokens: int = 0) -> None:
        self.examples += examples
        self.tokens += tokens


class _RssSampler(threading.Thread):
    def __init__(self, interval_s: float) -> None:
        super().__init__(daemon=True)
        self.interval_s, self.peak, self._stop_event = interval_s, rss_bytes(), threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval_s):
            self.peak = max(self.peak, rss_bytes())

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return max(self.peak, rss_bytes())


@contextmanager
def measure(interval_s: float = 0.05) -> Iterator[Measurement]:
    """Time a block and sample its peak RSS; the caller counts examples and tokens with `Measurement.add`."""
    cuda = _cuda()
    if cuda is not None:
        cuda.reset_peak_memory_stats()
    sampler = _RssSampler(interval_s)
    sampler.start()
    result = Measurement()
    start = time.perf_counter()
    try:
        yield result
    finally:
        result.seconds += time.perf_counter() - start
        result.peak_rss_bytes = max(result.peak_rss_bytes, sampler.stop())
        if cuda is not None:
            result.peak_gpu_bytes = int(cuda.max_memory_allocated())


def _cuda() -> Any:
    import torch

    return torch.cuda if torch.cuda.is_available() else None


def combine(measurements: list[Measurement]) -> Measurement:
    """Sum counts and times; peaks are the largest seen."""
    out = Measurement()
    for m in measurements:
        out.add(m.examples, m.tokens)
        out.seconds += m.seconds
        out.peak_rss_bytes = max(out.peak_rss_bytes, m.peak_rss_bytes)
        if m.peak_gpu_bytes is not None:
            out.peak_gpu_bytes = max(out.peak_gpu_bytes or 0, m.peak_gpu_bytes)
    return out


def efficiency_report(m: Measurement, train_summary: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The efficiency entry of the HELM summary: per-example latency, tokens/s, peak memory, training cost."""
    report: dict[str, Any] = {
        "examples": m.examples,
        "tokens": m.tokens,
        "seconds": round(m.seconds, 4),
        "latency_s_per_example": m.seconds / m.examples if m.examples else None,
        "tokens_per_s": m.tokens / m.seconds if m.seconds > 0 else None,
        "peak_rss_mb": round(m.peak_rss_bytes / 2**20, 1),
        "peak_gpu_mb": round(m.peak_gpu_bytes / 2**20, 1) if m.peak_gpu_bytes is not None else None,
    }
    report.update({key: (train_summary or {}).get(key) for key in TRAIN_SUMMARY_KEYS})
    return report
