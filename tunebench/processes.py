"""Which process this is: the rank and count every stage takes, and who writes the run directory.

Stages (evaluate, run_benchmarks, helm_evaluate) take `rank` of `world_size` processes and return data; the
pipeline writes what the main process (rank 0) returned. Work is not yet split across processes: each one
computes everything, so results are the same whatever the count, and sharding plus gathering can be added
behind these two parameters without changing a stage's signature or its callers.
"""

from __future__ import annotations

MAIN_RANK = 0


def check_rank(rank: int, world_size: int) -> None:
    """Raise ValueError unless 0 <= rank < world_size (a programming error, not a user one)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"process rank {rank} is outside a world of {world_size} process(es)")


def is_main(rank: int) -> bool:
    """The main process shows progress and is the only one that writes files."""
    return rank == MAIN_RANK
