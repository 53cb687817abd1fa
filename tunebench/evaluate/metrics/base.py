"""The metric object and its registry: one class per metric holds every fact about it.

Shape from sacreBLEU's `metrics/base.py` (a metric object owns its settings, extracts per-segment sufficient
statistics, computes the corpus score from their sums, and builds its own signature) and lm-evaluation-harness's
`@register_metric` (a name, `higher_is_better` and an aggregation registered once). Every consumer -- the
best-checkpoint direction, score formatting, compare, benchmark specs and scoring, config validation -- asks
`get_metric` / `METRICS` instead of keeping its own list.

A metric's statistics are an (N, K) float array, one row per example, whose column sums determine the score
(tunebench.evaluate.stats resamples rows for bootstrap intervals and paired tests). Adding a metric is one new
module with a `@register_metric` class and its name on the import line of `registry.py`.
"""

from __future__ import annotations

import difflib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

from tunebench.evaluate.metrics.signature import make_signature, refs_field

ROUGE_TOKENIZERS = ("rouge_score", "unicode")
"""ROUGE tokenizers: rouge_score's own (lowercase a-z0-9 runs; every other character is a separator) and
`unicode` (Unicode letters, marks and digits; each Han, kana and Thai-script character a token of its own)."""

BLEU_TOKENIZERS = ("none", "zh", "13a", "intl", "char", "ja-mecab", "ko-mecab", "spm", "flores101", "flores200",
                   "spBLEU-1K")
"""sacreBLEU 2.x's tokenizer names (sacrebleu.metrics.bleu._TOKENIZERS); checked at config load."""


def check_tokenizers(
    bleu_tokenize: str | None, rouge_tokenize: str | None, keys: tuple[str, str] = ("bleu_tokenize", "rouge_tokenize")
) -> None:
    """ValueError naming the key (`keys`: where the BLEU and ROUGE tokenizer names came from) when a tokenizer
    name is not known."""
    for value, known, key in ((bleu_tokenize, BLEU_TOKENIZERS, keys[0]), (rouge_tokenize, ROUGE_TOKENIZERS, keys[1])):
        if value is not None and value not in known:
            raise ValueError(unknown_name_message(key, value, known, "tokenizer"))


class MetricWarning(UserWarning):
    """A score that is probably not what the user wants (e.g. a tokenizer that drops most references)."""


@dataclass(frozen=True)
class MetricSettings:
    """Settings a metric may read; each metric puts the ones it uses into its signature.

    language: the target language (ISO 639-1, e.g. 'zh'); when known, the tokenizers follow sacreBLEU's choice
    (BLEU: zh -> 'zh', ja -> 'ja-mecab', ko -> 'ko-mecab', else '13a'; ROUGE: 'unicode' for every language but
    English). An explicit `bleu_tokenize` (sacreBLEU's names) or `rouge_tokenize` wins.
    """

    stem: bool = True
    bleu_tokenize: str | None = None
    rouge_tokenize: str | None = None
    language: str | None = None

    def rouge_tokenizer(self) -> str:
        """The ROUGE tokenizer these settings select (one of ROUGE_TOKENIZERS)."""
        if self.rouge_tokenize is not None:
            return self.rouge_tokenize
        return "rouge_score" if self.language in (None, "en") else "unicode"


