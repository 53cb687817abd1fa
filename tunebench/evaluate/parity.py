"""The parity gate: a fast inference precision is used only where it changes no conclusion.

A user does not need bit-identical text from bf16 or int8, but the same conclusions (issue 14). Before a fast
precision is used for a (model, adapter, precision, task), a seeded calibration slice of the examples (default
64, `eval.parity.examples`) is evaluated in fp32 and in the fast precision, and the project's own paired
bootstrap (`evaluate/stats.py: paired_bootstrap_stats`, sacreBLEU's paired-bs scheme) gives the 95% interval of
fast - fp32 on the task metric (`eval.parity.metric`, default ROUGE-1). The fast precision passes when that
interval lies inside ±margin (`eval.parity.margin`, default 0.01 on a 0-1 metric: 0.01 ROUGE-1, 1 accuracy
point); otherwise evaluation runs in fp32 and the record says why. The verdict is cached as JSON under the
tunebench cache dir per (model, adapter weights, precision, task: the slice's test-set hash, prompt format,
generation settings, metric, margin), and written into every scores.json that used the decision.

The machinery is shared with the benchmarks' gate (`bench/parity.py`, `bench.precision`): `paired_check` (the
paired bootstrap against the margin), `verdict` (one GateResult from the checks of one or more metrics),
`cached_gate` (the JSON cache) and `choose_gated` (requested precision -> the precision every system of one
comparison uses, probing `auto` and falling back to fp32 when a gate fails).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tunebench.config import EvalConfig
from tunebench.data.example import Example

CACHE_SCHEMA = "tunebench.parity/1"
Variant = Callable[[Any, str], Any]
"""(model, precision name) -> the model computing in that precision (models.precision.precision_variant)."""
Gate = Callable[[Any, str], "GateResult"]
"""(a loaded model, fast precision name) -> that model's gate verdict for that precision."""
T = TypeVar("T")


@dataclass
class GateResult:
    """One gate verdict: fast - fp32 on `metric` over `n` calibration examples, its 95% interval and margin.

    Where several metrics are compared (a benchmark's acc and acc_norm), `metrics` holds each one's
    `paired_check` and the top-level figures are those of the deciding metric (the first outside its margin,
    else the one closest to its margin).
    """

    model: str
    adapter: str | None
    precision: str
    metric: str
    n: int
    margin: float
    fp32_score: float
    fast_score: float
    delta: float
    ci95: list[float]
    accepted: bool
    reason: str
    cached: bool = False
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def calibration_slice(examples: Sequence[T], n: int, seed: int) -> list[T]:
    """`n` examples (or benchmark instances) drawn with `random.Random(seed)` (all when there are fewer), kept in
    their original order."""
    if len(examples) <= n:
        return list(examples)
    picked = sorted(random.Random(seed).sample(range(len(examples)), n))
    return [examples[i] for i in picked]


def gate_metric(cfg: EvalConfig) -> str:
    """The metric the gate compares: eval.parity.metric, else rouge1 when evaluated, else the first metric."""
    from tunebench.evaluate.metrics import expand_metrics

    if cfg.parity.metric:
        return cfg.parity.metric
    names = expand_metrics(cfg.metrics)
    return "rouge1" if "rouge1" in names else names[0]


def gate_margin(cfg: EvalConfig, metric: str) -> float:
    """eval.parity.margin, else one hundredth of the metric's scale (0.01 ROUGE-1 F1, one accuracy point)."""
    from tunebench.evaluate.metrics import METRICS

    return cfg.parity.margin if cfg.parity.margin is not None else 0.01 * METRICS[metric].scale


def adapter_fingerprint(adapter: str | None) -> list[list[Any]] | None:
    """(relative path, size, mtime in ns) of every file of a trained output, so a retrained run is gated again."""
    if adapter is None:
        return None
    root = Path(adapter)
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    return [[str(p.relative_to(root) if root.is_dir() else p.name), p.stat().st_size, p.stat().st_mtime_ns]
            for p in files]


def _cache_path(cache_dir: Path, key: dict[str, Any]) -> Path:
    import hashlib
    import json

    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]
    return cache_dir / "parity" / f"gate-{digest}.json"


def model_key(loaded: Any, precision: str) -> dict[str, Any]:
    """The part of a gate's cache key that names the model: reference, source, adapter (and its files'
    fingerprint), precision, device and prompt format."""
    return {"model": loaded.ref, "source": loaded.source, "adapter": loaded.adapter,
            "adapter_files": adapter_fingerprint(loaded.adapter), "precision": precision,
            "device": loaded.model.device.type, "prompt_format": [loaded.use_chat, loaded.system_prompt]}


