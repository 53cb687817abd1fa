"""The run configuration: one YAML file, validated by pydantic, errors that name the key path.

Every key is a typed field with a default and a one-line description (axolotl's pattern); `tunebench config
schema` prints the JSON schema generated from these models.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tunebench.errors import ConfigError, did_you_mean
from tunebench.io import read_yaml_mapping

DATA_DIR_ENV = "TUNEBENCH_DATA_DIR"
log = logging.getLogger(__name__)


class Section(BaseModel):
    """Base for all config sections: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @model_validator(mode="before")
    @classmethod
    def _yaml_switches(cls, data: Any) -> Any:
        """YAML reads `on`/`off` (unquoted, or `--set key=on`) as booleans: an on/off switch takes them back."""
        if not isinstance(data, dict):
            return data
        switches = [name for name, f in cls.model_fields.items() if _is_switch(f.annotation)]
        fixed = {k: ("on" if v else "off") for k, v in data.items() if k in switches and isinstance(v, bool)}
        return {**data, **fixed} if fixed else data


def _is_switch(annotation: Any) -> bool:
    """A Literal field whose values include 'on' and 'off'."""
    import typing

    return typing.get_origin(annotation) is Literal and {"on", "off"} <= set(typing.get_args(annotation))


SectionT = TypeVar("SectionT", bound=Section)


class ModelConfig(Section):
    ref: str = Field(
        "smollm2-135m-instruct",
        description="Alias (smollm2-135m-instruct), local HF model dir, .gguf file, or Hub id.",
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) for Hub ids.")
    trust_remote_code: bool = Field(False, description="Allow custom modeling code from the model repo.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Dtype the weights are loaded in: auto = bfloat16 on a GPU that has it, else float32 "
        "(training loads float32; trainable weights stay float32)."
    )
    device: Literal["auto", "cpu", "cuda", "mps"] = Field(
        "auto", description="Where the model runs (training, generation, scoring): auto = the accelerator if any."
    )
    chat_template: Literal["auto", "always", "never"] = Field(
        "auto", description="Wrap prompts in the tokenizer's chat template: auto = when it has one."
    )
    system_prompt: str | None = Field(None, description="System message for chat templates (None: model default).")


class TemplateConfig(Section):
    name: str | None = Field("dialogsum", description="Built-in template name (see `tunebench templates`).")
    prompt: str | None = Field(None, description="Custom Jinja2 prompt template (overrides name).")
    completion: str | None = Field(None, description="Custom Jinja2 completion template (with prompt).")
    variant: int | Literal["random"] = Field(
        0, description="Which phrasing of a built-in template: an index, or random per example by seed."
    )

    @model_validator(mode="after")
    def _one_kind(self) -> TemplateConfig:
        if (self.prompt is None) != (self.completion is None):
            raise ValueError("a custom template needs both 'prompt' and 'completion'")
        if self.prompt is None and self.name is None:
            raise ValueError("give a built-in template 'name' or a custom 'prompt' and 'completion'")
        return self


class SplitNames(Section):
    train: str | None = Field("train", description="Source split used for training.")
    validation: str | None = Field(None, description="Source split for validation (None: carve from train).")
    test: str | None = Field("test", description="Source split for testing (None: carve from train).")


class SplitFractions(Section):
    validation: float = Field(
        0.1, ge=0.0, lt=1.0, description="Share of train carved out when no validation split (or a single file)."
    )
    test: float = Field(
        0.1, ge=0.0, lt=1.0, description="Share of train carved out when no test split (or a single-file source)."
    )


class SplitLimits(Section):
    train: int | None = Field(None, gt=0, description="Use at most this many training examples.")
    validation: int | None = Field(None, gt=0, description="Use at most this many validation examples.")
    test: int | None = Field(None, gt=0, description="Use at most this many test examples.")


class ParallelConfig(Section):
    source_lang: str = Field("en", min_length=1, description="Language code of the source side: <split>.<code>[.gz].")
    target_lang: str = Field("de", min_length=1, description="Language code of the target side: <split>.<code>[.gz].")


