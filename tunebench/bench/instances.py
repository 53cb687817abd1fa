"""From a task spec and its data files to scored-ready instances: few-shot prefix, rendered example, choices.

The demonstrations are drawn once per subtask (not per example), so every instance of a subtask shares one prefix
and the scorer can run it once and reuse its KV cache. `limit` draws a seeded subset, stratified across subtasks,
so base and tuned models see the same examples.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunebench.bench.sources import read_records, resolve_source_path
from tunebench.bench.spec import TaskSpec
from tunebench.bench.templates import SpecError, render
from tunebench.errors import DataError
from tunebench.io import attach_aligned_labels


@dataclass(frozen=True)
class Instance:
    """One benchmark example. `prefix` (description + demonstrations) is shared by its subtask; `query` is its own.

    Perturbations (HELM robustness) replace `query` and keep `prefix`, so the KV-cache reuse still applies.
    """

    id: str
    prefix: str
    query: str
    choices: tuple[str, ...] = ()
    target: int | None = None
    references: tuple[str, ...] = ()
    target_delimiter: str = " "
    subtask: str | None = None
    fields: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    description: str = ""  # the rendered task description that starts `prefix`
    demos: tuple[tuple[str, str], ...] = ()  # each demonstration's rendered (query, answer), as in `prefix`
    fewshot_delimiter: str = "\n\n"

    @property
    def prompt(self) -> str:
        """The plain prompt (before any chat template)."""
        return self.prefix + self.query


@dataclass(frozen=True)
class PreparedTask:
    """A task ready to score: its spec, the output type resolved (never 'auto'), instances and metrics."""

    spec: TaskSpec
    output_type: str
    instances: list[Instance]
    shots: int
    metrics: list[str]


@dataclass
class _Subtask:
    value: str | None
    variables: dict[str, str]
    path: Path
    records: list[dict[str, Any]]
    demos: list[tuple[str, dict[str, Any]]]  # (where it came from, record)
    eval_rows: list[int]
    row_demos: dict[int, list[tuple[str, dict[str, Any]]]] | None = None  # lm-eval sampler: per example


def prepare_task(
    spec: TaskSpec, *, data_dir: Path | None, shots: int | None = None, limit: int | None = None, seed: int = 0
) -> PreparedTask:
    """Read the data, draw demonstrations, take the seeded subset and render every instance."""
    n_shots = 0 if spec.output_type == "perplexity" else spec.fewshot.n if shots is None else shots
    values: list[str | None] = list(spec.subtasks.values) if spec.subtasks else [None]
    subtasks = [_load_subtask(spec, value, data_dir, n_shots, seed) for value in values]
    output_type, target_set = _resolve_output_type(spec, subtasks)
    _apply_limit(spec, subtasks, limit, seed)
    instances = [inst for sub in subtasks for inst in _render_subtask(spec, sub, output_type, target_set)]
    return PreparedTask(spec, output_type, instances, n_shots, spec.default_metrics(output_type))


def _map_fields(spec: TaskSpec, record: dict[str, Any], path: Path, row: int) -> dict[str, Any]:
    out = dict(record)
    for name, column in spec.field_map.items():
        if column not in record:
            have = ", ".join(sorted(record))
            raise SpecError(
                f"{spec.origin}: field_map.{name}: column '{column}' is not in {path} record {row} (it has: {have})"
            )
        out[name] = record[column]
    return out


def _split_path(spec: TaskSpec, split: str, variables: dict[str, str], data_dir: Path | None) -> Path:
    raw = spec.source.splits[split]
    for key, value in variables.items():
        raw = raw.replace("{" + key + "}", value)
    where = f"{spec.origin}: source.splits.{split}"
    return resolve_source_path(raw, data_dir=data_dir, spec_origin=spec.origin, where=where)


def _read(spec: TaskSpec, path: Path, split: str, variables: dict[str, str], data_dir: Path | None,
          ) -> list[dict[str, Any]]:
    records = read_records(spec.source.format, path, records_key=spec.source.records_key,
                           documents=spec.source.documents)
    if spec.source.labels and split in spec.source.labels:
        raw = spec.source.labels[split]
        for key, value in variables.items():
            raw = raw.replace("{" + key + "}", value)
        labels = resolve_source_path(raw, data_dir=data_dir, spec_origin=spec.origin,
                                     where=f"{spec.origin}: source.labels.{split}")
        records = attach_aligned_labels(records, path, labels, spec.source.label_field)
    return [_map_fields(spec, r, path, i) for i, r in enumerate(records)]


def _load_subtask(spec: TaskSpec, value: str | None, data_dir: Path | None, n_shots: int, seed: int) -> _Subtask:
    variables = {spec.subtasks.param: value} if spec.subtasks and value is not None else {}
    path = _split_path(spec, spec.eval_split, variables, data_dir)
    records = _read(spec, path, spec.eval_split, variables, data_dir)
    if not records:
        raise DataError(f"{path}: no records to score ({spec.origin}: source.splits.{spec.eval_split})")
    eval_rows = list(range(len(records)))
    fewshot_split = spec.fewshot.split or spec.eval_split
    same_split = fewshot_split == spec.eval_split
    pool_path = path if same_split else _split_path(spec, fewshot_split, variables, data_dir)
    pool = records if same_split else _read(spec, pool_path, fewshot_split, variables, data_dir)
    if n_shots > len(pool) - (1 if same_split else 0):
        raise SpecError(
            f"{spec.origin}: fewshot.n: {n_shots} demonstrations asked but {pool_path} has {len(pool)} records; "
            "lower --shots or fewshot.n"
        )
    if spec.fewshot.sampler == "lm-eval":
        return _Subtask(value, variables, path, records, [], eval_rows,
                        _lm_eval_demos(eval_rows, pool, pool_path, n_shots, same_split))
    if spec.fewshot.sampler == "first":
        picked = list(range(n_shots))
    else:
        family = spec.name.split(":")[0]  # `mmlu:x` draws the same demonstrations as `mmlu` does for x
        picked = sorted(random.Random(f"{seed}:fewshot:{family}:{value}").sample(range(len(pool)), n_shots))
    if same_split:
        taken = set(picked)
        eval_rows = [i for i in eval_rows if i not in taken]
    demos = [(f"{pool_path} record {i} (a demonstration)", pool[i]) for i in picked]
    return _Subtask(value, variables, path, records, demos, eval_rows)


LM_EVAL_FEWSHOT_SEED = 1234  # lm_eval.api.task: fewshot_seed default


def _lm_eval_demos(eval_rows: list[int], pool: list[dict[str, Any]], pool_path: Path, n_shots: int,
                   same_split: bool) -> dict[int, list[tuple[str, dict[str, Any]]]]:
    """lm-evaluation-harness's default ContextSampler: one random.Random(1234) per task draws `n` demonstrations
    for each example in order (n + 1 from the eval split itself, the example then removed), so every example has
    its own demonstrations in lm-eval's order (lm_eval/api/samplers.py `get_context`, `sample`)."""
    rnd = random.Random(LM_EVAL_FEWSHOT_SEED)
    out = {}
    for row in eval_rows:
        if n_shots == 0:
            out[row] = []
            continue
        drawn = rnd.sample(range(len(pool)), n_shots + 1 if same_split else n_shots)
        kept = [i for i in drawn if not (same_split and pool[i] == pool[row])][:n_shots]
        out[row] = [(f"{pool_path} record {i} (a demonstration)", pool[i]) for i in kept]
    return out


