"""Prompt templates: named built-ins for common instruction tasks, and user Jinja2 templates.

Templates come from config files that people share, so they render in Jinja2's immutable sandbox (no dunder
attributes, no mutation of the data, no file access: the environment has no loader) with StrictUndefined, so a
field the data lacks is an error naming the template, the field and the record instead of an empty string.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from jinja2 import StrictUndefined, TemplateError, TemplateSyntaxError, UndefinedError, meta
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from tunebench.config import TemplateConfig
from tunebench.data.example import Example
from tunebench.data.ner import CONLL2003_TYPES, format_entity_list, ner_reference, tag_problem
from tunebench.data.sources import Record
from tunebench.errors import ConfigError, DataError, did_you_mean


@dataclass(frozen=True)
class BuiltinTemplate:
    """Several phrasings of one prompt (FLAN-style instruction variety), one completion, and how to score it.

    `reference`: a template for the reference an example is scored against when it is not the completion (NER
    scores against the sentence's tokens and gold tags); `metrics`: the metrics the task's field reports;
    `max_new_tokens`: a generation length that fits the completions.
    """

    description: str
    prompts: tuple[str, ...]
    completion: str
    metrics: tuple[str, ...] = ()
    max_new_tokens: int | None = None
    reference: str | None = None


LABEL_METRICS = ("accuracy", "macro_f1")
"""How a task whose completion is a class label is scored (tunebench.evaluate.verdicts adds the per-label breakdown
and the majority-label baseline)."""
LABEL_MAX_NEW_TOKENS = 8
"""Generation length of a label completion: a word or two."""
_LABEL_COMPLETION = re.compile(r"\s*\{\{-?\s*label\s*-?\}\}\s*")


def completes_with_label(completion: str | None) -> bool:
    """Whether a custom completion template is just the `label` field (`{{ label }}`), the field every built-in
    classification template completes with: such a task is scored as a classification task."""
    return completion is not None and _LABEL_COMPLETION.fullmatch(completion) is not None


EMOTION_LABELS = ("sadness", "joy", "love", "anger", "fear", "surprise")
_EMOTION_OPTIONS = "OPTIONS:\n- " + "\n- ".join(EMOTION_LABELS)
_ENTITY_TYPES = ", ".join(CONLL2003_TYPES.values())


BUILTIN_TEMPLATES: dict[str, BuiltinTemplate] = {
    "dialogsum": BuiltinTemplate(
        "Dialogue summarization: dialogue -> summary.",
        (
            "Summarize the following dialogue.\n\n{{ dialogue }}",
            "Dialogue:\n{{ dialogue }}\n\nWhat is a short summary of this dialogue?",
            "{{ dialogue }}\n\nBriefly, what was this conversation about?",
            "Write a one- or two-sentence summary of this conversation.\n\n{{ dialogue }}",
            "Read the conversation below and summarize what happened.\n\n{{ dialogue }}",
            "{{ dialogue }}\n\nSummarize the dialogue above in a few sentences.",
        ),
        "{{ summary }}",
        metrics=("rouge", "bleu"),
        max_new_tokens=96,
    ),
    "sentiment": BuiltinTemplate(
        "Sentiment classification: text -> label (e.g. positive / negative).",
        (
            "What is the sentiment of the following text?\n\n{{ text }}",
            "{{ text }}\n\nIs the sentiment of this text positive or negative?",
            "Classify the sentiment of this review.\n\nReview: {{ text }}",
        ),
        "{{ label }}",
        metrics=LABEL_METRICS,
        max_new_tokens=LABEL_MAX_NEW_TOKENS,
    ),
    "nli": BuiltinTemplate(
        "Natural language inference: premise, hypothesis -> label (entailment / neutral / contradiction).",
        (
            "Premise: {{ premise }}\nHypothesis: {{ hypothesis }}\n\n"
            "Does the premise entail the hypothesis, contradict it, or neither?",
            "{{ premise }}\n\nBased on the text above, is it true that \"{{ hypothesis }}\"?",
            "Read the premise and decide whether the hypothesis follows from it.\n\n"
            "Premise: {{ premise }}\nHypothesis: {{ hypothesis }}",
        ),
        "{{ label }}",
        metrics=LABEL_METRICS,
        max_new_tokens=LABEL_MAX_NEW_TOKENS,
    ),
    "translation": BuiltinTemplate(
        "Translation: source, target_lang -> target.",
        (
            "Translate the following text into {{ target_lang }}.\n\n{{ source }}",
            "{{ source }}\n\nTranslate this into {{ target_lang }}.",
            "How would you say this in {{ target_lang }}?\n\n{{ source }}",
        ),
        "{{ target }}",
        metrics=("bleu", "chrf"),
        max_new_tokens=96,
    ),
    "qa_extractive": BuiltinTemplate(
        "Extractive question answering: context, question -> answer (a span of the context).",
        (
            "Read the passage and answer the question with words copied from the passage.\n\n"
            "Passage: {{ context }}\n\nQuestion: {{ question }}",
            "{{ context }}\n\nUsing a phrase from the text above, answer: {{ question }}",
            "Question: {{ question }}\n\nFind the answer in this passage:\n{{ context }}",
        ),
        "{{ answer }}",
        metrics=("exact_match",),
        max_new_tokens=32,
    ),
    "qa_abstractive": BuiltinTemplate(
        "Abstractive question answering: context, question -> answer (free text).",
        (
            "Answer the question about the passage in your own words.\n\n"
            "Passage: {{ context }}\n\nQuestion: {{ question }}",
            "{{ context }}\n\n{{ question }}",
            "Question: {{ question }}\n\nUse this background to answer:\n{{ context }}",
        ),
        "{{ answer }}",
        metrics=("rougeL",),
        max_new_tokens=96,
    ),
    "ner": BuiltinTemplate(
        "Named entity recognition: text -> entities (a string, or a list rendered one per line).",
        (
            "List the named entities (people, organizations, locations, other) in this text, one per line "
            "as 'type: entity'.\n\n{{ text }}",
            "{{ text }}\n\nWhich named entities does the text above mention? Give one per line as 'type: entity'.",
        ),
        "{% if entities is string %}{{ entities }}{% else %}{{ entities | join('\n') }}{% endif %}",
        metrics=("rouge",),
        max_new_tokens=96,
    ),
    "conll2003": BuiltinTemplate(
        "Named entity recognition on IOB2-tagged tokens (CoNLL-2003): tokens, labels -> entity list "
        "'type: words; ...' (or 'none'), scored entity by entity with seqeval.",
        (
            f"Find the named entities ({_ENTITY_TYPES}) in this sentence. List them in order as "
            "'type: words', separated by semicolons, or write 'none'.\n\n{{ tokens | join(' ') }}",
            "Sentence: {{ tokens | join(' ') }}\n\nWhich people, organizations, locations and other named entities "
            "does it mention? Answer as 'type: words; type: words' or 'none'.",
            "{{ tokens | join(' ') }}\n\nExtract the named entities from the text above (types: "
            f"{_ENTITY_TYPES}). Format: 'type: words; ...', or 'none' if there are none.",
            "Tag the named entities in the following text. Give each as 'type: words' in the order they appear, "
            f"separated by '; ' (types: {_ENTITY_TYPES}; 'none' if there are none).\n\nText: {{{{ tokens | join(' ') }}}}",
            "List every named entity in this news sentence with its type (person, organization, location or "
            "miscellaneous), like 'person: Jane Doe; location: Paris', or answer 'none'.\n\n{{ tokens | join(' ') }}",
        ),
        "{{ entity_list(tokens, labels) }}",
        metrics=("seqeval",),
        max_new_tokens=64,
        reference="{{ ner_reference(tokens, labels) }}",
    ),
    "emotion": BuiltinTemplate(
        "Emotion classification (six labels: " + ", ".join(EMOTION_LABELS) + "): text -> label.",
        (
            "Which emotion does this text express?\n\n{{ text }}\n\n" + _EMOTION_OPTIONS,
            "{{ text }}\n\nWhat is the emotion of the writer of this post? " + ", ".join(EMOTION_LABELS[:-1])
            + " or " + EMOTION_LABELS[-1] + "?",
            "Post: {{ text }}\n\nClassify the emotion of the post.\n" + _EMOTION_OPTIONS,
            "Read the sentence and name the emotion it conveys in one word.\n\n{{ text }}\n\n" + _EMOTION_OPTIONS,
            "{{ text }}\n\nHow does the author feel? Answer with one of: " + ", ".join(EMOTION_LABELS) + ".",
        ),
        "{{ label }}",
        metrics=LABEL_METRICS,
        max_new_tokens=LABEL_MAX_NEW_TOKENS,
    ),
    "alpaca": BuiltinTemplate(
        "General instructions (Alpaca): instruction, optional input -> output.",
        (
            "{{ instruction }}{% if input %}\n\n{{ input }}{% endif %}",
            "Below is an instruction that describes a task{% if input %}, paired with an input that provides "
            "further context{% endif %}. Write a response that appropriately completes the request.\n\n"
            "### Instruction:\n{{ instruction }}{% if input %}\n\n### Input:\n{{ input }}{% endif %}",
            "Task: {{ instruction }}{% if input %}\nInput: {{ input }}{% endif %}\n\nResponse:",
            "{% if input %}{{ input }}\n\n{% endif %}{{ instruction }}",
        ),
        "{{ output }}",
        metrics=("rougeL",),
        max_new_tokens=128,
    ),
}

class _RecordProblem(ValueError):
    """Raised by a template helper when the record's data is wrong (reported with its file and row)."""


def _entity_list(tokens: list[str], labels: list[str]) -> str:
    problem = tag_problem(tokens, labels, CONLL2003_TYPES)
    if problem is not None:
        raise _RecordProblem(problem)
    return format_entity_list(tokens, labels)


def _ner_reference(tokens: list[str], labels: list[str]) -> str:
    problem = tag_problem(tokens, labels, CONLL2003_TYPES)
    if problem is not None:
        raise _RecordProblem(problem)
    return ner_reference(tokens, labels)


def null_as_absent(value: Any) -> Any:
    """Jinja `finalize`: a null field prints as nothing (never the word "None"); `{% if field %}` is false for it."""
    return "" if value is None else value


def sandboxed_environment(*, keep_trailing_newline: bool = False) -> ImmutableSandboxedEnvironment:
    """A new Jinja2 environment of the kind every user template renders in (prompt templates here, task specs in
    bench/): the immutable sandbox with no loader, StrictUndefined, no autoescape (prompts are plain text), and
    nulls rendered as nothing (`null_as_absent`)."""
    return ImmutableSandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=keep_trailing_newline,
                                         autoescape=False, finalize=null_as_absent)


