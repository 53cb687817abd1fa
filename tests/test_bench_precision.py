"""bench.precision: the parity gate on a multiple-choice and a perplexity task, one decision for base and tuned,
the precision in every task's record, the forgetting table's refusal of mixed precisions, and config validation."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from tunebench.bench import parity as bench_parity
from tunebench.bench.loglik import Request, loglikelihoods_naive
from tunebench.bench.perplexity import document_loglikelihood
from tunebench.bench.runner import prepare_tasks, run_benchmarks
from tunebench.config import BenchConfig, BenchParityConfig, load_config
from tunebench.evaluate.stats import paired_bootstrap, paired_bootstrap_stats
from tunebench.models import precision as prec

PARAGRAPHS = ["First paragraph about cats and dogs.", "A second one, on weather and rain.",
              "Third: numbers 1, 2 and 3 appear here.", "A fourth on trains, buses and late parcels.",
              "Fifth and last: the sea, the sand and the wind."]
RESAMPLES = 200


@pytest.fixture(scope="module")
def tiny(tiny_causal_loaded):
    return tiny_causal_loaded(use_chat=False)


@pytest.fixture(scope="module")
def piqa(data_dir):
    return prepare_tasks(["piqa"], data_dir=data_dir, limit=12, limits=None, shots=0, seed=0)[0]


@pytest.fixture(scope="module")
def drift(tmp_path_factory):
    folder = tmp_path_factory.mktemp("drift")
    (folder / "corpus.txt").write_text("\n\n".join(PARAGRAPHS) + "\n")
    spec = folder / "drift.yaml"
    spec.write_text("name: drift\nversion: 1\nsource: {format: text, documents: paragraphs, splits: {test: corpus.txt}}"
                    "\ntemplate: '{{ text }}'\noutput_type: perplexity\nperplexity: {max_length: 8}\n")
    return prepare_tasks([str(spec)], data_dir=None, limit=None, limits=None, shots=None, seed=0)[0]


def _same(model, name):
    """A 'fast' precision whose log-likelihoods equal fp32's: the model itself."""
    return model


def _perturbed(model, name):
    """fp32 as is; the fast precision: a copy with noise of twice each weight's spread added and the final norm
    scaled 4x (logits 4x as sharp: the NLL moves, not only its spread)."""
    if name == "fp32":
        return model
    noisy = prec.precision_variant(model, "bf16").float()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in noisy.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * p.std() * 2)
        noisy.model.norm.weight.mul_(4)
    return noisy


def _correct(model, tokenizer, task) -> tuple[list[float], list[float]]:
    """Per-question acc and acc_norm computed here from the naive scorer (one forward per choice)."""
    requests = [Request(i.prompt, tuple(i.target_delimiter + c for c in i.choices)) for i in task.instances]
    acc, norm = [], []
    for inst, ll in zip(task.instances, loglikelihoods_naive(model, tokenizer, requests), strict=True):
        acc.append(float(max(range(len(ll)), key=lambda k: (ll[k], -k)) == inst.target))
        per_char = [x / len(c) for x, c in zip(ll, inst.choices, strict=True)]
        norm.append(float(max(range(len(ll)), key=lambda k: (per_char[k], -k)) == inst.target))
    return acc, norm