class SourceConfig(Section):
    """Where one task's examples come from and how they become prompt/completion pairs (a task of data.tasks,
    or the single task of a plain `data` section)."""

    source: str = Field(
        "dialogsum", description="Built-in source name, a local file/dir (relative: to the config file's folder, "
        "then the data directory, then the working directory), or a Hub dataset id."
    )
    format: Literal["auto", "jsonl", "json", "csv", "tsv", "hf", "parallel"] = Field(
        "auto", description="File format; auto = from the extension; parallel = line-aligned text files in a folder."
    )
    parallel: ParallelConfig = Field(
        default_factory=ParallelConfig,
        description="format: parallel: the two languages; fields source, target, source_lang, target_lang.",
    )
    subset: str | None = Field(None, description="Hub dataset configuration name.")
    field_map: dict[str, str] = Field(
        default_factory=dict, description="Template field -> source column, e.g. {dialogue: text}."
    )
    id_field: str | None = Field(None, description="Column holding a stable example id (None: row index).")
    references_field: str | None = Field(
        None, description="Column holding a list of reference outputs (None: the rendered completion)."
    )
    labels: dict[str, str] | None = Field(
        None, description="Split name -> a file of one label per line, aligned with that split's rows (e.g. "
        "PIQA's valid-labels.lst); each row gets its label as `label_field`."
    )
    label_field: str = Field("label", description="labels: the column the aligned label is stored in.")
    splits: SplitNames = Field(default_factory=SplitNames)
    fractions: SplitFractions = Field(default_factory=SplitFractions)
    limits: SplitLimits = Field(default_factory=SplitLimits)
    template: TemplateConfig = Field(default_factory=TemplateConfig)
    keep_empty_completions: bool = Field(
        False, description="Keep examples whose rendered completion is empty (dropped and counted by default)."
    )

    @model_validator(mode="after")
    def _fractions_fit(self) -> SourceConfig:
        carved = (self.fractions.validation if self.splits.validation is None else 0.0) + (
            self.fractions.test if self.splits.test is None else 0.0
        )
        if carved >= 1.0:
            raise ValueError("fractions.validation + fractions.test carved from train must be below 1")
        if self.splits.train is None:
            raise ValueError("splits.train must name a source split")
        return self


SOURCE_KEYS = tuple(SourceConfig.model_fields)
"""The keys of one task's data: given at data level for a single task, inside each data.tasks entry otherwise."""


class TaskGenerationConfig(Section):
    max_new_tokens: int | None = Field(None, gt=0, description="Cap on generated tokens (None: the template's, "
                                       "else eval.generation.max_new_tokens).")
    stop: list[str] | None = Field(None, description="Stop strings (None: eval.generation.stop).")


class TaskConfig(SourceConfig):
    name: str = Field(..., pattern=r"^[A-Za-z0-9._-]+$", description="Task name: the run's tasks/<name>/ folder and report rows.")
    metrics: list[str] | None = Field(
        None, description="Evaluation metrics of this task (None: the template's own metrics)."
    )
    generation: TaskGenerationConfig = Field(default_factory=TaskGenerationConfig)
    weight: float = Field(1.0, description="Mixing weight (used by mixture strategy 'weights'); >= 0.")


class MixtureConfig(Section):
    strategy: str = Field(
        "proportional", description="How tasks mix: proportional, temperature, capped or weights (see data/mixture.py)."
    )
    temperature: float | None = Field(None, description="Temperature T > 0 of the 'temperature' strategy (rate ∝ size^(1/T)).")
    cap: int | None = Field(None, description="Artificial limit K on a task's size (required by 'capped'; optional "
                            "for 'temperature').")
    examples_per_epoch: int | None = Field(
        None, description="Examples in one epoch of the mixture (None: the sum of the (capped) task sizes)."
    )


class DataConfig(SourceConfig):
    tasks: list[TaskConfig] = Field(
        default_factory=list,
        description="Multi-task mixture: one entry per task (name, source, template, splits, limits, metrics, "
        "generation, weight). Empty: the data section itself is the single task.",
    )
    mixture: MixtureConfig = Field(default_factory=MixtureConfig)
    max_length: int = Field(1024, gt=8, description="Maximum tokens of prompt + completion.")
    truncation: Literal["truncate", "drop"] = Field(
        "truncate", description="Over-long examples: cut the prompt from the left, or drop them."
    )

    @model_validator(mode="after")
    def _tasks(self) -> DataConfig:
        from tunebench.data.mixture import check_mixture_config

        if self.tasks:  # a data-level task key given a value of its own (a dumped config repeats the defaults)
            defaults = SourceConfig()
            clash = [k for k in SOURCE_KEYS if k in self.model_fields_set and getattr(self, k) != getattr(defaults, k)]
            if clash:
                raise ConfigError(
                    f"data.{clash[0]}: with data.tasks, give {clash[0]} inside each task (data.tasks.N.{clash[0]})"
                )
        check_mixture_config(self)
        return self

    @property
    def multitask(self) -> bool:
        return bool(self.tasks)


class LoraConfig(Section):
    r: int = Field(16, gt=0, description="LoRA rank.")
    alpha: float = Field(32.0, gt=0, description="LoRA alpha (scaling = alpha / r).")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: str | list[str] = Field(
        "all-linear", description="Module names to adapt, or 'all-linear' (every linear but the output head)."
    )
    use_dora: bool = Field(False, description="DoRA: train magnitude and direction apart (Liu et al. 2024).")
    use_rslora: bool = Field(False, description="rsLoRA: scale by alpha / sqrt(r) (Kalajdzievski 2023).")
    init_lora_weights: str = Field(
        "default",
        pattern=r"^(default|gaussian|olora|orthogonal|pissa|pissa_niter_[1-9][0-9]*)$",
        description="PEFT initialisation: default (B = 0), gaussian, orthogonal, or pissa / pissa_niter_N / olora "
        "(start from the weights' principal directions; the saved adapter is converted to apply to the original base).",
    )


