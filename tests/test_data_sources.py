"""Sources: local files with field maps and line-numbered errors, saved datasets, and built-in dialogsum."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunebench.config import DataConfig
from tunebench.data import sources
from tunebench.data.sources import group_repeated_references, load_split
from tunebench.errors import DataError

ROWS = [{"text": "first dialogue", "gold": "one"}, {"text": "second dialogue", "gold": "two"}]


def _cfg(source: str | Path, **kw) -> DataConfig:
    return DataConfig(source=str(source), field_map={"dialogue": "text", "summary": "gold"}, **kw)


def _write(path: Path, fmt: str) -> Path:
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    elif fmt == "json":
        path.write_text(json.dumps({"examples": ROWS}, indent=1))
    else:
        sep = "," if fmt == "csv" else "\t"
        path.write_text(f"text{sep}gold\n" + "".join(f"{r['text']}{sep}{r['gold']}\n" for r in ROWS))
    return path


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "tsv"])
def test_local_formats_with_field_map(tmp_path, fmt):
    path = _write(tmp_path / f"data.{fmt}", fmt)
    records = load_split(_cfg(path), "train", None)
    assert [r.id for r in records] == ["train_0", "train_1"]
    assert records[1].fields["dialogue"] == "second dialogue"
    assert records[1].fields["summary"] == "two"
    assert records[1].fields["text"] == "second dialogue"  # unmapped columns stay available
    assert records[0].references is None


def test_relative_path_resolves_against_data_dir_then_cwd(tmp_path, monkeypatch):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    _write(data_dir / "a.jsonl", "jsonl")
    work = tmp_path / "work"
    work.mkdir()
    (work / "a.jsonl").write_text(json.dumps({"text": "from cwd", "gold": "x"}) + "\n")
    (work / "b.jsonl").write_text(json.dumps({"text": "only in cwd", "gold": "y"}) + "\n")
    monkeypatch.chdir(work)
    assert load_split(_cfg("a.jsonl"), "train", data_dir)[0].fields["dialogue"] == "first dialogue"
    assert load_split(_cfg("b.jsonl"), "train", data_dir)[0].fields["dialogue"] == "only in cwd"


def test_id_and_references_fields(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"uid": 7, "text": "t", "gold": "g", "refs": ["r1", "r2"]}) + "\n")
    rec = load_split(_cfg(path, id_field="uid", references_field="refs"), "train", None)[0]
    assert rec.id == "7" and rec.references == ("r1", "r2")


def test_missing_field_map_column_names_key_and_file(tmp_path):
    path = _write(tmp_path / "d.jsonl", "jsonl")
    cfg = DataConfig(source=str(path), field_map={"dialogue": "body"})
    with pytest.raises(DataError, match=r"d\.jsonl \(row 1\): data\.field_map\.dialogue names column 'body'"):
        load_split(cfg, "train", None)


def test_bad_jsonl_line_is_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "a", "gold": "b"}\n{"text": oops}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: invalid JSON"):
        load_split(_cfg(path), "train", None)


def test_bad_csv_row_is_named(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text('text,gold\n"a",b\n"c",d,extra\n')
    with pytest.raises(DataError, match=r"bad\.csv:3: expected 2 columns .* found 3"):
        load_split(_cfg(path), "train", None)


def test_csv_quoted_newlines_keep_line_numbers(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text('text,gold\n"line one\nline two",b\nc\n')
    with pytest.raises(DataError, match=r"q\.csv:4: expected 2 columns"):
        load_split(_cfg(path), "train", None)


def test_bad_json_is_named_with_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n {"text": "a", "gold": "b"},\n {"text": "c" "gold": "d"}\n]')
    with pytest.raises(DataError, match=r"bad\.json:3: invalid JSON"):
        load_split(_cfg(path), "train", None)
    path.write_text('[\n {"text": "a", "gold": "b"},\n "not an object"\n]')
    with pytest.raises(DataError, match=r"bad\.json:3: item 1 is str"):
        load_split(_cfg(path), "train", None)


def test_bad_utf8_is_named_with_line(tmp_path):
    path = tmp_path / "bin.tsv"
    path.write_bytes(b"text\tgold\nok\tfine\n\xff\xfe\tbad\n")
    with pytest.raises(DataError, match=r"bin\.tsv:3: not valid UTF-8"):
        load_split(_cfg(path), "train", None)


def test_missing_file_names_paths_tried(tmp_path):
    with pytest.raises(DataError, match=r"nope\.jsonl: file not found \(tried .*nope\.jsonl"):
        load_split(_cfg("nope.jsonl"), "train", tmp_path)


def test_unknown_extension_asks_for_format(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("x\n")
    with pytest.raises(DataError, match="set data.format"):
        load_split(_cfg(path), "train", None)
    _write(path, "csv")
    assert len(load_split(_cfg(path, format="csv"), "train", None)) == 2


def test_folder_of_split_files_and_sibling_split(tmp_path):
    _write(tmp_path / "train.jsonl", "jsonl")
    _write(tmp_path / "test.csv", "csv")
    cfg = _cfg(tmp_path)
    assert len(load_split(cfg, "train", None)) == 2
    assert load_split(cfg, "test", None)[0].id == "test_0"
    # a single file is the train split; other split names are looked up beside it
    assert len(load_split(_cfg(tmp_path / "train.jsonl"), "test", None)) == 2
    with pytest.raises(DataError, match="no file for split 'validation'"):
        load_split(cfg, "validation", None)


def test_save_to_disk_folder(tmp_path):
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_list(ROWS), "test": Dataset.from_list(ROWS[:1])}).save_to_disk(tmp_path / "ds")
    cfg = _cfg(tmp_path / "ds")
    assert [r.fields["summary"] for r in load_split(cfg, "train", None)] == ["one", "two"]
    assert len(load_split(cfg, "test", None)) == 1
    with pytest.raises(DataError, match="no split 'validation'"):
        load_split(cfg, "validation", None)


def test_hub_id_goes_through_load_dataset(monkeypatch):
    from datasets import Dataset

    seen = {}

    def fake_load(repo_id, subset, split, hint=""):
        seen.update(repo_id=repo_id, subset=subset, split=split)
        return Dataset.from_list(ROWS)

    monkeypatch.setattr(sources, "_load_hub", fake_load)
    records = load_split(_cfg("someone/some-data", subset="en"), "validation", None)
    assert seen == {"repo_id": "someone/some-data", "subset": "en", "split": "validation"}
    assert records[0].id == "validation_0" and records[0].fields["summary"] == "one"


def test_unreachable_hub_is_a_data_error():
    with pytest.raises(DataError, match="Hub dataset tunebench-test/does-not-exist: cannot load"):
        sources._load_hub("tunebench-test/does-not-exist", None, "train")


def test_dialogsum_local_copy(data_dir):
    cfg = DataConfig()
    test = load_split(cfg, "test", data_dir)
    dev = load_split(cfg, "validation", data_dir)
    assert len(test) == 500 and len(dev) == 500
    assert test[0].id == "test_0" and dev[0].id == "dev_0"
    assert len(test[0].references) == 3 and test[0].references[0] == test[0].fields["summary"]
    assert test[0].fields["topic"] == "communication method"
    assert dev[0].references == (dev[0].fields["summary"],)
    assert set(test[0].fields) == {"dialogue", "summary", "topic"}
    with pytest.raises(DataError, match="holds only 'validation' .*set data.splits.train to validation"):
        load_split(cfg, "train", data_dir)  # train exists only on the Hub, which tests cannot reach


def test_dialogsum_train_comes_from_hub_when_local_copy_lacks_it(monkeypatch, data_dir):
    from datasets import Dataset

    rows = [{"id": "train_0", "dialogue": "d", "summary": "s", "topic": "t"}]
    monkeypatch.setattr(sources, "_load_hub", lambda repo, subset, split, hint="": Dataset.from_list(rows))
    assert [r.id for r in load_split(DataConfig(), "train", data_dir)] == ["train_0"]
    assert load_split(DataConfig(), "test", data_dir)[0].origin.endswith("dialogsum.test.jsonl")


def test_dialogsum_hub_test_split_is_grouped(monkeypatch, tmp_path):
    from datasets import Dataset

    def fake_load(repo_id, subset, split, hint=""):
        assert repo_id == "knkarthick/dialogsum"
        rows = [
            {"id": f"test_{d}_{k}", "dialogue": f"dialogue {d}", "summary": f"summary {d}.{k}", "topic": f"t{d}{k}"}
            for d in range(3) for k in (1, 2, 3)
        ]
        return Dataset.from_list(rows)

    monkeypatch.setattr(sources, "_load_hub", fake_load)
    test = load_split(DataConfig(), "test", tmp_path)  # data dir without dialogsum/ -> the Hub
    assert [r.id for r in test] == ["test_0", "test_1", "test_2"]
    assert test[1].references == ("summary 1.1", "summary 1.2", "summary 1.3")
    assert test[1].fields["summary"] == "summary 1.1" and test[1].fields["topic"] == "t11"
    # train/validation rows are not repeated: one reference each, the Hub id kept
    train = load_split(DataConfig(), "train", None)
    assert len(train) == 9 and train[4].id == "test_1_2" and train[4].references == ("summary 1.2",)


def test_group_repeated_references_keeps_first_appearance_order():
    rows = [{"id": "b_1", "dialogue": "B", "summary": "b1"}, {"id": "a_1", "dialogue": "A", "summary": "a1"},
            {"id": "b_2", "dialogue": "B", "summary": "b2"}]
    grouped = group_repeated_references(rows)
    assert [(g.id, g.references) for g in grouped] == [("b", ("b1", "b2")), ("a", ("a1",))]


# ---------------------------------------------------------------------------------------------- parallel text


def _parallel_cfg(folder: Path | str, **kw) -> DataConfig:
    return DataConfig(source=str(folder), format="parallel", **kw)


def _write_lines(path: Path, lines: list[str]) -> None:
    import gzip

    data = "".join(line + "\n" for line in lines).encode("utf-8")
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def test_parallel_text_pairs_lines(tmp_path):
    _write_lines(tmp_path / "train.en.gz", ["A dog runs.", "Two cats sleep."])
    _write_lines(tmp_path / "train.de.gz", ["Ein Hund rennt.", "Zwei Katzen schlafen."])
    _write_lines(tmp_path / "test.en", ["A bird."])  # plain text works too
    _write_lines(tmp_path / "test.de", ["Ein Vogel."])
    cfg = _parallel_cfg(tmp_path)
    train = load_split(cfg, "train", None)
    assert [(r.fields["source"], r.fields["target"]) for r in train] == [
        ("A dog runs.", "Ein Hund rennt."), ("Two cats sleep.", "Zwei Katzen schlafen.")]
    assert train[0].fields["target_lang"] == "German" and train[0].fields["source_lang"] == "English"
    assert [r.id for r in train] == ["train_0", "train_1"]
    assert load_split(cfg, "test", None)[0].fields["target"] == "Ein Vogel."


def test_parallel_text_rejects_different_line_counts(tmp_path):
    _write_lines(tmp_path / "train.en.gz", ["one", "two", "three"])
    _write_lines(tmp_path / "train.de.gz", ["eins", "zwei"])
    with pytest.raises(DataError) as err:
        load_split(_parallel_cfg(tmp_path), "train", None)
    msg = str(err.value)
    assert f"{tmp_path / 'train.en.gz'} has 3 lines" in msg and f"{tmp_path / 'train.de.gz'} has 2" in msg


def test_parallel_text_empty_line_and_missing_language_named(tmp_path):
    _write_lines(tmp_path / "train.en", ["one", "", "three"])
    _write_lines(tmp_path / "train.de", ["eins", "zwei", "drei"])
    with pytest.raises(DataError, match=r"train\.en:2: empty line"):
        load_split(_parallel_cfg(tmp_path), "train", None)
    with pytest.raises(DataError, match=r"no file for split 'train' in language 'fr'"):
        load_split(_parallel_cfg(tmp_path, parallel={"source_lang": "en", "target_lang": "fr"}), "train", None)


def test_multi30k_loads(data_dir):
    cfg = _parallel_cfg("multi30k")
    train = load_split(cfg, "train", data_dir)
    test = load_split(cfg, "test_2016_flickr", data_dir)
    assert len(train) == 29000 and len(test) == 1000
    assert train[0].fields["source"] == "Two young, White males are outside near many bushes."
    assert train[0].fields["target"] == "Zwei junge weiße Männer sind im Freien in der Nähe vieler Büsche."


def test_conll_emotion_and_alpaca_load(data_dir):
    conll = load_split(DataConfig(source="conll2003"), "test", data_dir)
    assert len(conll) == 3453
    assert conll[1].fields["tokens"] == ["Nadim", "Ladki"] and conll[1].fields["labels"] == ["B-PER", "I-PER"]
    emotion = load_split(DataConfig(source="emotion"), "validation", data_dir)
    assert len(emotion) == 2000 and emotion[2].fields["label"] == "love"
    alpaca = load_split(DataConfig(source="alpaca/alpaca_data.json"), "train", data_dir)
    assert len(alpaca) == len(json.loads((data_dir / "alpaca/alpaca_data.json").read_text()))  # 5,000 here
    assert alpaca[0].fields["instruction"] == "Give three tips for staying healthy." and alpaca[0].fields["input"] == ""
