"""lm-evaluation-harness task YAML over local files: translated into a spec and run on a tiny model."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tunebench.bench.instances import prepare_task
from tunebench.bench.runner import run_benchmarks
from tunebench.bench.spec import resolve_tasks
from tunebench.bench.templates import SpecError

LMEVAL_PIQA_LIKE = """\
task: my_piqa
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {data}
    train: {data}
validation_split: validation
fewshot_split: train
output_type: multiple_choice
doc_to_text: "Question: {{{{goal}}}}\\nAnswer:"
doc_to_target: label
doc_to_choice: "{{{{[sol1, sol2]}}}}"
num_fewshot: 1
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
metadata:
  version: 1.0
"""


def _data(tmp_path: Path) -> Path:
    rows = [{"goal": f"goal {i}", "sol1": f"first answer {i}", "sol2": f"second {i}", "label": i % 2}
            for i in range(6)]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_lmeval_yaml_over_local_jsonl_runs_on_a_tiny_model(tmp_path: Path, tiny_causal_loaded) -> None:
    spec_path = tmp_path / "my_piqa.yaml"
    spec_path.write_text(LMEVAL_PIQA_LIKE.format(data=_data(tmp_path)))
    (spec,) = resolve_tasks([str(spec_path)], None)
    assert spec.name == "my_piqa" and spec.output_type == "multiple_choice" and spec.fewshot.n == 1
    task = prepare_task(spec, data_dir=None)
    inst = task.instances[0]
    assert inst.choices == ("first answer 0", "second 0") and inst.target == 0
    assert task.instances[1].target == 1
    # no fewshot_config: lm-eval's default sampler, random.Random(1234) drawing from the train split per example
    (demo,) = random.Random(1234).sample(range(6), 1)
    assert spec.fewshot.sampler == "lm-eval"
    assert inst.query == "Question: goal 0\nAnswer:"
    assert inst.prefix == f"Question: goal {demo}\nAnswer: {('first answer', 'second')[demo % 2]} {demo}\n\n"
    results = run_benchmarks(tiny_causal_loaded(False), [str(spec_path)], data_dir=None, limit=None, shots=None,
                             progress=False).results
    entry = results["tasks"]["my_piqa"]
    assert entry["n"] == 6 and set(entry["metrics"]) == {"acc", "acc_norm"}


@pytest.mark.parametrize(("extra", "key"), [
    ("process_docs: !!str utils.process\n", "process_docs"),
    ("filter_list: []\n", "filter_list"),
])
def test_unsupported_lmeval_keys_are_named(tmp_path: Path, extra: str, key: str) -> None:
    spec_path = tmp_path / "t.yaml"
    spec_path.write_text(LMEVAL_PIQA_LIKE.format(data=_data(tmp_path)) + extra)
    with pytest.raises(SpecError, match=rf"t\.yaml: {key}: this lm-eval key is not supported"):
        resolve_tasks([str(spec_path)], None)


def test_lmeval_hub_dataset_and_metric_are_refused(tmp_path: Path) -> None:
    spec_path = tmp_path / "t.yaml"
    spec_path.write_text(LMEVAL_PIQA_LIKE.format(data=_data(tmp_path)).replace("dataset_path: json",
                                                                               "dataset_path: piqa"))
    with pytest.raises(SpecError, match=r"dataset_path: 'piqa' is not local data"):
        resolve_tasks([str(spec_path)], None)
    spec_path.write_text(LMEVAL_PIQA_LIKE.format(data=_data(tmp_path)).replace("metric: acc_norm", "metric: f1"))
    with pytest.raises(SpecError, match=r"metric_list\.1\.metric: 'f1' is not supported"):
        resolve_tasks([str(spec_path)], None)


def test_lm_eval_sampler_draws_per_example_with_seed_1234(data_dir: Path) -> None:
    import csv
    import random

    (spec,) = resolve_tasks(["mmlu:anatomy"], data_dir)
    task = prepare_task(spec.derive(fewshot={"n": 5, "split": "dev", "sampler": "lm-eval"}), data_dir=data_dir)
    with (data_dir / "mmlu/dev/anatomy_dev.csv").open(newline="") as f:
        dev = list(csv.DictReader(f))
    rnd = random.Random(1234)  # lm-eval: one sampler per task, n drawn for each example in order
    for inst in task.instances[:3]:
        order = rnd.sample(range(len(dev)), 5)
        questions = [inst.prefix.index(dev[i]["question"]) for i in order]
        assert questions == sorted(questions)
    assert task.instances[0].prefix != task.instances[1].prefix


def test_lmeval_fewshot_sampler_first_n_is_read_as_first(tmp_path: Path) -> None:
    spec_path = tmp_path / "t.yaml"
    spec_path.write_text(LMEVAL_PIQA_LIKE.format(data=_data(tmp_path)) + "fewshot_config:\n  sampler: first_n\n")
    (spec,) = resolve_tasks([str(spec_path)], None)
    assert spec.fewshot.sampler == "first"
    inst = prepare_task(spec, data_dir=None).instances[3]
    assert inst.prefix == "Question: goal 0\nAnswer: first answer 0\n\n"  # lm-eval's first_n: the first record