class IA3Config(Section):
    target_modules: list[str] | None = Field(
        None, description="Modules whose activations IA3 rescales (None: PEFT's default for the architecture)."
    )
    feedforward_modules: list[str] | None = Field(
        None, description="Which of target_modules are feed-forward (input rescaled); None: PEFT's default."
    )

    @model_validator(mode="after")
    def _both_or_neither(self) -> IA3Config:
        if (self.target_modules is None) != (self.feedforward_modules is None):
            raise ValueError("set both target_modules and feedforward_modules, or neither")
        if self.target_modules is not None and not set(self.feedforward_modules or []) <= set(self.target_modules):
            raise ValueError("feedforward_modules must be a subset of target_modules")
        return self


class PromptTuningConfig(Section):
    num_virtual_tokens: int = Field(20, gt=0, description="Trainable soft-prompt vectors put before the input.")
    init: Literal["sample_vocab", "random"] = Field(
        "sample_vocab", description="Soft-prompt start: embeddings of random vocabulary tokens, or random vectors."
    )


class PrefixTuningConfig(Section):
    num_virtual_tokens: int = Field(20, gt=0, description="Trainable key/value prefix length in every layer.")
    prefix_projection: bool = Field(
        False, description="Reparametrise the prefix through a two-layer MLP (Li and Liang 2021)."
    )
    encoder_hidden_size: int = Field(512, gt=0, description="Hidden size of that MLP (with prefix_projection).")


class FreezeConfig(Section):
    trainable_top_k: int = Field(2, ge=0, description="Train only the top k transformer blocks.")
    trainable_modules: list[str] = Field(
        default_factory=list, description="Also train modules whose name contains one of these strings."
    )

    @model_validator(mode="after")
    def _something_trains(self) -> FreezeConfig:
        if self.trainable_top_k == 0 and not self.trainable_modules:
            raise ValueError("freeze trains nothing: set trainable_top_k > 0 or trainable_modules")
        return self


class AdapterConfig(Section):
    """Bottleneck adapter layers (method `adapter`): Houlsby et al. 2019, Pfeiffer et al. 2021."""

    style: Literal["houlsby", "pfeiffer"] = Field(
        "houlsby", description="houlsby: after the attention and the feed-forward sub-layers; pfeiffer: after the "
        "feed-forward only."
    )
    reduction_factor: float = Field(
        16.0, gt=0, description="Hidden size / bottleneck size: 16 on a 576-wide model gives 36 hidden units."
    )
    non_linearity: Literal["relu", "gelu", "gelu_new", "silu", "swish", "tanh"] = Field(
        "relu", description="Activation between the down- and the up-projection."
    )


class GenEvalConfig(Section):
    every: int | None = Field(None, gt=0, description="Generate on validation every N optimizer steps.")
    examples: int = Field(16, gt=0, description="Size of the fixed validation subset used for generation.")
    metric: str = Field("rougeL", description="Metric logged and usable for best-checkpoint selection.")
    max_new_tokens: int = Field(96, gt=0, description="Generation length cap during training.")

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        from tunebench.evaluate.metrics import METRICS

        _check_name(None, value, [n for n, c in METRICS.items() if c.inputs == "text"], "metric")
        return value


