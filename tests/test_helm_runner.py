"""helm_evaluate over real benchmark specs: perturbations touch only inputs, worst case per instance, every field."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import tunebench.bench.helm.runner as runner
from tunebench.bench.helm import helm_evaluate
from tunebench.bench.helm.calibration import expected_calibration_error
from tunebench.bench.helm.perturbations import FAIRNESS_PERTURBATIONS, PERTURBATIONS, ROBUSTNESS_PERTURBATIONS
from tunebench.bench.instances import prepare_task
from tunebench.bench.scoring import TaskScores
from tunebench.bench.spec import resolve_tasks
from tunebench.bench.templates import render
from tunebench.pipeline import write_helm
from tunebench.report.tables import helm_table
from tunebench.rundir import BenchDir

FIELDS = ("accuracy", "calibration_ece", "robustness", "fairness", "bias", "toxicity", "efficiency")


def _task(name: str, data_dir: Path, limit: int = 6, shots: int | None = None):
    (spec,) = resolve_tasks([name], data_dir)
    return prepare_task(spec, data_dir=data_dir, limit=limit, shots=shots, seed=0)


@dataclass
class FakeLoaded:
    """Just enough of LoadedModel for the orchestration: prompts pass through, tokens are words."""

    family: str = "causal"
    model: Any = None

    def format_prompt(self, prompt: str) -> str:
        return prompt

    def tokenizer(self, text: str, add_special_tokens: bool = False) -> dict[str, Any]:
        return {"input_ids": text.split()}


def test_input_fields_exclude_choices_targets_and_subtask(data_dir):
    found = {n: runner.input_fields(_task(n, data_dir, limit=2).spec) for n in ("sst2", "rte", "mmlu", "bbh:navigate")}
    assert found == {"sst2": ["sentence"], "rte": ["hypothesis", "premise"], "mmlu": ["question"],
                     "bbh:navigate": ["input"]}


@pytest.mark.parametrize("task_name", ["rte", "mmlu"])
def test_perturbations_change_only_the_input_and_are_seeded(data_dir, task_name):
    task = _task(task_name, data_dir, shots=1)
    fields = runner.input_fields(task.spec)
    for name in PERTURBATIONS:
        for inst in task.instances:
            new = runner.perturb_instance(task.spec, inst, name, seed=3, fields=fields)
            assert runner.perturb_instance(task.spec, inst, name, seed=3, fields=fields) == new
            # labels, choices, references, demonstrations and id are untouched
            assert (new.id, new.prefix, new.choices, new.target, new.references, new.target_delimiter) == (
                inst.id, inst.prefix, inst.choices, inst.target, inst.references, inst.target_delimiter)
            assert {k: v for k, v in new.fields.items() if k not in fields} == {
                k: v for k, v in inst.fields.items() if k not in fields}
            assert new.query == render(task.spec.template, new.fields, "", "template", "")
    inst = task.instances[0]
    typo = runner.perturb_instance(task.spec, inst, "typos", seed=3, fields=fields)
    assert typo.query != inst.query
    assert typo != runner.perturb_instance(task.spec, inst, "typos", seed=4, fields=fields)
    if task_name == "mmlu":  # the option lines in the query stay exactly as they were
        assert typo.query.split("\n")[-5:] == inst.query.split("\n")[-5:]


def test_worst_case_per_instance_and_rescoring_only_changed_inputs(data_dir, monkeypatch, tmp_path):
    task = _task("sst2", data_dir, limit=8)
    calls: list[int] = []

    def fake_score(loaded, task, instances=None, **kw):
        items = list(task.instances if instances is None else instances)
        calls.append(len(items))
        samples = []
        for inst in items:
            ok = int(inst.id) % 2 == 0 and "  " not in inst.query  # extra whitespace always breaks it
            samples.append({"scores": {"acc": float(ok)}, "prediction": 0, "correct": ok,
                            "probs": [0.7, 0.3] if ok else [0.9, 0.1]})
        return TaskScores(samples, {}, 0.0)

    monkeypatch.setattr(runner, "score_task", fake_score)
    summary, rows, cost, outputs = runner.evaluate_task(
        FakeLoaded(), task, seed=0, robustness=ROBUSTNESS_PERTURBATIONS, fairness=FAIRNESS_PERTURBATIONS)
    even = [int(i.id) % 2 == 0 for i in task.instances]
    assert summary["accuracy"] == pytest.approx(sum(even) / 8) and 0 < summary["accuracy"] < 1
    assert summary["robustness"] == 0.0  # every instance fails under one perturbation
    assert summary["fairness"] == pytest.approx(summary["accuracy"])
    assert summary["perturbations"]["extra_whitespace"]["score"] == 0.0
    assert summary["perturbations"]["lowercase"]["changed"] == 0  # SST-2 is lower-cased already
    changed = [p["changed"] for p in summary["perturbations"].values()]
    assert calls == [8] + [c for c in changed if c]  # unchanged instances are never scored again
    assert summary["calibration_ece"] == pytest.approx(
        expected_calibration_error([0.7 if e else 0.9 for e in even], even))
    assert [r["robust_score"] for r in rows] == [0.0] * 8
    assert all(r["perturbations"]["extra_whitespace"]["input"]["sentence"] != r["input"]["sentence"] for r in rows)
    assert cost.examples == 8 and cost.tokens > 0 and outputs == []


def test_bias_and_toxicity_come_from_generated_text(monkeypatch, tmp_path):
    from tunebench.evaluate import generate
    from tunebench.evaluate.generate import GenerationResult

    texts = ["She is a doctor and she helps.", "He is an idiot.", "Chen met Garcia."]

    def fake_generate(model, tokenizer, prompts, **kw):
        return [GenerationResult(t, 3, 5, 0.01) for t in texts[: len(prompts)]]

    monkeypatch.setattr(generate, "generate_texts", fake_generate)
    view = helm_evaluate(FakeLoaded(), [], data_dir=None, limit=None, seed=0, generation_prompts=["a", "b", "c"],
                         progress=False)
    assert list(tmp_path.iterdir()) == []  # the stage writes nothing; the pipeline's writer does
    write_helm(BenchDir(tmp_path), view)
    result = view.helm
    assert result["bias"]["gender"] == pytest.approx(1 / 6)  # female 2, male 1
    # asian 1/20, hispanic 1/16, white 0 -> (4/9, 5/9, 0); TV = (1/9 + 2/9 + 3/9) / 2
    assert result["bias"]["race"] == pytest.approx(1 / 3)
    assert result["toxicity"] == pytest.approx(1 / 3)
    assert result["accuracy"] is None and result["tasks"] == {}
    rows = [json.loads(line) for line in (tmp_path / "helm_generations.jsonl").read_text().splitlines()]
    assert [r["toxic"] for r in rows] == [False, True, False] and rows[1]["toxicity_matches"] == ["idiot"]


@pytest.fixture(scope="module")
def tiny_loaded(tiny_causal_dir):
    from tunebench.config import ModelConfig
    from tunebench.models.load import load_model

    return load_model(ModelConfig(ref=str(tiny_causal_dir)))


def test_helm_evaluate_tiny_model_produces_every_field(tiny_loaded, data_dir, tmp_path):
    from tunebench.bench.runner import run_benchmarks

    view = helm_evaluate(tiny_loaded, ["sst2"], data_dir=data_dir, limit=8, seed=0,
                         train_summary={"trainable_params": 1234, "train_time_s": 5.5},
                         generation_prompts=["Write one sentence about a doctor.", "Describe a teacher."],
                         progress=False)
    write_helm(BenchDir(tmp_path), view)
    result = view.helm
    for key in FIELDS:
        assert key in result
    assert json.loads((tmp_path / "helm.json").read_text()) == json.loads(json.dumps(result))
    sst2 = result["tasks"]["sst2"]
    assert sst2["n"] == 8 and 0 <= sst2["calibration_ece"] <= 1
    assert sst2["robustness"] <= sst2["accuracy"] and sst2["fairness"] <= sst2["accuracy"]
    assert set(sst2["perturbations"]) == set(PERTURBATIONS)
    assert result["accuracy"] == sst2["accuracy"] and set(result["bias"]) == {"gender", "race"}
    assert result["toxicity"] is not None and result["generation"]["prompts"] == 2
    eff = result["efficiency"]
    assert eff["examples"] == 10 and eff["tokens_per_s"] > 0 and eff["latency_s_per_example"] > 0
    assert eff["peak_rss_mb"] > 0 and (eff["trainable_params"], eff["train_time_s"]) == (1234, 5.5)
    rows = [json.loads(line) for line in (tmp_path / "samples_helm_sst2.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and all(r["perturbations"]["typos"]["changed"] for r in rows)
    assert all(r["perturbations"]["typos"]["input"]["sentence"] != r["input"]["sentence"] for r in rows)
    # accuracy is the benchmark's own: same instances, same scorer
    bench = run_benchmarks(tiny_loaded, ["sst2"], data_dir=data_dir, limit=8, shots=None, seed=0, progress=False)
    assert sst2["accuracy"] == pytest.approx(bench.results["tasks"]["sst2"]["metrics"]["acc"]["value"])
    table = helm_table({"helm": {"tiny": result}})  # the report's HELM table: one column per model
    assert table["systems"] == ["tiny"] and all(len(r["cells"]) == 1 for r in table["rows"])
    assert {r["metric"]: r["cells"][0] for r in table["rows"]}["Trainable params"] == "1,234"
