"""Deterministic, disjoint splits: seeded carving, overlap removal by prompt hash, and limits.

A test score means something only if no test prompt was trained on, so overlap is checked on the text the
model is prompted with, not on ids (which differ between copies of the same item).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tunebench.data.example import Example

T = TypeVar("T")


@dataclass
class SplitResult:
    """The three splits of a run and how they were made (sizes, carving, duplicates removed)."""

    train: list[Example]
    validation: list[Example]
    test: list[Example]
    stats: dict[str, Any] = field(default_factory=dict)

    def split(self, name: str) -> list[Example]:
        """A split by name ('train' | 'validation' | 'test'), as eval.split names it."""
        if name not in ("train", "validation", "test"):
            raise ValueError(f"unknown split {name!r}")
        return getattr(self, name)


def prompt_hash(text: str) -> str:
    """Hash of a prompt with whitespace runs collapsed, so re-wrapped copies still collide."""
    return hashlib.sha256(" ".join(text.split()).encode("utf-8")).hexdigest()


def seeded_order(items: Sequence[T], seed: int, salt: str = "") -> list[T]:
    """A shuffled copy that depends only on the seed (and a salt per split), not on global RNG state."""
    out = list(items)
    random.Random(f"{seed}:{salt}").shuffle(out)
    return out


def carve_count(n: int, fraction: float) -> int:
    """How many of n items a fraction takes: rounded, at least one when the fraction is positive."""
    if fraction <= 0 or n == 0:
        return 0
    return max(1, round(n * fraction))


def carve(items: Sequence[T], fractions: dict[str, float], seed: int) -> dict[str, list[T]]:
    """Split `items` into 'train' plus each named fraction, by one seeded shuffle.

    Carved pieces keep source order (so a carved test split reads like a source split); the remaining train
    part keeps the shuffled order.
    """
    indexed = seeded_order(list(enumerate(items)), seed, "carve")
    out: dict[str, list[T]] = {}
    start = 0
    for name, fraction in fractions.items():
        k = carve_count(len(items), fraction)
        piece = sorted(indexed[start : start + k], key=lambda p: p[0])
        out[name] = [item for _, item in piece]
        start += k
    out["train"] = [item for _, item in indexed[start:]]
    return out


def remove_overlap(
    items: list[T], forbidden: set[str], key: Callable[[T], str]
) -> tuple[list[T], int]:
    """Drop items whose key occurs in `forbidden`; returns the kept items and how many were removed."""
    kept = [it for it in items if key(it) not in forbidden]
    return kept, len(items) - len(kept)


def apply_limit(items: list[T], limit: int | None) -> list[T]:
    return items if limit is None else items[:limit]
