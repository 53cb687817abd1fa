"""Which process this is, how work is split across processes, and who writes the run directory.

Launched by `accelerate launch --num_processes N` (or `torchrun`, which it wraps), tunebench runs one process per
device. Accelerate's `PartialState` joins the process group (gloo on CPU, NCCL on GPUs); nothing here is a scheme of
our own beyond the split itself. Stages (evaluate, run_benchmarks) take `rank` of `world_size` processes: each
process computes its shard of the examples (`map_sharded`), the shards are gathered with
`torch.distributed.all_gather_object` so that every process holds every result in the original order, and the
main process (rank 0) alone shows progress and writes files. A result is therefore the same whatever the process
count, as long as one example's computation does not depend on which others share its batch (greedy decoding and
log-likelihoods in fp32; seeded sampling draws per batch, so sampled outputs depend on the split).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, TypeVar

from tunebench.errors import ConfigError

MAIN_RANK = 0
T = TypeVar("T")
R = TypeVar("R")


def check_rank(rank: int, world_size: int) -> None:
    """Raise ValueError unless 0 <= rank < world_size (a programming error, not a user one)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"process rank {rank} is outside a world of {world_size} process(es)")


def is_main(rank: int) -> bool:
    """The main process shows progress and is the only one that writes files."""
    return rank == MAIN_RANK


def launched_world_size() -> int:
    """Processes the launcher started (`WORLD_SIZE`, set by torchrun and `accelerate launch`); 1 when run plainly."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def current_process(device: str = "auto") -> tuple[int, int]:
    """(rank, world_size) of this process; (0, 1) unless a launcher started several.

    Under a launcher, Accelerate's `PartialState` initialises the process group once per process (the same
    state the trainer's `Accelerator` then shares), on the CPU with gloo when `device` resolves to the CPU.
    """
    if launched_world_size() == 1:
        return MAIN_RANK, 1
    from accelerate import PartialState

    from tunebench.models.device import accelerate_cpu, resolve_device

    state = PartialState(cpu=accelerate_cpu(resolve_device(device)))
    return state.process_index, state.num_processes


def shard_order(keys: Sequence[Hashable] | int, world_size: int) -> list[list[int]]:
    """Indices of each process's shard: contiguous, near-equal slices of the items in grouped order.

    keys: one group key per item (benchmarks: the few-shot prefix, so a shared prefix is computed by one process,
    or two where a group straddles a boundary), or the item count when items have no groups (original order).
    Groups keep the order of their first item, and items their order within a group. Returns `world_size` lists
    whose concatenation is a permutation of range(len(keys)).
    """
    if isinstance(keys, int):
        order = list(range(keys))
    else:
        first: dict[Hashable, int] = {}
        for i, key in enumerate(keys):
            first.setdefault(key, i)
        order = sorted(range(len(keys)), key=lambda i: (first[keys[i]], i))
    n = len(order)
    bounds = [n * r // world_size for r in range(world_size + 1)]
    return [order[bounds[r]:bounds[r + 1]] for r in range(world_size)]


def gather(local: list[T], world_size: int) -> list[T]:
    """Every process's `local` list, concatenated in rank order, on every process (all_gather_object)."""
    if world_size == 1:
        return list(local)
    import torch.distributed as dist

    parts: list[Any] = [None] * world_size
    dist.all_gather_object(parts, list(local))
    return [x for part in parts for x in part]


def map_sharded(fn: Callable[[list[T]], Sequence[R]], items: Sequence[T], *, rank: int = 0, world_size: int = 1,
                keys: Sequence[Hashable] | None = None) -> list[R]:
    """fn over this process's shard of `items`, gathered so every process returns all results in `items`' order.

    fn(shard) must return one result per item of the shard, in order, computed independently of the others.
    keys: group keys for `shard_order`. Raises ValueError for a rank outside the world or a result count that
    does not match the shard.
    """
    check_rank(rank, world_size)
    if world_size == 1:
        return list(fn(list(items)))
    mine = shard_order(list(keys) if keys is not None else len(items), world_size)[rank]
    results = list(fn([items[i] for i in mine])) if mine else []
    if len(results) != len(mine):
        raise ValueError(f"a shard of {len(mine)} items gave {len(results)} results")
    gathered = gather(list(zip(mine, results, strict=True)), world_size)
    out: list[Any] = [None] * len(items)
    for i, result in gathered:
        out[i] = result
    return out


def barrier(world_size: int) -> None:
    """Wait until every process reaches this point (after the main process wrote what the others read next)."""
    if world_size > 1:
        import torch.distributed as dist

        dist.barrier()