_ENV = sandboxed_environment()
_ENV.globals.update(entity_list=_entity_list, ner_reference=_ner_reference)


class PromptTemplate:
    """A compiled prompt/completion pair with its phrasings and the rule that picks one per example."""

    def __init__(self, name: str, prompts: Iterable[str], completion: str, variant: int | str = 0,
                 reference: str | None = None) -> None:
        self.name = name
        self.prompt_sources = tuple(prompts)
        self.completion_source = completion
        self.reference_source = reference
        self.variant = variant
        if isinstance(variant, int) and not 0 <= variant < len(self.prompt_sources):
            raise ConfigError(
                f"data.template.variant: {variant} is out of range; template '{name}' has "
                f"{len(self.prompt_sources)} phrasings (0-{len(self.prompt_sources) - 1}) or use 'random'"
            )
        self._prompts = [self._compile(src, "prompt") for src in self.prompt_sources]
        self._completion = self._compile(completion, "completion")
        self._reference = self._compile(reference, "reference") if reference is not None else None
        self.fields = sorted(set().union(*(template_fields(s) for s in (*self.prompt_sources, completion)))
                             - set(_ENV.globals))

    def _compile(self, source: str, part: str) -> Any:
        try:
            if any(True for _ in meta.find_referenced_templates(_ENV.parse(source))):
                raise ConfigError(
                    f"template '{self.name}' {part}: include/import/extends are not allowed (templates cannot "
                    "read files); inline the text instead"
                )
            return _ENV.from_string(source)
        except TemplateSyntaxError as exc:
            raise ConfigError(f"template '{self.name}' {part}, line {exc.lineno}: {exc.message}") from None

    def variant_index(self, example_id: str, seed: int) -> int:
        """Fixed index, or a per-example choice that depends only on (seed, id), never on data order."""
        if self.variant == "random":
            return random.Random(f"{seed}:{example_id}").randrange(len(self._prompts))
        return int(self.variant)

    def render(self, record: Record, seed: int = 0, variant: int | None = None) -> tuple[str, str]:
        """Render (prompt, completion) for one record; errors name the template, field and record id."""
        index = self.variant_index(record.id, seed) if variant is None else variant
        prompt = self._render(self._prompts[index], record, "prompt")
        completion = self._render(self._completion, record, "completion")
        return prompt.strip(), completion.strip()

    def _render(self, template: Any, record: Record, part: str) -> str:
        try:
            return template.render(**record.fields)
        except _RecordProblem as exc:
            where = f"{record.origin or 'data'} (row {record.row})" if record.row else f"{record.origin or 'data'}"
            raise DataError(f"{where}, record '{record.id}': {exc}") from None
        except SecurityError as exc:
            raise DataError(
                f"template '{self.name}' {part}, record '{record.id}': not allowed in the sandbox ({exc})"
            ) from None
        except UndefinedError as exc:
            missing = [f for f in self.fields if f not in record.fields and f"'{f}'" in str(exc)]
            if missing:
                raise DataError(
                    f"template '{self.name}' uses field '{missing[0]}', which record '{record.id}' "
                    f"({record.origin or 'data'}) lacks (fields: {_names(record.fields)}); "
                    "map a column to it with data.field_map"
                ) from None
            raise DataError(f"template '{self.name}' {part}, record '{record.id}': {exc.message}") from None
        except (TemplateError, TypeError, ValueError) as exc:
            raise DataError(f"template '{self.name}' {part}, record '{record.id}': {exc}") from None

    def to_example(self, record: Record, seed: int = 0) -> Example:
        prompt, completion = self.render(record, seed)
        if self._reference is not None:
            refs: tuple[str, ...] = (self._render(self._reference, record, "reference").strip(),)
        else:
            refs = record.references if record.references else (completion,)
        return Example(id=record.id, prompt=prompt, completion=completion, references=tuple(refs),
                       fields=record.fields)