class TrainConfig(Section):
    method: str = Field("lora", description="What gets trained: a row of the methods table (full, lora, freeze, ...).")
    lora: LoraConfig = Field(default_factory=LoraConfig)
    freeze: FreezeConfig = Field(default_factory=FreezeConfig)
    adapter: AdapterConfig = Field(default_factory=AdapterConfig)
    ia3: IA3Config = Field(default_factory=IA3Config)
    prompt_tuning: PromptTuningConfig = Field(default_factory=PromptTuningConfig)
    prefix_tuning: PrefixTuningConfig = Field(default_factory=PrefixTuningConfig)
    epochs: float = Field(1.0, gt=0, description="Passes over the training split.")
    max_steps: int | None = Field(None, gt=0, description="Optimizer steps of the run; when set it replaces "
                                  "epochs.")
    batch_size: int = Field(8, gt=0, description="Examples per micro-batch.")
    grad_accum: int = Field(1, gt=0, description="Micro-batches per optimizer step (per process).")
    global_batch_size: int | None = Field(
        None, gt=0, description="Examples per optimizer step over all processes; sets grad_accum to "
        "global_batch_size / (batch_size x processes), which must be a whole number (None: use grad_accum)."
    )
    lr: float | None = Field(
        None, gt=0, description="Peak learning rate (AdamW); unset: the method's default (full and freeze 2e-5, "
        "lora 2e-4, adapter 1e-4, ia3 3e-3, prompt_tuning 3e-2, prefix_tuning 1e-2).",
        json_schema_extra={"default_text": "the method's default"},  # resolved from train.method at load
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Share of steps spent warming up linearly.")
    scheduler: Literal["linear", "cosine", "constant"] = Field("linear", description="Decay after warmup.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Clip gradients to this norm (None: off).")
    bf16: Literal["auto", "on", "off"] = Field("auto", description="bf16 autocast: auto = the faster of fp32 and bf16, "
                                                   "measured on the model's matmul shapes (cached per machine).")
    frozen_bf16: bool = Field(True, description="Hold frozen weights in bf16 when bf16 is on (LoRA, freeze).")
    train_on_prompt: bool = Field(False, description="Compute loss on prompt tokens too.")
    group_by_length: bool = Field(True, description="Batch examples of similar length together.")
    eval_every: int | None = Field(50, gt=0, description="Validation loss every N optimizer steps.")
    save_every: int | None = Field(50, gt=0, description="Checkpoint every N optimizer steps.")
    keep_checkpoints: int = Field(2, gt=0, description="Keep the last N checkpoints (plus the best).")
    early_stopping_patience: int | None = Field(
        None, gt=0, description="Stop after N evaluations without improvement."
    )
    select_best_by: str = Field("val_loss", description="'val_loss' or the gen_eval metric, for the best checkpoint.")
    gen_eval: GenEvalConfig = Field(default_factory=GenEvalConfig)
    compile: bool = Field(False, description="torch.compile the model.")
    log_every: int = Field(5, gt=0, description="Log training loss every N optimizer steps.")

    @model_validator(mode="before")
    @classmethod
    def _method_default_lr(cls, data: Any) -> Any:
        """An unset `lr` takes the method's `default_lr` from the methods table, so the resolved config shows it."""
        if isinstance(data, dict) and data.get("lr") is None:
            from tunebench.models.methods import METHODS  # torch-free

            method = METHODS.get(data.get("method", "lora"))
            if method is not None:
                data = {**data, "lr": method.default_lr}
        return data

    @field_validator("method")
    @classmethod
    def _known_method(cls, name: str) -> str:
        from tunebench.models.methods import method_names  # torch-free: the table imports torch lazily

        if name not in method_names():
            close = difflib.get_close_matches(name, method_names(), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ValueError(f"unknown method '{name}': {hint}known methods: {', '.join(method_names())}")
        return name

    @model_validator(mode="after")
    def _combinations(self) -> TrainConfig:
        if self.select_best_by != "val_loss" and self.gen_eval.every is None:
            raise ValueError(f"select_best_by '{self.select_best_by}' needs gen_eval.every to be set")
        if self.select_best_by not in ("val_loss", self.gen_eval.metric):
            raise ValueError(f"select_best_by must be 'val_loss' or gen_eval.metric ('{self.gen_eval.metric}')")
        if self.early_stopping_patience is not None and self.eval_every is None and self.gen_eval.every is None:
            raise ValueError("early_stopping_patience needs eval_every or gen_eval.every")
        return self


class GenerationConfig(Section):
    max_new_tokens: int = Field(96, gt=0, description="Cap on generated tokens.")
    batch_size: int = Field(32, gt=0, description="Prompts decoded together (greedy decoder-only: KV-cache slots).")
    num_beams: int = Field(1, gt=0, description="Beam search width (1 = greedy or sampling).")
    do_sample: bool = Field(False, description="Sample instead of greedy/beam decoding.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    stop: list[str] = Field(default_factory=list, description="Stop strings (besides EOS); cut from the output.")

    @model_validator(mode="after")
    def _decoding(self) -> GenerationConfig:
        if self.do_sample and self.num_beams > 1:
            raise ValueError("choose beam search (num_beams > 1) or sampling (do_sample), not both")
        return self


PrecisionName = Literal["auto", "fp32", "bf16", "fp16", "int8"]
"""An inference precision a config asks for: the precisions table's names (models/precision.py) or auto."""


class ParityConfig(Section):
    """The parity gate a fast inference precision passes before it is used (tunebench.evaluate.parity)."""

    examples: int = Field(64, gt=0, description="Calibration slice: this many test examples, a seeded sample, "
                          "evaluated in fp32 and in the fast precision.")
    metric: str | None = Field(None, description="Metric compared (None: rouge1 when evaluated, else the first "
                               "metric of eval.metrics).")
    margin: float | None = Field(None, gt=0, description="Accept when the 95% interval of fast - fp32 lies within "
                                 "±margin (None: 0.01 on a 0-1 metric, i.e. 0.01 ROUGE-1 or 1 accuracy point; 1 on "
                                 "a 0-100 one).")

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str | None) -> str | None:
        if value is not None:
            from tunebench.evaluate.metrics import METRICS

            _check_name(None, value, [n for n, c in METRICS.items() if c.inputs == "text"], "metric")
        return value


class EvalConfig(Section):
    split: Literal["train", "validation", "test"] = Field("test", description="Split evaluated.")
    limit: int | None = Field(None, gt=0, description="Evaluate the first N examples of the split.")
    metrics: list[str] = Field(
        default_factory=lambda: ["rouge", "bleu"], description="Registry metric names: rouge (= rouge1, rouge2, rougeL, rougeLsum), bleu, chrf, exact_match, ... (an unknown name lists them all)."
    )
    stem: bool = Field(True, description="Porter stemming for ROUGE.")
    language: str | None = Field(
        None, description="Target language (ISO 639-1, e.g. zh); picks BLEU/ROUGE tokenizers as sacreBLEU does."
    )
    bleu_tokenize: str | None = Field(
        None, description="sacreBLEU tokenizer for bleu: 13a, intl, zh, ja-mecab, ko-mecab, char, ... (None: from language)."
    )
    rouge_tokenize: str | None = Field(
        None, description="ROUGE tokenizer: rouge_score (a-z0-9 only) or unicode (any script; None: from language)."
    )
    shots: list[int] = Field(
        default_factory=lambda: [0], description="In-context baselines of the base model: numbers of demonstrations."
    )
    bootstrap: int = Field(1000, gt=0, description="Bootstrap resamples for intervals and paired tests.")
    context_budget: int | None = Field(
        None, gt=8, description="Cap on few-shot prompt + max_new_tokens tokens (None: the model's maximum positions)."
    )
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    precision: PrecisionName | None = Field(
        None, description="Inference precision: auto = the fastest on this machine by measurement; bf16/fp16 cast "
        "the weights, int8 = dynamic int8 linears (CPU); a fast one is used only after the parity gate (eval.parity) "
        "passes, else fp32. None: as model.dtype loads the weights."
    )
    parity: ParityConfig = Field(default_factory=ParityConfig)

    @model_validator(mode="after")
    def _shots(self) -> EvalConfig:
        if any(k < 0 for k in self.shots):
            raise ValueError("shots must be >= 0")
        return self

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, value: list[str]) -> list[str]:
        from tunebench.evaluate.metrics import known_names

        for name in value:
            _check_name(None, name, known_names("text"), "metric")
        if not [n for n in value if n.strip()]:
            raise ValueError(f"no metric given; known metrics: {', '.join(known_names('text'))}")
        return value

    @model_validator(mode="after")
    def _tokenizers(self) -> EvalConfig:
        from tunebench.evaluate.metrics.base import check_tokenizers

        check_tokenizers(self.bleu_tokenize, self.rouge_tokenize)
        return self

    def metric_settings(self) -> Any:
        """The tunebench.evaluate.metrics.MetricSettings these keys select (stemming, tokenizers, language)."""
        from tunebench.evaluate.metrics import MetricSettings

        return MetricSettings(stem=self.stem, bleu_tokenize=self.bleu_tokenize,
                              rouge_tokenize=self.rouge_tokenize, language=self.language)


class BenchParityConfig(Section):
    """The parity gate a fast benchmark precision passes before it is used (tunebench.bench.parity)."""

    examples: int = Field(64, gt=0, description="Calibration slice per task: this many questions (documents for "
                          "perplexity tasks) of the scored subset, a seeded sample (the run's seed), scored in "
                          "fp32 and in the fast precision.")
    accuracy_margin: float | None = Field(
        None, gt=0, description="Accuracy and other per-question metrics: accept when the 95% interval of fast - "
        "fp32 lies within ±margin (None: one hundredth of the metric's scale, i.e. 1 accuracy point).")
    perplexity_margin: float = Field(
        0.01, gt=0, lt=1, description="Perplexity tasks: accept when fast / fp32 token perplexity stays within "
        "1 ± this (the NLL's 95% interval within ±ln(1 + margin) nats/token); 0.01 is half the 2% rise the "
        "forgetting suite is sized to detect.")


class BenchConfig(Section):
    tasks: list[str] = Field(
        default_factory=lambda: ["wikitext2", "piqa"],
        description="Forgetting suite run on base and tuned (default: WikiText-2 drift, perplexity and KL, and PIQA, "
        "where the default model is well above chance).",
    )
    limit: int | None = Field(
        100, gt=0, description="Forgetting suite size in `tunebench run`: examples (documents) per task, a seeded "
        "subset. `tunebench bench` scores whole tasks unless --limit is given."
    )
    limits: dict[str, int] = Field(
        default_factory=lambda: {"wikitext2": 6, "piqa": 1000},
        description="Per-task overrides of limit, e.g. {wikitext2: 6} (documents). Default: 6 WikiText-2 articles "
        "and 1,000 PIQA questions, enough for a 2% perplexity rise and a ~3-point accuracy drop.",
    )
    shots: int | None = Field(None, ge=0, description="Override every task's few-shot count.")
    chat_template: bool = Field(
        False, description="Wrap benchmark prompts in the chat template (as lm-eval's --apply_chat_template); off: "
        "the standard plain-prompt protocol published numbers use."
    )
    precision: PrecisionName | None = Field(
        None, description="Benchmark precision (`tunebench run`'s forgetting suite, `tunebench bench`): auto = the "
        "fastest on this machine by measurement; bf16/fp16/int8 as eval.precision; a fast one is used for a task "
        "only after the parity gate (bench.parity) passes on that task, else fp32. None: fp32 as the weights load, "
        "the standard protocol."
    )
    parity: BenchParityConfig = Field(default_factory=BenchParityConfig)
    enabled: bool = Field(True, description="Run the forgetting suite in `tunebench run`.")
    helm: bool = Field(False, description="Add the HELM-style view (calibration, robustness, fairness, ...).")

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, value: list[str]) -> list[str]:
        from tunebench.bench.spec import task_names

        known = task_names()
        for name in value:
            if not name.strip().endswith((".yaml", ".yml", ".json")):
                _check_name(None, name.strip().partition(":")[0], known, "task")
        return value