def test_gate_accepts_equal_loglikelihoods_and_rejects_a_perturbed_variant_on_piqa(tiny, piqa, tmp_path):
    cfg = BenchParityConfig()
    same = bench_parity.bench_parity_gate(tiny, piqa, cfg, "bf16", n_resamples=RESAMPLES, cache_dir=tmp_path,
                                          variant=_same)
    acc, norm = _correct(tiny.model, tiny.tokenizer, piqa)
    assert same.accepted and set(same.metrics) == {"acc", "acc_norm"} and same.n == len(piqa.instances) == 12
    assert same.metrics["acc"]["fp32"] == pytest.approx(sum(acc) / 12)
    assert same.metrics["acc_norm"]["fp32"] == pytest.approx(sum(norm) / 12)
    assert all(c["delta"] == 0 and c["ci95"] == [0.0, 0.0] and c["margin"] == 0.01 for c in same.metrics.values())
    assert "12 of 12 predictions identical" in same.reason and "calibration questions of piqa" in same.reason

    bad = bench_parity.bench_parity_gate(tiny, piqa, cfg, "bf16", n_resamples=RESAMPLES,
                                         cache_dir=tmp_path / "perturbed", variant=_perturbed)
    assert not bad.accepted and not bad.cached and "not within ±0.01" in bad.reason
    fast_acc, fast_norm = _correct(_perturbed(tiny.model, "bf16"), tiny.tokenizer, piqa)
    assert fast_acc != acc  # the perturbation flips answers
    for name, (a, b) in {"acc": (acc, fast_acc), "acc_norm": (norm, fast_norm)}.items():
        expected = paired_bootstrap(a, b, n_resamples=RESAMPLES, seed=0)  # the mean form, computed independently
        check = bad.metrics[name]
        assert check["delta"] == pytest.approx(expected["delta"])
        assert check["ci95"] == pytest.approx(expected["ci95"])
        assert check["accepted"] == (-0.01 <= expected["ci95"][0] and expected["ci95"][1] <= 0.01)
    assert not bad.metrics[bad.metric]["accepted"]  # the top-level figures are the deciding metric's


def test_gate_on_a_perplexity_task_compares_nll_per_token(tiny, drift, tmp_path):
    cfg = BenchParityConfig()
    same = bench_parity.bench_parity_gate(tiny, drift, cfg, "int8", n_resamples=RESAMPLES, cache_dir=tmp_path,
                                          variant=_same)
    sums = [document_loglikelihood(tiny.model, tiny.tokenizer, p, max_length=8) for p in PARAGRAPHS]
    fp32_nll = sum(s["nll"] for s in sums) / sum(s["tokens"] for s in sums)
    assert same.accepted and list(same.metrics) == ["nll"] and same.n == 5
    assert same.fp32_score == pytest.approx(fp32_nll, rel=1e-6) and same.delta == 0
    assert same.margin == pytest.approx(math.log(1.01))  # ±1% token perplexity, in nats/token
    assert "calibration documents of drift" in same.reason

    bad = bench_parity.bench_parity_gate(tiny, drift, cfg, "int8", n_resamples=RESAMPLES,
                                         cache_dir=tmp_path / "perturbed", variant=_perturbed)
    noisy = _perturbed(tiny.model, "int8")
    fast = [document_loglikelihood(noisy, tiny.tokenizer, p, max_length=8) for p in PARAGRAPHS]
    stats = [torch.tensor([[s["nll"], s["tokens"]] for s in rows], dtype=torch.float64).numpy()
             for rows in (sums, fast)]
    expected = paired_bootstrap_stats(stats[0], stats[1], lambda x: x[:, 0] / x[:, 1], n_resamples=RESAMPLES, seed=0)
    assert not bad.accepted and bad.metric == "nll"
    assert bad.delta == pytest.approx(expected["delta"]) and bad.ci95 == pytest.approx(expected["ci95"])
    assert bad.delta > math.log(1.01) and bad.ci95[0] > bad.margin  # shifted beyond the margin, all of it


def test_the_verdict_is_cached_per_model_precision_and_task(tiny, piqa, drift, tmp_path):
    cfg = BenchParityConfig()
    first = bench_parity.bench_parity_gate(tiny, drift, cfg, "bf16", n_resamples=RESAMPLES, cache_dir=tmp_path,
                                           variant=_perturbed)

    def refuse(model, name):
        raise AssertionError("the gate scored despite a cached verdict")

    again = bench_parity.bench_parity_gate(tiny, drift, cfg, "bf16", n_resamples=RESAMPLES, cache_dir=tmp_path,
                                           variant=refuse)
    assert again.cached and again.as_dict() == {**first.as_dict(), "cached": True}
    with pytest.raises(AssertionError, match="despite"):  # another precision is another key
        bench_parity.bench_parity_gate(tiny, drift, cfg, "int8", n_resamples=RESAMPLES, cache_dir=tmp_path,
                                       variant=refuse)
    with pytest.raises(AssertionError, match="despite"):  # another task too
        bench_parity.bench_parity_gate(tiny, piqa, cfg, "bf16", n_resamples=RESAMPLES, cache_dir=tmp_path,
                                       variant=refuse)