def _names(fields: dict[str, Any], limit: int = 8) -> str:
    """Field names for a message, each cut to 30 characters (a header-less CSV makes data into names)."""
    names = [n if len(n) <= 30 else n[:27] + "..." for n in sorted(fields)[:limit]]
    return ", ".join(names) + (f" and {len(fields) - limit} more" if len(fields) > limit else "")


def template_fields(source: str) -> set[str]:
    """The variables a template reads from its context; empty for a template that does not parse."""
    try:
        return set(meta.find_undeclared_variables(_ENV.parse(source)))
    except TemplateSyntaxError:
        return set()


def load_template(cfg: TemplateConfig) -> PromptTemplate:
    """The template a config asks for: a custom prompt/completion pair, or a built-in by name."""
    if cfg.prompt is not None and cfg.completion is not None:
        return PromptTemplate("custom", [cfg.prompt], cfg.completion, 0 if cfg.variant == "random" else cfg.variant)
    assert cfg.name is not None
    builtin = BUILTIN_TEMPLATES.get(cfg.name)
    if builtin is None:
        raise ConfigError(
            f"data.template.name: unknown template '{cfg.name}'{did_you_mean(cfg.name, BUILTIN_TEMPLATES)}; "
            f"choose one of {', '.join(BUILTIN_TEMPLATES)} "
            "or give prompt and completion"
        )
    return PromptTemplate(cfg.name, builtin.prompts, builtin.completion, cfg.variant, builtin.reference)


