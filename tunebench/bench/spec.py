"""Benchmark task specs: one YAML file per task, validated by pydantic (lm-evaluation-harness's idea).

A user adds a benchmark with a YAML file and no code. Every error names the spec file and the key path. Built-in
specs live in `tunebench/bench/tasks/`; `resolve_tasks` turns CLI names (`mmlu`, `mmlu:anatomy`, `bbh:navigate`,
`path/to/task.yaml`, `path/to/bbh_style.json`) into specs.
"""

from __future__ import annotations

import re
import textwrap
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from tunebench.bench.lmeval_yaml import is_lmeval_task, translate
from tunebench.bench.perplexity import PERPLEXITY_METRICS
from tunebench.bench.templates import SpecError, check_syntax
from tunebench.errors import ConfigError, DataError, did_you_mean
from tunebench.evaluate.metrics import METRICS, MetricSettings, unknown_name_message
from tunebench.evaluate.metrics.base import check_tokenizers
from tunebench.io import read_yaml_mapping

__all__ = ["SpecError", "TaskSpec", "load_spec", "resolve_tasks"]

MC_DEFAULT_METRICS = ("acc", "acc_norm")
GEN_DEFAULT_METRICS = ("exact_match",)
PPL_METRICS = tuple(PERPLEXITY_METRICS)  # "kl" appears only where a base distribution was there to compare
NAME_PATTERN = r"^[A-Za-z0-9_.:-]+$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceSpec(_Strict):
    format: Literal["jsonl", "json", "csv", "tsv", "label_text", "text"] = Field(
        description="jsonl/json/csv/tsv records, label_text lines '<label> <text>' (SST-2), or text: a plain "
        "text file cut into documents (field 'text') as `documents` says."
    )
    splits: dict[str, str] = Field(
        description="Split name -> file path, relative to the data dir (or the spec's folder); "
        "'{param}' is replaced by the subtask value."
    )
    records_key: str | None = Field(None, description="json: the key holding the list of records, e.g. examples.")
    labels: dict[str, str] | None = Field(
        None, description="Split name -> a file of one label per line, aligned with the split's records (PIQA's "
        "valid-labels.lst); each record gets it as `label_field`."
    )
    label_field: str = Field("label", description="labels: the field the aligned label is stored in.")
    documents: Literal["file", "lines", "paragraphs", "wikitext_articles"] = Field(
        "file", description="text: one document per file, per non-blank line, per blank-line-separated paragraph, "
        "or per WikiText article (a new one at each ' = Heading = ' line, as lm-eval's wikitext)."
    )

    @field_validator("splits")
    @classmethod
    def _some_split(cls, value: dict[str, str]) -> dict[str, str]:
        if not value:
            raise ValueError("name at least one split, e.g. {test: mydata/test.jsonl}")
        return value

    @model_validator(mode="after")
    def _labels_fit(self) -> SourceSpec:
        for split in self.labels or {}:
            if split not in self.splits:
                raise ValueError(f"labels: '{split}' is not one of splits {sorted(self.splits)}")
        return self


class SubtaskSpec(_Strict):
    param: str = Field(description="Variable name used in source paths ({subject}) and templates.")
    values: list[str] = Field(min_length=1, description="Subtasks; results are micro-averaged over all of them.")


class FewshotSpec(_Strict):
    n: int = Field(0, ge=0, description="Demonstrations before each example (--shots overrides).")
    split: str | None = Field(
        None, description="Split the demonstrations come from (None: the eval split, minus the demonstrations)."
    )
    sampler: Literal["first", "random", "lm-eval"] = Field(
        "first", description="first: the first n records; random: one seeded sample per subtask; lm-eval: "
        "lm-evaluation-harness's default sampler (random.Random(1234) drawing n per example in order, the example "
        "itself excluded), so prompts equal lm-eval's."
    )