class RunConfig(Section):
    name: str = Field("run", pattern=r"^[A-Za-z0-9._-]+$", description="Run name: runs/<name>/.")
    output_dir: str = Field("runs", description="Parent directory of run directories.")
    data_dir: str | None = Field(None, description=f"Data directory (default: ${DATA_DIR_ENV}).")
    seed: int = Field(42, description="One seed for Python, NumPy, torch and the data order.")
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    bench: BenchConfig = Field(default_factory=BenchConfig)

    @model_validator(mode="after")
    def _known_template(self) -> RunConfig:
        # checked here, not in TemplateConfig, so a TemplateConfig built in code still reaches load_template's error
        template = self.data.template
        if template.prompt is None:
            from tunebench.data.templates import BUILTIN_TEMPLATES

            _check_name("data.template.name", template.name, list(BUILTIN_TEMPLATES), "template")
        return self

    @model_validator(mode="after")
    def _template_eval_defaults(self) -> RunConfig:
        """A built-in template brings its metrics and generation length unless the config sets them; a custom
        template whose completion is the `label` field is scored like the built-in classification templates."""
        tpl = self.data.template
        from tunebench.data.templates import (
            BUILTIN_TEMPLATES,
            LABEL_MAX_NEW_TOKENS,
            LABEL_METRICS,
            completes_with_label,
        )

        if tpl.prompt is not None:
            if not completes_with_label(tpl.completion):
                return self
            metrics, max_new_tokens = LABEL_METRICS, LABEL_MAX_NEW_TOKENS
        else:
            builtin = BUILTIN_TEMPLATES.get(tpl.name or "")
            if builtin is None:
                return self
            metrics, max_new_tokens = builtin.metrics, builtin.max_new_tokens
        if metrics and "metrics" not in self.eval.model_fields_set:
            self.eval.metrics = list(metrics)
        if max_new_tokens is not None and "max_new_tokens" not in self.eval.generation.model_fields_set:
            self.eval.generation.max_new_tokens = max_new_tokens
        return self

    @model_validator(mode="after")
    def _eval_precision_fits(self) -> RunConfig:
        """Combinations decidable at load (after a template's own metrics apply): eval.precision and
        bench.precision on model.device
        (the precisions table's `devices`; device `auto` is decided at run time), and eval.parity.metric among the
        metrics a single-task config evaluates (a mixture's tasks bring their own metrics)."""
        for key, precision in (("eval.precision", self.eval.precision), ("bench.precision", self.bench.precision)):
            check_precision_device(key, precision, self.model.device)
        metric = self.eval.parity.metric
        if metric and not self.data.multitask:
            from tunebench.evaluate.metrics import expand_metrics_any

            evaluated = expand_metrics_any(self.eval.metrics)
            if metric not in evaluated:
                raise ValueError(f"eval.parity.metric: '{metric}' is not among eval.metrics "
                                 f"({', '.join(evaluated)}); add it there or pick one of those")
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


