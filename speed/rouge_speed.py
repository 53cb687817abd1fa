"""ROUGE speed: tunebench's ROUGE against rouge_score on the 500 DialogSum test dialogues x 3 references.

Computes rouge1, rouge2, rougeL and rougeLsum with stemming (rouge_score's `score_multi`, the best reference
per type), checks that every precision, recall and F1 agrees to 1e-9, and prints the speed ratio. "cold"
clears tunebench's token and text caches before each timed run (what one `tunebench score` call sees);
"warm" reuses them (what a second system on the same references sees). Both libraries have NLTK imported
before timing. Times are CPU seconds of this process (best of --repeat), so other jobs on a shared machine
distort them less.

Predictions: the first two turns of each dialogue (a deterministic, realistic stand-in, two lines so Lsum's
union-LCS path runs), or real ones with --pred predictions.jsonl (references taken from that file).

    python speed/rouge_speed.py [--pred runs/x/eval/base-0shot/predictions.jsonl] [--repeat 3] [--no-stem]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rouge_score import rouge_scorer

from tunebench.config import resolve_data_dir
from tunebench.evaluate.metrics import rouge
from tunebench.evaluate.score import load_scoring_inputs

TYPES = list(rouge.ROUGE_TYPES)
TARGET = 10.0


def dialogsum_inputs(data_dir: Path) -> tuple[list[str], list[list[str]]]:
    path = data_dir / "dialogsum" / "dialogsum.test.jsonl"
    with open(path, encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh]
    predictions = ["\n".join(r["dialogue"].split("\n")[:2]) for r in rows]
    references = [[r["summary1"], r["summary2"], r["summary3"]] for r in rows]
    return predictions, references


def best_time(
    fn: Callable[[], Any], repeat: int, before: Callable[[], None] | None = None
) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(repeat):
        if before:
            before()
        start = time.process_time()
        result = fn()
        best = min(best, time.process_time() - start)
    return best, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--pred", type=Path, default=None, help="predictions.jsonl with references (default: stand-in)"
    )
    parser.add_argument("--data-dir", default=None, help="data directory (default: $TUNEBENCH_DATA_DIR)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per side; the best counts")
    parser.add_argument("--no-stem", action="store_true", help="turn Porter stemming off on both sides")
    parser.add_argument(
        "--require", type=float, default=0.0, help="exit 1 when the cold speed-up is below this"
    )
    args = parser.parse_args()
    stem = not args.no_stem

    if args.pred:
        inputs = load_scoring_inputs(args.pred)
        predictions, references = inputs.predictions, inputs.references
    else:
        data_dir = resolve_data_dir(args.data_dir)
        if data_dir is None:
            print("set $TUNEBENCH_DATA_DIR or --data-dir to the shared data directory", file=sys.stderr)
            return 2
        predictions, references = dialogsum_inputs(data_dir)
    pairs = sum(len(r) for r in references)

    scorer = rouge_scorer.RougeScorer(TYPES, use_stemmer=stem)
    rouge._porter()  # import NLTK outside the timed region, as rouge_scorer's import already did

    def theirs() -> list:
        return [scorer.score_multi(refs, pred) for pred, refs in zip(predictions, references, strict=True)]

    def ours() -> dict:
        return rouge.rouge_prf(predictions, references, TYPES, stem=stem)

    t_theirs, expected = best_time(theirs, args.repeat)
    t_cold, got = best_time(ours, args.repeat, before=rouge.clear_caches)
    t_warm, _ = best_time(ours, args.repeat)

    worst = 0.0
    for k, exp in enumerate(expected):
        for t in TYPES:
            want = (exp[t].precision, exp[t].recall, exp[t].fmeasure)
            worst = max(worst, *(abs(a - b) for a, b in zip(got[t][k], want, strict=True)))
    same = worst <= 1e-9

    print(
        f"{len(predictions)} predictions x {pairs / len(predictions):.1f} references, "
        f"{', '.join(TYPES)}, stem={stem}"
    )
    print(f"rouge_score         {t_theirs * 1000:8.1f} ms")
    print(f"tunebench (cold)    {t_cold * 1000:8.1f} ms   {t_theirs / t_cold:5.1f}x faster")
    print(f"tunebench (warm)    {t_warm * 1000:8.1f} ms   {t_theirs / t_warm:5.1f}x faster")
    print(f"largest difference  {worst:.3g}  ({'identical to 1e-9' if same else 'MISMATCH'})")
    print(f"target >= {TARGET:.0f}x cold: {'met' if t_theirs / t_cold >= TARGET else 'NOT met'}")
    if not same:
        return 1
    return 1 if t_theirs / t_cold < args.require else 0


if __name__ == "__main__":
    sys.exit(main())
