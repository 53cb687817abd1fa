"""Score a prepared task: multiple choice by log-likelihood, generation by answer extraction and metrics.

`score_task` takes any list of instances (the prepared ones, or perturbed copies for the HELM-style views) and
returns per-sample log rows plus metric values with standard errors, every metric asked from the metric
registry: a mean metric's stderr is sample std / sqrt(n), a corpus metric's (BLEU, chrF) the standard deviation
of 1000 seeded bootstrap scores (lm-eval's `bootstrap_stderr`). Multiple choice reports acc (argmax
log-likelihood) and acc_norm (argmax log-likelihood per character of the choice, lm-eval's length normalisation).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tunebench.bench.answers import apply_filters
from tunebench.bench.chat_format import bench_prompt, choice_delimiter
from tunebench.bench.instances import Instance, PreparedTask
from tunebench.bench.spec import MC_DEFAULT_METRICS
from tunebench.errors import ConfigError
from tunebench.evaluate.metrics import MetricStats, compute_metric_stats
from tunebench.processes import map_sharded

STDERR_BOOTSTRAP = 1000


@dataclass
class TaskScores:
    """Per-sample log rows (samples_<task>.jsonl), metrics {name: {"value", "stderr"}}, and wall time."""

    samples: list[dict[str, Any]]
    metrics: dict[str, dict[str, Any]]
    time_s: float


def mean_stderr(values: Sequence[float]) -> dict[str, float]:
    """Mean and its standard error (sample standard deviation / sqrt(n); 0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return {"value": mean, "stderr": 0.0}
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return {"value": mean, "stderr": math.sqrt(var / n)}


def choice_probs(loglikelihoods: Sequence[float]) -> list[float]:
    """Softmax over the choices' log-likelihoods: the model's probabilities restricted to the choice set."""
    top = max(loglikelihoods)
    exps = [math.exp(x - top) for x in loglikelihoods]
    total = sum(exps)
    return [e / total for e in exps]


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))


def choice_loglikelihoods(
    loaded: Any, instances: Sequence[Instance], *, batch_size: int = 16, progress: bool = False,
    reuse_prefix: bool = True,
) -> list[list[float]]:
    """Log-likelihood of each instance's choices, in the prompt format the model was loaded with (plain, or the chat
    template as lm-eval's --apply_chat_template: bench/chat_format.py)."""
    from tunebench.bench.loglik import Request, loglikelihoods, loglikelihoods_seq2seq

    requests = [
        Request(bench_prompt(loaded, inst), tuple(choice_delimiter(loaded, inst) + c for c in inst.choices),
                inst.prefix)
        for inst in instances
    ]
    if loaded.family == "seq2seq":
        return loglikelihoods_seq2seq(loaded.model, loaded.tokenizer, requests, batch_size=batch_size, progress=progress)
    return loglikelihoods(
        loaded.model, loaded.tokenizer, requests, batch_size=batch_size, progress=progress, reuse_prefix=reuse_prefix
    )


def score_multiple_choice(
    loaded: Any, instances: Sequence[Instance], *, batch_size: int = 16, progress: bool = False
) -> list[dict[str, Any]]:
    """Per-sample rows: log-likelihoods, choice probabilities, predictions (raw and length-normalised)."""
    lls = choice_loglikelihoods(loaded, instances, batch_size=batch_size, progress=progress)
    rows = []
    for inst, ll in zip(instances, lls, strict=True):  # "prompt": the exact text the model was given
        pred = _argmax(ll)
        pred_norm = _argmax([x / max(1, len(c)) for x, c in zip(ll, inst.choices, strict=True)])
        rows.append({
            "id": inst.id, "subtask": inst.subtask, "prompt": bench_prompt(loaded, inst),
            "choices": list(inst.choices),
            "target": inst.target, "loglikelihoods": ll, "probs": choice_probs(ll),
            "prediction": pred, "prediction_norm": pred_norm, "correct": pred == inst.target,
        })
    return rows