def describe_templates() -> list[dict[str, Any]]:
    """Built-in templates as data: name, description, fields, number of phrasings, first phrasing."""
    out = []
    for name, spec in BUILTIN_TEMPLATES.items():
        tpl = PromptTemplate(name, spec.prompts, spec.completion)
        out.append({"name": name, "description": spec.description, "fields": tpl.fields,
                    "variants": len(spec.prompts), "prompt": spec.prompts[0], "completion": spec.completion,
                    "metrics": list(spec.metrics), "max_new_tokens": spec.max_new_tokens})
    return out


def show_template(name: str) -> str:
    """`tunebench templates NAME`: every phrasing, the completion, the fields and the evaluation defaults."""
    spec = BUILTIN_TEMPLATES.get(name)
    if spec is None:
        raise ConfigError(f"unknown template '{name}'{did_you_mean(name, BUILTIN_TEMPLATES)}; built-ins: "
                          f"{', '.join(BUILTIN_TEMPLATES)}")
    tpl = PromptTemplate(name, spec.prompts, spec.completion, reference=spec.reference)
    evaluation = [f"eval.metrics [{', '.join(spec.metrics)}]"] if spec.metrics else []
    if spec.max_new_tokens is not None:
        evaluation.append(f"eval.generation.max_new_tokens {spec.max_new_tokens}")
    lines = [f"{name}: {spec.description}",
             f"fields: {', '.join(tpl.fields)} (map columns to them with data.field_map)",
             f"evaluation defaults: {', '.join(evaluation) or 'the config defaults'}", ""]
    for k, prompt in enumerate(spec.prompts):
        lines.append(f"--- prompt, variant {k}" + (" (default)" if k == 0 else ""))
        lines.append(prompt)
    lines += ["--- completion", spec.completion]
    if spec.reference is not None:
        lines += ["--- reference (what the output is scored against)", spec.reference]
    lines += ["", "data.template.variant picks a phrasing (an index, or random per example)."]
    return "\n".join(lines) + "\n"


def list_templates() -> list[tuple[str, str]]:
    """(name, one-line description with fields and phrasings) pairs for `tunebench templates`."""
    return [
        (d["name"], f"{d['description']} Fields: {', '.join(d['fields'])}; {d['variants']} phrasings.")
        for d in describe_templates()
    ]
