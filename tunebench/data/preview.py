"""`tunebench data preview`: see what the model will be trained and tested on before spending compute.

Shows, per split, the first n rendered prompt/completion pairs (wrapped in the chat template when a model is
given, i.e. the exact text the model sees) and token-length statistics against data.max_length.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from tunebench.config import RunConfig, SourceConfig
from tunebench.data.prepare import build_splits
from tunebench.data.tokenize import tokenize_examples

SPLITS = ("train", "validation", "test")


class PromptModel(Protocol):
    """What preview needs of a loaded model (tunebench.models.load.LoadedModel satisfies it)."""

    tokenizer: Any
    family: str

    def format_prompt(self, prompt: str) -> str: ...


def collect_preview(cfg: RunConfig, data_dir: Path | None, n: int = 3, model: PromptModel | None = None,
                    source: SourceConfig | None = None) -> dict[str, Any]:
    """Split stats, the first n examples per split, and (with a model) token statistics, as plain data.

    `source`: one task of data.tasks (default: the data section itself, a single task).
    """
    splits = build_splits(source or cfg.data, data_dir, cfg.seed)
    out: dict[str, Any] = {"stats": splits.stats, "max_length": cfg.data.max_length, "splits": {}}
    for name in SPLITS:
        examples = splits.split(name)
        shown = [
            {"id": ex.id, "prompt": model.format_prompt(ex.prompt) if model else ex.prompt,
             "completion": ex.completion, "references": list(ex.references)}
            for ex in examples[:n]
        ]
        tokens = None
        if model is not None and examples:
            _, tokens = tokenize_examples(
                examples, model.tokenizer, family=model.family, format_prompt=model.format_prompt,  # type: ignore[arg-type]
                max_length=cfg.data.max_length, truncation=cfg.data.truncation,
                train_on_prompt=cfg.train.train_on_prompt,
            )
        out["splits"][name] = {"size": len(examples), "examples": shown, "tokens": tokens}
    return out


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:g}"


def _origin(split: str | None) -> str:
    if split is None:
        return "unused"
    return split if split.startswith("carved") else f"source split '{split}'"


def format_preview(data: dict[str, Any]) -> str:
    """Plain text (no markup), so it reads the same in a terminal, a pipe or a log."""
    stats = data["stats"]
    lines = [
        f"source: {stats['source']}   template: {stats['template']}   seed: {stats['seed']}",
        "splits: " + ", ".join(f"{k} {stats['sizes'][k]} ({_origin(stats['splits'][k])})" for k in SPLITS),
        "duplicates removed: " + ", ".join(f"{k} {v}" for k, v in stats["duplicates_removed"].items()),
    ]
    lines += [f"note: {note}" for note in stats.get("notes", [])]
    for name in SPLITS:
        split = data["splits"][name]
        lines += ["", f"=== {name}: {split['size']} examples ==="]
        tok = split["tokens"]
        if tok is not None:
            t = tok["tokens"]
            lines.append(
                f"tokens: min {_fmt(t['min'])}  median {_fmt(t['median'])}  p95 {_fmt(t['p95'])}  max {_fmt(t['max'])}"
                f"; {t['over_max']} of {t['count']} over max_length {data['max_length']} "
                f"({tok['truncation']}: {tok['truncated']} truncated, {tok['dropped']} dropped)"
            )
        for i, ex in enumerate(split["examples"], start=1):
            lines += [f"--- [{i}] {ex['id']} ---", "PROMPT:", ex["prompt"], "COMPLETION:", ex["completion"]]
            if ex["references"] != [ex["completion"]]:
                lines += [f"REFERENCES ({len(ex['references'])}):"] + [f"  - {r}" for r in ex["references"]]
    return "\n".join(lines) + "\n"


def preview(cfg: RunConfig, data_dir: Path | None, n: int = 3, model: PromptModel | None = None) -> str:
    """The text `tunebench data preview CONFIG -n N` prints; pass a loaded model for token statistics.

    A mixture shows each task in turn, then the composition of one epoch (by example counts; `train` prints
    the token shares once the examples are tokenized).
    """
    if not cfg.data.multitask:
        return format_preview(collect_preview(cfg, data_dir, n, model))
    from tunebench.data.mixture import format_composition
    from tunebench.data.tasks import mixture_for

    parts, sizes = [], []
    for task in cfg.data.tasks:
        data = collect_preview(cfg, data_dir, n, model, source=task)
        sizes.append(data["splits"]["train"]["size"])
        parts.append(f"##### task {task.name}\n" + format_preview(data))
    mixture = mixture_for(cfg.data, [t.name for t in cfg.data.tasks], sizes)
    return "\n".join(parts) + "\n" + format_composition(mixture.composition()) + "\n"
