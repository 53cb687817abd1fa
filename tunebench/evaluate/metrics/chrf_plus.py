"""chrF++ (Popović 2017): chrF with word unigrams and bigrams added, as sacreBLEU's CHRF(word_order=2)."""

from __future__ import annotations

from typing import Any

from tunebench.evaluate.metrics.base import register_metric
from tunebench.evaluate.metrics.bleu import SacreBleuMetric


@register_metric
class ChrfPlusPlus(SacreBleuMetric):
    """Character 6-grams and word 2-grams, F-beta with beta 2, on 0-100; sacreBLEU's numbers and signature."""

    name = "chrf++"

    def sacrebleu_metric(self, *, sentence: bool) -> Any:
        from sacrebleu.metrics import CHRF

        return CHRF(word_order=2)
