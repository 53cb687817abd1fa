"""Signatures: a score travels with the settings that produced it (sacreBLEU's idea), so two numbers are only
compared when their signatures agree. BLEU and chrF use sacreBLEU's own signature; the rest are built here in
the same `key:value|key:value` style, starting with the metric name.
"""

from __future__ import annotations

from collections.abc import Sequence

from tunebench import __version__


def refs_field(references: Sequence[Sequence[str]]) -> str:
    """Number of references per example, or 'var' when it varies (as sacreBLEU writes it)."""
    counts = {len(r) for r in references}
    return str(counts.pop()) if len(counts) == 1 else "var"


def make_signature(metric: str, **fields: str | bool | int) -> str:
    """`metric|key:value|...|version:tunebench-X`; booleans become yes/no like sacreBLEU's."""
    parts = [metric]
    for key, value in fields.items():
        if isinstance(value, bool):
            value = "yes" if value else "no"
        parts.append(f"{key}:{value}")
    parts.append(f"version:tunebench-{__version__}")
    return "|".join(parts)


def parse_signature(signature: str) -> dict[str, str]:
    """The `key:value` fields of a signature (the leading metric name, if any, under 'metric')."""
    out: dict[str, str] = {}
    for part in signature.split("|"):
        key, sep, value = part.partition(":")
        if sep:
            out[key] = value
        else:
            out["metric"] = part
    return out