def check_precision_device(key: str, precision: str | None, device: str) -> None:
    """ValueError naming `key` when `precision` cannot run on model.device `device` (the precisions table's
    `devices`); None, auto and an `auto` device (decided at run time) always pass."""
    from tunebench.models.precision import PRECISIONS  # torch-free (torch inside its functions)

    if precision not in (None, "auto") and device != "auto" and device not in PRECISIONS[precision].devices:
        runs_on = [name for name, p in PRECISIONS.items() if device in p.devices]
        raise ValueError(f"{key}: '{precision}' does not run on model.device '{device}' "
                         f"({precision} runs on {', '.join(PRECISIONS[precision].devices)}; on {device}: "
                         f"{', '.join(runs_on)}, or auto)")


def _check_name(key: str | None, value: Any, known: list[str], what: str) -> None:
    """ValueError (pydantic adds the key path) when `value` is not one of a registry's `known` names."""
    if value not in known:
        from tunebench.evaluate.metrics.base import unknown_name_message

        raise ValueError(unknown_name_message(key, value, known, what))


def _type_name(annotation: Any) -> str:
    """A field's type as a reader writes it: `int | None`, `list[str]`, `'linear' | 'cosine'`."""
    import typing

    origin = typing.get_origin(annotation)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, __import__("types").UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(annotation))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation))