def test_one_decision_for_base_and_tuned(tiny, tiny_causal_loaded, piqa, tmp_path):
    tuned = dataclasses.replace(tiny_causal_loaded(use_chat=False), ref="tiny-tuned")  # another gate cache key

    def perturb_tuned(model, name):  # the gate passes for the base and fails for the tuned model
        return _perturbed(model, name) if model is tuned.model else model

    cfg = BenchConfig(precision="bf16", parity=BenchParityConfig(examples=8))
    kw = {"n_resamples": RESAMPLES, "cache_dir": tmp_path, "variant": perturb_tuned}
    decided = bench_parity.decide_bench_precision([lambda: tiny, lambda: tuned], [piqa], cfg, **kw)
    used, record = decided["piqa"]
    assert used == "fp32" and [g["accepted"] for g in record["gates"]] == [True, False]
    assert record["requested"] == "bf16" and record["reason"].startswith("fell back to fp32")
    assert bench_parity.decide_bench_precision([lambda: tiny], [piqa], cfg, **kw)["piqa"][0] == "bf16"
    pinned = bench_parity.decide_bench_precision([lambda: tiny], [piqa], cfg, pinned={"piqa": "fp32"}, **kw)
    assert pinned["piqa"][0] == "fp32" and pinned["piqa"][1]["pinned"] == "fp32"
    assert bench_parity.decide_bench_precision([lambda: tiny], [piqa], BenchConfig(), **kw) == {
        "piqa": (None, {"requested": None, "used": None, "reason": "as loaded"})}

    def refuse(model, name):
        raise AssertionError("a task no larger than the calibration slice needs no gate")

    whole = BenchConfig(precision="bf16", parity=BenchParityConfig(examples=12))  # piqa here has 12 questions
    used, record = bench_parity.decide_bench_precision([lambda: tiny], [piqa], whole, variant=refuse)["piqa"]
    assert used == "fp32" and "12 instances are no more than the calibration slice" in record["reason"]


def test_each_task_records_the_precision_it_was_scored_in(tiny, data_dir):
    record = {"requested": "bf16", "used": "bf16", "reason": "parity gate passed: (constructed)"}
    bench = run_benchmarks(tiny, ["piqa", "sst2"], data_dir=data_dir, limit=3, shots=0, progress=False,
                           precisions={"piqa": ("bf16", record)})
    piqa, sst2 = bench.results["tasks"]["piqa"], bench.results["tasks"]["sst2"]
    assert piqa["precision"] == "bf16" and piqa["precision_choice"] == record
    assert sst2["precision"] == "fp32" and "precision_choice" not in sst2  # as loaded: the weights' own
    bf16 = prec.precision_variant(tiny.model, "bf16")
    task = prepare_tasks(["piqa"], data_dir=data_dir, limit=3, limits=None, shots=0, seed=0)[0]
    requests = [Request(i.prompt, tuple(i.target_delimiter + c for c in i.choices)) for i in task.instances]
    expected = loglikelihoods_naive(bf16, tiny.tokenizer, requests)  # scored by the bf16 copy, one at a time
    rows = bench.samples["samples_piqa.jsonl"]
    for row, lls in zip(rows, expected, strict=True):
        assert row["loglikelihoods"] == pytest.approx(lls, abs=0.05)
    assert prec.model_precision(tiny.model) == "fp32"  # the loaded model itself is untouched


def test_bench_command_gates_and_records_the_precision(tiny_causal_dir, data_dir, tmp_path, monkeypatch):
    from tunebench.cli import main

    monkeypatch.setenv("TUNEBENCH_CACHE", str(tmp_path / "cache"))
    config = tmp_path / "c.yaml"
    config.write_text(f"model: {{ref: '{tiny_causal_dir}', chat_template: never}}\nbench: {{parity: {{examples: 4}}}}\n")
    out = tmp_path / "b"
    assert main(["bench", "--config", str(config), "--tasks", "piqa", "--limit", "6", "--precision", "bf16",
                 "--out", str(out)]) == 0
    entry = json.loads((out / "results.json").read_text())["tasks"]["piqa"]
    choice = entry["precision_choice"]
    gate = choice["gates"][0]
    assert choice["requested"] == "bf16" and gate["n"] == 4 and gate["precision"] == "bf16"
    assert entry["precision"] == choice["used"] == ("bf16" if gate["accepted"] else "fp32")
    assert len(list((tmp_path / "cache" / "parity").glob("gate-*.json"))) == 1


