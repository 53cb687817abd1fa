"""`tunebench compare`: documented structure, paired statistics, refusals of incomparable systems."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunebench.errors import DataError
from tunebench.evaluate.compare import compare_systems
from tunebench.evaluate.metrics import per_example_scores, score_corpus
from tunebench.evaluate.score import hash_test_set

METRICS = ["rouge", "bleu"]


def write_eval(out: Path, ids, prompts, refs, preds, *, metrics=METRICS, stem=True, name=None) -> Path:
    """An eval dir as the eval stage writes it (docs/formats.md)."""
    out.mkdir(parents=True)
    scores = per_example_scores(preds, refs, metrics, stem=stem)
    rows = [
        {"id": i, "prompt": p, "references": r, "prediction": y, "scores": s}
        for i, p, r, y, s in zip(ids, prompts, refs, preds, scores, strict=True)
    ]
    (out / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    summary = {
        "schema": "tunebench.eval/1",
        "system": {"name": name or out.name},
        "test_set": {"split": "test", "n": len(ids), "hash": hash_test_set(ids, refs)},
        "metrics": score_corpus(preds, refs, metrics, stem=stem, bootstrap=50),
    }
    (out / "scores.json").write_text(json.dumps(summary), encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def dialogsum(data_dir) -> dict:
    with open(data_dir / "dialogsum" / "dialogsum.test.jsonl", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh][:80]
    return {
        "ids": [r["fname"] for r in rows],
        "prompts": [f"Summarize the dialogue.\n{r['dialogue']}" for r in rows],
        "refs": [[r["summary1"], r["summary2"], r["summary3"]] for r in rows],
        # base: the first turn; tuned: a reference-like summary for 3 of 4 dialogues
        "base": [r["dialogue"].split("\n")[0] for r in rows],
        "tuned": [r["summary2"] if k % 4 else r["dialogue"].split("\n")[1] for k, r in enumerate(rows)],
    }


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, dialogsum) -> Path:
    run = tmp_path_factory.mktemp("run")
    d = dialogsum
    # written tuned first: discovery must still put base-0shot first
    write_eval(run / "eval" / "tuned", d["ids"], d["prompts"], d["refs"], d["tuned"])
    write_eval(run / "eval" / "base-0shot", d["ids"], d["prompts"], d["refs"], d["base"])
    return run


def test_compare_run_dir_produces_the_documented_structure(run_dir, tmp_path, dialogsum):
    from tunebench.pipeline import compare_paths

    out = compare_systems([run_dir], n_resamples=500, seed=0)
    assert not (tmp_path / "cmp").exists()  # the stage returns data; the pipeline writes it
    written = compare_paths([run_dir], tmp_path / "cmp", n_resamples=500, seed=0)
    assert written == tmp_path / "cmp" / "comparison.json" and json.loads(written.read_text()) == out
    assert out["schema"] == "tunebench.compare/1"
    assert out["test_set"]["n"] == 80 and out["test_set"]["hash"] == hash_test_set(
        dialogsum["ids"], dialogsum["refs"]
    )
    assert list(out["systems"]) == ["base-0shot", "tuned"]
    for system in out["systems"].values():
        assert set(system["metrics"]) == {"rouge1", "rouge2", "rougeL", "rougeLsum", "bleu"}
        entry = system["metrics"]["rougeL"]
        assert (
            set(entry) == {"score", "ci95", "signature"}
            and entry["ci95"][0] <= entry["score"] <= entry["ci95"][1]
        )
    (cmp,) = out["comparisons"]
    assert (cmp["baseline"], cmp["candidate"]) == ("base-0shot", "tuned")
    for m, entry in cmp["metrics"].items():
        base, cand = (
            out["systems"]["base-0shot"]["metrics"][m]["score"],
            out["systems"]["tuned"]["metrics"][m]["score"],
        )
        assert entry["baseline"] == base and entry["candidate"] == cand
        assert entry["delta"] == pytest.approx(cand - base)
        assert entry["ci95"][0] < entry["delta"] < entry["ci95"][1]
        assert (
            entry["p_value"] < 0.01 and entry["method"] == "paired-bootstrap" and entry["p_value_ar"] < 0.01
        )
        wtl = cmp["win_tie_loss"][m]
        assert wtl["win"] + wtl["tie"] + wtl["loss"] == 80 and wtl["win"] > wtl["loss"]
    examples = cmp["examples"]
    assert examples["metric"] == "rougeL" and examples["gains"] and examples["losses"]
    gains = [e["delta"] for e in examples["gains"]]
    assert gains == sorted(gains, reverse=True) and all(g > 0 for g in gains)
    top = examples["gains"][0]
    k = dialogsum["ids"].index(top["id"])
    assert top["candidate"] == dialogsum["tuned"][k] and top["baseline"] == dialogsum["base"][k]
    assert top["prompt"] == dialogsum["prompts"][k] and top["references"] == dialogsum["refs"][k]
    assert all(e["delta"] < 0 for e in examples["losses"])


def test_explicit_baseline_and_eval_dirs_and_metric_subset(run_dir, tmp_path):
    out = compare_systems(
        [run_dir / "eval" / "tuned", run_dir / "eval" / "base-0shot"],
        baseline="base-0shot",
        metrics=["rouge1", "bleu"],
        n_resamples=200,
    )
    (cmp,) = out["comparisons"]
    assert cmp["candidate"] == "tuned" and list(cmp["metrics"]) == ["rouge1", "bleu"]


def test_a_system_against_its_copy_is_not_significant(run_dir, tmp_path):
    import shutil

    copy = shutil.copytree(run_dir / "eval" / "tuned", tmp_path / "tuned-copy")
    out = compare_systems([run_dir / "eval" / "tuned", copy], n_resamples=200)
    (cmp,) = out["comparisons"]
    assert all(e["delta"] == 0 and e["p_value"] == 1.0 for e in cmp["metrics"].values())
    assert cmp["examples"]["gains"] == [] and cmp["win_tie_loss"]["bleu"]["tie"] == 80


def test_different_test_sets_are_refused(tmp_path, dialogsum):
    d = dialogsum
    a = write_eval(tmp_path / "a", d["ids"], d["prompts"], d["refs"], d["base"])
    b = write_eval(tmp_path / "b", d["ids"][:79], d["prompts"][:79], d["refs"][:79], d["tuned"][:79])
    with pytest.raises(DataError, match="different test sets.*1 only in a"):
        compare_systems([a, b])
    other_refs = [r[:1] for r in d["refs"]]  # same ids, other references
    c = write_eval(tmp_path / "c", d["ids"], d["prompts"], other_refs, d["tuned"])
    with pytest.raises(DataError, match="different test sets"):
        compare_systems([a, c])
    assert not (tmp_path / "out").exists()


def test_different_signatures_are_refused(tmp_path, dialogsum):
    d = dialogsum
    a = write_eval(tmp_path / "a", d["ids"], d["prompts"], d["refs"], d["base"])
    b = write_eval(tmp_path / "b", d["ids"], d["prompts"], d["refs"], d["tuned"], stem=False)
    with pytest.raises(DataError, match="rouge1 was computed with different settings.*stem:no"):
        compare_systems([a, b])


def test_bad_inputs_are_named(tmp_path, run_dir):
    with pytest.raises(DataError, match="neither an eval dir"):
        compare_systems([tmp_path])
    with pytest.raises(DataError, match="baseline 'nope'"):
        compare_systems([run_dir], baseline="nope")
    with pytest.raises(DataError, match="at least two systems"):
        compare_systems([run_dir / "eval" / "tuned"])
    with pytest.raises(DataError, match="share a name"):
        compare_systems([run_dir / "eval" / "tuned", run_dir / "eval" / "tuned"])