class RegexFilter(_Strict):
    regex: str = Field(description="Pattern searched in the output; the first match is kept.")
    group: int = Field(0, ge=0, description="Capture group kept (0: the whole match).")
    fallback: str = Field("[invalid]", description="Answer used when the pattern does not match.")

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"invalid regular expression ({exc})") from None
        return value


Filter = Literal["strip", "first_line", "lower"] | RegexFilter


class PerplexitySpec(_Strict):
    max_length: int | None = Field(
        None, gt=1, description="Window size in tokens (None: the model's context, as lm-eval's max_length)."
    )
    context_len: int = Field(
        1, ge=1, description="Tokens of context each later window keeps before its scored tokens (lm-eval: 1)."
    )
    count_field: str | None = Field(
        None, description="Field whose text words and bytes are counted in (None: the rendered text); lm-eval "
        "counts WikiText's words in the page before detokenizing."
    )


class GenerateSpec(_Strict):
    max_new_tokens: int = Field(32, gt=0, description="Cap on generated tokens.")
    stop: list[str] = Field(default_factory=lambda: ["\n\n"], description="Stop strings, cut from the output.")


class TaskSpec(_Strict):
    """One benchmark: where its data is, how an example becomes a prompt, and how an answer is scored."""

    name: str = Field(pattern=NAME_PATTERN, description="Task name used in results and sample file names.")
    version: int | str = Field(description="Bump when prompts or scoring change: scores compare only within one.")
    description: str = Field("", description="Jinja2 text put once before the demonstrations.")
    source: SourceSpec
    eval_split: str = Field("test", description="The split that is scored.")
    subtasks: SubtaskSpec | None = Field(None, description="A family of files run as one task (MMLU subjects).")
    fewshot: FewshotSpec = Field(default_factory=FewshotSpec)
    field_map: dict[str, str] = Field(default_factory=dict, description="Template field -> source column.")
    id_field: str | None = Field(None, description="Column holding a stable example id (None: row index).")
    template: str = Field(description="Jinja2 prompt of one example (sandboxed; fields are the record's columns).")
    output_type: Literal["multiple_choice", "generate", "auto", "perplexity"] = Field(
        description="multiple_choice: log-likelihood of each choice; generate: decode and compare; auto: "
        "multiple_choice when the targets form a closed set (needs choices: targets), else generate; perplexity: "
        "rolling log-likelihood of the rendered text (lm-eval's loglikelihood_rolling)."
    )
    choices: list[str] | Literal["targets"] | None = Field(
        None, description="Jinja2 text of each choice, or 'targets': the distinct targets of the eval split."
    )
    choices_from: str | None = Field(
        None, description="Jinja2 rendering a list literal of the choices per record (lm-eval's doc_to_choice), "
        "e.g. '{{ [sol1, sol2] }}' or '{{ options }}'."
    )
    target: str | None = Field(
        None, description="Jinja2 gold answer: a choice text or index (target_type), or the output (not perplexity)."
    )
    target_type: Literal["text", "index", "auto"] = Field(
        "text", description="Does target render a choice text or index? auto: a choice text, else an index."
    )
    references: list[str] | None = Field(None, description="generate: Jinja2 gold outputs (None: [target]).")
    target_delimiter: str = Field(" ", description="Between the prompt and the answer (choice or demonstration).")
    fewshot_delimiter: str = Field("\n\n", description="Between demonstrations, and before the example.")
    metrics: list[str] | None = Field(
        None, description="Metrics reported, from the metric registry (None: acc, acc_norm / exact_match)."
    )
    language: str | None = Field(
        None, description="Target language (ISO 639-1); picks BLEU/ROUGE tokenizers as sacreBLEU does."
    )
    bleu_tokenize: str | None = Field(None, description="sacreBLEU tokenizer for bleu (None: from language, 13a).")
    rouge_tokenize: str | None = Field(
        None, description="ROUGE tokenizer: rouge_score (a-z0-9) or unicode (None: from language)."
    )
    filters: list[Filter] = Field(default_factory=list, description="Answer extraction applied to generations.")
    generation: GenerateSpec = Field(default_factory=GenerateSpec)
    perplexity: PerplexitySpec = Field(default_factory=PerplexitySpec)
    closed_set_max: int = Field(10, gt=1, description="auto: at most this many distinct targets for MC.")

    _origin: str = PrivateAttr("<spec>")

    @model_validator(mode="after")
    def _consistent(self) -> TaskSpec:
        if self.eval_split not in self.source.splits:
            raise ValueError(f"eval_split: '{self.eval_split}' is not one of source.splits {sorted(self.source.splits)}")
        if self.fewshot.split is not None and self.fewshot.split not in self.source.splits:
            raise ValueError(f"fewshot.split: '{self.fewshot.split}' is not one of source.splits")
        if self.output_type == "multiple_choice" and not self.choices and not self.choices_from:
            raise ValueError("choices: output_type multiple_choice needs a list of choices (or choices_from)")
        if self.choices is not None and self.choices_from is not None:
            raise ValueError("choices_from: give choices or choices_from, not both")
        if self.output_type == "auto" and self.choices != "targets":
            raise ValueError("choices: output_type auto needs 'choices: targets'")
        if self.output_type == "generate" and self.choices is not None:
            raise ValueError("choices: output_type generate takes no choices; remove the key")
        if self.output_type == "multiple_choice" and self.filters:
            raise ValueError("filters: apply to generated answers; multiple_choice takes none")
        if self.output_type == "perplexity":
            if self.choices is not None or self.target is not None or self.filters:
                raise ValueError("output_type perplexity scores the rendered template only; remove choices, "
                                 "target and filters")
            if self.fewshot.n:
                raise ValueError("fewshot.n: perplexity tasks take no demonstrations")
        elif self.target is None:
            raise ValueError(f"target: output_type {self.output_type} needs a target")
        if self.source.format == "text" and self.output_type != "perplexity":
            raise ValueError("source.format: text documents are scored by output_type perplexity only")
        mc, gen = metrics_for("multiple_choice"), metrics_for("generate")
        allowed = {"multiple_choice": mc, "generate": gen, "auto": mc + gen, "perplexity": list(PPL_METRICS)}
        for metric in self.metrics or []:
            if metric not in allowed["auto"] + allowed["perplexity"]:
                raise ValueError(unknown_name_message("metrics", metric, allowed[self.output_type]))
            if metric not in allowed[self.output_type]:
                raise ValueError(f"metrics: '{metric}' is not one of {allowed[self.output_type]}")
        check_tokenizers(self.bleu_tokenize, self.rouge_tokenize)
        return self

    def metric_settings(self) -> MetricSettings:
        """Settings of this task's text metrics (tokenizers, target language)."""
        return MetricSettings(bleu_tokenize=self.bleu_tokenize, rouge_tokenize=self.rouge_tokenize,
                              language=self.language)

    @property
    def origin(self) -> str:
        """The file this spec came from, for error messages."""
        return self._origin

    def with_origin(self, origin: str) -> TaskSpec:
        self._origin = origin
        return self

    def derive(self, **update: Any) -> TaskSpec:
        """A validated copy with some keys replaced (keeps the origin for error messages)."""
        data = self.model_dump()
        data.update(update)
        return spec_from_dict(data, self.origin)

    def default_metrics(self, output_type: str) -> list[str]:
        """The metrics reported for the resolved output type ('auto' may list metrics of both kinds)."""
        allowed = list(PPL_METRICS) if output_type == "perplexity" else metrics_for(output_type)
        chosen = [m for m in self.metrics or [] if m in allowed]
        default = {"multiple_choice": MC_DEFAULT_METRICS, "perplexity": PPL_METRICS}.get(output_type, GEN_DEFAULT_METRICS)
        return chosen or list(default)

    def templates(self) -> dict[str, str]:
        """Every Jinja2 template of the spec, keyed by its key path (for error messages)."""
        out = {"description": self.description, "template": self.template}
        if self.target is not None:
            out["target"] = self.target
        if isinstance(self.choices, list):
            out.update({f"choices.{i}": c for i, c in enumerate(self.choices)})
        if self.choices_from is not None:
            out["choices_from"] = self.choices_from
        out.update({f"references.{i}": r for i, r in enumerate(self.references or [])})
        return out