class Metric(ABC):
    """One metric with its settings: per-example statistics, a score from their sums, and a signature.

    Class facts: `name`; `higher_is_better`; `scale`, the best possible score (1.0, or 100.0 as sacreBLEU
    reports BLEU/chrF); `has_per_example`, whether an example has a value of its own (predictions.jsonl,
    win/tie/loss); `aggregation`, 'mean' (the score is the mean of the per-example values) or 'corpus' (computed
    from summed sufficient statistics); `inputs`, 'text' (a generated text against references), 'choice' (a
    chosen option index against the gold index, for multiple-choice benchmarks) or 'document' (a scored
    document's log-likelihood sums, for perplexity tasks: evaluate/metrics/perplexity.py); `on_labels`, whether it
    compares class labels (a classification task's metric: its evaluations get a per-label breakdown and the
    majority-label baseline, tunebench.evaluate.verdicts).
    """

    name: ClassVar[str]
    higher_is_better: ClassVar[bool] = True
    scale: ClassVar[float] = 1.0
    has_per_example: ClassVar[bool] = True
    aggregation: ClassVar[Literal["mean", "corpus"]] = "mean"
    inputs: ClassVar[Literal["text", "choice", "document"]] = "text"
    on_labels: ClassVar[bool] = False

    def __init__(self, settings: MetricSettings | None = None) -> None:
        self.settings = settings or MetricSettings()

    @abstractmethod
    def stats(self, predictions: Sequence[Any], references: Sequence[Sequence[Any]]) -> np.ndarray:
        """(N, K) per-example statistics; inputs were checked by `check_inputs`."""

    def score(self, sums: np.ndarray, n: int) -> np.ndarray:
        """Scores (B,) from summed statistics (B, K) over `n` examples; a mean metric's column 0 / n."""
        return np.atleast_2d(sums)[:, 0] / n

    def per_example(self, stats: np.ndarray) -> np.ndarray | None:
        """(N,) per-example values, or None when the metric has none; a mean metric's column 0."""
        return stats[:, 0] if self.has_per_example else None

    @classmethod
    def stats_together(
        cls, metrics: Sequence[Metric], predictions: Sequence[Any], references: Sequence[Sequence[Any]]
    ) -> list[np.ndarray]:
        """Statistics of several metrics of this class in one pass (ROUGE types share their tokenization and
        LCS); by default each metric on its own."""
        return [m.stats(predictions, references) for m in metrics]

    def paired_values(self, stats: np.ndarray) -> np.ndarray:
        """(N,) values compared example by example (win/tie/loss, compare's examples): the per-example values;
        a metric without them overrides this."""
        values = self.per_example(stats)
        if values is None:
            raise NotImplementedError(f"{self.name} has no per-example values: override paired_values")
        return values

    @classmethod
    def settings_from_signature(cls, fields: dict[str, str]) -> dict[str, Any]:
        """MetricSettings fields read back from a stored signature (parse_signature), so a comparison
        recomputes the metric as it was computed."""
        return {}

    def signature_fields(self, references: Sequence[Sequence[Any]]) -> dict[str, str | bool | int]:
        """The settings that change the score, in signature order (after the metric name)."""
        return {"refs": refs_field(references)}

    def signature(self, references: Sequence[Sequence[Any]]) -> str:
        """`name|key:value|...|version:tunebench-X` from the metric's own settings and the reference count."""
        return make_signature(self.name, **self.signature_fields(references))

    def details(self, stats: np.ndarray) -> dict[str, Any]:
        """Extra corpus numbers for scores.json (ROUGE precision/recall, BLEU n-gram precisions)."""
        return {}

    def warnings(self, references: Sequence[Sequence[Any]]) -> list[str]:
        """Sentences warning that the score is probably not meaningful for these references."""
        return []

    @classmethod
    def format(cls, value: float) -> str:
        """A score or interval bound as printed in tables: 2 decimals on a 0-100 scale, 4 on 0-1."""
        return f"{value:.2f}" if cls.scale >= 100 else f"{value:.4f}"

    @classmethod
    def is_better(cls, value: float, than: float) -> bool:
        """Whether `value` is strictly better than `than` in this metric's direction."""
        return value > than if cls.higher_is_better else value < than


METRICS: dict[str, type[Metric]] = {}
"""Every registered metric class by name (filled by `register_metric`; registry.py imports the modules)."""

GROUPS: dict[str, tuple[str, ...]] = {}
"""Names a user may give that stand for several metrics ('rouge' = the four ROUGE types)."""


def register_metric(cls: type[Metric]) -> type[Metric]:
    """Class decorator: add a metric class to METRICS under its `name` (a repeated name is a bug)."""
    if cls.name in METRICS and METRICS[cls.name] is not cls:
        raise ValueError(f"metric {cls.name!r} is registered twice")
    METRICS[cls.name] = cls
    return cls


def register_group(name: str, members: Sequence[str]) -> None:
    """Register a name that expands to several metrics, in order."""
    GROUPS[name] = tuple(members)


def known_names(inputs: str | None = "text") -> list[str]:
    """Metric and group names a user may give (for `inputs` 'text', 'choice' or 'document'; None: all)."""
    names = [n for n, cls in METRICS.items() if inputs is None or cls.inputs == inputs]
    return [g for g, members in GROUPS.items() if all(m in names for m in members)] + names


def unknown_name_message(key: str | None, value: object, known: Sequence[str], what: str = "metric") -> str:
    """One sentence naming the key path (None: the caller adds it, as pydantic does), the bad value and the
    known names, with `did you mean` (difflib's closest match) when one is close; used for every
    registry-checked config key."""
    close = difflib.get_close_matches(str(value), list(known), n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'? " if close else ""
    prefix = f"{key}: " if key else ""
    return f"{prefix}unknown {what} '{value}'; {hint}known {what}s: {', '.join(known)}"


def get_metric(name: str, settings: MetricSettings | None = None) -> Metric:
    """A metric object by registered name; KeyError for an unknown name (callers check names first)."""
    return METRICS[name](settings)