# ---------------------------------------------------------------- the forgetting table and config


def _write(folder: Path, precision: str | None, dtype: str = "float32") -> Path:
    from tunebench.io import atomic_write_json, atomic_write_jsonl

    rows = [{"id": f"q{i}", "correct": bool(i % 2), "choices": ["a", "b"], "scores": {"acc": float(i % 2)}}
            for i in range(6)]
    atomic_write_jsonl(folder / "samples_piqa.jsonl", rows)
    entry = {"version": 1, "n": 6, "shots": 0, "output_type": "multiple_choice",
             "metrics": {"acc": {"value": 0.5, "stderr": 0.2}}, "samples": "samples_piqa.jsonl"}
    if precision is not None:
        entry["precision"] = precision
    atomic_write_json(folder / "results.json", {"schema": "tunebench.bench/1",
                                                "model": {"ref": folder.name, "dtype": dtype},
                                                "tasks": {"piqa": entry}})
    return folder


def test_forgetting_table_refuses_mixed_precisions(tmp_path):
    from tunebench.bench.forgetting import forgetting_table
    from tunebench.errors import DataError

    with pytest.raises(DataError, match=r"^task 'piqa': base was scored at precision fp32 and tuned at bf16; "
                                        r"rerun both with the same bench\.precision$"):
        forgetting_table(_write(tmp_path / "b", "fp32"), _write(tmp_path / "t", "bf16"), n_resamples=50)
    # results from before benchmarks recorded a precision: the weights' dtype says it
    assert forgetting_table(_write(tmp_path / "old", None), _write(tmp_path / "t2", "fp32"), n_resamples=50)
    with pytest.raises(DataError, match="base was scored at precision bf16 and tuned at fp32"):
        forgetting_table(_write(tmp_path / "old16", None, "bfloat16"), tmp_path / "t2", n_resamples=50)


@pytest.mark.parametrize("argv, message", [
    (["config", "show", "--set", "model.device=cuda", "--set", "bench.precision=int8"],
     "error: --set: bench.precision: 'int8' does not run on model.device 'cuda' (int8 runs on cpu;"),
    (["config", "show", "--set", "model.device=cpu", "--set", "bench.precision=fp16"],
     "error: --set: bench.precision: 'fp16' does not run on model.device 'cpu' (fp16 runs on cuda;"),
    (["config", "show", "--set", "bench.parity.perplexity_margin=2"], "error: --set: bench.parity.perplexity_margin"),
    (["bench", "--set", "model.device=cuda", "--tasks", "piqa", "--precision", "int8", "--out", "OUT"],
     "error: --precision: 'int8' does not run on model.device 'cuda' (int8 runs on cpu;"),
])
def test_bench_precision_is_validated(tmp_path, capsys, argv, message):
    from tunebench.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: x\n")
    argv = [a.replace("OUT", str(tmp_path / "out")) for a in argv]
    at = 2 if argv[0] == "config" else 1
    argv = [*argv[:at], *([str(cfg)] if argv[0] == "config" else ["--config", str(cfg)]), *argv[at:]]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_bench_precision_in_the_schema_and_defaults():
    from tunebench.cli import _PRECISIONS
    from tunebench.config import PrecisionName, config_schema, schema_table

    assert _PRECISIONS == PrecisionName.__args__
    cfg = load_config(None, [])
    assert cfg.bench.precision is None and cfg.bench.parity.examples == 64
    assert cfg.bench.parity.perplexity_margin == 0.01 and cfg.bench.parity.accuracy_margin is None
    props = config_schema()["$defs"]["BenchConfig"]["properties"]
    assert "precision" in props and "parity" in props
    table = schema_table()
    assert "bench.precision" in table and "bench.parity.perplexity_margin" in table
    assert load_config(None, ["model.device=cpu", "bench.precision=int8"]).bench.precision == "int8"


