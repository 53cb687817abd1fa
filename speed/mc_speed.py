"""Multiple-choice scoring speed: prefix-cached, single-pass scorer vs the straightforward one, same predictions.

    .venv/bin/python speed/mc_speed.py --limit 300 --out mc_speed.json [--threads 1]

Same model (default: the embedded smollm2-135m-instruct through load_model, in its chat template), same 5-shot
MMLU questions (letter form; a fixed subset stratified across the 57 subjects, seed 0):
  cached  tunebench.bench.loglik.loglikelihoods: each subject's shared 5-shot prefix runs once and every batch
          of its questions starts from a copy of its KV cache; " A".." D" come from one next-token distribution;
  naive   loglikelihoods_naive: one full forward pass over the whole 5-shot prompt per question and choice.
The two alternate subject by subject, so a machine whose load drifts slows both alike. Prints seconds,
questions/s, the speed-up, how many per-question predictions differ (expected 0) and the largest
log-likelihood difference.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TUNEBENCH_DATA_DIR", str(REPO.parent / "shared" / "data"))

from tunebench.bench.instances import prepare_task  # noqa: E402
from tunebench.bench.loglik import Request, loglikelihoods, loglikelihoods_naive  # noqa: E402
from tunebench.bench.spec import resolve_tasks  # noqa: E402
from tunebench.config import ModelConfig, resolve_data_dir  # noqa: E402


def mmlu_requests(loaded: Any, limit: int, shots: int, data_dir: Path | None) -> dict[str, list[Request]]:
    """5-shot MMLU letter-form requests, grouped by subject (the unit whose prefix is shared)."""
    task = prepare_task(resolve_tasks(["mmlu"], data_dir)[0], data_dir=data_dir, shots=shots, limit=limit, seed=0)
    groups: dict[str, list[Request]] = {}
    for inst in task.instances:
        request = Request(
            loaded.format_prompt(inst.prompt), tuple(inst.target_delimiter + c for c in inst.choices), inst.prefix
        )
        groups.setdefault(str(inst.subtask), []).append(request)
    return groups


def argmax(values: list[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--limit", type=int, default=300, help="MMLU questions (stratified across subjects)")
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (on a busy machine 1 beats 2)")
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    args = parser.parse_args()

    import torch

    from tunebench.models.load import load_model

    if args.threads:
        torch.set_num_threads(args.threads)

    loaded = load_model(ModelConfig(ref=args.model))
    model, tok = loaded.model, loaded.tokenizer
    groups = mmlu_requests(loaded, args.limit, args.shots, resolve_data_dir(args.data_dir))
    n_questions = sum(len(g) for g in groups.values())
    with torch.inference_mode():  # warm-up: first-call allocations are no one's cost
        model(input_ids=torch.tensor([tok("warm up")["input_ids"]]))

    times = {"cached": 0.0, "naive": 0.0}
    mismatches, max_diff, done = 0, 0.0, 0
    for subject, requests in groups.items():
        start = time.perf_counter()
        fast = loglikelihoods(model, tok, requests, batch_size=args.batch_size)
        times["cached"] += time.perf_counter() - start
        start = time.perf_counter()
        slow = loglikelihoods_naive(model, tok, requests)
        times["naive"] += time.perf_counter() - start
        for a, b in zip(fast, slow, strict=True):
            mismatches += argmax(a) != argmax(b)
            max_diff = max(max_diff, *(abs(x - y) for x, y in zip(a, b, strict=True)))
        done += len(requests)
        print(f"{done:4d}/{n_questions} {subject:40s} cached {times['cached']:8.1f}s  naive {times['naive']:8.1f}s  "
              f"speed-up {times['naive'] / times['cached']:5.1f}x", file=sys.stderr, flush=True)

    figures = {
        "model": args.model,
        "questions": n_questions,
        "subjects": len(groups),
        "shots": args.shots,
        "batch_size": args.batch_size,
        "torch_threads": torch.get_num_threads(),
        "cached_s": round(times["cached"], 2),
        "naive_s": round(times["naive"], 2),
        "cached_questions_per_s": round(n_questions / times["cached"], 3),
        "naive_questions_per_s": round(n_questions / times["naive"], 3),
        "speedup": round(times["naive"] / times["cached"], 2),
        "prediction_mismatches": mismatches,
        "max_abs_loglik_diff": max_diff,
    }
    print(json.dumps(figures, indent=2))
    if args.out:
        from tunebench.io import atomic_write_json

        atomic_write_json(args.out, figures)
    return 0 if mismatches == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