def from_main(fn: Callable[[], T], rank: int = 0, world_size: int = 1) -> T:
    """fn() computed on the main process only and sent to every process: for decisions
    every process must share although computing them twice could differ (a timing probe) or would repeat work
    (the parity gate). Sent through `gather` (the main process contributes the one item)."""
    check_rank(rank, world_size)
    if world_size == 1:
        return fn()
    return gather([fn()] if is_main(rank) else [], world_size)[0]


FSDP_REQUEST_ENV = "ACCELERATE_USE_FSDP"  # what `accelerate launch` sets for `distributed_type: FSDP`


def fsdp_requested(env: Mapping[str, str] | None = None) -> bool:
    """Whether the launch asks for FSDP (`distributed_type: FSDP` in the accelerate config, passed on by
    `accelerate launch` as ACCELERATE_USE_FSDP=true)."""
    return (os.environ if env is None else env).get(FSDP_REQUEST_ENV, "false").lower() == "true"


def check_fsdp_device(device_type: str, env: Mapping[str, str] | None = None) -> None:
    """Refuse FSDP on the CPU before the Accelerator is made (`device_type`: "cpu", "cuda", ...).

    Accelerate 1.15 cannot shard CPU processes: building its FSDP plugin with `fsdp_sync_module_states` (the
    launcher's default) raises "There are currently no available devices found" (accelerate/utils/dataclasses.py,
    `FullyShardedDataParallelPlugin.__post_init__`), and without it `AcceleratorState` keeps CPU processes
    MULTI_CPU (DDP): the FSDP branch of `AcceleratorState.__init__` is only for GPUs and other accelerators.
    Raises ConfigError (exit 2) naming `distributed_type: FSDP`.
    """
    if device_type == "cpu" and fsdp_requested(env):
        raise ConfigError("distributed_type: FSDP (ACCELERATE_USE_FSDP=true) cannot run on CPU processes "
                          "(Accelerate shards only on GPUs and other accelerators): launch on GPUs, or train CPU "
                          "processes with DDP (accelerate launch --multi_gpu --num_processes N)")


def check_sharding(method: Any, state: Any, env: Mapping[str, str] | None = None) -> None:
    """Refuse, before anything is written, an FSDP launch that cannot train `method` (a `Method` row).

    state: Accelerate's state (`Accelerator.state`: `distributed_type`, and `fsdp_plugin` under FSDP); env: the
    environment (default `os.environ`). Raises ConfigError (exit 2), one sentence naming the setting, when
    - FSDP was asked for (`fsdp_requested`) but Accelerate did not set it up, as for a process not started by a
      launcher: Accelerate 1.15 turns FSDP on only for launched accelerator processes (accelerate/state.py,
      `AcceleratorState.__init__`: the FSDP branch is inside `elif self.distributed_type in
      [DistributedType.MULTI_GPU, ...]`), so the run would not be what was asked (CPU processes are refused
      earlier, by `check_fsdp_device`); or
    - FSDP1 runs with flat parameters (`fsdp_use_orig_params: false`, Accelerate's default) and the method's row
      says `fsdp_needs_orig_params` (torch would refuse the wrap with a traceback; see `Method`).
    DeepSpeed ZeRO keeps frozen weights apart from the trainable ones it partitions (PEFT's DeepSpeed guide trains
    LoRA under ZeRO-3), so it needs no such check.
    """
    from accelerate.utils import DistributedType

    is_fsdp = state.distributed_type == DistributedType.FSDP
    if not is_fsdp and fsdp_requested(env):
        kind = str(state.distributed_type).split(".")[-1]
        raise ConfigError(f"distributed_type: FSDP (ACCELERATE_USE_FSDP=true) was asked for but Accelerate runs "
                          f"this launch as {kind}, not FSDP: it shards only processes on GPUs or other "
                          "accelerators started by accelerate launch, so launch there or drop FSDP from the "
                          "accelerate config")
    if not is_fsdp:
        return
    plugin = state.fsdp_plugin
    if getattr(plugin, "fsdp_version", 1) == 1 and not plugin.use_orig_params and method.fsdp_needs_orig_params:
        raise ConfigError(f"train.method '{method.name}' mixes trainable and frozen weights in one FSDP unit, "
                          "which FSDP1 shards only with fsdp_use_orig_params: true in the accelerate config "
                          "(FSDP_USE_ORIG_PARAMS=true) or with fsdp_version: 2")
