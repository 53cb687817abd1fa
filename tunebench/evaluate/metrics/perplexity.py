"""Language-model metrics over scored documents: per-token NLL, token/word/byte perplexity, bits per byte, KL.

Each is a ratio of two per-document sums, transform(sum numerator / sum denominator), as lm-evaluation-harness
defines them (`lm_eval/api/metrics.py`: word_perplexity = exp(sum NLL / words), byte_perplexity = exp(sum NLL /
bytes), bits_per_byte = sum NLL / bytes / ln 2); nll and token_perplexity divide by tokens, and kl is the mean
KL(p_base ‖ p_model) per token (nats/token). Their input is the per-document row that `bench/perplexity.py`
writes (keys nll, kl, tokens, words, bytes), not a text against references: `inputs = "document"`, so they
are offered for perplexity tasks only. Lower is better for every one of them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from tunebench.evaluate.metrics.base import Metric, register_metric

LN2 = math.log(2)


class DocumentRatioMetric(Metric):
    """transform(sum numerator / sum denominator) over per-document rows; statistics (N, 2) per document."""

    higher_is_better = False
    has_per_example = False
    aggregation = "corpus"
    inputs = "document"
    numerator: ClassVar[str] = "nll"
    denominator: ClassVar[str] = "tokens"
    description: ClassVar[str] = ""

    @staticmethod
    def transform(x: np.ndarray) -> np.ndarray:
        return x

    def stats(self, predictions: Sequence[Any], references: Sequence[Sequence[Any]] = ()) -> np.ndarray:
        """(N, 2): each document row's numerator and denominator; KeyError when a row lacks them."""
        return np.array([[float(r[self.numerator]), float(r[self.denominator])] for r in predictions],
                        dtype=np.float64).reshape(-1, 2)

    def score_sums(self, sums: np.ndarray) -> np.ndarray:
        """Scores (B,) from summed statistics (B, 2)."""
        sums = np.atleast_2d(sums)
        return self.transform(sums[:, 0] / sums[:, 1])

    def score(self, sums: np.ndarray, n: int) -> np.ndarray:
        return self.score_sums(sums)

    def score_rows(self, rows: Sequence[dict[str, Any]]) -> float:
        """The corpus value over document rows."""
        return float(self.score_sums(self.stats(rows).sum(0, keepdims=True))[0])

    def signature_fields(self, references: Sequence[Sequence[Any]]) -> dict[str, str | bool | int]:
        return {"per": self.denominator}


@register_metric
class NLL(DocumentRatioMetric):
    name = "nll"
    description = "negative log-likelihood per token (nats/token)"


@register_metric
class TokenPerplexity(DocumentRatioMetric):
    name = "token_perplexity"
    description = "exp(NLL per token)"
    transform = staticmethod(np.exp)


@register_metric
class WordPerplexity(DocumentRatioMetric):
    name = "word_perplexity"
    denominator = "words"
    description = "exp(NLL per whitespace-separated word)"
    transform = staticmethod(np.exp)


@register_metric
class BytePerplexity(DocumentRatioMetric):
    name = "byte_perplexity"
    denominator = "bytes"
    description = "exp(NLL per UTF-8 byte)"
    transform = staticmethod(np.exp)


def _bits(x: np.ndarray) -> np.ndarray:
    return x / LN2


@register_metric
class BitsPerByte(DocumentRatioMetric):
    name = "bits_per_byte"
    denominator = "bytes"
    description = "NLL per UTF-8 byte in bits"
    transform = staticmethod(_bits)


@register_metric
class KLDivergence(DocumentRatioMetric):
    name = "kl"
    numerator = "kl"
    description = "mean KL(p_base ‖ p_model) per token (nats/token)"
