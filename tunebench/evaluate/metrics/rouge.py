"""ROUGE-1/2/L/Lsum with the numbers of `rouge_score` (to 1e-9), >10x faster (speed/rouge_speed.py).

Why by hand: `rouge_score` is the reference everyone reports, but it re-stems every token of every text
(NLTK's Porter stemmer is its hot spot), re-tokenizes for Lsum, and fills a Python O(m*n) table per LCS. Here
each distinct text is tokenized and stemmed once (stems cached per word), tokens are integer-encoded, one
tokenization serves all four types, and LCS runs bit-parallel (Hyyrö 2004) on Python integers. Lsum needs the
*same* LCS that `rouge_score` backtracks (its union-LCS depends on which one is picked), so the backtracking
reproduces its tie-breaking exactly, one column per step (see `_lcs_indices`). Semantics kept from
`rouge_score`: lowercase, non-[a-z0-9] to spaces, Porter (NLTK extensions) on tokens longer than 3 characters,
Lsum sentences = non-empty newline-separated lines, several references = the reference with the best F per
type (`score_multi`, first best on ties).

rouge_score's tokenizer drops every character outside a-z0-9, so Chinese, Japanese, Russian or Arabic text has
no tokens and scores 0. The `unicode` tokenizer keeps Unicode letters, marks and digits (casefolded) and makes
each Han, Hiragana and Katakana character a token of its own, as sacreBLEU's `zh` tokenizer splits Chinese
characters; ASCII tokens are stemmed exactly as rouge_score stems them.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import regex

from tunebench.evaluate.metrics.base import (
    ROUGE_TOKENIZERS,
    Metric,
    MetricSettings,
    register_group,
    register_metric,
)
from tunebench.evaluate.metrics.signature import refs_field

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")

_ALNUM_RUN = re.compile(r"[a-z0-9]+")
_VALID_TOKEN = re.compile(r"^[a-z0-9]+$")
_UNICODE_TOKEN = regex.compile(
    r"[\p{Han}\p{Hiragana}\p{Katakana}]|[[\p{L}\p{M}\p{N}]--[\p{Han}\p{Hiragana}\p{Katakana}]]+", regex.V1
)
TOKENIZERS = ROUGE_TOKENIZERS
_VOCAB: dict[str, int] = {}
_TOKEN_IDS: dict[tuple[bool, str], dict[str, int]] = {}


@lru_cache(maxsize=1)
def _porter() -> Any:
    """NLTK's Porter stemmer (NLTK_EXTENSIONS mode, as rouge_score), imported only when stemming (0.3 s)."""
    from nltk.stem import porter

    return porter.PorterStemmer()


def _token_id(word: str, stem: bool, cache: dict[str, int]) -> int:
    """Map a raw lowercase token to the id of its (stemmed) form; -1 when rouge_score would drop it."""
    tid = cache.get(word)
    if tid is None:
        ascii_word = _VALID_TOKEN.match(word) is not None
        form = _porter().stem(word) if stem and ascii_word and len(word) > 3 else word
        if _VALID_TOKEN.match(form) or not ascii_word:
            tid = _VOCAB.setdefault(form, len(_VOCAB))
        else:
            tid = -1
        cache[word] = tid
    return tid


def tokenize(text: str, stem: bool, tokenizer: str = "rouge_score") -> list[str]:
    """Tokens as ROUGE counts them; with 'rouge_score', exactly `rouge_score.tokenize.tokenize`'s."""
    ids = _encode(text, stem, tokenizer)
    inverse = {v: k for k, v in _VOCAB.items()}
    return [inverse[i] for i in ids]


def _words(text: str, tokenizer: str) -> list[str]:
    if tokenizer == "unicode":
        return _UNICODE_TOKEN.findall(text.casefold())
    return _ALNUM_RUN.findall(text.lower())


def kept_share(text: str, tokenizer: str) -> float:
    """Share of the letters and digits of `text` that the tokenizer keeps in tokens (1.0 for no letters)."""
    total = sum(1 for ch in text if ch.isalnum())
    return sum(len(w) for w in _words(text, tokenizer)) / total if total else 1.0