def schema_rows() -> list[tuple[str, str, str, str]]:
    """(key path, type, default, description) of every config key, in file order; defaults as YAML text, or a
    field's `default_text` where its default depends on another key."""
    defaults = RunConfig().model_dump(mode="json")
    rows: list[tuple[str, str, str, str]] = []

    def walk(model: type[BaseModel], prefix: str, values: dict[str, Any]) -> None:
        for name, field in model.model_fields.items():
            path = f"{prefix}{name}"
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, f"{path}.", values[name])
                continue
            extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
            if "default_text" in extra:  # a default that depends on another key (train.lr: train.method's)
                default = str(extra["default_text"])
            else:
                default = yaml.safe_dump(values[name], default_flow_style=True, width=10**6).strip()
                default = default.removesuffix("\n...").removesuffix("...").strip()
            rows.append((path, _type_name(ann), default, field.description or ""))

    walk(RunConfig, "", defaults)
    return rows


def schema_table() -> str:
    """`tunebench config schema --format table`: key, type, default and description, one key per line.

    Plain aligned text rather than a boxed table, so it stays readable in a narrow terminal and greppable.
    """
    rows = [("key", "type", "default", "description"), *schema_rows()]
    widths = [min(max(len(r[i]) for r in rows), cap) for i, cap in enumerate((34, 28, 24))]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) if len(cell) <= width else cell + "\n" + " " * (sum(widths[: i + 1]) + 2 * i)
                 for i, (cell, width) in enumerate(zip(row[:3], widths, strict=True))]
        lines.append(("  ".join(cells) + "  " + row[3]).rstrip())
    return "\n".join(lines)


def config_schema() -> dict[str, Any]:
    """The JSON Schema of a run config, with every default filled in (lists and sections included)."""
    schema = RunConfig.model_json_schema()
    defs = schema.get("$defs", {})

    def fill(node: dict[str, Any], values: dict[str, Any]) -> None:
        for name, prop in node.get("properties", {}).items():
            if name not in values:
                continue
            ref = prop.get("$ref")
            if ref is not None:
                fill(defs[ref.rsplit("/", 1)[-1]], values[name])
            prop.setdefault("default", values[name])

    fill(schema, RunConfig().model_dump(mode="json"))
    return schema


def _field_at(loc: tuple[Any, ...] | list[str]) -> Any:
    """The pydantic field at key path `loc` (None when the path names no field)."""
    import typing

    model: Any = RunConfig
    field = None
    for key in loc:
        if str(key).isdigit() and typing.get_origin(model) is list:  # an index into a list of sections
            model, field = typing.get_args(model)[0], None  # an element: no field of its own
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        field = model.model_fields.get(str(key))
        if field is None:
            return None
        model = field.annotation
    return field


def _section_keys(loc: tuple[Any, ...]) -> list[str]:
    """The keys the config section at key path `loc` accepts ([] when the path leaves the sections)."""
    model: Any = _field_at(loc).annotation if loc and _field_at(loc) is not None else (None if loc else RunConfig)
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return []
    return list(model.model_fields)


def _format_validation_error(err: ValidationError, source: str, overridden: Iterable[str] = ()) -> str:
    """One line per pydantic error: `source: key.path: message`; keys set by `--set` name `--set` as source."""
    lines = []
    overridden = set(overridden)
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            keys = _section_keys(e["loc"][:-1])
            hint = did_you_mean(str(e["loc"][-1]), keys) or (f"; known keys: {', '.join(keys)}" if keys else "")
            msg = "unknown key" + hint
        key, sep, rest = msg.partition(": ")
        if sep and re.fullmatch(r"[a-z_][a-z_.]*", key):  # a check naming its key below `loc`: one key path
            path, msg = (f"{path}.{key}" if e["loc"] else key), rest
        parts = path.split(".")  # the key path named, also when a whole-config check names it
        from_set = any(".".join(parts[:i]) in overridden for i in range(1, len(parts) + 1))
        below = [k for k in overridden if k.startswith(f"{path}.")]  # a section's check a --set key failed
        if not from_set and len(below) == 1 and e["loc"]:
            path, from_set = below[0], True
        lines.append(f"{'--set' if from_set else source}: {path}: {msg}")
    return "\n".join(lines)


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `dotted` (a.b.c) in a config tree; a number indexes a list of sections (`data.tasks.0.weight`).
    Missing sections are made (a list-valued key: an empty list). Raises ConfigError naming `--set KEY`."""
    keys = dotted.split(".")
    node: Any = tree
    for i, key in enumerate(keys):
        where, last = ".".join(keys[:i]), i == len(keys) - 1
        if isinstance(node, list):
            if not key.isdigit():
                raise ConfigError(f"--set {dotted}: {where} is a list: index it with a number ({where}.0...)")
            if int(key) >= len(node):
                raise ConfigError(f"--set {dotted}: {where} has {len(node)} entries (indexes 0 to {len(node) - 1})"
                                  if node else f"--set {dotted}: {where} has no entries")
            if last:
                node[int(key)] = value
                return
            node = node[int(key)]
        elif isinstance(node, dict):
            if last:
                node[key] = value
                return
            if key not in node:
                node[key] = [] if _is_list_field(".".join(keys[: i + 1])) else {}
            node = node[key]
        else:
            raise ConfigError(f"--set {dotted}: '{keys[i - 1]}' is not a section")


def _is_list_field(dotted: str) -> bool:
    """Whether the key path names a list-valued field (`list[...]`, or `list[...] | None`)."""
    field = _field_at(dotted.split("."))
    import typing

    if field is None:
        return False
    kinds = typing.get_args(field.annotation) if typing.get_origin(field.annotation) in (
        typing.Union, __import__("types").UnionType) else (field.annotation,)
    return any(typing.get_origin(k) is list for k in kinds)


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b=value` overrides; values are parsed as YAML (so 3 is an int, [a, b] a list).

    A list-valued key also takes `a,b` or a single `a` (as every list option of the CLI does): each item is
    parsed as YAML.
    """
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.lr=1e-4")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: value is not valid YAML ({exc})") from None
        if isinstance(value, str) and _is_list_field(key.strip()):
            value = [yaml.safe_load(v) for v in value.split(",") if v.strip()]
        _set_path(tree, key.strip(), value)
    return tree


