"""Splits: determinism, disjointness by prompt hash, duplicate removal, carving, limits and empty-split errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunebench.config import DataConfig
from tunebench.data.prepare import build_splits
from tunebench.data.splits import carve, prompt_hash
from tunebench.errors import DataError


def _write(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"uid": f"{path.stem}-{i}", "text": t, "gold": f"s{i}"}) + "\n"
                            for i, t in enumerate(texts)))
    return path


def _cfg(folder: Path, **kw) -> DataConfig:
    base = {"source": str(folder), "field_map": {"dialogue": "text", "summary": "gold"}, "id_field": "uid"}
    return DataConfig(**{**base, **kw})


@pytest.fixture
def folder(tmp_path) -> Path:
    _write(tmp_path / "train.jsonl", [f"dialogue {i}" for i in range(100)] + ["shared A", "shared  B", "val dup"])
    _write(tmp_path / "validation.jsonl", ["val dup", "val 1", "val 2", "shared A"])
    _write(tmp_path / "test.jsonl", [f"test {i}" for i in range(10)] + ["shared A", "shared B"])
    return tmp_path


def _prompts(examples) -> set[str]:
    return {prompt_hash(e.prompt) for e in examples}


def test_same_seed_same_splits_other_seed_other_order(folder):
    cfg = _cfg(folder, splits={"validation": None})
    a, b, c = (build_splits(cfg, None, s) for s in (3, 3, 4))
    assert [e.id for e in a.train] == [e.id for e in b.train]
    assert [e.id for e in a.validation] == [e.id for e in b.validation]
    assert [e.id for e in a.train] != [e.id for e in c.train]
    assert a.stats == b.stats


def test_splits_are_disjoint_and_duplicates_counted(folder):
    res = build_splits(_cfg(folder, splits={"validation": "validation"}), None, 0)
    assert not _prompts(res.train) & _prompts(res.test)
    assert not _prompts(res.validation) & _prompts(res.test)
    assert not _prompts(res.train) & _prompts(res.validation)
    removed = res.stats["duplicates_removed"]
    # "shared A" and "shared  B" (whitespace differs) are in test; "val dup" is in validation
    assert removed["train_in_test"] == 2 and removed["train_in_validation"] == 1 and removed["train"] == 3
    assert removed["validation"] == 1
    assert res.stats["sizes"] == {"train": 100, "validation": 3, "test": 12}
    assert res.stats["source_sizes"] == {"train": 103, "validation": 4, "test": 12}


def test_random_phrasings_do_not_hide_duplicates(folder):
    cfg = _cfg(folder, template={"name": "dialogsum", "variant": "random"}, fractions={"validation": 0.0})
    res = build_splits(cfg, None, 0)
    assert len({e.prompt.split("\n")[0] for e in res.train}) > 1  # phrasings really vary
    texts = lambda exs: {" ".join(e.fields["text"].split()) for e in exs}  # noqa: E731
    assert not texts(res.train) & texts(res.test)
    assert res.stats["duplicates_removed"]["train_in_test"] == 2


def test_carving_fractions_and_test_source_order(folder):
    cfg = _cfg(folder, splits={"validation": None, "test": None}, fractions={"validation": 0.1, "test": 0.2})
    res = build_splits(cfg, None, 7)
    assert len(res.test) == round(103 * 0.2) and len(res.validation) == round(103 * 0.1)
    assert len(res.train) + len(res.validation) + len(res.test) == 103
    ids = [int(e.id.split("-")[1]) for e in res.test]
    assert ids == sorted(ids)  # carved test keeps source order
    assert res.stats["splits"]["test"].startswith("carved from train")
    again = build_splits(cfg, None, 7)
    assert [e.id for e in again.test] == [e.id for e in res.test]


def test_limits_take_first_of_deterministic_order(folder):
    full = build_splits(_cfg(folder, splits={"validation": None}), None, 1)
    cut = build_splits(_cfg(folder, splits={"validation": None}, limits={"train": 5, "validation": 2, "test": 3}),
                       None, 1)
    assert [e.id for e in cut.train] == [e.id for e in full.train[:5]]
    assert [e.id for e in cut.validation] == [e.id for e in full.validation[:2]]
    assert [e.id for e in cut.test] == ["test-0", "test-1", "test-2"]  # source order
    assert cut.stats["sizes"] == {"train": 5, "validation": 2, "test": 3}


def test_train_order_is_shuffled_not_source_order(folder):
    res = build_splits(_cfg(folder, splits={"validation": None}, fractions={"validation": 0.0}), None, 0)
    ids = [int(e.id.split("-")[1]) for e in res.train]
    assert ids != sorted(ids) and sorted(ids) == [i for i in range(103) if i not in (100, 101)]
    assert res.validation == []


def test_empty_train_and_empty_test_are_errors(tmp_path):
    _write(tmp_path / "train.jsonl", ["same"])
    _write(tmp_path / "test.jsonl", ["same"])
    with pytest.raises(DataError, match="train split .* is empty: 1 examples before removing 1"):
        build_splits(_cfg(tmp_path, fractions={"validation": 0.0}), None, 0)
    _write(tmp_path / "train.jsonl", ["a", "b"])
    (tmp_path / "test.jsonl").write_text("")
    with pytest.raises(DataError, match="test split .* is empty"):
        build_splits(_cfg(tmp_path, fractions={"validation": 0.0}), None, 0)
    ok = build_splits(_cfg(tmp_path, splits={"test": None}, fractions={"validation": 0.0, "test": 0.0}), None, 0)
    assert ok.test == [] and len(ok.train) == 2  # no test split asked for (test: null, fractions.test 0)


def test_missing_data_dir_is_one_sentence(tmp_path):
    with pytest.raises(DataError, match=r"data directory .*nowhere does not exist; fix --data-dir"):
        build_splits(DataConfig(), tmp_path / "nowhere", 0)


def test_carve_is_a_partition():
    items = list(range(50))
    parts = carve(items, {"test": 0.2, "validation": 0.1}, seed=5)
    assert sorted(parts["train"] + parts["test"] + parts["validation"]) == items
    assert (len(parts["test"]), len(parts["validation"])) == (10, 5)
    assert carve(items, {"test": 0.001}, seed=5)["test"] != []  # a positive fraction takes at least one


def test_dialogsum_from_shared_data(data_dir):
    cfg = DataConfig(splits={"train": "validation", "test": "test"}, limits={"test": 200})
    res = build_splits(cfg, data_dir, 42)
    assert len(res.test) == 200 and res.test[0].id == "test_0" and res.test[199].id == "test_199"
    assert all(len(e.references) == 3 for e in res.test)
    assert len(res.train) + len(res.validation) + res.stats["duplicates_removed"]["train"] + \
        res.stats["duplicates_removed"]["validation"] == 500
    assert res.stats["duplicates_removed"]["train_in_test"] + res.stats["duplicates_removed"]["validation"] > 0
    assert not _prompts(res.train) & _prompts(res.test)


def test_a_single_file_gets_validation_and_test_carved_and_announced(tmp_path, capsys):
    rows = [{"uid": f"r{i}", "text": f"review {i}", "gold": "pos" if i % 2 else "neg"} for i in range(40)]
    path = tmp_path / "reviews.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = build_splits(_cfg(path), None, 0)  # default splits: train, validation null, test "test" (no test file)
    expected = round(40 * 0.1)  # the default 10% each, carved by one seeded shuffle
    assert (len(res.validation), len(res.test), len(res.train)) == (expected, expected, 40 - 2 * expected)
    assert not _prompts(res.test) & _prompts(res.train)
    assert res.stats["notes"] == ["reviews.jsonl is a single file: carving validation 10% and test 10% from it by a "
                                  "seeded shuffle (change the shares with data.fractions)"]
    assert "reviews.jsonl is a single file" in capsys.readouterr().err
    # A file named for the split beside it is still used as that split.
    _write(tmp_path / "test.jsonl", ["held out 1", "held out 2"])
    res = build_splits(_cfg(path), None, 0)
    assert [e.prompt.split("\n\n")[-1] for e in res.test] == ["held out 1", "held out 2"]
    assert res.stats["notes"] == []


def test_test_only_reads_no_train_split(tmp_path):
    _write(tmp_path / "test.jsonl", ["t1", "t2", "t3"])  # no train file at all: zero-shot evaluation needs none
    res = build_splits(_cfg(tmp_path, limits={"test": 2}), None, 0, only="test")
    assert [e.id for e in res.test] == ["test-0", "test-1"] and res.train == [] and res.validation == []
    with pytest.raises(DataError, match="no file for split 'train'"):
        build_splits(_cfg(tmp_path), None, 0)
