"""lm-evaluation-harness task YAML files over local data, translated into tunebench task specs.

The common subset of lm-eval's task format (lm_eval/api/task.py `TaskConfig`): `dataset_path: json | csv` with
`dataset_kwargs.data_files`, `test_split` / `validation_split` / `fewshot_split` / `training_split`,
`doc_to_text`, `doc_to_choice`, `doc_to_target`, `target_delimiter`, `fewshot_delimiter`, `num_fewshot`,
`description`, `output_type` (multiple_choice, generate_until, loglikelihood_rolling), `metric_list` with acc /
acc_norm / exact_match / perplexities, `generation_kwargs` (until, max_gen_toks, greedy settings),
`fewshot_config.sampler` (first_n, default; without it lm-eval's default sampler) and `metadata.version`. Anything else is refused by name, since a
silently ignored key would change what the score means.
"""

from __future__ import annotations

from typing import Any

from tunebench.bench.templates import SpecError

SUPPORTED_KEYS = {
    "task", "dataset_path", "dataset_kwargs", "test_split", "validation_split", "fewshot_split", "training_split",
    "doc_to_text", "doc_to_choice", "doc_to_target", "target_delimiter", "fewshot_delimiter", "num_fewshot",
    "description", "output_type", "metric_list", "generation_kwargs", "fewshot_config", "metadata", "tag",
}
OUTPUT_TYPES = {"multiple_choice": "multiple_choice", "generate_until": "generate",
                "loglikelihood_rolling": "perplexity"}
METRICS = {"acc", "acc_norm", "exact_match", "word_perplexity", "byte_perplexity", "bits_per_byte"}
METRIC_KEYS = {"metric", "aggregation", "higher_is_better"}
GENERATION_KEYS = {"until", "max_gen_toks", "do_sample", "temperature"}
SAMPLERS = {"first_n": "first", "default": "lm-eval"}


def is_lmeval_task(data: dict[str, Any]) -> bool:
    """An lm-eval task file names itself with `task:`; a tunebench spec with `name:`."""
    return "task" in data and "name" not in data


def _fail(origin: str, key: str, message: str) -> SpecError:
    return SpecError(f"{origin}: {key}: {message}")


