"""The word lists HELM's metrics match against, as JSON data files; each file names its source and license."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any


@cache
def load_lexicon(name: str) -> dict[str, Any]:
    """Read lexicons/<name>.json (demographic_words, first_names, gender_pairs, toxicity); cached, do not mutate."""
    text = resources.files(__name__).joinpath(f"{name}.json").read_text(encoding="utf-8")
    return json.loads(text)