def cached_gate(key: dict[str, Any], compute: Callable[[], GateResult], *, cache_dir: Path | None = None,
                use_cache: bool = True) -> GateResult:
    """The verdict cached under `key` (JSON under the tunebench cache dir's parity/ folder; `cached=True`), else
    `compute()`'s, written there atomically (a read-only cache only costs the next run another gate)."""
    from tunebench.io import atomic_write_json, read_json
    from tunebench.models.precision import default_cache_dir

    key = {"schema": CACHE_SCHEMA, **key}
    path = _cache_path(cache_dir or default_cache_dir(), key)
    if use_cache and path.is_file():
        try:
            stored = read_json(path)
            if isinstance(stored, dict) and stored.get("key") == key:
                return GateResult(**{**stored["result"], "cached": True})
        except Exception:  # an unreadable verdict is computed again  # noqa: BLE001
            pass
    result = compute()
    try:
        atomic_write_json(path, {"key": key, "result": result.as_dict()})
    except OSError:
        pass
    return result


def paired_check(ref_stats: Any, fast_stats: Any, score_fn: Callable[[Any], Any], margin: float, *,
                 n_resamples: int, seed: int) -> dict[str, Any]:
    """fp32 and fast scores, delta = fast - fp32, its paired-bootstrap 95% interval (`stats.paired_bootstrap_stats`
    over the (N, K) per-example statistics, shared resamples) and whether that interval lies within ±margin."""
    from tunebench.evaluate.stats import paired_bootstrap_stats

    paired = paired_bootstrap_stats(ref_stats, fast_stats, score_fn, n_resamples=n_resamples, seed=seed)
    lo, hi = paired["ci95"]
    return {"fp32": float(score_fn(ref_stats.sum(0, keepdims=True))[0]),
            "fast": float(score_fn(fast_stats.sum(0, keepdims=True))[0]), "delta": paired["delta"],
            "ci95": [lo, hi], "margin": margin, "accepted": bool(-margin <= lo and hi <= margin)}


def verdict(loaded: Any, precision: str, n: int, checks: dict[str, dict[str, Any]], *, what: str = "examples",
            identical: str | None = None) -> GateResult:
    """The GateResult of `paired_check`s by metric over `n` calibration `what`: accepted when every metric is
    within its margin. identical: the reason's closing note (e.g. "60 of 64 outputs identical")."""
    from tunebench.models.precision import REFERENCE

    failing = [m for m, c in checks.items() if not c["accepted"]]
    deciding = failing[0] if failing else max(
        checks, key=lambda m: max(abs(b) for b in checks[m]["ci95"]) / checks[m]["margin"])
    parts = [f"{m} {c['delta']:+.4f}, 95% interval [{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}], "
             f"{'within' if c['accepted'] else 'not within'} ±{c['margin']:g}" for m, c in checks.items()]
    reason = f"{precision} - {REFERENCE} on {n} calibration {what}: {'; '.join(parts)}"
    if identical:
        reason += f"; {identical}"
    top = checks[deciding]
    return GateResult(model=loaded.ref, adapter=loaded.adapter, precision=precision, metric=deciding, n=n,
                      margin=top["margin"], fp32_score=top["fp32"], fast_score=top["fast"], delta=top["delta"],
                      ci95=top["ci95"], accepted=not failing, reason=reason, metrics=checks)


def parity_gate(loaded: Any, examples: Sequence[Example], cfg: EvalConfig, precision: str, *, seed: int = 0,
                cache_dir: Path | None = None, variant: Variant | None = None, use_cache: bool = True) -> GateResult:
    """Evaluate the calibration slice of `examples` with `loaded` (a models.load.LoadedModel) in fp32 and in
    `precision`; accept the precision when the paired-bootstrap 95% interval of fast - fp32 on `gate_metric`
    lies within ±`gate_margin` (resamples: cfg.bootstrap, seeded by `seed`).

    variant: how the fast model is made (default `precision_variant`; tests inject a perturbed one). A cached
    verdict for the same key is returned without generating (`cached=True`). Raises DataError for no examples,
    ConfigError for a precision the model's device cannot run.
    """
    from tunebench.evaluate.run_eval import test_set_hash
    from tunebench.models.precision import precision_variant

    variant = variant or precision_variant
    metric = gate_metric(cfg)
    margin = gate_margin(cfg, metric)
    calibration = calibration_slice(list(examples), cfg.parity.examples, seed)
    key = {**model_key(loaded, precision), "test_set": test_set_hash(calibration), "n": len(calibration),
           "generation": cfg.generation.model_dump(), "metric": metric, "margin": margin, "seed": seed,
           "bootstrap": cfg.bootstrap, "settings": dataclasses.asdict(cfg.metric_settings())}
    return cached_gate(key, lambda: _generation_gate(loaded, calibration, cfg, precision, metric, margin, seed,
                                                     variant), cache_dir=cache_dir, use_cache=use_cache)


