"""Perplexity as a benchmark task: text files through a task YAML, the built-in wikitext2, bad input, forgetting."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tunebench.bench.forgetting import forgetting_table
from tunebench.bench.instances import prepare_task
from tunebench.bench.perplexity import document_loglikelihood
from tunebench.bench.runner import run_benchmarks
from tunebench.bench.spec import load_spec, resolve_tasks
from tunebench.errors import DataError
from tunebench.io import atomic_write_json, atomic_write_jsonl

PARAGRAPHS = ["First paragraph about cats and dogs.", "A second one, on weather and rain.",
              "Third: numbers 1, 2 and 3 appear here."]


def _spec(tmp_path: Path, text: bytes | str) -> Path:
    data = tmp_path / "corpus.txt"
    data.write_bytes(text if isinstance(text, bytes) else text.encode())
    spec = tmp_path / "drift.yaml"
    spec.write_text("name: drift\nversion: 1\nsource: {format: text, documents: paragraphs, splits: {test: corpus.txt}}\n"
                    "template: '{{ text }}'\noutput_type: perplexity\nperplexity: {max_length: 8}\n")
    return spec


def test_text_file_task_runs_on_a_tiny_model(tmp_path: Path, tiny_causal_loaded) -> None:
    loaded = tiny_causal_loaded(False)
    spec = _spec(tmp_path, "\n\n".join(PARAGRAPHS) + "\n")
    results = run_benchmarks(loaded, [str(spec)], data_dir=None, limit=None, shots=None, progress=False).results
    entry = results["tasks"]["drift"]
    assert entry["n"] == 3 and entry["output_type"] == "perplexity" and "kl" not in entry["metrics"]
    sums = [document_loglikelihood(loaded.model, loaded.tokenizer, p, max_length=8) for p in PARAGRAPHS]
    nll = sum(s["nll"] for s in sums)
    tokens = sum(s["tokens"] for s in sums)
    words = sum(len(p.split()) for p in PARAGRAPHS)
    assert entry["metrics"]["nll"]["value"] == pytest.approx(nll / tokens, rel=1e-6)
    assert entry["metrics"]["word_perplexity"]["value"] == pytest.approx(math.exp(nll / words), rel=1e-6)
    lo, hi = entry["metrics"]["token_perplexity"]["ci95"]
    assert lo <= entry["metrics"]["token_perplexity"]["value"] <= hi


def test_empty_and_non_utf8_text_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"corpus\.txt: empty text file"):
        prepare_task(load_spec(_spec(tmp_path, "  \n\n")), data_dir=None)
    with pytest.raises(DataError, match=r"corpus\.txt:1: not valid UTF-8"):
        prepare_task(load_spec(_spec(tmp_path, b"caf\xe9 au lait\n")), data_dir=None)


def test_cli_bad_text_file_exits_1_without_traceback(tmp_path: Path, tiny_causal_dir: Path, capsys) -> None:
    from tunebench.cli import main

    spec = _spec(tmp_path, b"\xff\xfe broken")
    code = main(["bench", "--model", str(tiny_causal_dir), "--tasks", str(spec), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 1 and "corpus.txt:1: not valid UTF-8" in err and "Traceback" not in err


def test_wikitext2_articles_as_lm_eval(data_dir: Path) -> None:
    (spec,) = resolve_tasks(["wikitext2"], data_dir)
    task = prepare_task(spec, data_dir=data_dir)
    raw = (data_dir / "wikitext2/test.txt").read_text(encoding="utf-8")
    assert len(task.instances) == 62  # lm-eval's wikitext_document_level test split has 62 pages
    first = task.instances[0]
    assert first.fields["title"] == "Robert <unk>" and first.fields["text"].startswith(" = Robert <unk> = \n")
    assert "".join(inst.fields["text"] for inst in task.instances) == raw[raw.index(" = Robert <unk> = "):]
    assert " @-@ " not in first.prompt and "guest-starring" in first.prompt  # detokenized as lm-eval


def _ppl_run(folder: Path, nll: list[float], kl: list[float] | None = None) -> Path:
    rows = [{"id": f"d{i}", "subtask": None, "tokens": 100.0, "words": 80.0, "bytes": 400.0, "nll": v,
             **({"kl": kl[i]} if kl else {}), "scores": {"nll": v / 100}} for i, v in enumerate(nll)]
    atomic_write_jsonl(folder / "samples_wikitext2.jsonl", rows)
    metrics = {m: {"value": 0.0, "stderr": None} for m in ("nll", "token_perplexity", "word_perplexity")}
    if kl:
        metrics["kl"] = {"value": 0.0, "stderr": None}
    atomic_write_json(folder / "results.json", {"tasks": {"wikitext2": {
        "version": 1, "n": len(rows), "shots": 0, "output_type": "perplexity", "metrics": metrics,
        "samples": "samples_wikitext2.jsonl"}}})
    return folder


def test_forgetting_rows_for_perplexity_and_kl(tmp_path: Path) -> None:
    base_nll = [300.0 + 10 * i for i in range(20)]
    tuned_nll = [v * 1.03 for v in base_nll]  # 3% more NLL on every document
    rows = {r["metric"]: r for r in forgetting_table(_ppl_run(tmp_path / "b", base_nll),
                                                     _ppl_run(tmp_path / "t", tuned_nll, kl=[5.0] * 20),
                                                     n_resamples=300)}
    assert set(rows) == {"nll", "token_perplexity", "word_perplexity", "kl"}
    nll = rows["nll"]
    assert nll["base"] == pytest.approx(sum(base_nll) / 2000) and nll["delta"] == pytest.approx(0.03 * nll["base"])
    assert nll["significant_drop"] and nll["relative_delta"] == pytest.approx(0.03) and nll["measurable"]
    word = rows["word_perplexity"]
    assert word["tuned"] == pytest.approx(math.exp(sum(tuned_nll) / 1600))
    assert word["relative_delta"] == pytest.approx(math.exp((sum(tuned_nll) - sum(base_nll)) / 1600) - 1)
    assert rows["kl"]["base"] == 0.0 and rows["kl"]["tuned"] == pytest.approx(5.0 / 100)
    assert not rows["kl"]["significant_drop"] and rows["kl"]["status"] == "drift"
    # one document: the perplexity and KL rows keep their deltas but have no interval, no p and no verdict
    one = {r["metric"]: r for r in forgetting_table(_ppl_run(tmp_path / "b1", base_nll[:1]),
                                                    _ppl_run(tmp_path / "t1", tuned_nll[:1], kl=[5.0]),
                                                    n_resamples=300)}
    assert one["nll"]["delta"] == pytest.approx(0.03 * 300.0 / 100) and one["kl"]["tuned"] == pytest.approx(0.05)
    for row in one.values():
        assert row["ci95"] is None and row["p_value"] is None and not row["significant_drop"]
        assert row["status"] == "not measurable at this size"
