"""Can a benchmark row measure forgetting at all? Chance level, above-chance test, minimum detectable drop.

A base model at chance cannot drop, so "no significant forgetting" on such a row is no evidence. Each row gets:
- chance: the accuracy of guessing uniformly among an example's choices, averaged over examples;
- above chance: a one-sided exact binomial test of the base's correct count against chance (alpha 0.05);
- the minimum detectable drop (MDE) at 80% power of the paired two-sided test at alpha 0.05 with this many
  examples. Accuracy rows use the sample-size formula for McNemar's test of Connor (1987), "Sample size for
  testing differences in proportions for the paired-sample design", Biometrics 43(1):207-211:
      n = (z_{1-a/2} sqrt(psi) + z_{1-b} sqrt(psi - delta^2))^2 / delta^2,
  solved for delta, where psi is the share of discordant pairs (examples one model gets right and the other
  wrong). With a tuned run psi is the observed discordance; before one, psi is what independent errors would give
  at the base accuracy p and a tuned accuracy p - delta: psi = p(1 - p + delta) + (p - delta)(1 - p), the
  conservative case (fine-tuned models mostly agree with their base, so the observed figure is usually smaller).
  psi is never taken below delta, the discordance a drop of delta needs at the least.
  Perplexity rows (ratio metrics) use the normal approximation: MDE = (z_{1-a/2} + z_{1-b}) * SE of the paired
  delta, the SE read from the paired bootstrap interval; it is reported relative to the base value.
A row is measurable when its base is significantly above chance and a drop of the MDE would still leave it at or
above chance (a drop cannot go further); perplexity rows are measurable from two documents on.

Hand-written: SciPy is not a dependency and these are a few lines of the standard library's NormalDist and lgamma.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist
from typing import Any

ALPHA = 0.05
POWER = 0.80
_Z = NormalDist()


def chance_level(samples: Sequence[dict[str, Any]]) -> float | None:
    """Mean of 1/len(choices) over multiple-choice sample rows; None when the rows have no choices."""
    sizes = [len(s["choices"]) for s in samples if s.get("choices")]
    if not sizes or len(sizes) != len(samples):
        return None
    return sum(1.0 / k for k in sizes) / len(sizes)


def binomial_upper_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), summed exactly in log space."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q
             for i in range(k, n + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def above_chance_p(correct: int, n: int, chance: float) -> float:
    """One-sided exact binomial p-value of `correct` of `n` against the chance rate."""
    return binomial_upper_tail(correct, n, chance)


def mde_paired_proportions(n: int, discordance: float | None = None, *, base_accuracy: float | None = None,
                           alpha: float = ALPHA, power: float = POWER) -> float | None:
    """Smallest drop in accuracy the paired two-sided McNemar test detects with `power` (Connor 1987).

    discordance: observed share of discordant pairs; else base_accuracy gives it under independent errors (see
    the module docstring). Returns None when even a drop of the whole accuracy is not detectable (tiny n).
    """
    if n <= 0:
        return None
    za, zb = _Z.inv_cdf(1 - alpha / 2), _Z.inv_cdf(power)
    p = base_accuracy

    def psi(delta: float) -> float:
        if discordance is not None:
            return max(discordance, delta)
        assert p is not None
        return max(p * (1 - p + delta) + (p - delta) * (1 - p), delta)

    def gap(delta: float) -> float:  # increasing in delta; zero at the MDE
        s = psi(delta)
        return math.sqrt(n) * delta - za * math.sqrt(s) - zb * math.sqrt(max(s - delta * delta, 0.0))

    hi = 1.0 if discordance is not None else float(p or 0.0)
    if hi <= 0 or gap(hi) < 0:
        return None
    lo = 0.0
    for _ in range(80):
        mid = (lo + hi) / 2
        if gap(mid) < 0:
            lo = mid
        else:
            hi = mid
    return hi


def mde_normal(se: float, *, alpha: float = ALPHA, power: float = POWER) -> float:
    """Smallest shift of a normally distributed paired delta detectable with `power`: (z_{1-a/2} + z_{1-b}) SE."""
    return (_Z.inv_cdf(1 - alpha / 2) + _Z.inv_cdf(power)) * se


def accuracy_sensitivity(base: Sequence[float], tuned: Sequence[float] | None, chance: float | None,
                         *, alpha: float = ALPHA, power: float = POWER) -> dict[str, Any]:
    """Sensitivity columns of an accuracy row from per-example 0/1 scores (tuned: None before a tuned run).

    Returns chance, above_chance_p, above_chance (p < alpha), discordance (None without tuned), mde (absolute
    accuracy points as a fraction, None when undetectable), mde_basis, and measurable.
    """
    n = len(base)
    correct = int(round(sum(base)))
    acc = correct / n if n else 0.0
    p_above = above_chance_p(correct, n, chance) if chance is not None else None
    discordance = None
    if tuned is not None:
        discordance = sum(1 for a, b in zip(base, tuned, strict=True) if (a >= 0.5) != (b >= 0.5)) / n
        mde = mde_paired_proportions(n, discordance, alpha=alpha, power=power)
        basis = "observed discordance (Connor 1987)"
    else:
        mde = mde_paired_proportions(n, base_accuracy=acc, alpha=alpha, power=power)
        basis = "base accuracy, independent errors (Connor 1987)"
    above = p_above is None or p_above < alpha
    room = acc - (chance or 0.0)
    measurable = bool(above and mde is not None and mde <= room + 1e-12)
    return {"chance": chance, "above_chance_p": p_above, "above_chance": above if chance is not None else None,
            "discordance": discordance, "mde": mde, "mde_basis": basis, "measurable": measurable}


def ratio_sensitivity(base_value: float, ci95: Sequence[float] | None, n: int, *, alpha: float = ALPHA,
                      power: float = POWER) -> dict[str, Any]:
    """Sensitivity of a perplexity-type row from its paired bootstrap interval: MDE absolute and relative."""
    if ci95 is None or n < 2:
        return {"chance": None, "above_chance_p": None, "above_chance": None, "discordance": None, "mde": None,
                "mde_relative": None, "mde_basis": None, "measurable": False}
    se = (ci95[1] - ci95[0]) / (2 * _Z.inv_cdf(0.975))
    mde = mde_normal(se, alpha=alpha, power=power)
    return {"chance": None, "above_chance_p": None, "above_chance": None, "discordance": None, "mde": mde,
            "mde_relative": mde / abs(base_value) if base_value else None,
            "mde_basis": "paired bootstrap SE over documents, normal approximation", "measurable": True}
