"""Named-entity recognition as text generation: IOB2 tags <-> a readable entity list, and back.

The completion a model learns is the sentence's entities in order of appearance, each as `type: surface`,
joined by "; " (`person: Nadim Ladki; location: AL-AIN; location: United Arab Emirates`), or `none` when the
sentence has none (the "entity list" output format of instruction-tuned NER, e.g. UniversalNER, Zhou et al. 2024;
InstructUIE, Wang et al. 2023). To score generated lists with `seqeval` (entity-level precision/recall/F1 over
IOB2 tag sequences, Tjong Kim Sang & De Meulder 2003), `tags_from_entity_list` rebuilds tags over the sentence's
tokens: each listed entity is placed at the first free exact token match at or after the end of the previous
entity, else the first free match anywhere; an entity whose words are not in the sentence cannot be tagged and is
counted as unaligned. An output that is not such a list (a segment without `type:` or with an unknown type) is
unparseable: it counts as no entities, and is counted. Entity spans are read from tags by seqeval's
`get_entities`, the same function its metrics use.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tunebench.errors import DataError

CONLL2003_TYPES: dict[str, str] = {"PER": "person", "ORG": "organization", "LOC": "location", "MISC": "miscellaneous"}
"""CoNLL-2003's entity types (tag suffix -> the word used in entity lists)."""

NONE_TEXT = "none"
SEPARATOR = "; "


def _type_aliases(types: Mapping[str, str]) -> dict[str, str]:
    """Lower-cased names a generated list may use for each tag type: the word, its plural, and the code."""
    aliases: dict[str, str] = {}
    for code, word in types.items():
        for alias in (word, word + "s", code):
            aliases[alias.lower()] = code
    if "PER" in types:
        aliases.setdefault("people", "PER")
    return aliases


def tag_problem(tokens: Sequence[str], tags: Sequence[str], types: Mapping[str, str]) -> str | None:
    """What is wrong with one tagged sentence (lengths differ, a tag outside O / B-<type> / I-<type>), or None."""
    if len(tokens) != len(tags):
        return f"{len(tokens)} tokens but {len(tags)} labels; each token needs one IOB2 label"
    for k, tag in enumerate(tags):
        if tag == "O":
            continue
        prefix, _, kind = str(tag).partition("-")
        if prefix not in ("B", "I") or kind not in types:
            return (f"label {tag!r} at token {k + 1} is outside the tag set (O, or B-/I- with {', '.join(types)}); "
                    "fix the data or the task's entity types")
    return None


def check_tags(tokens: Sequence[str], tags: Sequence[str], types: Mapping[str, str], where: str) -> None:
    """DataError naming `where` (file and row) when `tag_problem` finds something wrong."""
    problem = tag_problem(tokens, tags, types)
    if problem is not None:
        raise DataError(f"{where}: {problem}")


def entity_spans(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """(type, start, end inclusive) of each entity in an IOB2 tag sequence, by seqeval's `get_entities`."""
    from seqeval.metrics.sequence_labeling import get_entities

    return [(t, s, e) for t, s, e in get_entities(list(tags))]


def format_entity_list(tokens: Sequence[str], tags: Sequence[str], types: Mapping[str, str] = CONLL2003_TYPES,
                       where: str = "data") -> str:
    """The readable entity list of one tagged sentence: `type: words; ...` in order of appearance, or `none`.

    Raises DataError naming `where` when tokens and tags differ in length or a tag is outside the tag set.
    """
    check_tags(tokens, tags, types, where)
    parts = [f"{types[t]}: {' '.join(tokens[s : e + 1])}" for t, s, e in entity_spans(tags)]
    return SEPARATOR.join(parts) if parts else NONE_TEXT


def parse_entity_list(text: str, types: Mapping[str, str] = CONLL2003_TYPES) -> list[tuple[str, str]] | None:
    """(type code, surface) pairs of a generated entity list, or None when the text is not one.

    Reads the first non-empty line; `none` (any case, trailing period allowed) and an empty output are the
    empty list. A segment without `type:`, with an unknown type, or with no words makes the output unparseable.
    """
    aliases = _type_aliases(types)
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    if not line or line.rstrip(".").strip().lower() == NONE_TEXT:
        return []
    out = []
    for segment in line.split(";"):
        segment = segment.strip()
        if not segment:
            continue
        kind, sep, surface = segment.partition(":")
        code = aliases.get(kind.strip().lower())
        surface = " ".join(surface.split())
        if not sep or code is None or not surface:
            return None
        out.append((code, surface))
    return out


@dataclass(frozen=True)
class RebuiltTags:
    """Tags rebuilt from a generated list: IOB2 tags (one per token), whether the text parsed, unaligned count."""

    tags: list[str]
    parsed: bool
    unaligned: int


def _find(tokens: Sequence[str], words: Sequence[str], free: list[bool], start: int) -> int | None:
    n = len(words)
    for i in range(start, len(tokens) - n + 1):
        if all(free[i : i + n]) and list(tokens[i : i + n]) == list(words):
            return i
    return None


def tags_from_entity_list(tokens: Sequence[str], text: str,
                          types: Mapping[str, str] = CONLL2003_TYPES) -> RebuiltTags:
    """IOB2 tags over `tokens` from a generated entity list (see the module docstring for the placement rule)."""
    tags = ["O"] * len(tokens)
    entities = parse_entity_list(text, types)
    if entities is None:
        return RebuiltTags(tags, False, 0)
    free = [True] * len(tokens)
    cursor, unaligned = 0, 0
    for code, surface in entities:
        words = surface.split()
        at = _find(tokens, words, free, cursor)
        if at is None:
            at = _find(tokens, words, free, 0)
        if at is None:
            unaligned += 1
            continue
        for j in range(at, at + len(words)):
            tags[j] = ("B-" if j == at else "I-") + code
            free[j] = False
        cursor = at + len(words)
    return RebuiltTags(tags, True, unaligned)


def ner_reference(tokens: Sequence[str], tags: Sequence[str], types: Mapping[str, str] = CONLL2003_TYPES,
                  where: str = "data") -> str:
    """The reference an NER example is scored against: JSON {"tokens", "labels"} (checked against the tag set).

    seqeval needs the sentence's tokens to place the generated entities, and the gold tags themselves.
    """
    check_tags(tokens, tags, types, where)
    return json.dumps({"tokens": list(tokens), "labels": list(tags)}, ensure_ascii=False)


def read_ner_reference(reference: str, where: str = "reference") -> tuple[list[str], list[str]]:
    """(tokens, gold tags) of a reference made by `ner_reference`; DataError naming `where` otherwise."""
    try:
        data = json.loads(reference)
        tokens, labels = data["tokens"], data["labels"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise DataError(
            f"{where}: an NER reference must be JSON with 'tokens' and 'labels' (as the ner templates write it); "
            "use the seqeval metric only on NER tasks"
        ) from None
    if not isinstance(tokens, list) or not isinstance(labels, list) or len(tokens) != len(labels):
        raise DataError(f"{where}: an NER reference needs equally long 'tokens' and 'labels' lists")
    return [str(t) for t in tokens], [str(t) for t in labels]