def _resolve_output_type(spec: TaskSpec, subtasks: list[_Subtask]) -> tuple[str, list[str] | None]:
    """'choices: targets' gathers the distinct targets; 'auto' becomes multiple choice only for a closed set."""
    if spec.choices != "targets":
        return spec.output_type, None
    counts: Counter[str] = Counter()
    for sub in subtasks:
        for row in range(len(sub.records)):
            counts[_render_target(spec, sub, row)] += 1
    target_set = sorted(counts)
    closed = len(target_set) <= spec.closed_set_max and min(counts.values()) >= 2
    if spec.output_type == "auto":
        return ("multiple_choice" if closed else "generate"), (target_set if closed else None)
    return spec.output_type, target_set


def _render_target(spec: TaskSpec, sub: _Subtask, row: int) -> str:
    where = f"{sub.path} record {row}"
    return render(spec.target, {**sub.records[row], **sub.variables}, spec.origin, "target", where)


def _apply_limit(spec: TaskSpec, subtasks: list[_Subtask], limit: int | None, seed: int) -> None:
    """Keep a seeded subset of `limit` rows, split across subtasks in proportion to their sizes."""
    sizes = [len(s.eval_rows) for s in subtasks]
    total = sum(sizes)
    if limit is None or limit >= total:
        return
    exact = [limit * n / total for n in sizes]
    quotas = [int(x) for x in exact]
    by_remainder = sorted(range(len(sizes)), key=lambda i: (-(exact[i] - quotas[i]), i))
    for i in by_remainder[: limit - sum(quotas)]:
        quotas[i] += 1
    for sub, quota in zip(subtasks, quotas, strict=True):
        rng = random.Random(f"{seed}:limit:{spec.name}:{sub.value}")
        sub.eval_rows = sorted(rng.sample(sub.eval_rows, quota))


