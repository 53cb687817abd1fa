"""BLEU and chrF through sacreBLEU, kept as per-example sufficient statistics for fast bootstrap.

sacreBLEU is the reference implementation, so the numbers are its own; what it lacks is a seeded bootstrap
that shares resample indices across systems, so scores are recomputed here from summed per-sentence statistics
with sacreBLEU's own `_compute_score_from_stats` (the same route its `--paired-bs` takes). Examples with fewer
references are padded with None in the reference streams, which sacreBLEU drops per segment. The BLEU tokenizer
is sacreBLEU's choice: the one named, else its default for the target language (zh, ja-mecab, ko-mecab; 13a).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import regex

from tunebench.errors import ConfigError
from tunebench.evaluate.metrics.base import BLEU_TOKENIZERS, Metric, MetricSettings, register_metric

_SPACE_TOKENIZERS = ("13a", "intl", "none")  # sacreBLEU tokenizers that never split inside a run of letters
_UNSPACED = regex.compile(r"[\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}\p{Tibetan}]")


def unspaced_share(text: str) -> float:
    """Share of the letters of `text` in scripts written without spaces between words (0.0 for no letters)."""
    letters = sum(ch.isalnum() for ch in text)
    return len(_UNSPACED.findall(text)) / letters if letters else 0.0


def reference_streams(references: Sequence[Sequence[str]]) -> list[list[str | None]]:
    """Per-example reference lists -> sacreBLEU's reference streams, padded with None."""
    width = max((len(r) for r in references), default=0)
    return [[refs[k] if k < len(refs) else None for refs in references] for k in range(width)]


class SacreBleuMetric(Metric):
    """A sacreBLEU metric held as per-segment statistics; subclasses build the sacreBLEU object."""

    scale = 100.0
    aggregation = "corpus"

    def __init__(self, settings: MetricSettings | None = None) -> None:
        super().__init__(settings)
        self._corpus = self.sacrebleu_metric(sentence=False)
        self._sentence = self.sacrebleu_metric(sentence=True)
        self._signature: str | None = None

    def sacrebleu_metric(self, *, sentence: bool) -> Any:
        """The sacreBLEU object: corpus-level, or the sentence-level twin for per-example values."""
        raise NotImplementedError

    def stats(self, predictions: Sequence[str], references: Sequence[Sequence[str]]) -> np.ndarray:
        stats = self._corpus._extract_corpus_statistics(list(predictions), reference_streams(references))
        self._signature = self._corpus.get_signature().format()
        return np.asarray(stats, dtype=np.float64).reshape(len(predictions), -1)

    def score(self, sums: np.ndarray, n: int) -> np.ndarray:
        """Corpus scores (0-100) for each row of summed statistics, computed by sacreBLEU."""
        return np.array([self._corpus._compute_score_from_stats(row.tolist()).score for row in np.atleast_2d(sums)])

    def per_example(self, stats: np.ndarray) -> np.ndarray:
        """Sentence scores from the same statistics (sentence BLEU uses effective order, as sentence_bleu)."""
        return np.array([self._sentence._compute_score_from_stats(row.tolist()).score for row in stats])

    def signature(self, references: Sequence[Sequence[str]]) -> str:
        """sacreBLEU's own signature (it knows the reference count once statistics were extracted)."""
        if self._signature is None:
            self.stats([refs[0] for refs in references], references)
        assert self._signature is not None
        return self._signature


@register_metric
class Bleu(SacreBleuMetric):
    """Corpus BLEU (Papineni et al. 2002) as sacreBLEU computes it, with the settings' tokenizer."""

    name = "bleu"

    def sacrebleu_metric(self, *, sentence: bool) -> Any:
        from sacrebleu.metrics import BLEU

        tokenize, language = self.settings.bleu_tokenize, self.settings.language or ""
        try:
            return BLEU(tokenize=tokenize, trg_lang=language, effective_order=sentence)
        except (KeyError, RuntimeError, ImportError) as exc:
            chosen = tokenize or BLEU._TOKENIZER_MAP.get(language, BLEU.TOKENIZER_DEFAULT)
            detail = " ".join(str(exc).split()) or "unknown name"
            raise ConfigError(
                f"BLEU tokenizer '{chosen}' cannot be used ({detail}); choose one of {', '.join(BLEU_TOKENIZERS)}"
            ) from None

    @classmethod
    def settings_from_signature(cls, fields: dict[str, str]) -> dict[str, Any]:
        """sacreBLEU writes the tokenizer's signature (ja-mecab adds its version): map it back to the name."""
        tok = fields.get("tok", "13a")
        name = next((t for t in BLEU_TOKENIZERS if tok == t or tok.startswith(f"{t}-")), None)
        return {"bleu_tokenize": name} if name else {}

    def details(self, stats: np.ndarray) -> dict[str, Any]:
        """BLEU's n-gram precisions and brevity penalty on the whole corpus."""
        result = self._corpus._compute_score_from_stats(stats.sum(0).tolist())
        return {"precisions": [float(p) for p in result.precisions], "bp": float(result.bp)}

    def warnings(self, references: Sequence[Sequence[str]]) -> list[str]:
        """Warn when most references are mostly in scripts written without spaces and the tokenizer splits on
        spaces and punctuation only (13a, intl, none): each clause is then one token and BLEU is near 0."""
        tok = self._corpus.tokenizer.signature()
        if tok not in _SPACE_TOKENIZERS:
            return []
        texts = [r for refs in references for r in refs]
        unsplit = sum(unspaced_share(t) > 0.5 for t in texts)
        if texts and unsplit > len(texts) / 2:
            return [
                f"bleu: the '{tok}' tokenizer leaves {unsplit} of {len(texts)} references almost unsplit (mostly "
                "Chinese, Japanese or Thai-type script), so BLEU is near 0 or meaningless; set the BLEU tokenizer "
                "(zh, ja-mecab, char, flores200) or the target language"
            ]
        return []


@register_metric
class Chrf(SacreBleuMetric):
    """chrF (Popović 2015): character n-gram F-score, as sacreBLEU computes it."""

    name = "chrf"

    def sacrebleu_metric(self, *, sentence: bool) -> Any:
        from sacrebleu.metrics import CHRF

        return CHRF()
