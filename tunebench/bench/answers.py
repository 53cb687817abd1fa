"""Answer extraction for generation tasks (token F1, SQuAD's, is the registry's `f1` metric).

Filters turn a free-form generation into the answer a metric compares (lm-evaluation-harness's filter idea:
regex, first line, strip).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from tunebench.bench.spec import Filter, RegexFilter


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