def metrics_for(output_type: str) -> list[str]:
    """Registry metrics a task of this output type can report: multiple choice scores a chosen option; a
    generation task needs a value per sample (samples_<task>.jsonl)."""
    inputs = "choice" if output_type == "multiple_choice" else "text"
    return [n for n, cls in METRICS.items() if cls.inputs == inputs and cls.has_per_example]


def _format_errors(err: ValidationError, origin: str) -> str:
    lines = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"])
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"].removeprefix("Value error, ")
        lines.append(f"{origin}: {path}: {msg}" if path else f"{origin}: {msg}")  # model checks name their key
    return "\n".join(lines)


def spec_from_dict(data: dict[str, Any], origin: str) -> TaskSpec:
    try:
        spec = TaskSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(_format_errors(err, origin)) from None
    for key, text in spec.templates().items():
        check_syntax(text, origin, key)
    return spec.with_origin(origin)


def load_spec(path: str | Path) -> TaskSpec:
    """Read and validate a task spec YAML file: tunebench's format, or an lm-evaluation-harness task file over
    local data (translated by `lmeval_yaml`; unsupported keys raise SpecError)."""
    data = read_yaml_mapping(path, SpecError, "the task spec")
    if is_lmeval_task(data):
        data = translate(data, str(path))
    return spec_from_dict(data, str(path))


