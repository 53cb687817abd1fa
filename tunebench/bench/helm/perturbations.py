"""Seeded, meaning-preserving input perturbations for HELM's robustness and fairness metrics.

Robustness: lowercasing, keyboard-neighbour typos on a share of words, extra whitespace, and contraction/expansion
flips. Fairness: swapping gendered pronouns and terms, and swapping first names between demographic name lists.
Each perturbation maps the *input* texts of one instance to new texts; callers never hand it choices, labels or
targets, so those cannot change. Every instance gets its own RNG seeded by (seed, perturbation, instance key), so a
perturbed input is reproducible on its own and independent of evaluation order.

Written by hand after HELM's augmentations (stanford-crfm/helm, src/helm/benchmark/augmentations/) because
HELM is a full evaluation framework, not a library these can be imported from, and NL-Augmenter is unmaintained.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Literal

from tunebench.bench.helm.lexicons import load_lexicon

ROBUSTNESS_PERTURBATIONS = ("lowercase", "typos", "extra_whitespace", "contraction_expansion")
FAIRNESS_PERTURBATIONS = ("gender_swap", "name_swap")
TYPO_SHARE = 0.2

_KEYBOARD_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
# Column offsets of the neighbouring rows' keys that touch a key: the QWERTY stagger shifts each row to the right.
_ROW_NEIGHBOURS = {0: {1: (-1, 0)}, 1: {0: (0, 1), 2: (-1, 0)}, 2: {1: (0, 1)}}


def _keyboard_neighbours() -> dict[str, str]:
    """Keys at distance one on a QWERTY keyboard (same row left/right, touching keys above and below)."""
    out: dict[str, str] = {}
    for r, row in enumerate(_KEYBOARD_ROWS):
        for c, key in enumerate(row):
            near = [row[i] for i in (c - 1, c + 1) if 0 <= i < len(row)]
            for other, offsets in _ROW_NEIGHBOURS[r].items():
                near += [_KEYBOARD_ROWS[other][c + d] for d in offsets if 0 <= c + d < len(_KEYBOARD_ROWS[other])]
            out[key] = "".join(near)
    return out


KEYBOARD_NEIGHBOURS = _keyboard_neighbours()

_CONTRACTIONS = {
    "do not": "don't", "does not": "doesn't", "did not": "didn't", "is not": "isn't", "are not": "aren't",
    "was not": "wasn't", "were not": "weren't", "has not": "hasn't", "have not": "haven't", "had not": "hadn't",
    "will not": "won't", "would not": "wouldn't", "should not": "shouldn't", "could not": "couldn't",
    "cannot": "can't", "must not": "mustn't", "i am": "i'm", "you are": "you're", "we are": "we're",
    "they are": "they're", "it is": "it's", "that is": "that's", "there is": "there's", "what is": "what's",
    "he is": "he's", "she is": "she's", "let us": "let's", "i have": "i've", "you have": "you've",
    "we have": "we've", "they have": "they've", "i will": "i'll", "you will": "you'll", "we will": "we'll",
    "they will": "they'll",
}
_EXPANSIONS = {v: k for k, v in _CONTRACTIONS.items()}


def match_case(source: str, word: str) -> str:
    """Give `word` the casing pattern of `source`: UPPER, Title or lower."""
    if len(source) > 1 and source.isupper():
        return word.upper()
    if source[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


def _lowercase(texts: list[str], rng: random.Random) -> list[str]:
    return [t.lower() for t in texts]


def _typos(texts: list[str], rng: random.Random) -> list[str]:
    """Replace one letter with a keyboard neighbour in a seeded TYPO_SHARE of each text's words (at least one)."""
    out = []
    for text in texts:
        words = list(re.finditer(r"[A-Za-z]{2,}", text))
        if not words:
            out.append(text)
            continue
        k = max(1, round(TYPO_SHARE * len(words)))
        chars = list(text)
        for m in sorted(rng.sample(words, k), key=lambda m: m.start()):
            pos = m.start() + rng.randrange(m.end() - m.start())
            letter = chars[pos]
            chars[pos] = match_case(letter, rng.choice(KEYBOARD_NEIGHBOURS[letter.lower()]))
        out.append("".join(chars))
    return out


def _extra_whitespace(texts: list[str], rng: random.Random) -> list[str]:
    """Widen every run of spaces between words to 2-4 spaces (newlines are left alone: they may be structure)."""
    return [re.sub(r" +", lambda m: " " * rng.randint(2, 4), t) for t in texts]


def _clitic_pattern(contracted: str) -> str:
    """Regex for a contraction, also in tokenized form ("do n't", "it 's") as in SST-2 and other tokenized corpora."""
    cut = contracted.index("n't") if contracted.endswith("n't") else contracted.index("'")
    stem, clitic = contracted[:cut], contracted[cut:]
    return re.escape(stem) + " ?" + re.escape(clitic).replace("'", "['’]")


_FLIP_RE = re.compile(
    r"(?<![\w'’])("
    + "|".join(
        sorted([re.escape(k).replace(r"\ ", r"\s+") for k in _CONTRACTIONS] + [_clitic_pattern(c) for c in _EXPANSIONS],
               key=len, reverse=True)
    )
    + r")(?![\w'’])",
    re.IGNORECASE,
)


def _flip(match: re.Match[str]) -> str:
    found = match.group(0)
    key = re.sub(r"\s+", " ", found.lower().replace("’", "'"))
    if key in _CONTRACTIONS:
        return match_case(found, _CONTRACTIONS[key])
    return match_case(found, _EXPANSIONS[key.replace(" ", "")])


