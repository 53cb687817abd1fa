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

import sys
from pathlib import Path
from typing import Any

from tunebench.config import SourceConfig
from tunebench.data.example import Example
from tunebench.data.sources import Record, has_split_file, load_split, single_file_source
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


def _carved_splits(cfg: SourceConfig, data_dir: Path | None) -> tuple[dict[str, float], list[str]]:
    """Which of validation/test are carved from train (name -> fraction), and notes announcing implicit carving.

    A split set to null is carved. So is a named split of a single-file source that has no file of its own
    beside it (`test.csv` next to `reviews.csv`): one file holds one split, so its test split is carved rather
    than looked for (and the user is told).
    """
    single = single_file_source(cfg, data_dir)
    carved: dict[str, float] = {}
    implicit: list[str] = []
    for name in ("test", "validation"):  # test first: the carving order of earlier versions
        named = getattr(cfg.splits, name)
        fraction = getattr(cfg.fractions, name)
        if named is None:
            if fraction > 0:
                carved[name] = fraction
        elif single is not None and named != cfg.splits.train and not has_split_file(single.parent, named, cfg.format):
            carved[name] = fraction
            implicit.append(name)
    notes = []
    if implicit and single is not None:
        shares = " and ".join(f"{name} {carved[name]:.0%}" for name in ("validation", "test") if name in carved)
        notes.append(f"{single.name} is a single file: carving {shares} from it by a seeded shuffle "
                     "(change the shares with data.fractions)")
    return carved, notes


def build_splits(cfg: SourceConfig, data_dir: Path | None, seed: int, *, only: str | None = None) -> SplitResult:
    """Build the deterministic, disjoint splits a run trains, validates and tests on.

    only="test": read and render just the test split when it is a source split of its own (evaluation without
    few-shot needs nothing else, so no train split is read or downloaded); train and validation come back empty.
    Raises DataError for missing or empty splits, ConfigError for a bad template.
    """
    if data_dir is not None and not Path(data_dir).is_dir():
        raise DataError(f"data directory {data_dir} does not exist; fix --data-dir, data_dir or $TUNEBENCH_DATA_DIR")
    template = load_template(cfg.template)
    names = cfg.splits
    assert names.train is not None  # SourceConfig guarantees it
    to_carve, notes = _carved_splits(cfg, data_dir)
    for note in notes:
        _announce(note)
    if only == "test" and "test" not in to_carve and names.test is not None:
        return _test_only(cfg, names.test, data_dir, template, seed)
    train_records = load_split(cfg, names.train, data_dir)
    pieces = carve(train_records, to_carve, seed)

    if "validation" not in to_carve and names.validation is not None:
        val_records = seeded_order(load_split(cfg, names.validation, data_dir), seed, "validation")
    else:
        val_records = pieces.get("validation", [])
    test_records = (load_split(cfg, names.test, data_dir) if "test" not in to_carve and names.test is not None
                    else pieces.get("test", []))

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
        "notes": notes,
        "source_sizes": source_sizes,
        "duplicates_removed": {"train": from_train_test + from_train_val, "validation": from_val,
                               "train_in_test": from_train_test, "train_in_validation": from_train_val},
        "sizes": {"train": len(result.train), "validation": len(result.validation), "test": len(result.test)},
        "null_fields": _null_counts([*pieces["train"], *val_records, *test_records]),
        "empty_completions": {"kept" if keep else "dropped": {s: empty.get(s, 0) for s in ("train", "validation",
                                                                                            "test")}},
    }
    _check_not_empty(cfg, result, source_sizes, to_carve)
    return result


def _null_counts(records: list[Record]) -> dict[str, int]:
    """How many records hold null in each field (templates see nulls as absent), e.g. {"input": 12}."""
    counts: dict[str, int] = {}
    for r in records:
        for name, value in r.fields.items():
            if value is None:
                counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


_ANNOUNCED: set[str] = set()


def _announce(note: str) -> None:
    """Tell the user once per process how their data was split (stderr, so stdout stays the command's output)."""
    if note not in _ANNOUNCED:
        _ANNOUNCED.add(note)
        print(f"data: {note}", file=sys.stderr)


def _test_only(cfg: SourceConfig, test_name: str, data_dir: Path | None, template: PromptTemplate,
               seed: int) -> SplitResult:
    test = [e for e, _ in apply_limit(_render(load_split(cfg, test_name, data_dir), template, seed, cfg.keep_empty_completions, {}, "test"), cfg.limits.test)]
    if not test:
        raise DataError(f"the test split ('{test_name}' of {cfg.source}) is empty; check data.splits")
    result = SplitResult(train=[], validation=[], test=test)
    result.stats = {"source": cfg.source, "template": template.name, "seed": seed,
                    "splits": {"test": test_name}, "sizes": {"test": len(test)}, "notes": []}
    return result


def _check_not_empty(cfg: SourceConfig, result: SplitResult, source_sizes: dict[str, Any],
                     carved: dict[str, float]) -> None:
    removed = result.stats["duplicates_removed"]
    if not result.train:
        raise DataError(
            f"the train split ('{cfg.splits.train}' of {cfg.source}) is empty: {source_sizes['train']} examples "
            f"before removing {removed['train']} that also occur in validation/test; check data.splits"
        )
    if not result.test and carved.get("test", 1.0) > 0 and (cfg.splits.test is not None or "test" in carved):
        raise DataError(f"the test split ('{cfg.splits.test or 'carved'}' of {cfg.source}) is empty; check data.splits")
    if not result.validation and cfg.splits.validation is not None and "validation" not in carved:
        raise DataError(
            f"the validation split ('{cfg.splits.validation}' of {cfg.source}) is empty after removing "
            f"{removed['validation']} examples that also occur in test; check data.splits"
        )