def _encode(text: str, stem: bool, tokenizer: str = "rouge_score") -> list[int]:
    cache = _TOKEN_IDS.setdefault((stem, tokenizer), {})
    words = _words(text, tokenizer)
    try:
        ids = [cache[w] for w in words]
    except KeyError:
        ids = [cache[w] if w in cache else _token_id(w, stem, cache) for w in words]
    if -1 in ids:
        ids = [i for i in ids if i >= 0]
    return ids


def _masks(tokens: Sequence[int]) -> dict[int, int]:
    """Bit i of masks[t] is set where tokens[i] == t: the match vectors of bit-parallel LCS."""
    masks: dict[int, int] = {}
    for i, t in enumerate(tokens):
        masks[t] = masks.get(t, 0) | (1 << i)
    return masks


@dataclass
class _Text:
    """What ROUGE needs from one text, computed once per (text, stem); masks only when it is a reference."""

    tokens: list[int]
    sentences: list[list[int]]
    unigrams: Counter
    bigrams: Counter
    _masks: dict[int, int] | None = field(default=None, repr=False)
    _sentence_masks: list[dict[int, int]] | None = field(default=None, repr=False)

    @property
    def masks(self) -> dict[int, int]:
        if self._masks is None:
            self._masks = _masks(self.tokens)
        return self._masks

    @property
    def sentence_masks(self) -> list[dict[int, int]]:
        if self._sentence_masks is None:
            self._sentence_masks = [_masks(s) for s in self.sentences]
        return self._sentence_masks


_TEXTS: dict[tuple[str, bool, str], _Text] = {}


def _text(text: str, stem: bool, tokenizer: str = "rouge_score") -> _Text:
    key = (text, stem, tokenizer)
    found = _TEXTS.get(key)
    if found is not None:
        return found
    # rouge_score splits Lsum sentences on "\n" and drops empty lines; the whole-text tokens are the same as
    # the concatenated sentence tokens because "\n" is a separator for the tokenizer too.
    sentences = [_encode(s, stem, tokenizer) for s in text.split("\n") if s]
    tokens = sentences[0] if len(sentences) == 1 else [t for s in sentences for t in s]
    item = _Text(tokens, sentences, Counter(tokens), Counter(zip(tokens, tokens[1:], strict=False)))
    if len(_TEXTS) > 200_000:  # bound memory for very long runs; recomputing is cheap
        _TEXTS.clear()
    _TEXTS[key] = item
    return item


def clear_caches() -> None:
    """Forget cached texts and stems (the speed benchmark measures a cold start)."""
    _TEXTS.clear()
    for cache in _TOKEN_IDS.values():
        cache.clear()


