"""Benchmarks end to end on the tiny model: built-in BBH files, a user's YAML task, resuming; the stage only
returns data and the pipeline's writer (bench_into) writes it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tunebench.bench import runner
from tunebench.bench.runner import run_benchmarks
from tunebench.errors import DataError
from tunebench.io import read_jsonl
from tunebench.pipeline import bench_into
from tunebench.rundir import BenchDir


@pytest.fixture(scope="module")
def tiny(tiny_causal_loaded):
    return tiny_causal_loaded(use_chat=False)


def test_bbh_files_run_by_name(tiny, data_dir: Path, tmp_path: Path) -> None:
    tasks = ["bbh:date_understanding", "bbh:object_counting"]
    results = bench_into(BenchDir(tmp_path), tiny, tasks, data_dir=data_dir, limit=4, shots=1, progress=False)
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(results)) and on_disk["schema"] == "tunebench.bench/1"
    assert on_disk["model"]["ref"] == "tiny" and not BenchDir(tmp_path).partial.exists()
    mc = on_disk["tasks"]["bbh:date_understanding"]
    assert mc["output_type"] == "multiple_choice" and mc["n"] == 4 and mc["shots"] == 1 and mc["version"] == 1
    assert set(mc["metrics"]) == {"acc", "acc_norm"} and set(mc["metrics"]["acc"]) == {"value", "stderr"}
    rows = read_jsonl(tmp_path / mc["samples"])
    assert mc["samples"] == "samples_bbh_date_understanding.jsonl" and len(rows) == 4
    assert rows[0]["choices"] == ["(A)", "(B)", "(C)", "(D)", "(E)", "(F)"] and len(rows[0]["loglikelihoods"]) == 6
    assert mc["metrics"]["acc"]["value"] == sum(r["correct"] for r in rows) / 4
    gen = on_disk["tasks"]["bbh:object_counting"]
    assert gen["output_type"] == "generate" and set(gen["metrics"]) == {"exact_match"}
    assert gen["metrics"]["exact_match"]["signature"].startswith("exact_match|")
    row = read_jsonl(tmp_path / gen["samples"])[0]
    assert {"output", "prediction", "references", "scores"} <= set(row) and "\n" not in row["prediction"]


def write_user_task(folder: Path, **extra) -> Path:
    rows = [{"q": f"What is {i} + {i}?", "a": str(2 * i), "uid": f"u{i}"} for i in range(8)]
    (folder / "sums.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    spec = {
        "name": "sums", "version": "2024-1", "source": {"format": "jsonl", "splits": {"test": "sums.jsonl"}},
        "id_field": "uid", "fewshot": {"n": 2}, "template": "Q: {{ q }}\nA:", "target": "{{ a }}",
        **extra,
    }
    path = folder / "sums.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path


def test_user_yaml_tasks_run_end_to_end(tiny, tmp_path: Path) -> None:
    (tmp_path / "mc").mkdir()
    (tmp_path / "gen").mkdir()
    mc = write_user_task(tmp_path / "mc", output_type="multiple_choice", choices=["0", "2", "4", "6", "8", "10", "12", "14"])
    gen = write_user_task(tmp_path / "gen", name="sums_gen", output_type="generate", metrics=["exact_match", "f1"],
                          filters=["first_line", {"regex": r"\d+"}], generation={"max_new_tokens": 4})
    out = tmp_path / "out"
    results = bench_into(BenchDir(out), tiny, [str(mc), str(gen)], data_dir=None, limit=None, shots=None,
                         progress=False)
    assert list(results["tasks"]) == ["sums", "sums_gen"]
    mc_rows = read_jsonl(out / "samples_sums.jsonl")
    assert [r["id"] for r in mc_rows] == [f"u{i}" for i in range(2, 8)]
    assert all(r["choices"][r["target"]] == str(2 * int(r["id"][1:])) for r in mc_rows)
    assert results["tasks"]["sums"]["version"] == "2024-1"
    gen_rows = read_jsonl(out / "samples_sums_gen.jsonl")
    assert all(r["prediction"].isdigit() or r["prediction"] == "[invalid]" for r in gen_rows)
    assert set(results["tasks"]["sums_gen"]["metrics"]) == {"exact_match", "f1"}
    assert gen_rows[0]["prompt"].startswith("Q: What is 0 + 0?\nA: 0\n\nQ: What is 1 + 1?\nA: 2\n\nQ: What is 2 + 2?")


def test_missing_file_fails_before_any_scoring(tiny, data_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    spec = yaml.safe_load(write_user_task(tmp_path, output_type="generate").read_text())
    spec["source"]["splits"]["test"] = "missing/sums.jsonl"
    bad.write_text(yaml.safe_dump(spec), encoding="utf-8")
    with pytest.raises(DataError, match="missing/sums.jsonl"):
        bench_into(BenchDir(tmp_path / "o"), tiny, ["cb", str(bad)], data_dir=data_dir, limit=2, shots=0,
                   progress=False)
    assert not (tmp_path / "o").exists()


def test_interrupted_run_resumes_finished_tasks(tiny, data_dir: Path, tmp_path: Path, monkeypatch) -> None:
    kwargs = dict(data_dir=data_dir, limit=3, shots=0, progress=False)
    first = bench_into(BenchDir(tmp_path), tiny, ["rte", "sst2"], **kwargs)
    BenchDir(tmp_path).results.replace(BenchDir(tmp_path).partial)  # as if the run stopped after both tasks

    def boom(*_a, **_k):
        raise AssertionError("a finished task was scored again")

    monkeypatch.setattr(runner, "score_task", boom)
    again = bench_into(BenchDir(tmp_path), tiny, ["rte", "sst2"], **kwargs)
    assert again["tasks"] == first["tasks"] and (tmp_path / "results.json").is_file()
    with pytest.raises(AssertionError, match="scored again"):  # other settings: nothing is reused
        bench_into(BenchDir(tmp_path), tiny, ["rte", "sst2"], **{**kwargs, "limit": 4})


def test_the_stage_returns_results_and_logs_and_writes_nothing(tiny, data_dir: Path, tmp_path: Path,
                                                                monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    seen: list[tuple[str, list[str]]] = []
    bench = run_benchmarks(tiny, ["rte", "sst2"], data_dir=data_dir, limit=3, shots=0, progress=False,
                           on_task=lambda b, task: seen.append((task, sorted(b.results["tasks"]))))
    assert list(tmp_path.iterdir()) == []
    assert seen == [("rte", ["rte"]), ("sst2", ["rte", "sst2"])]  # after each task, the results so far
    assert set(bench.samples) == {"samples_rte.jsonl", "samples_sst2.jsonl"}
    rows = bench.samples["samples_sst2.jsonl"]
    assert len(rows) == 3 and bench.results["tasks"]["sst2"]["metrics"]["acc"]["value"] == pytest.approx(
        sum(r["correct"] for r in rows) / 3)
    # `finished` (an earlier call's results) is reused when model and settings agree, not otherwise
    monkeypatch.setattr(runner, "score_task", lambda *a, **k: pytest.fail("a finished task was scored again"))
    again = run_benchmarks(tiny, ["rte", "sst2"], data_dir=data_dir, limit=3, shots=0, progress=False,
                           finished=bench.results, rank=1, world_size=2)
    assert again.results == bench.results and again.samples == {}
    other_settings = {**bench.results, "settings": {**bench.results["settings"], "seed": 1}}
    with pytest.raises(pytest.fail.Exception, match="scored again"):
        run_benchmarks(tiny, ["rte", "sst2"], data_dir=data_dir, limit=3, shots=0, progress=False,
                       finished=other_settings)


def test_results_record_adapter_precision_and_versions(tiny_causal_dir, data_dir: Path, tmp_path: Path) -> None:
    import tunebench
    from tunebench.config import ModelConfig, TrainConfig
    from tunebench.models.export import save_trained
    from tunebench.models.load import load_model
    from tunebench.models.methods import apply_method

    base = load_model(ModelConfig(ref=str(tiny_causal_dir)))
    adapter = tmp_path / "run" / "adapter"
    save_trained(apply_method(base.model, TrainConfig.model_validate({"method": "lora", "lora": {"r": 2}})),
                 base.tokenizer, adapter, method="lora")
    tuned = load_model(ModelConfig(ref=str(tiny_causal_dir)), adapter=tmp_path / "run", merge=True)
    results = bench_into(BenchDir(tmp_path / "b"), tuned, ["sst2"], data_dir=data_dir, limit=2, shots=0,
                         progress=False)
    model = json.loads((tmp_path / "b" / "results.json").read_text())["model"]
    assert model == results["model"]
    assert model["ref"] == str(tiny_causal_dir) and model["adapter"] == str(adapter.resolve())
    assert model["adapter_merged"] is True and model["dtype"] == "float32"
    assert results["software"]["tunebench"] == tunebench.__version__
    assert {k: results["settings"][k] for k in ("tasks", "limit", "shots", "seed")} == {"tasks": ["sst2"], "limit": 2,
                                                                                "shots": 0, "seed": 0}
    base = load_model(ModelConfig(ref=str(tiny_causal_dir)))  # the first one was wrapped by apply_method
    plain = bench_into(BenchDir(tmp_path / "c"), base, ["sst2"], data_dir=data_dir, limit=2, shots=0, progress=False)
    assert plain["model"]["adapter"] is None and plain["model"]["adapter_merged"] is False


def test_a_bottleneck_adapter_is_recorded_as_an_adapter(tiny_causal_dir, tmp_path: Path) -> None:
    """model_info asks the methods table, so a non-PEFT adapter (bottleneck layers) is recorded, attached."""
    from tunebench.config import ModelConfig, TrainConfig
    from tunebench.models.bottleneck import add_bottleneck_adapters
    from tunebench.models.export import save_trained
    from tunebench.models.load import load_model
    from tunebench.models.methods import apply_method

    loaded = load_model(ModelConfig(ref=str(tiny_causal_dir)))
    assert runner.model_info(loaded)["adapter"] is None
    add_bottleneck_adapters(loaded.model, TrainConfig.model_validate({"method": "adapter"}).adapter)
    info = runner.model_info(loaded)
    assert info["adapter"] == "attached" and info["adapter_merged"] is False

    base = load_model(ModelConfig(ref=str(tiny_causal_dir)))
    out = tmp_path / "run" / "adapter"
    save_trained(apply_method(base.model, TrainConfig.model_validate({"method": "adapter"})), base.tokenizer, out,
                 method="adapter")
    tuned = load_model(ModelConfig(ref=str(tiny_causal_dir)), adapter=tmp_path / "run", merge=True)
    info = runner.model_info(tuned)
    assert info["adapter"] == str(out.resolve()) and info["adapter_merged"] is False  # not mergeable: attached