def builtin_tasks() -> dict[str, Path]:
    """Built-in task names and their spec files."""
    folder = resources.files("tunebench") / "bench" / "tasks"
    return {Path(str(p)).stem: Path(str(p)) for p in folder.iterdir() if str(p).endswith(".yaml")}


def task_names() -> list[str]:
    """Task names a config may give (besides paths to .yaml/.json specs): the built-ins, with `name:subtask`
    and `bbh:<task>` forms starting with one of these."""
    return sorted(builtin_tasks())


def bbh_spec(path: Path, name: str) -> TaskSpec:
    """A BIG-Bench Hard style JSON file ({"examples": [{"input", "target"}]}) as a task, from the bbh template."""
    template = load_spec(builtin_tasks()["bbh"])
    return template.derive(name=name, source={"format": "json", "splits": {"test": str(path)}, "records_key": "examples"})


def resolve_tasks(names: list[str], data_dir: Path | None) -> list[TaskSpec]:
    """CLI task names to specs: built-in names, `name:subtask`, `bbh`, `bbh:<task>`, or paths to .yaml/.json."""
    builtin = builtin_tasks()
    specs: list[TaskSpec] = []
    for raw in names:
        name = raw.strip()
        base, _, sub = name.partition(":")
        if name.endswith((".yaml", ".yml")):
            specs.append(load_spec(name))
        elif name.endswith(".json"):
            path = Path(name)
            if not path.is_file():
                raise DataError(f"{path}: benchmark data file not found; check the --tasks path")
            specs.append(bbh_spec(path.resolve(), f"bbh:{path.stem}"))
        elif base == "bbh":
            specs.extend(_bbh_tasks(sub, data_dir))
        elif base in builtin and base != "bbh":
            spec = load_spec(builtin[base])
            specs.append(_select_subtask(spec, sub) if sub else spec)
        else:
            known = sorted(set(builtin) - {"bbh"})
            raise ConfigError(f"--tasks: unknown task '{name}'{did_you_mean(base, known)}; known tasks: "
                              f"{', '.join(known + ['bbh:<task>'])} (`tunebench bench --list`), or a path to a "
                              ".yaml spec")
    return specs