def config_from_dict(tree: dict[str, Any], source: str = "config", overridden: Iterable[str] = ()) -> RunConfig:
    """Validate a config tree; errors name `source` (or `--set` for the keys in `overridden`). Raises ConfigError."""
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source, overridden)) from None
    except ConfigError as err:  # raised by a validator with the key path already in the message
        raise ConfigError(f"{source}: {err}") from None


def adopt_trained(mine: SectionT, theirs: SectionT, keys: tuple[str, ...], section: str, run: Path) -> SectionT:
    """`mine` with each of `keys` taken from `theirs` (the trained run's section) unless the user set it.

    A key set explicitly in `mine` (config file, --set, a CLI flag) wins, with a warning naming `section.key`, the
    run and both values, because the tuned model then sees prompts unlike its training.
    """
    updates: dict[str, Any] = {}
    for key in keys:
        value, trained = getattr(mine, key), getattr(theirs, key)
        if value == trained:
            continue
        if key in mine.model_fields_set:
            shown, shown_trained = (v.model_dump() if isinstance(v, BaseModel) else v for v in (value, trained))
            log.warning("%s.%s is %r but %s was trained with %r: scoring with %r as asked, so the tuned model "
                        "sees prompts unlike its training", section, key, shown, run, shown_trained, shown)
        else:
            updates[key] = trained
    if updates:
        log.info("scoring %s with its run's %s", run, ", ".join(
            f"{section}.{k}={v.model_dump() if isinstance(v, BaseModel) else v!r}" for k, v in updates.items()))
    return mine.model_copy(update=updates)


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read, override and validate a run config; `path=None` gives the defaults."""
    tree: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        tree = read_yaml_mapping(path, ConfigError, "the config", empty_ok=True)
    apply_overrides(tree, overrides or [])
    overridden = [o.partition("=")[0].strip() for o in overrides or []]
    cfg = config_from_dict(tree, source, overridden)
    if path is not None:
        _resolve_source_beside(cfg, Path(path).expanduser().resolve().parent)
    return cfg


def _resolve_source_beside(cfg: RunConfig, config_dir: Path) -> None:
    """A relative `data.source` (or a task's, in data.tasks) that exists beside the config file means that file
    (made absolute, so the resolved config in the run dir still finds it); otherwise it is looked up in the data
    directory later."""
    for section in (cfg.data, *cfg.data.tasks):
        source = section.source
        if source == "dialogsum" or not source or Path(source).expanduser().is_absolute():
            continue
        candidate = config_dir / source
        if candidate.exists():
            section.source = str(candidate.resolve())


def dump_config(cfg: RunConfig) -> str:
    """The resolved config as YAML, every default filled in (a mixture's data section without the single-task
    keys, which its tasks carry)."""
    tree = cfg.model_dump(mode="json")
    if cfg.data.tasks:
        tree["data"] = {k: v for k, v in tree["data"].items() if k not in SOURCE_KEYS}
    return yaml.safe_dump(tree, sort_keys=False)


def resolve_data_dir(cli_value: str | Path | None = None, cfg: RunConfig | None = None) -> Path | None:
    """The data directory: CLI option, then config, then $TUNEBENCH_DATA_DIR. None when unset."""
    raw = cli_value or (cfg.data_dir if cfg else None) or os.environ.get(DATA_DIR_ENV)
    if not raw:
        return None
    path = Path(raw).expanduser()
    if not path.is_dir():
        raise ConfigError(f"data directory {path} does not exist: fix --data-dir, data_dir or ${DATA_DIR_ENV}")
    return path
