"""`tunebench run` end to end on a tiny model: every artifact of the run directory appears, and reruns resume."""

import json

import pytest
import yaml

from tunebench.cli import main


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_causal_dir, data_dir):
    root = tmp_path_factory.mktemp("pipeline")
    cfg = {
        "name": "tiny",
        "output_dir": str(root / "runs"),
        "seed": 3,
        "model": {"ref": str(tiny_causal_dir)},
        "data": {"source": "dialogsum", "splits": {"train": "validation", "validation": None, "test": "test"},
                 "fractions": {"validation": 0.2}, "limits": {"train": 16, "validation": 8, "test": 6},
                 "max_length": 256},
        "train": {"method": "lora", "lora": {"r": 4, "alpha": 8}, "batch_size": 4, "max_steps": 4, "lr": 1e-3,
                  "eval_every": 2, "save_every": 2},
        "eval": {"limit": 6, "shots": [0, 1], "bootstrap": 200,
                 "generation": {"max_new_tokens": 8, "batch_size": 4}},
        "bench": {"tasks": ["sst2", "mmlu:abstract_algebra", "wikitext2"], "limit": 6, "shots": 1,
                  "limits": {"wikitext2": 1}},
    }
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path), "--data-dir", str(data_dir)]) == 0
    return root / "runs" / "tiny", path


def test_run_writes_every_artifact(tiny_run):
    run_dir, _ = tiny_run
    for rel in ["config.yaml", "train_log.jsonl", "loss_curve.png", "train_summary.json",
                "adapter/adapter_config.json", "eval/base-0shot/predictions.jsonl", "eval/base-1shot/scores.json",
                "eval/tuned/predictions.jsonl", "eval/tuned/scores.json", "compare/comparison.json",
                "compare/forgetting.json", "bench/base/results.json", "bench/tuned/results.json",
                "results.json", "report.md", "report.html"]:
        assert (run_dir / rel).is_file(), rel
    results = json.loads((run_dir / "results.json").read_text())
    assert results["schema"] == "tunebench.results/1"
    comparison = json.loads((run_dir / "compare/comparison.json").read_text())
    assert {c["candidate"] for c in comparison["comparisons"]} >= {"tuned", "base-1shot"}
    forgetting = json.loads((run_dir / "compare/forgetting.json").read_text())
    rows = forgetting["rows"] if isinstance(forgetting, dict) else forgetting
    assert {r["task"] for r in rows} >= {"sst2"}
    drift = {r["metric"]: r for r in rows if r["task"] == "wikitext2"}
    assert {"nll", "word_perplexity", "kl"} <= set(drift)  # KL against the adapter's own base, no second copy
    assert drift["kl"]["base"] == 0.0 and drift["kl"]["tuned"] > 0 and drift["nll"]["n"] == 1
    assert all("status" in r and "measurable" in r for r in rows)
    html = (run_dir / "report.html").read_text()
    assert "orgetting" in html and "rouge1" in html.lower()


def test_rerun_skips_finished_stages(tiny_run, capsys):
    run_dir, path = tiny_run
    before = (run_dir / "eval/tuned/scores.json").stat().st_mtime_ns
    assert main(["run", str(path)]) == 0
    assert (run_dir / "eval/tuned/scores.json").stat().st_mtime_ns == before
    assert "already done" in capsys.readouterr().err


def test_eval_adapter_run_uses_the_runs_own_base_and_config(tiny_run, tmp_path, capsys, tiny_causal_dir):
    run_dir, _ = tiny_run
    out = tmp_path / "ev"
    # no --config, no --model: the run dir knows its base (the tiny model, not the default alias) and its data
    assert main(["eval", "--adapter", str(run_dir), "--out", str(out), "--limit", "2"]) == 0
    scores = json.loads((out / "scores.json").read_text())
    assert scores["system"]["model"] == str(tiny_causal_dir) and scores["test_set"]["n"] == 2
    assert main(["eval", "--adapter", str(run_dir), "--out", str(out), "--limit", "2"]) == 1  # no silent overwrite
    assert "pass --overwrite" in capsys.readouterr().err


def test_run_checks_the_splits_it_needs_before_training(tmp_path, monkeypatch, capsys):
    def no_training(*args, **kwargs):
        raise AssertionError("training started before the test split was checked")

    monkeypatch.setattr("tunebench.train.loop.train", no_training)
    (tmp_path / "d.csv").write_text("text,label\n" + "".join(f"t{i},l{i % 2}\n" for i in range(20)))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"output_dir: {tmp_path / 'runs'}\ndata: {{source: d.csv, template: {{name: sentiment}}, "
                   "splits: {test: null}, fractions: {test: 0.0}}\n")
    assert main(["run", str(cfg)]) == 1
    assert "the 'test' split is empty" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "run" / "train_summary.json").exists()


def test_the_csv_example_runs_as_shipped(tmp_path, tiny_causal_dir, capsys):
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "examples" / "custom_template_csv.yaml"
    assert main(["run", str(example), "--set", f"model.ref={tiny_causal_dir}", "--set", "train.max_steps=1",
                 "--set", f"output_dir={tmp_path}", "--set", "eval.bootstrap=100"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "tuned vs base-0shot (n = 10)" in out and "(paired-bootstrap)" in out
    assert (tmp_path / "custom-csv-freeze" / "report.html").is_file()


def test_run_hands_each_evaluations_statistics_to_compare(tmp_path, tiny_causal_dir, monkeypatch, capsys):
    """`run` computes each system's metric statistics once (compare takes the evaluation's), and the comparison
    it writes equals the one compare computes from the files alone."""
    from collections import Counter
    from pathlib import Path

    from tunebench.evaluate.compare import compare_systems
    from tunebench.evaluate.metrics.classification import MacroF1

    calls: Counter = Counter()
    real = MacroF1.stats

    def spy(self, predictions, references):
        calls[tuple(predictions)] += 1
        return real(self, predictions, references)

    monkeypatch.setattr(MacroF1, "stats", spy)
    example = Path(__file__).resolve().parents[1] / "examples" / "custom_template_csv.yaml"
    assert main(["run", str(example), "--set", f"model.ref={tiny_causal_dir}", "--set", "train.max_steps=1",
                 "--set", f"output_dir={tmp_path}", "--set", "eval.bootstrap=100"]) == 0
    run_dir = tmp_path / "custom-csv-freeze"
    systems = ["base-0shot", "tuned"]
    predictions = {s: tuple(json.loads(line)["prediction"]
                            for line in (run_dir / "eval" / s / "predictions.jsonl").read_text().splitlines())
                   for s in systems}
    assert len(predictions["tuned"]) == 10
    # once per system: in its evaluation, not again in compare; every other call scores the majority-label
    # baseline, whose predictions are the majority label repeated
    expected = Counter(predictions.values())  # the tiny model may answer alike as base and tuned
    assert all(calls[predictions[s]] == expected[predictions[s]] for s in systems), calls
    others = [c for c in calls if c not in predictions.values()]
    assert others and all(len(set(c)) == 1 and len(c) == 10 for c in others), others
    written = json.loads((run_dir / "compare" / "comparison.json").read_text())
    monkeypatch.setattr(MacroF1, "stats", real)
    recomputed = compare_systems([run_dir], baseline="base-0shot", n_resamples=100, seed=42)
    assert written == json.loads(json.dumps(recomputed))
    out = " ".join(capsys.readouterr().out.split())
    assert "tuned vs base-0shot (n = 10)" in out and "small test set (n = 10 < 50)" in out