def _contraction_expansion(texts: list[str], rng: random.Random) -> list[str]:
    """Contract expanded forms and expand contractions, in one pass so no phrase flips twice."""
    return [_FLIP_RE.sub(_flip, t) for t in texts]


# Words after which "her" is an object pronoun (-> "him") and "his" a standalone one (-> "hers").
_NOT_A_NOUN_PHRASE = frozenset(
    "a an the and or but nor so to in on at for with from by of as than that this these those into onto up down "
    "out off over again back too very if when because about is was are were be been".split()
)


def _gender_maps() -> dict[str, str]:
    mapping: dict[str, str] = {"him": "her", "himself": "herself", "hers": "his"}
    for female, male in load_lexicon("gender_pairs")["pairs"]:
        mapping.setdefault(female, male)
        mapping.setdefault(male, female)
    return mapping


def _gender_swap(texts: list[str], rng: random.Random) -> list[str]:
    """Swap female and male pronouns and terms in both directions, keeping case.

    "her" and "his" are ambiguous (him/his, her/hers); the next word decides: end of text, punctuation or a
    function word means the pronoun stands alone. A heuristic, as in HELM, which keeps the first mapping.
    """
    mapping = _gender_maps()
    words = sorted(set(mapping) | {"her", "his"}, key=len, reverse=True)
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, words)) + r")\b(?=(\W*)(\w*))", re.IGNORECASE)

    def swap(m: re.Match[str]) -> str:
        word, gap, after = m.group(1), m.group(2), m.group(3).lower()
        stands_alone = not after or bool(gap.strip()) or after in _NOT_A_NOUN_PHRASE
        low = word.lower()
        if low == "her":
            return match_case(word, "him" if stands_alone else "his")
        if low == "his":
            return match_case(word, "hers" if stands_alone else "her")
        return match_case(word, mapping[low])

    return [pattern.sub(swap, t) for t in texts]


@cache
def _name_table() -> tuple[dict[str, tuple[str, str]], dict[tuple[str, str], tuple[str, ...]], frozenset[str]]:
    """name (lower) -> (group, gender); (group, gender) -> names of the other group; names that are also words."""
    groups = load_lexicon("first_names")["groups"]
    owner = {n.lower(): (g, sex) for g, by_sex in groups.items() for sex, names in by_sex.items() for n in names}
    others = {
        (g, sex): tuple(n for og, ob in groups.items() if og != g for n in ob[sex])
        for g, by_sex in groups.items()
        for sex in by_sex
    }
    common = frozenset(w.lower() for w in load_lexicon("first_names").get("common_words", []))
    return owner, others, common


def _name_swap(texts: list[str], rng: random.Random) -> list[str]:
    """Replace each first name from one name list by a seeded pick of the same gender from the other list.

    One mapping per instance, shared by all its input texts, so a name that recurs stays one person. In
    mixed-case text only capitalized names count; in all-lowercase text (e.g. SST-2) names that are also common
    words (frank, jack, amber...) are skipped so that ordinary words are not renamed.
    """
    owner, others, common = _name_table()
    pattern = re.compile(r"\b(" + "|".join(sorted(map(re.escape, owner), key=len, reverse=True)) + r")\b", re.I)
    chosen: dict[str, str] = {}

    def rename(m: re.Match[str], lowercase_text: bool) -> str:
        word = m.group(1)
        low = word.lower()
        if (lowercase_text and low in common) or (not lowercase_text and not word[:1].isupper()):
            return word
        if low not in chosen:
            pool = [n for n in others[owner[low]] if n.lower() not in chosen.values()] or list(others[owner[low]])
            chosen[low] = rng.choice(pool).lower()
        return match_case(word, chosen[low].capitalize() if word[:1].isupper() else chosen[low])

    out = []
    for text in texts:
        lowercase_text = text == text.lower()
        out.append(pattern.sub(lambda m: rename(m, lowercase_text), text))  # noqa: B023 (used at once)
    return out


@dataclass(frozen=True)
class Perturbation:
    """A named transformation of an instance's input texts; `kind` says which HELM metric it feeds."""

    name: str
    kind: Literal["robustness", "fairness"]
    apply: Callable[[list[str], random.Random], list[str]]


PERTURBATIONS: dict[str, Perturbation] = {
    p.name: p
    for p in (
        Perturbation("lowercase", "robustness", _lowercase),
        Perturbation("typos", "robustness", _typos),
        Perturbation("extra_whitespace", "robustness", _extra_whitespace),
        Perturbation("contraction_expansion", "robustness", _contraction_expansion),
        Perturbation("gender_swap", "fairness", _gender_swap),
        Perturbation("name_swap", "fairness", _name_swap),
    )
}


def perturb_texts(texts: Sequence[str], name: str, *, seed: int, key: str) -> list[str]:
    """Apply perturbation `name` to one instance's input texts with an RNG seeded by (seed, name, key)."""
    if name not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation {name!r}; choose from {', '.join(PERTURBATIONS)}")
    rng = random.Random(f"{seed}|{name}|{key}")
    return PERTURBATIONS[name].apply(list(texts), rng)


def worst_case_scores(original: Sequence[float], perturbed: Mapping[str, Sequence[float]]) -> list[float]:
    """Per instance, the lowest score over the original and every perturbation (HELM's worst case).

    With 0/1 correctness an instance counts as correct only if it is correct under all of them.
    """
    for name, scores in perturbed.items():
        if len(scores) != len(original):
            raise ValueError(f"perturbation {name!r} has {len(scores)} results for {len(original)} instances")
    return [float(min([score, *(s[i] for s in perturbed.values())])) for i, score in enumerate(original)]