def _generation_gate(loaded: Any, calibration: list[Example], cfg: EvalConfig, precision: str, metric: str,
                     margin: float, seed: int, variant: Variant) -> GateResult:
    from tunebench.evaluate.metrics import compute_metric_stats
    from tunebench.evaluate.run_eval import evaluate
    from tunebench.models.precision import REFERENCE

    one = cfg.model_copy(update={"metrics": [metric]})
    system = {"name": "parity", "model": loaded.ref, "adapter": loaded.adapter, "shots": 0}
    runs = {}
    for name in (REFERENCE, precision):
        model = variant(loaded.model, name)
        evaluation = evaluate(dataclasses.replace(loaded, model=model), calibration, cfg=one, system=system,
                              seed=seed, progress=False)
        runs[name] = [row["prediction"] for row in evaluation.predictions]
        del model
    references = [list(e.references) for e in calibration]
    settings = cfg.metric_settings()
    ref_stats = compute_metric_stats(runs[REFERENCE], references, [metric], settings=settings, warn=False)[metric]
    fast_stats = compute_metric_stats(runs[precision], references, [metric], settings=settings, warn=False)[metric]
    check = paired_check(ref_stats.stats, fast_stats.stats, ref_stats.score_fn, margin, n_resamples=cfg.bootstrap,
                         seed=seed)
    same = sum(a == b for a, b in zip(runs[REFERENCE], runs[precision], strict=True))
    return verdict(loaded, precision, len(calibration), {metric: check},
                   identical=f"{same} of {len(calibration)} outputs identical")


def choose_gated(models: Sequence[Callable[[], Any]], requested: str | None, gate: Gate, *,
                 cache_dir: Path | None = None, timer: Any = None) -> tuple[str | None, dict[str, Any]]:
    """The precision every system of one comparison uses, and its record: None -> (None, ...), each model as
    loaded; fp32 -> fp32; auto -> the fastest candidate by the matmul probe (models.precision.choose_precision
    on the first model's shapes); a fast precision (picked or named) only when `gate(model, precision)` accepts it
    for every model (in order; the first failure ends it), else fp32 with the failing gate's reason.
    """
    from tunebench.models.precision import REFERENCE, choose_precision, model_shapes

    record: dict[str, Any] = {"requested": requested}
    if requested is None or requested == REFERENCE:
        return requested, {**record, "used": requested, "reason": "as requested" if requested else "as loaded"}
    fast = requested
    if requested == "auto":
        first = models[0]().model
        choice = choose_precision(model_shapes(first.config), first.device, training=False,
                                  n_params=sum(p.numel() for p in first.parameters()), timer=timer,
                                  cache_dir=cache_dir)
        record["probe"] = choice.as_dict()
        fast = choice.picked
        if fast == REFERENCE:
            return REFERENCE, {**record, "used": REFERENCE, "reason": f"auto: fp32 is {choice.reason}"}
    gates = []
    for get in models:
        gates.append(gate(get(), fast).as_dict())
        if not gates[-1]["accepted"]:
            break
    record["gates"] = gates
    if all(g["accepted"] for g in gates):
        return fast, {**record, "used": fast, "reason": f"parity gate passed: {gates[-1]['reason']}"}
    failed = gates[-1]
    where = failed["model"] + (f" + {failed['adapter']}" if failed["adapter"] else "")
    return REFERENCE, {**record, "used": REFERENCE,
                       "reason": f"fell back to fp32: the parity gate failed for {where} ({failed['reason']})"}


def decide_precision(models: Sequence[Callable[[], Any]], examples: Sequence[Example], cfg: EvalConfig, *,
                     seed: int = 0, cache_dir: Path | None = None, timer: Any = None,
                     variant: Variant | None = None) -> tuple[str | None, dict[str, Any]]:
    """The precision every system of one comparison is evaluated in, and the record scores.json keeps:
    `choose_gated` on eval.precision with the generation gate (`parity_gate`).

    models: one getter per system's model (base, base + adapter, ...).
    """
    def gate(loaded: Any, fast: str) -> GateResult:
        return parity_gate(loaded, examples, cfg, fast, seed=seed, cache_dir=cache_dir, variant=variant)

    return choose_gated(models, cfg.precision, gate, cache_dir=cache_dir, timer=timer)