def check_model_family(specs: list[TaskSpec], family: str, model: str, key: str = "bench.tasks") -> None:
    """Refuse, before anything is scored, a perplexity task asked of an encoder-decoder model.

    specs: resolved task specs; family: `models.load.detect_family`'s "causal" or "seq2seq"; model: the model
    reference named in the error; key: the option or config key that listed the tasks (`bench.tasks`, `--tasks`).
    Perplexity tasks score a document's rolling log-likelihood under a decoder-only model (bench/perplexity.py);
    tunebench has no encoder-decoder reading of them yet, so a seq2seq model would fail only after training and
    evaluation. Raises ConfigError (exit 2) naming `key`, the tasks and what to keep instead.
    """
    if family == "causal":
        return
    ppl = [s.name for s in specs if s.output_type == "perplexity"]
    if not ppl:
        return
    rest = [s.name for s in specs if s.output_type != "perplexity"]
    keep = (f"keep only {', '.join(rest)} in {key}" if rest
            else f"name other tasks in {key}" + (" or set bench.enabled: false" if key == "bench.tasks" else ""))
    raise ConfigError(f"{key}: {', '.join(ppl)} {'is a perplexity task' if len(ppl) == 1 else 'are perplexity tasks'}"
                      f", scored on decoder-only models only, and '{model}' is an encoder-decoder (seq2seq) model; "
                      f"{keep}")


def _bbh_tasks(sub: str, data_dir: Path | None) -> list[TaskSpec]:
    if data_dir is None:
        raise ConfigError("bbh tasks read their files from the data directory: set --data-dir or $TUNEBENCH_DATA_DIR")
    folder = data_dir / "bbh"
    if sub:
        path = folder / f"{sub}.json"
        if not path.is_file():
            known = sorted(f.stem for f in folder.glob("*.json"))
            available = f"{did_you_mean(sub, known)}; available: {', '.join(known)}" if known else ""
            raise DataError(f"{path}: benchmark data file not found{available} (put the BBH task file there or fix "
                            "the name)")
        return [bbh_spec(Path("bbh") / path.name, f"bbh:{sub}")]
    files = sorted(folder.glob("*.json"))
    if not files:
        raise DataError(f"{folder}: no BBH task files (*.json) found; put them there or name a file")
    return [bbh_spec(Path("bbh") / f.name, f"bbh:{f.stem}") for f in files]


def _select_subtask(spec: TaskSpec, sub: str) -> TaskSpec:
    if spec.subtasks is None:
        raise ConfigError(f"--tasks: '{spec.name}' has no subtasks, so '{spec.name}:{sub}' names nothing")
    if sub not in spec.subtasks.values:
        raise ConfigError(f"--tasks: '{sub}' is not a {spec.name} subtask{did_you_mean(sub, spec.subtasks.values)}; "
                          f"see subtasks.values in {spec.origin}")
    return spec.derive(name=f"{spec.name}:{sub}", subtasks={"param": spec.subtasks.param, "values": [sub]})


def list_tasks(data_dir: Path | None) -> list[tuple[str, str]]:
    """(name, one-line description) of every task `--tasks` accepts: built-ins, then the BBH files found.

    The description is the start of the built-in spec file's leading comment, with its output type and shots.
    """
    rows = []
    for name, path in sorted(builtin_tasks().items()):
        if name == "bbh":
            continue
        spec = load_spec(path)
        lines = [line[1:].strip() for line in path.read_text(encoding="utf-8").splitlines() if line.startswith("#")]
        about = textwrap.shorten(" ".join(lines), width=72, placeholder=" …")
        subtasks = f", {len(spec.subtasks.values)} subtasks ({name}:<subtask>)" if spec.subtasks else ""
        rows.append((name, f"{about} [{spec.output_type}, {spec.fewshot.n}-shot{subtasks}]"))
    folder = data_dir / "bbh" if data_dir is not None else None
    files = sorted(folder.glob("*.json")) if folder is not None and folder.is_dir() else []
    for f in files:
        rows.append((f"bbh:{f.stem}", f"BIG-Bench Hard task from {f} [generate]"))
    if not files:
        rows.append(("bbh:<task>", "BIG-Bench Hard tasks: <data dir>/bbh/<task>.json (set --data-dir to list them)"))
    return rows


