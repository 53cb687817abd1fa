"""The unit every stage passes around: one rendered prompt/completion pair with its references."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Example:
    """A rendered example. `prompt` is plain text (no chat template); `references` hold every gold output."""

    id: str
    prompt: str
    completion: str
    references: tuple[str, ...]
    fields: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
