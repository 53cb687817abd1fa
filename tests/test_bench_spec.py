"""Task specs, data readers and instance building: no model needed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tunebench.bench.answers import apply_filters
from tunebench.bench.instances import prepare_task
from tunebench.bench.spec import (
    RegexFilter,
    SpecError,
    builtin_tasks,
    load_spec,
    resolve_tasks,
)
from tunebench.errors import ConfigError, DataError
from tunebench.evaluate.metrics.classification import token_f1
from tunebench.rundir import samples_filename

USER_SPEC = {
    "name": "toy_nli",
    "version": 2,
    "source": {"format": "jsonl", "splits": {"test": "toy.jsonl"}},
    "template": "{{ premise }}\nQuestion: {{ hypothesis }}?\nAnswer:",
    "output_type": "multiple_choice",
    "choices": ["yes", "no"],
    "target": "{{ gold }}",
}


def write_spec(tmp_path: Path, spec: dict, rows: list[dict] | None = None) -> Path:
    import json

    if rows is not None:
        (tmp_path / "toy.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path


TOY_ROWS = [{"premise": f"p{i}", "hypothesis": f"h{i}", "gold": "yes" if i % 2 else "no"} for i in range(6)]


def test_every_builtin_spec_loads() -> None:
    names = set(builtin_tasks())
    assert {"mmlu", "mmlu_cloze", "cb", "rte", "sst2", "bbh", "dialogsum"} <= names
    for path in builtin_tasks().values():
        assert load_spec(path).version is not None


def test_mmlu_letter_prompt_five_shot_from_dev(data_dir: Path) -> None:
    (spec,) = resolve_tasks(["mmlu:anatomy"], data_dir)
    task = prepare_task(spec, data_dir=data_dir)
    assert spec.name == "mmlu:anatomy" and task.shots == 5 and len(task.instances) == 135
    inst = task.instances[0]
    assert inst.prompt.startswith("The following are multiple choice questions (with answers) about anatomy.\n\n")
    assert inst.prefix.count("\nAnswer: ") == 5 and inst.query.endswith("\nD. " + inst.fields["choice3"] + "\nAnswer:")
    assert inst.choices == ("A", "B", "C", "D") and inst.target == int(inst.fields["answer"])
    assert inst.id == "anatomy/0"
    assert all(i.prefix == inst.prefix for i in task.instances)  # one shared prefix per subject


def test_mmlu_cloze_scores_answer_texts(data_dir: Path) -> None:
    (spec,) = resolve_tasks(["mmlu_cloze:anatomy"], data_dir)
    inst = prepare_task(spec, data_dir=data_dir, shots=1).instances[3]
    assert inst.choices == tuple(inst.fields[f"choice{k}"] for k in range(4))
    assert inst.query.startswith("Question: ") and inst.query.endswith("\nAnswer:")


def test_mmlu_limit_is_stratified_seeded_and_stable(data_dir: Path) -> None:
    (spec,) = resolve_tasks(["mmlu"], data_dir)
    first = prepare_task(spec, data_dir=data_dir, limit=300, seed=0)
    again = prepare_task(spec, data_dir=data_dir, limit=300, seed=0)
    other = prepare_task(spec, data_dir=data_dir, limit=300, seed=1)
    ids = [i.id for i in first.instances]
    assert len(ids) == 300 and len(set(ids)) == 300
    assert ids == [i.id for i in again.instances] and ids != [i.id for i in other.instances]
    per_subject: dict[str, int] = {}
    for inst in first.instances:
        per_subject[inst.subtask] = per_subject.get(inst.subtask, 0) + 1
    assert len(per_subject) == 57  # every subject represented, in proportion to its size
    assert per_subject["professional_law"] > per_subject["abstract_algebra"]


def test_superglue_sst2_label_mapping(data_dir: Path) -> None:
    cb, rte, sst2 = (prepare_task(s, data_dir=data_dir) for s in resolve_tasks(["cb", "rte", "sst2"], data_dir))
    label = {"entailment": "True", "contradiction": "False", "neutral": "Neither"}
    assert len(cb.instances) == 56
    assert all(i.choices[i.target] == label[i.fields["label"]] for i in cb.instances)
    assert all(i.choices[i.target] == ("True" if i.fields["label"] == "entailment" else "False") for i in rte.instances)
    assert len(sst2.instances) == 1821 and {i.target for i in sst2.instances} == {0, 1}
    assert sst2.instances[0].query.endswith("Question: Is this sentence positive or negative?\nAnswer:")


def test_cb_demonstrations_leave_the_pool(data_dir: Path) -> None:
    (spec,) = resolve_tasks(["cb"], data_dir)
    task = prepare_task(spec, data_dir=data_dir, shots=3)
    assert len(task.instances) == 53 and {i.id for i in task.instances}.isdisjoint({"0", "1", "2"})


def test_bbh_closed_set_becomes_multiple_choice(data_dir: Path, tmp_path: Path) -> None:
    nav, count = resolve_tasks(["bbh:navigate", "bbh:object_counting"], data_dir)
    nav_task = prepare_task(nav, data_dir=data_dir)
    assert nav_task.output_type == "multiple_choice" and nav_task.instances[0].choices == ("No", "Yes")
    assert nav_task.metrics == ["acc", "acc_norm"] and len(nav_task.instances) == 247
    count_task = prepare_task(count, data_dir=data_dir)
    assert count_task.output_type == "generate" and count_task.metrics == ["exact_match"]
    assert count_task.instances[0].prefix.count("\nA: ") == 3
    every = resolve_tasks(["bbh"], data_dir)
    assert len(every) == 5 and all(s.name.startswith("bbh:") for s in every)
    (by_path,) = resolve_tasks([str(data_dir / "bbh" / "navigate.json")], data_dir)
    assert by_path.name == "bbh:navigate"


def test_dialogsum_is_generation_with_three_references(data_dir: Path) -> None:
    (spec,) = resolve_tasks(["dialogsum"], data_dir)
    task = prepare_task(spec, data_dir=data_dir, limit=5, shots=1)
    inst = task.instances[0]
    assert task.output_type == "generate" and len(inst.references) == 3 and inst.id.startswith("test_")
    assert task.metrics == ["rouge1", "rouge2", "rougeL", "rougeLsum"] and "Summary: " in inst.prefix


def test_user_yaml_task_relative_to_spec_folder(tmp_path: Path) -> None:
    path = write_spec(tmp_path, {**USER_SPEC, "fewshot": {"n": 2}}, TOY_ROWS)
    task = prepare_task(load_spec(path), data_dir=None)
    assert [i.id for i in task.instances] == ["2", "3", "4", "5"]
    assert task.instances[0].prefix == "p0\nQuestion: h0?\nAnswer: no\n\np1\nQuestion: h1?\nAnswer: yes\n\n"


def test_unknown_key_names_file_and_key(tmp_path: Path) -> None:
    path = write_spec(tmp_path, {**USER_SPEC, "fewshot": {"n": 1, "splt": "x"}})
    with pytest.raises(SpecError, match=rf"{path}: fewshot.splt: unknown key"):
        load_spec(path)


def test_template_field_missing_names_file_key_and_field(tmp_path: Path) -> None:
    path = write_spec(tmp_path, {**USER_SPEC, "template": "{{ premise }} {{ hypotesis }}"}, TOY_ROWS)
    with pytest.raises(SpecError, match=rf"{path}: template: 'hypotesis' is undefined .*toy.jsonl record 0"):
        prepare_task(load_spec(path), data_dir=None)


def test_field_map_to_missing_column(tmp_path: Path) -> None:
    path = write_spec(tmp_path, {**USER_SPEC, "field_map": {"premise": "text"}}, TOY_ROWS)
    with pytest.raises(SpecError, match=rf"{path}: field_map.premise: column 'text' is not in"):
        prepare_task(load_spec(path), data_dir=None)


def test_target_outside_choice_set(tmp_path: Path) -> None:
    path = write_spec(tmp_path, {**USER_SPEC, "choices": ["yes", "maybe"]}, TOY_ROWS)
    with pytest.raises(SpecError, match=rf"{path}: target: 'no' in .*record 0 is not one of the choices"):
        prepare_task(load_spec(path), data_dir=None)
    path = write_spec(tmp_path, {**USER_SPEC, "target": "{{ 5 }}", "target_type": "index"}, TOY_ROWS)
    with pytest.raises(SpecError, match=r"target: '5' .* is not a choice index 0..1"):
        prepare_task(load_spec(path), data_dir=None)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"output_type": "generate"}, "choices: output_type generate takes no choices"),
        ({"metrics": ["rougeL"]}, "metrics: 'rougeL' is not one of"),
        ({"metrics": ["acc_nrom"]}, "metrics: unknown metric 'acc_nrom'; did you mean 'acc_norm'\\? known metrics: acc,"),
        ({"bleu_tokenize": "zhh"}, "bleu_tokenize: unknown tokenizer 'zhh'; did you mean 'zh'"),
        ({"eval_split": "dev"}, "eval_split: 'dev' is not one of source.splits"),
        ({"template": "{{ premise "}, "template: invalid Jinja2 template"),
        ({"version": None}, "version"),
    ],
)
def test_invalid_specs_name_the_file(tmp_path: Path, change: dict, message: str) -> None:
    path = write_spec(tmp_path, {**USER_SPEC, **change})
    with pytest.raises(SpecError, match=rf"{path}: (.|\n)*{message}"):
        load_spec(path)


def test_missing_data_file_names_the_path(tmp_path: Path, data_dir: Path) -> None:
    path = write_spec(tmp_path, {**USER_SPEC, "source": {"format": "jsonl", "splits": {"test": "nope/x.jsonl"}}})
    with pytest.raises(DataError, match=rf"source.splits.test: .*not found at {data_dir / 'nope/x.jsonl'} or "
                                        rf"{tmp_path / 'nope/x.jsonl'}"):
        prepare_task(load_spec(path), data_dir=data_dir)
    with pytest.raises(DataError, match=str(data_dir / "bbh" / "no_such_task.json")):
        resolve_tasks(["bbh:no_such_task"], data_dir)


def test_unknown_task_and_subtask(data_dir: Path) -> None:
    with pytest.raises(ConfigError, match="unknown task 'mmmlu'"):
        resolve_tasks(["mmmlu"], data_dir)
    with pytest.raises(ConfigError, match="'astrology' is not a mmlu subtask"):
        resolve_tasks(["mmlu:astrology"], data_dir)


def test_filters_and_token_f1() -> None:
    out = "  (B) 12/25/1937\nQ: next question"
    assert apply_filters(out, ["first_line", "strip"]) == "(B) 12/25/1937"
    assert apply_filters(out, [RegexFilter(regex=r"\(([A-F])\)", group=1)]) == "B"
    assert apply_filters("no letter", [RegexFilter(regex=r"\(([A-F])\)")]) == "[invalid]"
    assert token_f1("The Eiffel tower", ["eiffel tower"]) == 1.0
    assert token_f1("red car", ["blue car", "a red car!"]) == 1.0
    assert token_f1("red bike", ["blue car"]) == 0.0
    assert abs(token_f1("red car", ["red bike"]) - 0.5) < 1e-9


def test_samples_filename_is_safe() -> None:
    assert samples_filename("bbh:date_understanding") == "samples_bbh_date_understanding.jsonl"
    assert samples_filename("mmlu") == "samples_mmlu.jsonl"


def test_readme_example_spec_is_valid(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[1] / "tunebench" / "bench" / "tasks" / "README.md").read_text()
    block = readme.split("```yaml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "example.yaml"
    path.write_text(block, encoding="utf-8")
    spec = load_spec(path)
    assert spec.name == "my_nli" and spec.fewshot.n == 3 and spec.field_map == {"premise": "sentence1"}
