"""How the epoch's batches become optimizer steps and forward passes.

One optimizer step consumes a *window* of `grad_accum * num_processes` batches (each process takes every
num_processes-th one). A batch too large for memory is run as several *forward chunks* whose gradients add up
before the step: the loss is a sum over target tokens divided by the window's target count, so chunking changes
neither the examples of a step nor its gradient (only float summation order). It bounds peak memory, which on
CPU grows ~1 MB per padded token for SmolLM2-135M with LoRA: a batch of 8 x 768 tokens would need ~6 GB.
"""

from __future__ import annotations

from collections.abc import Sequence

# Padded tokens per forward pass: ~1.1 GB of activations for SmolLM2-135M + LoRA (bf16 autocast, dropout 0.05),
# which with glibc's fragmentation over a run keeps the process near 3 GiB; 2048 reached 4.8 GiB in 4 steps.
DEFAULT_MAX_FORWARD_TOKENS = 1024


def accumulation_steps(batch_size: int, grad_accum: int, global_batch_size: int | None, num_processes: int, *,
                       grad_accum_set: bool = False) -> int:
    """Micro-batches per process per optimizer step: `grad_accum`, or global_batch_size / (batch_size x processes).

    With a global batch, the same config gives the same optimizer steps on 1 or N processes (the loss curves
    agree to float summation order). Raises ConfigError (exit 2) when the global batch is not a whole multiple of
    batch_size x processes, or when grad_accum was also set to a different value.
    """
    if global_batch_size is None:
        return grad_accum
    from tunebench.errors import ConfigError

    per_step = batch_size * num_processes
    if global_batch_size % per_step:
        raise ConfigError(f"train.global_batch_size {global_batch_size} is not a multiple of train.batch_size "
                          f"{batch_size} x {num_processes} process(es) = {per_step}: change the batch size or the "
                          "number of processes (accelerate launch --num_processes)")
    steps = global_batch_size // per_step
    if grad_accum_set and grad_accum != steps:
        raise ConfigError(f"train.grad_accum {grad_accum} contradicts train.global_batch_size {global_batch_size} "
                          f"(= batch_size {batch_size} x {num_processes} process(es) x {steps}): set only one")
    return steps


def step_windows(batches: Sequence[list[int]], grad_accum: int, num_processes: int) -> list[list[list[int]]]:
    """Group an epoch's batches into optimizer-step windows.

    With several processes, the batches that would leave a process without any in the epoch's last window are
    dropped (as DistributedSampler does), because every process must take part in each gradient all-reduce.
    """
    usable = usable_batches(len(batches), num_processes)
    per_window = grad_accum * num_processes
    return [list(batches[i : min(i + per_window, usable)]) for i in range(0, usable, per_window)]


def usable_batches(n_batches: int, num_processes: int) -> int:
    """Batches of an epoch that every process can share evenly."""
    return n_batches - (n_batches % num_processes if num_processes > 1 else 0)


def forward_chunks(batch: Sequence[int], lengths: Sequence[int], max_tokens: int | None) -> list[list[int]]:
    """Split one batch (example indices) so rows x longest row stays within `max_tokens` per forward pass.

    Rows are taken longest first, so each chunk pads little; a single row over the budget runs alone.
    """
    if not max_tokens:
        return [list(batch)]
    rows = sorted(batch, key=lambda i: -lengths[i])
    chunks: list[list[int]] = []
    for i in rows:
        if chunks and (len(chunks[-1]) + 1) * lengths[chunks[-1][0]] <= max_tokens:
            chunks[-1].append(i)
        else:
            chunks.append([i])
    return chunks
