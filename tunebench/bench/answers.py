"""Answer extraction and token F1 for generation tasks.

Filters turn a free-form generation into the answer a metric compares (lm-evaluation-harness's filter idea:
regex, first line, strip). Token F1 is SQuAD's (lower-cased, punctuation and articles dropped, bag-of-tokens
overlap, best reference); the metric registry has exact match and ROUGE but not this one, so it lives here.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

from tunebench.bench.spec import Filter, RegexFilter

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def apply_filters(text: str, filters: Sequence[Filter]) -> str:
    """Run the spec's filters in order; a regex that does not match gives its fallback."""
    for f in filters:
        if isinstance(f, RegexFilter):
            match = re.search(f.regex, text)
            text = match.group(f.group) if match else f.fallback
        elif f == "strip":
            text = text.strip()
        elif f == "first_line":
            text = text.strip().split("\n", 1)[0] if text.strip() else ""
        elif f == "lower":
            text = text.lower()
    return text


def _squad_tokens(text: str) -> list[str]:
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return _ARTICLES.sub(" ", text).split()


def token_f1(prediction: str, references: Sequence[str]) -> float:
    """SQuAD token F1 against the best-matching reference."""
    pred = _squad_tokens(prediction)
    best = 0.0
    for ref in references:
        gold = _squad_tokens(ref)
        if not pred or not gold:
            best = max(best, float(pred == gold))
            continue
        common = sum((Counter(pred) & Counter(gold)).values())
        if common:
            precision, recall = common / len(pred), common / len(gold)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best
