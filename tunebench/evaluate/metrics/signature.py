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


def with_precision(signature: str, precision: str) -> str:
    """The signature of a score produced by a model computing in `precision` (fp32, bf16, fp16, int8): the field
    `precision:NAME` goes before the version field (replacing any there), so two scores agree only when the
    numbers they came from were computed alike."""
    parts = [p for p in without_precision(signature).split("|")]
    at = next((i for i, p in enumerate(parts) if p.startswith("version:")), len(parts))
    return "|".join([*parts[:at], f"precision:{precision}", *parts[at:]])


def without_precision(signature: str) -> str:
    """The metric's own signature: `with_precision`'s field taken out."""
    return "|".join(p for p in signature.split("|") if not p.startswith("precision:"))