def choice_stats(rows: Sequence[dict[str, Any]], metrics: Sequence[str]) -> dict[str, MetricStats]:
    """acc from each row's prediction, acc_norm from its length-normalised one, against the gold index."""
    golds = [[r["target"]] for r in rows]
    picked = {"acc_norm": [r["prediction_norm"] for r in rows]}
    out: dict[str, MetricStats] = {}
    for name in metrics:
        out.update(compute_metric_stats(picked.get(name, [r["prediction"] for r in rows]), golds, [name]))
    return out


def score_generation(
    loaded: Any, task: PreparedTask, instances: Sequence[Instance], *, batch_size: int = 16, progress: bool = False,
    seed: int = 0, rank: int = 0, world_size: int = 1,
) -> tuple[list[dict[str, Any]], dict[str, MetricStats]]:
    """Per-sample rows (raw output, extracted answer, scores) and each metric's statistics; outputs are generated
    on this process's shard and gathered (processes.map_sharded)."""
    from tunebench.config import GenerationConfig
    from tunebench.evaluate.generate import generate_texts

    spec = task.spec
    gen = GenerationConfig(
        max_new_tokens=spec.generation.max_new_tokens, stop=list(spec.generation.stop), batch_size=batch_size
    )
    prompts = [bench_prompt(loaded, inst) for inst in instances]
    outputs = map_sharded(lambda shard: generate_texts(loaded.model, loaded.tokenizer, shard, family=loaded.family,
                                                       gen=gen, progress=progress, seed=seed),
                          prompts, rank=rank, world_size=world_size)
    answers = [apply_filters(out.text, spec.filters) for out in outputs]
    references = [list(inst.references) for inst in instances]
    stats = compute_metric_stats(answers, references, task.metrics, settings=spec.metric_settings())
    rows = []
    for k, (inst, prompt, out, answer) in enumerate(zip(instances, prompts, outputs, answers, strict=True)):
        scores = {name: float(ms.per_example[k]) for name, ms in stats.items() if ms.per_example is not None}
        first = task.metrics[0]
        rows.append({
            "id": inst.id, "subtask": inst.subtask, "prompt": out.cut_prompt or prompt, "n_cut_tokens": out.n_cut_tokens,
            "references": list(inst.references),
            "output": out.text, "prediction": answer, "correct": scores.get("exact_match", scores[first]) == 1.0,
            "scores": {m: scores[m] for m in task.metrics}, "n_new_tokens": out.n_new_tokens, "time_s": out.time_s,
        })
    return rows, stats


def value_stderr(ms: MetricStats, *, seed: int = 0) -> dict[str, float]:
    """The task-level value of a metric and its standard error: sample std / sqrt(n) for a mean metric (as
    `mean_stderr`), the std of seeded bootstrap scores for a corpus metric (lm-eval's bootstrap_stderr)."""
    from tunebench.evaluate.stats import bootstrap_scores

    if ms.metric.aggregation == "mean":
        assert ms.per_example is not None
        return mean_stderr([float(v) for v in ms.per_example])
    if len(ms.stats) < 2:
        return {"value": ms.score(), "stderr": 0.0}
    boot = bootstrap_scores(ms.stats, ms.score_fn, n_resamples=STDERR_BOOTSTRAP, seed=seed)
    return {"value": ms.score(), "stderr": float(boot.std(ddof=1))}


