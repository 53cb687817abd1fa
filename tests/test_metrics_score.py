"""`tunebench score` logic: pairing files by id, input errors that name lines and ids, the table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tunebench.errors import DataError
from tunebench.evaluate.metrics import score_corpus
from tunebench.evaluate.score import hash_test_set, load_scoring_inputs, render_score_table, score_files


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture()
def files(tmp_path, data_dir) -> tuple[Path, Path, list[dict]]:
    with open(data_dir / "dialogsum" / "dialogsum.test.jsonl", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh][:30]
    preds = _write(
        tmp_path / "pred.jsonl",
        [{"id": r["fname"], "prediction": r["dialogue"].split("\n")[0]} for r in rows],
    )
    refs = _write(
        tmp_path / "ref.jsonl",
        [{"id": r["fname"], "references": [r["summary1"], r["summary2"]]} for r in reversed(rows)],
    )
    return preds, refs, rows


def test_files_are_paired_by_id_not_position(files):
    """The reference file is in reverse order; scores and seeded intervals follow the predictions' order."""
    preds, refs, rows = files
    out = score_files(preds, refs, ["rouge", "bleu"], bootstrap=100, seed=0)
    expected = score_corpus(
        [r["dialogue"].split("\n")[0] for r in rows],
        [[r["summary1"], r["summary2"]] for r in rows],
        ["rouge", "bleu"],
        bootstrap=100,
        seed=0,
    )
    assert out == expected


def test_references_inside_the_predictions_file_and_single_reference(tmp_path):
    rows = [{"id": k, "prediction": "a cat sat", "reference": "the cat sat"} for k in range(3)]
    out = score_files(_write(tmp_path / "p.jsonl", rows), None, "rouge1", bootstrap=0)
    assert out["rouge1"]["score"] == pytest.approx(2 / 3) and out["rouge1"]["n"] == 3
    inputs = load_scoring_inputs(tmp_path / "p.jsonl")
    assert inputs.ids == ["0", "1", "2"] and inputs.references[0] == ["the cat sat"]


def test_id_mismatch_lists_missing_extra_and_duplicated_ids(tmp_path):
    preds = _write(
        tmp_path / "p.jsonl",
        [{"id": i, "prediction": "x"} for i in ["a", "b", "b", "zz"]],
    )
    refs = _write(tmp_path / "r.jsonl", [{"id": i, "references": ["x"]} for i in ["a", "b", "c", "d"]])
    with pytest.raises(DataError) as err:
        score_files(preds, refs, ["rouge1"])
    message = str(err.value)
    assert "duplicated in" in message and "b" in message
    assert "missing from" in message and "c, d" in message
    assert "not in" in message and "zz" in message


def test_non_utf8_line_is_named(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(
        b'{"id": 1, "prediction": "ok", "reference": "ok"}\n\n{"id": 2, "prediction": "caf\xe9"}\n'
    )
    with pytest.raises(DataError, match=r"p\.jsonl:3: not valid UTF-8"):
        score_files(path, None, ["rouge1"])


def test_bad_rows_name_their_line(tmp_path):
    path = _write(
        tmp_path / "p.jsonl", [{"id": 1, "prediction": "x", "reference": "x"}, {"id": 2, "text": "x"}]
    )
    with pytest.raises(DataError, match=r"p\.jsonl:2: 'prediction' must be a string"):
        score_files(path, None, ["rouge1"])
    path = _write(tmp_path / "q.jsonl", [{"id": 1, "prediction": "x"}])
    with pytest.raises(DataError, match=r"q\.jsonl:1: no 'references'"):
        score_files(path, None, ["rouge1"])
    refs = _write(tmp_path / "r.jsonl", [{"id": 1, "references": []}])
    with pytest.raises(DataError, match=r"r\.jsonl:1: 'references' must be a non-empty list"):
        score_files(path, refs, ["rouge1"])


def test_table_renders_every_metric(files):
    from rich.console import Console

    preds, refs, _ = files
    out = score_files(preds, refs, ["rougeL", "bleu", "exact_match"], bootstrap=50)
    console = Console(width=200, record=True)
    console.print(render_score_table(out))
    text = console.export_text()
    for name in ("rougeL", "bleu", "exact_match", "nrefs:2"):
        assert name in text


def test_hash_ignores_order_but_not_references():
    h = hash_test_set(["a", "b"], [["x"], ["y"]])
    assert h == hash_test_set(["b", "a"], [["y"], ["x"]])
    assert h != hash_test_set(["a", "b"], [["x"], ["y2"]])


def test_scoring_modules_do_not_import_torch():
    code = (
        "import sys, tunebench.evaluate.score, tunebench.evaluate.compare, tunebench.evaluate.stats;"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