def _as_template(value: Any, origin: str, key: str) -> str:
    """lm-eval's doc_to_* forms: a Jinja2 template, or a bare field name (its value)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return "{{ " + str(value) + " }}"
    if not isinstance(value, str):
        raise _fail(origin, key, f"expected a Jinja2 template or a field name, got {type(value).__name__}")
    return value if ("{{" in value or "{%" in value) else "{{ " + value + " }}"


def _data_files(raw: Any, origin: str) -> dict[str, str]:
    """dataset_kwargs.data_files as split -> path (a single path is the 'train' split, as in `datasets`)."""
    key = "dataset_kwargs.data_files"
    if isinstance(raw, str):
        return {"train": raw}
    if isinstance(raw, list) and len(raw) == 1 and isinstance(raw[0], str):
        return {"train": raw[0]}
    if isinstance(raw, dict):
        out = {}
        for split, value in raw.items():
            if isinstance(value, list) and len(value) == 1:
                value = value[0]
            if not isinstance(value, str):
                raise _fail(origin, f"{key}.{split}", "expected one file path per split")
            out[str(split)] = value
        if out:
            return out
    raise _fail(origin, key, "expected a file path or a mapping split -> file path")


def translate(data: dict[str, Any], origin: str) -> dict[str, Any]:
    """A tunebench spec dict from an lm-eval task mapping; SpecError (exit 2) names any unsupported key."""
    for key in data:
        if key not in SUPPORTED_KEYS:
            raise _fail(origin, key, "this lm-eval key is not supported by tunebench (supported: "
                        f"{', '.join(sorted(SUPPORTED_KEYS))})")
    kind = data.get("dataset_path")
    if kind not in ("json", "csv"):
        raise _fail(origin, "dataset_path", f"'{kind}' is not local data; use dataset_path: json or csv with "
                    "dataset_kwargs.data_files")
    kwargs = data.get("dataset_kwargs") or {}
    if not isinstance(kwargs, dict) or "data_files" not in kwargs:
        raise _fail(origin, "dataset_kwargs", "needs data_files naming the local files")
    for key in kwargs:
        if key != "data_files":
            raise _fail(origin, f"dataset_kwargs.{key}", "not supported (only data_files)")
    files = _data_files(kwargs["data_files"], origin)
    eval_split = data.get("test_split") or data.get("validation_split")
    if eval_split is None:
        raise _fail(origin, "test_split", "name the split to score (test_split or validation_split)")
    for key in ("test_split", "validation_split", "fewshot_split", "training_split"):
        if data.get(key) is not None and data[key] not in files:
            raise _fail(origin, key, f"'{data[key]}' is not a split of dataset_kwargs.data_files ({sorted(files)})")
    fmt = "csv" if kind == "csv" else ("jsonl" if files[eval_split].endswith((".jsonl", ".ndjson")) else "json")
    output = data.get("output_type", "generate_until")
    if output not in OUTPUT_TYPES:
        raise _fail(origin, "output_type", f"'{output}' is not supported (use one of {sorted(OUTPUT_TYPES)})")
    spec: dict[str, Any] = {
        "name": str(data["task"]),
        "version": (data.get("metadata") or {}).get("version", 0) if isinstance(data.get("metadata"), dict) else 0,
        "source": {"format": fmt, "splits": dict(files)},
        "eval_split": eval_split,
        "output_type": OUTPUT_TYPES[output],
        "description": data.get("description", ""),
    }
    if output == "loglikelihood_rolling":  # lm-eval scores doc_to_target's text
        spec["template"] = _as_template(data.get("doc_to_target", ""), origin, "doc_to_target")
    else:
        spec["template"] = _as_template(data.get("doc_to_text", ""), origin, "doc_to_text")
        if "doc_to_target" not in data:
            raise _fail(origin, "doc_to_target", "needed to score the task")
        target = data["doc_to_target"]
        spec["target"] = _as_template(target, origin, "doc_to_target")
        spec["target_type"] = "index" if isinstance(target, int) else "auto"
        if output == "generate_until":
            spec["target_type"] = "text"
    choices = data.get("doc_to_choice")
    if output == "multiple_choice":
        if isinstance(choices, list):
            spec["choices"] = [str(c) for c in choices]
        elif isinstance(choices, str):
            spec["choices_from"] = _as_template(choices, origin, "doc_to_choice")
        else:
            raise _fail(origin, "doc_to_choice", "multiple_choice needs a list of choices or a template/field")
    elif choices is not None:
        raise _fail(origin, "doc_to_choice", f"only used by multiple_choice, not {output}")
    for key in ("target_delimiter", "fewshot_delimiter"):
        if key in data:
            spec[key] = str(data[key])
    # lm-eval's default sampler when fewshot_config is absent (lm_eval/api/task.py: `self.fewshot_cfg.sampler if
    # self.config.fewshot_config else "default"`), not tunebench's own default `first`
    fewshot: dict[str, Any] = {"n": int(data.get("num_fewshot") or 0), "sampler": SAMPLERS["default"]}
    pool = data.get("fewshot_split") or data.get("training_split")
    if pool is None and data.get("validation_split") and data.get("validation_split") != eval_split:
        pool = data["validation_split"]
    if pool is not None:
        fewshot["split"] = pool
    sampler_cfg = data.get("fewshot_config") or {}
    for key, value in sampler_cfg.items():
        if key != "sampler" or value not in SAMPLERS:
            raise _fail(origin, f"fewshot_config.{key}", f"only sampler: {' or '.join(SAMPLERS)} is supported")
        fewshot["sampler"] = SAMPLERS[value]
    spec["fewshot"] = fewshot
    metrics = []
    for i, item in enumerate(data.get("metric_list") or []):
        entry = item if isinstance(item, dict) else {"metric": item}
        for key in entry:
            if key not in METRIC_KEYS:
                raise _fail(origin, f"metric_list.{i}.{key}", "not supported (metric, aggregation, higher_is_better)")
        if entry.get("metric") not in METRICS:
            raise _fail(origin, f"metric_list.{i}.metric", f"'{entry.get('metric')}' is not supported "
                        f"({', '.join(sorted(METRICS))})")
        metrics.append(entry["metric"])
    if metrics:
        spec["metrics"] = metrics
    gen = data.get("generation_kwargs") or {}
    if gen:
        for key in gen:
            if key not in GENERATION_KEYS:
                raise _fail(origin, f"generation_kwargs.{key}", "not supported (until, max_gen_toks, greedy only)")
        if gen.get("do_sample") or float(gen.get("temperature", 0) or 0) > 0:
            raise _fail(origin, "generation_kwargs", "sampling is not supported; tunebench decodes greedily")
        spec["generation"] = {k: v for k, v in (("stop", gen.get("until")), ("max_new_tokens", gen.get("max_gen_toks")))
                              if v is not None}
    return spec