def _fmeasure(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def _ngram_prf(ref: Counter, pred: Counter, n_ref: int, n_pred: int) -> tuple[float, float, float]:
    hits = 0
    for key in ref.keys() & pred.keys():
        a, b = ref[key], pred[key]
        hits += a if a < b else b
    p = hits / max(n_pred, 1)
    r = hits / max(n_ref, 1)
    return p, r, _fmeasure(p, r)


def _lcs_length(ref_masks: dict[int, int], n_ref: int, pred: Sequence[int]) -> int:
    """Hyyrö's bit-vector LCS: zero bits of v (within n_ref bits) count the LCS length."""
    full = (1 << n_ref) - 1
    v = full
    for t in pred:
        m = ref_masks.get(t)
        if m:
            u = v & m
            v = ((v + u) | (v - u)) & full
    return n_ref - v.bit_count()


def _lcs_indices(ref_masks: dict[int, int], n_ref: int, pred: Sequence[int]) -> list[int]:
    """Indices into ref of the LCS that rouge_score's `lcs_ind` backtracks, in O(len(pred)) big-int steps.

    rouge_score walks its table from (m, n): on a match it goes diagonal, else up when the value above equals
    the current one, else left. Column j's values rise exactly at the zero bits of the bit-vector after j
    prediction tokens, so within a column the walk goes up to the highest match at or below the current row
    but not above the row where the column value last rose; with no such match it stops on that row and
    moves left.
    """
    full = (1 << n_ref) - 1
    v = full
    get = ref_masks.get
    columns = [full]  # columns[j]: the bit-vector after j prediction tokens; its zero bits are the rises
    for t in pred:
        m = get(t)
        if m:
            u = v & m
            v = ((v + u) | (v - u)) & full
        columns.append(v)
    out = []
    i = n_ref
    for j in range(len(pred), 0, -1):
        below = (1 << i) - 1
        low = (~columns[j] & below).bit_length()  # row where this column's value last rose
        if low == 0:
            break  # value 0: nothing left to match (also ends the walk at row 0)
        m = get(pred[j - 1], 0) & below & ~((1 << (low - 1)) - 1)
        if m:
            i = m.bit_length() - 1
            out.append(i)
        else:
            i = low
    out.reverse()
    return out


def _lcs_prf(ref: _Text, pred: _Text) -> tuple[float, float, float]:
    n_ref, n_pred = len(ref.tokens), len(pred.tokens)
    if not n_ref or not n_pred:
        return 0.0, 0.0, 0.0
    lcs = _lcs_length(ref.masks, n_ref, pred.tokens)
    p, r = lcs / n_pred, lcs / n_ref
    return p, r, _fmeasure(p, r)


def _union_lcs(sentence: list[int], masks: dict[int, int], candidates: list[list[int]]) -> set[int]:
    union: set[int] = set()
    for cand in candidates:
        if cand:
            union.update(_lcs_indices(masks, len(sentence), cand))
    return union


def _lsum_prf(ref: _Text, pred: _Text, l_prf: tuple[float, float, float]) -> tuple[float, float, float]:
    """Summary-level LCS over newline sentences: union LCS per reference sentence, hits capped by counts."""
    if not ref.sentences or not pred.sentences:
        return 0.0, 0.0, 0.0
    m, n = len(ref.tokens), len(pred.tokens)
    if not m or not n:
        return 0.0, 0.0, 0.0
    if len(ref.sentences) == 1 and len(pred.sentences) == 1:
        return l_prf  # one sentence each: the union LCS is the LCS, and rouge_score's arithmetic is the same
    if len(ref.sentences) == 1:
        # With one reference sentence the count caps never bind: each prediction sentence contributes at most
        # its own occurrences of a token, and union positions are distinct reference positions.
        union = _union_lcs(ref.tokens, ref.masks, pred.sentences)
        p, r = len(union) / n, len(union) / m
        return p, r, _fmeasure(p, r)
    left_ref = dict(ref.unigrams)
    left_pred = dict(pred.unigrams)
    hits = 0
    for sentence, masks in zip(ref.sentences, ref.sentence_masks, strict=True):
        if not sentence:
            continue
        for idx in sorted(_union_lcs(sentence, masks, pred.sentences)):
            t = sentence[idx]
            if left_pred.get(t, 0) > 0 and left_ref.get(t, 0) > 0:
                hits += 1
                left_pred[t] -= 1
                left_ref[t] -= 1
    p, r = hits / n, hits / m
    return p, r, _fmeasure(p, r)


def _pair_scores(ref: _Text, pred: _Text, types: Sequence[str]) -> dict[str, tuple[float, float, float]]:
    out: dict[str, tuple[float, float, float]] = {}
    if "rouge1" in types:
        out["rouge1"] = _ngram_prf(ref.unigrams, pred.unigrams, len(ref.tokens), len(pred.tokens))
    if "rouge2" in types:
        out["rouge2"] = _ngram_prf(
            ref.bigrams, pred.bigrams, max(len(ref.tokens) - 1, 0), max(len(pred.tokens) - 1, 0)
        )
    if "rougeL" in types or "rougeLsum" in types:
        l_prf = _lcs_prf(ref, pred)
        if "rougeL" in types:
            out["rougeL"] = l_prf
        if "rougeLsum" in types:
            out["rougeLsum"] = _lsum_prf(ref, pred, l_prf)
    return out


def rouge_prf(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    types: Sequence[str] = ROUGE_TYPES,
    *,
    stem: bool = True,
    tokenizer: str = "rouge_score",
) -> dict[str, np.ndarray]:
    """Per-example (precision, recall, F1) as an (N, 3) array per ROUGE type, as `score_multi` picks them."""
    for t in types:
        if t not in ROUGE_TYPES:
            raise ValueError(f"unknown ROUGE type {t!r}; choose from {', '.join(ROUGE_TYPES)}")
    if tokenizer not in TOKENIZERS:
        raise ValueError(f"unknown ROUGE tokenizer {tokenizer!r}; choose from {', '.join(TOKENIZERS)}")
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists")
    out = {t: np.zeros((len(predictions), 3)) for t in types}
    for k, (prediction, refs) in enumerate(zip(predictions, references, strict=True)):
        if not refs:
            raise ValueError(f"example {k} has no reference")
        pred = _text(prediction, stem, tokenizer)
        best: dict[str, tuple[float, float, float]] = {}
        for ref_text in refs:
            for t, prf in _pair_scores(_text(ref_text, stem, tokenizer), pred, types).items():
                if t not in best or prf[2] > best[t][2]:
                    best[t] = prf
        for t in types:
            out[t][k] = best[t]
    return out


class _Rouge(Metric):
    """One ROUGE type: statistics are per-example (precision, recall, F1); the score is mean F1 (0-1)."""

    def __init__(self, settings: MetricSettings | None = None) -> None:
        super().__init__(settings)
        self.tokenizer = self.settings.rouge_tokenizer()
        if self.tokenizer not in TOKENIZERS:
            raise ValueError(f"unknown ROUGE tokenizer {self.tokenizer!r}; choose from {', '.join(TOKENIZERS)}")

    def stats(self, predictions: Sequence[str], references: Sequence[Sequence[str]]) -> np.ndarray:
        return self.stats_together([self], predictions, references)[0]

    @classmethod
    def stats_together(
        cls, metrics: Sequence[Metric], predictions: Sequence[str], references: Sequence[Sequence[str]]
    ) -> list[np.ndarray]:
        by_setup: dict[tuple[bool, str], list[Metric]] = {}
        for m in metrics:
            by_setup.setdefault((m.settings.stem, m.tokenizer), []).append(m)  # type: ignore[attr-defined]
        out: dict[str, np.ndarray] = {}
        for (stem, tokenizer), group in by_setup.items():
            prf = rouge_prf(predictions, references, [m.name for m in group], stem=stem, tokenizer=tokenizer)
            out.update(prf)
        return [out[m.name] for m in metrics]

    def score(self, sums: np.ndarray, n: int) -> np.ndarray:
        return np.atleast_2d(sums)[:, 2] / n

    def per_example(self, stats: np.ndarray) -> np.ndarray:
        return stats[:, 2]

    def signature_fields(self, references: Sequence[Sequence[str]]) -> dict[str, str | bool | int]:
        tok = "rouge_score-default" if self.tokenizer == "rouge_score" else self.tokenizer
        return {"tok": tok, "stem": self.settings.stem, "lsum_split": "newline", "refs": refs_field(references),
                "agg": "best-f"}

    @classmethod
    def settings_from_signature(cls, fields: dict[str, str]) -> dict[str, Any]:
        tok = fields.get("tok", "rouge_score-default")
        return {"stem": fields.get("stem") != "no",
                "rouge_tokenize": "rouge_score" if tok == "rouge_score-default" else tok}

    def details(self, stats: np.ndarray) -> dict[str, Any]:
        p, r, f = (float(x) for x in stats.mean(0))
        return {"precision": p, "recall": r, "f1": f}

    def warnings(self, references: Sequence[Sequence[str]]) -> list[str]:
        texts = [r for refs in references for r in refs]
        dropped = sum(kept_share(t, self.tokenizer) < 0.5 for t in texts)
        if texts and dropped > len(texts) / 2:
            return [
                f"{self.name}: the {self.tokenizer} tokenizer drops most letters of {dropped} of {len(texts)} "
                "references (a script other than a-z?), so the score is near 0; set the ROUGE tokenizer to "
                "'unicode' or give the target language"
            ]
        return []


@register_metric
class Rouge1(_Rouge):
    name = "rouge1"


@register_metric
class Rouge2(_Rouge):
    name = "rouge2"


@register_metric
class RougeL(_Rouge):
    name = "rougeL"


@register_metric
class RougeLsum(_Rouge):
    name = "rougeLsum"


register_group("rouge", ROUGE_TYPES)