def test_run_decides_once_for_base_and_tuned(tmp_path, tiny_causal_dir, data_dir, monkeypatch):
    """`tunebench run` with bench.precision: one gated decision per task for the pair (the base's gate, then the
    tuned model's), recorded alike in both results.json, and the forgetting table compares them."""
    import yaml

    from tunebench.cli import main

    monkeypatch.setenv("TUNEBENCH_CACHE", str(tmp_path / "cache"))
    made: list[str] = []

    def same_weights(model, name):  # log-likelihoods equal to fp32's: every gate passes
        made.append(name)
        return model

    monkeypatch.setattr(prec, "precision_variant", same_weights)
    example = Path(__file__).resolve().parents[1] / "examples" / "custom_template_csv.yaml"
    cfg = yaml.safe_load(example.read_text())
    cfg["data"]["source"] = str(example.parent / cfg["data"]["source"])
    cfg.update(output_dir=str(tmp_path / "runs"), model={"ref": str(tiny_causal_dir)})
    cfg["train"].update(max_steps=1)
    cfg["eval"].update(bootstrap=100, limit=4)
    cfg["bench"] = {"enabled": True, "tasks": ["piqa"], "limit": 4, "limits": {}, "precision": "bf16",
                    "parity": {"examples": 3}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path), "--data-dir", str(data_dir)]) == 0
    run_dir = tmp_path / "runs" / cfg["name"]
    entries = [json.loads((run_dir / "bench" / name / "results.json").read_text())["tasks"]["piqa"]
               for name in ("base", "tuned")]
    assert entries[0]["precision"] == entries[1]["precision"] == "bf16"
    assert entries[0]["precision_choice"] == entries[1]["precision_choice"]
    gates = entries[0]["precision_choice"]["gates"]
    assert [g["adapter"] is None for g in gates] == [True, False] and all(g["n"] == 3 for g in gates)
    forgetting = json.loads((run_dir / "compare" / "forgetting.json").read_text())
    rows = forgetting["rows"] if isinstance(forgetting, dict) else forgetting
    assert {r["metric"] for r in rows if r["task"] == "piqa"} == {"acc", "acc_norm"}
    assert "bf16" in made  # the scoring asked for the bf16 copy


def test_the_report_signature_and_bench_output_name_the_precision():
    from tunebench.report.tables import bench_summary_lines, signature_rows

    choice = {"requested": "int8", "used": "fp32", "reason": "fell back to fp32: the parity gate failed for tiny (x)"}
    task = {"version": 1, "shots": 0, "n": 6, "precision": "fp32", "precision_choice": choice,
            "metrics": {"acc": {"value": 0.5, "stderr": 0.2}}}
    rows = signature_rows({"systems": {}, "comparisons": [], "benchmarks": {"tuned": {"tasks": {"piqa": task}}}})
    assert rows == [{"system": "bench/tuned", "metric": "piqa", "signature": "version:1|shots:0|n:6|precision:fp32"}]
    lines = bench_summary_lines({"tasks": {"piqa": task}})
    assert lines[1].split() == ["precision", "fp32:", *choice["reason"].split()]


def test_a_finished_task_is_reused_only_at_the_same_precision(tiny, data_dir, tmp_path):
    from tunebench.pipeline.stages import recorded_bench_precisions
    from tunebench.rundir import BenchDir

    first = run_benchmarks(tiny, ["sst2"], data_dir=data_dir, limit=2, shots=0, progress=False)
    same = run_benchmarks(tiny, ["sst2"], data_dir=data_dir, limit=2, shots=0, progress=False,
                          finished=first.results)
    assert same.samples == {} and same.results["tasks"] == first.results["tasks"]
    record = {"requested": "bf16", "used": "bf16", "reason": "parity gate passed: (constructed)"}
    other = run_benchmarks(tiny, ["sst2"], data_dir=data_dir, limit=2, shots=0, progress=False,
                           finished=first.results, precisions={"sst2": ("bf16", record)})
    assert list(other.samples) == ["samples_sst2.jsonl"] and other.results["tasks"]["sst2"]["precision"] == "bf16"
    # a run whose base (or tuned) side was scored earlier pins the other side to that side's precisions
    for name, results in (("base", other.results), ("tuned", first.results)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(results))
    assert recorded_bench_precisions(BenchDir(tmp_path / "base"), BenchDir(tmp_path / "tuned")) == {"sst2": "bf16"}
    assert recorded_bench_precisions(BenchDir(tmp_path / "none"), BenchDir(tmp_path / "tuned")) == {"sst2": "fp32"}