def _render_subtask(spec: TaskSpec, sub: _Subtask, output_type: str, target_set: list[str] | None) -> list[Instance]:
    origin = spec.origin
    description = render(spec.description, dict(sub.variables), origin, "description", f"subtask {sub.value}")

    def turn(where: str, demo: dict[str, Any]) -> tuple[str, str]:
        fields = {**demo, **sub.variables}
        query = render(spec.template, fields, origin, "template", where)
        if output_type == "multiple_choice":
            choices = _choices(spec, fields, target_set, where)
            answer = choices[_target_index(spec, fields, choices, where)]
        else:
            answer = render(spec.target, fields, origin, "target", where)
        return query, answer

    def join(turns: tuple[tuple[str, str], ...]) -> str:
        return description + "".join(q + spec.target_delimiter + a + spec.fewshot_delimiter for q, a in turns)

    demos = tuple(turn(where, demo) for where, demo in sub.demos)
    prefix = join(demos)
    if spec.id_field:
        from tunebench.data.sources import check_unique_ids

        present = [r for r in sub.records if spec.id_field in r]
        if len(present) == len(sub.records):
            check_unique_ids([str(r[spec.id_field]) for r in sub.records], sub.path, f"id_field '{spec.id_field}'")
    instances = []
    for row in sub.eval_rows:
        if sub.row_demos is not None:
            demos = tuple(turn(where, demo) for where, demo in sub.row_demos[row])
            prefix = join(demos)
        record = sub.records[row]
        fields = {**record, **sub.variables}
        where = f"{sub.path} record {row}"
        raw_id = str(record[spec.id_field]) if spec.id_field and spec.id_field in record else str(row)
        inst_id = f"{sub.value}/{raw_id}" if sub.value is not None else raw_id
        query = render(spec.template, fields, origin, "template", where)
        if output_type == "perplexity":
            if not query.strip():
                raise DataError(f"{where}: the rendered text is empty ({origin}: template); nothing to score")
            instances.append(Instance(id=inst_id, prefix="", query=query, subtask=sub.value, fields=fields))
            continue
        common = dict(id=inst_id, prefix=prefix, query=query, target_delimiter=spec.target_delimiter,
                      subtask=sub.value, fields=fields, description=description, demos=demos,
                      fewshot_delimiter=spec.fewshot_delimiter)
        if output_type == "multiple_choice":
            choices = _choices(spec, fields, target_set, where)
            target = _target_index(spec, fields, choices, where)
            instances.append(Instance(**common, choices=tuple(choices), target=target, references=(choices[target],)))
        else:
            refs = spec.references or [spec.target]
            key = "references" if spec.references else "target"
            references = tuple(render(r, fields, origin, key, where) for r in refs)
            instances.append(Instance(**common, references=references))
    return instances


def _choices(spec: TaskSpec, fields: dict[str, Any], target_set: list[str] | None, where: str) -> list[str]:
    if target_set is not None:
        return target_set
    if spec.choices_from is not None:
        import ast

        text = render(spec.choices_from, fields, spec.origin, "choices_from", where)
        try:
            value = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            value = None
        if not isinstance(value, list | tuple) or len(value) < 2:
            raise SpecError(f"{spec.origin}: choices_from: renders {text[:80]!r} for {where}, not a list of at "
                            "least two choices")
        return [str(v) for v in value]
    assert isinstance(spec.choices, list)
    return [render(c, fields, spec.origin, f"choices.{i}", where) for i, c in enumerate(spec.choices)]


def _target_index(spec: TaskSpec, fields: dict[str, Any], choices: list[str], where: str) -> int:
    """The gold choice: a rendered index, or a rendered text that must be one of the choices."""
    value = render(spec.target, fields, spec.origin, "target", where).strip()
    stripped = [c.strip() for c in choices]
    kind = spec.target_type
    if kind == "auto":  # lm-eval's doc_to_target: a choice text, else an index into the choices
        kind = "text" if value in stripped or not value.lstrip("-").isdigit() else "index"
    if kind == "index":
        if not value.lstrip("-").isdigit() or not 0 <= int(value) < len(choices):
            raise SpecError(
                f"{spec.origin}: target: '{value}' in {where} is not a choice index 0..{len(choices) - 1}; "
                "fix target or target_type"
            )
        return int(value)
    if value not in stripped:
        raise SpecError(
            f"{spec.origin}: target: '{value}' in {where} is not one of the choices {choices}; "
            "fix choices or target (or set target_type: index)"
        )
    return stripped.index(value)
