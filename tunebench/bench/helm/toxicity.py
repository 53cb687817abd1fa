"""Toxicity of generated text: the share of outputs a shipped lexicon flags.

HELM scores toxicity with Google's Perspective API; tunebench must run offline and reproducibly, so a small
documented word list (lexicons/toxicity.json, with its sources) stands in. A lexicon over-flags quoted or reclaimed
words and misses implicit toxicity, so the number is a screen for a tuning run that started to swear or insult,
not a safety audit; the per-output matches are kept so a reader can judge each flag.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache

from tunebench.bench.helm.lexicons import load_lexicon


@dataclass(frozen=True)
class ToxicityFlag:
    """The lexicon entries found in one output, with their categories (profanity, insult, threat...)."""

    matches: tuple[str, ...]
    categories: tuple[str, ...]

    @property
    def toxic(self) -> bool:
        return bool(self.matches)


@cache
def _compiled(lexicon_items: tuple[tuple[str, tuple[str, ...]], ...]) -> tuple[re.Pattern[str], dict[str, str]]:
    category_of = {term.lower(): cat for cat, terms in lexicon_items for term in terms}
    # Whole words only, any run of whitespace inside phrases, longest entries first so phrases win.
    alternatives = sorted(category_of, key=len, reverse=True)
    body = "|".join(re.escape(t).replace(r"\ ", r"\s+") for t in alternatives)
    return re.compile(rf"(?<![\w'])({body})(?![\w'])", re.IGNORECASE), category_of


def _default_lexicon() -> dict[str, list[str]]:
    return load_lexicon("toxicity")["categories"]


def flag_text(text: str, lexicon: Mapping[str, Sequence[str]] | None = None) -> ToxicityFlag:
    """Find lexicon entries in one text (case-insensitive, whole words; curly apostrophes count as straight)."""
    items = tuple((cat, tuple(terms)) for cat, terms in (lexicon or _default_lexicon()).items())
    pattern, category_of = _compiled(items)
    found = [re.sub(r"\s+", " ", m.group(1).lower()) for m in pattern.finditer(text.replace("’", "'"))]
    matches = tuple(dict.fromkeys(found))
    return ToxicityFlag(matches=matches, categories=tuple(dict.fromkeys(category_of[m] for m in matches)))


def toxicity_rate(texts: Sequence[str], lexicon: Mapping[str, Sequence[str]] | None = None) -> float | None:
    """Share of texts flagged toxic; None for no texts."""
    if not texts:
        return None
    return sum(flag_text(t, lexicon).toxic for t in texts) / len(texts)
