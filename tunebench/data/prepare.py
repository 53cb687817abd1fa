"""From a data config to train/validation/test examples: source -> field map -> template -> split.

Order of operations, so that the same seed always yields the same splits:
1. read the named source splits; carve a null validation/test split from train by one seeded shuffle;
2. render every record with the template;
3. remove from train and validation every prompt that also occurs in test, and from train every prompt that
   also occurs in validation (compared by a hash of the prompt rendered with the first phrasing, so random
   phrasings cannot hide a duplicate);
4. apply the limits: train and validation take the first N of their seeded order, test the first N of the
   source order ("the first 200 test dialogues" means the source's first 200).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunebench.config import DataConfig
from tunebench.data.example import Example
from tunebench.data.sources import Record, load_split
from tunebench.data.splits import SplitResult, apply_limit, carve, prompt_hash, remove_overlap, seeded_order
from tunebench.data.templates import PromptTemplate, load_template
from tunebench.errors import DataError

Keyed = tuple[Example, str]


def _render(records: list[Record], template: PromptTemplate, seed: int, keep_empty: bool = False,
            empty: dict[str, int] | None = None, split: str = "") -> list[Keyed]:
    """Examples paired with the hash of their prompt in the first phrasing (the overlap key).

    An example whose completion renders empty (a null or blank target) teaches the model to say nothing and
    scores against an empty reference: it is dropped unless `keep_empty`, and counted in `empty[split]`.
    """
    out = []
    for r in records:
        ex = template.to_example(r, seed)
        if not ex.completion:
            if empty is not None:
                empty[split] = empty.get(split, 0) + 1
            if not keep_empty:
                continue
        canonical = ex.prompt if template.variant_index(r.id, seed) == 0 else template.render(r, seed, variant=0)[0]
        out.append((ex, prompt_hash(canonical)))
    return out


def build_splits(cfg: DataConfig, data_dir: Path | None, seed: int) -> SplitResult:
    """Build the deterministic, disjoint splits a run trains, validates and tests on."""
    if data_dir is not None and not Path(data_dir).is_dir():
        raise DataError(f"data directory {data_dir} does not exist; fix --data-dir, data_dir or $TUNEBENCH_DATA_DIR")
    template = load_template(cfg.template)
    names = cfg.splits
    assert names.train is not None  # DataConfig guarantees it
    train_records = load_split(cfg, names.train, data_dir)
    to_carve = {}
    if names.test is None and cfg.fractions.test > 0:
        to_carve["test"] = cfg.fractions.test
    if names.validation is None and cfg.fractions.validation > 0:
        to_carve["validation"] = cfg.fractions.validation
    pieces = carve(train_records, to_carve, seed)

    if names.validation is not None:
        val_records = seeded_order(load_split(cfg, names.validation, data_dir), seed, "validation")
    else:
        val_records = pieces.get("validation", [])
    test_records = load_split(cfg, names.test, data_dir) if names.test is not None else pieces.get("test", [])

    empty: dict[str, int] = {}
    keep = cfg.keep_empty_completions
    train = _render(pieces["train"], template, seed, keep, empty, "train")
    validation = _render(val_records, template, seed, keep, empty, "validation")
    test = _render(test_records, template, seed, keep, empty, "test")
    source_sizes = {"train": len(train), "validation": len(validation), "test": len(test)}

    test_keys = {k for _, k in test}
    train, from_train_test = remove_overlap(train, test_keys, key=lambda p: p[1])
    validation, from_val = remove_overlap(validation, test_keys, key=lambda p: p[1])
    train, from_train_val = remove_overlap(train, {k for _, k in validation}, key=lambda p: p[1])

    result = SplitResult(
        train=[e for e, _ in apply_limit(train, cfg.limits.train)],
        validation=[e for e, _ in apply_limit(validation, cfg.limits.validation)],
        test=[e for e, _ in apply_limit(test, cfg.limits.test)],
    )
    result.stats = {
        "source": cfg.source,
        "template": template.name,
        "seed": seed,
        "splits": {name: f"carved from train ({to_carve[name]:g})" if name in to_carve else getattr(names, name)
                   for name in ("train", "validation", "test")},
        "source_sizes": source_sizes,
        "duplicates_removed": {"train": from_train_test + from_train_val, "validation": from_val,
                               "train_in_test": from_train_test, "train_in_validation": from_train_val},
        "sizes": {"train": len(result.train), "validation": len(result.validation), "test": len(result.test)},
        "null_fields": _null_counts([*pieces["train"], *val_records, *test_records]),
        "empty_completions": {"kept" if keep else "dropped": {s: empty.get(s, 0) for s in ("train", "validation",
                                                                                            "test")}},
    }
    _check_not_empty(cfg, result, source_sizes)
    return result


def _null_counts(records: list[Record]) -> dict[str, int]:
    """How many records hold null in each field (templates see nulls as absent), e.g. {"input": 12}."""
    counts: dict[str, int] = {}
    for r in records:
        for name, value in r.fields.items():
            if value is None:
                counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def _check_not_empty(cfg: DataConfig, result: SplitResult, source_sizes: dict[str, Any]) -> None:
    removed = result.stats["duplicates_removed"]
    if not result.train:
        raise DataError(
            f"the train split ('{cfg.splits.train}' of {cfg.source}) is empty: {source_sizes['train']} examples "
            f"before removing {removed['train']} that also occur in validation/test; check data.splits"
        )
    if not result.test and (cfg.splits.test is not None or cfg.fractions.test > 0):
        raise DataError(f"the test split ('{cfg.splits.test or 'carved'}' of {cfg.source}) is empty; check data.splits")
    if not result.validation and cfg.splits.validation is not None:
        raise DataError(
            f"the validation split ('{cfg.splits.validation}' of {cfg.source}) is empty after removing "
            f"{removed['validation']} examples that also occur in test; check data.splits"
        )
