"""What the hidden-state cache of bench/perplexity.py saves: a base pass, then a tuned pass with KL, with and
without the cache, rows checked bit-identical.

    .venv/bin/python speed/kl_cache.py [--limit 2] [--adapter RUN_DIR] [--model smollm2-135m-instruct]

The same WikiText-2 articles (built-in `wikitext2`, `--limit N` articles, windows of the model's context) are
scored as `tunebench run` and `tunebench sweep` score them: the base model alone (NLL only), then the tuned model
with KL(p_base ‖ p_tuned) against itself with the adapter disabled. Twice: with `cache=None` (every pass runs the
base's decoder again), then with the process's cache emptied first (the reference side of the tuned pass finds
the base's hidden states). The tuned model is `--adapter RUN_DIR` (a LoRA or bottleneck run, loaded unmerged),
else the base with a seeded random LoRA (r 8, all linear layers): the timing does not depend on its weights.
Prints each pass's wall time, the totals and their ratio, the cache's hits, misses and bytes, and whether the
rows (NLL and KL per document) are bit-identical.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TUNEBENCH_DATA_DIR", str(REPO.parent / "shared" / "data"))

from tunebench.bench.perplexity import HIDDEN_STATES, score_documents  # noqa: E402
from tunebench.bench.runner import prepare_tasks  # noqa: E402
from tunebench.bench.scoring import perplexity_documents  # noqa: E402
from tunebench.config import ModelConfig, resolve_data_dir  # noqa: E402
from tunebench.models.load import load_model  # noqa: E402


def tuned_model(cfg: ModelConfig, adapter: str | None) -> Any:
    """The tuned LoadedModel: a run's adapter attached (unmerged), else a seeded random LoRA on the base."""
    if adapter:
        return load_model(cfg, adapter=adapter, merge=False)
    import torch
    from peft import LoraConfig, get_peft_model

    loaded = load_model(cfg)
    torch.manual_seed(0)
    loaded.model = get_peft_model(loaded.model, LoraConfig(r=8, target_modules="all-linear",
                                                           init_lora_weights=False)).eval()
    return loaded


def passes(base: Any, tuned: Any, docs: list, cache: Any) -> tuple[list[float], list[dict[str, Any]]]:
    """Wall seconds of the base pass and of the tuned pass with KL, and the tuned rows."""
    start = time.perf_counter()
    score_documents(base, docs, kl=False, cache=cache)
    mid = time.perf_counter()
    rows = score_documents(tuned, docs, cache=cache)
    return [mid - start, time.perf_counter() - mid], rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=2, help="WikiText-2 test articles (default 2)")
    parser.add_argument("--adapter", default=None, help="a LoRA or bottleneck run dir (default: a random LoRA)")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()

    cfg = ModelConfig(ref=args.model)
    (task,) = prepare_tasks(["wikitext2"], data_dir=resolve_data_dir(args.data_dir), limit=args.limit, limits=None,
                            shots=None, seed=0)
    docs = perplexity_documents(task, task.instances)
    base, tuned = load_model(cfg), tuned_model(cfg, args.adapter)
    tokens = sum(len(base.tokenizer(text, add_special_tokens=False)["input_ids"]) for _, _, text, _ in docs)
    print(f"{len(docs)} WikiText-2 articles, {tokens} tokens; model {args.model}, tuned: "
          f"{args.adapter or 'random LoRA r 8'}; torch threads {__import__('torch').get_num_threads()}")

    plain, plain_rows = passes(base, tuned, docs, None)
    HIDDEN_STATES.clear()
    cached, cached_rows = passes(base, tuned, docs, HIDDEN_STATES)
    for name, (b, t) in (("no cache", plain), ("cache", cached)):
        print(f"{name:>9}: base pass {b:8.1f} s   tuned pass with KL {t:8.1f} s   total {b + t:8.1f} s")
    print(f"tuned pass ratio {plain[1] / cached[1]:.2f}x, total ratio {sum(plain) / sum(cached):.2f}x; cache: "
          f"{HIDDEN_STATES.hits} hits, {HIDDEN_STATES.misses} misses, {HIDDEN_STATES.bytes / 2**20:.1f} MiB")
    same = [(r["nll"], r["kl"]) for r in plain_rows] == [(r["nll"], r["kl"]) for r in cached_rows]
    print(f"rows bit-identical (NLL and KL per document): {same}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