def score_task(
    loaded: Any, task: PreparedTask, instances: Sequence[Instance] | None = None, *, batch_size: int = 16,
    progress: bool = False, seed: int = 0, reference: Any | None = None, rank: int = 0, world_size: int = 1,
) -> TaskScores:
    """Score `instances` (default: the task's own) with the task's output type and metrics.

    `loaded` needs .model, .tokenizer, .family, .use_chat and .system_prompt (tunebench.models.load.LoadedModel).
    reference: perplexity tasks only, a LoadedModel whose next-token distribution KL(p_reference ‖ p_model) is
    measured against (None: the loaded model's own adapter disabled, when it has one).
    `rank` of `world_size` processes: each scores its shard (multiple choice by few-shot prefix group, so a shared
    prefix is computed once per process that holds its group), the per-sample rows are gathered, and every
    process computes the task's metrics from all of them (processes.map_sharded).
    """
    items = list(task.instances if instances is None else instances)
    if not items:
        raise ValueError(f"task {task.spec.name}: no instances to score")
    start = time.perf_counter()
    if task.output_type == "perplexity":
        return _score_perplexity(loaded, task, items, progress=progress, seed=seed, reference=reference,
                                 rank=rank, world_size=world_size)
    if task.output_type == "multiple_choice":
        samples = map_sharded(lambda shard: score_multiple_choice(loaded, shard, batch_size=batch_size,
                                                                  progress=progress),
                              items, rank=rank, world_size=world_size, keys=[inst.prefix for inst in items])
        stats = choice_stats(samples, list(dict.fromkeys([*MC_DEFAULT_METRICS, *task.metrics])))
        for k, row in enumerate(samples):
            row["scores"] = {name: float(ms.stats[k, 0]) for name, ms in stats.items()}
    else:
        samples, stats = score_generation(loaded, task, items, batch_size=batch_size, progress=progress, seed=seed,
                                          rank=rank, world_size=world_size)
    elapsed = time.perf_counter() - start
    metrics = {}
    for name in task.metrics:
        metrics[name] = value_stderr(stats[name], seed=seed)
        if task.output_type != "multiple_choice":
            metrics[name]["signature"] = stats[name].signature
    return TaskScores(samples, metrics, elapsed)


def _score_perplexity(loaded: Any, task: PreparedTask, items: Sequence[Instance], *, progress: bool, seed: int,
                      reference: Any | None, rank: int = 0, world_size: int = 1) -> TaskScores:
    from tunebench.bench.perplexity import corpus_metrics, score_documents

    if loaded.family != "causal":
        raise ConfigError(f"benchmark task {task.spec.name}: perplexity is scored on decoder-only models only, and "
                          f"'{loaded.ref}' is an encoder-decoder (seq2seq) model; leave it out of the tasks")
    start = time.perf_counter()
    settings = task.spec.perplexity
    docs = perplexity_documents(task, items)
    samples = map_sharded(lambda shard: score_documents(loaded, shard, max_length=settings.max_length,
                                                        context_len=settings.context_len, reference=reference,
                                                        progress=progress),
                          docs, rank=rank, world_size=world_size)
    return TaskScores(samples, corpus_metrics(samples, task.metrics, seed=seed), time.perf_counter() - start)


def perplexity_documents(task: PreparedTask, items: Sequence[Instance]) -> list[tuple[str, str | None, str, str]]:
    """(id, subtask, text scored, text counted) per instance of a perplexity task, as `score_documents` takes them:
    words and bytes are counted in the spec's `count_field` (WikiText: the text before detokenizing), else the text
    scored."""
    settings = task.spec.perplexity
    counted = [str(inst.fields[settings.count_field]) if settings.count_field else inst.prompt for inst in items]
    return [(inst.id, inst.subtask, inst.prompt, c) for inst, c in zip(items, counted, strict=True)]


def subtask_breakdown(samples: Sequence[dict[str, Any]], metrics: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per-subtask n and metric means (MMLU subjects), for reports; the task's own metrics stay micro-averaged."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for s in samples:
        if s.get("subtask") is not None:
            groups.setdefault(s["subtask"], []).append(s)
    return {
        name: {"n": len(rows), **{m: sum(r["scores"][m] for r in rows) / len(rows) for m in metrics
                                  if all(m in r["scores"] for r in rows)}}
        for name, rows in sorted(groups.items())
    }
