"""Generation throughput: tunebench's generate_texts against plain Hugging Face loops, outputs checked equal.

    .venv/bin/python speed/eval_throughput.py --n 64 --batch-size 32

Same model (default: the embedded smollm2-135m-instruct through load_model), same DialogSum test prompts in
its chat template, greedy decoding, same EOS ids for all three:
  loop     one `generate` call per prompt (no padding: the reference outputs);
  batched  `generate` on left-padded batches in input order (no length sorting);
  ours     tunebench.evaluate.generate.generate_texts: for greedy decoding of this decoder-only model, the
           continuous-batching decoder of tunebench.evaluate.decode with --batch-size slots, prompts of similar
           length prefilled together;
  ours_prompt_prefill  the same decoder prefilling each prompt alone (--prefill-compare);
  ours_P   ours with the model in a fast precision P (--precision bf16|int8: weights cast to bf16, or dynamic
           int8 linears), scored against the fp32 run as the parity gate does: ROUGE-1 of both against the
           DialogSum references and the paired-bootstrap 95% interval of the difference (tunebench.evaluate.stats).
Prints examples/s and the ratios, and for every output that differs from the loop's, where the token streams
part and the loop's top-1 vs top-2 logit margin there (a tiny margin means a float near-tie that padding's
different reduction order flipped, not a bug).
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

from tunebench.config import DataConfig, GenerationConfig, ModelConfig, resolve_data_dir  # noqa: E402
from tunebench.evaluate.generate import (  # noqa: E402
    count_new_tokens,
    encode_prompts,
    eos_token_ids,
    generate_texts,
    pad_batch,
)
from tunebench.models.chat import pad_token_id  # noqa: E402


def dialogsum_examples(n: int, data_dir: Path | None) -> list[Any]:
    """The first n DialogSum test examples."""
    from tunebench.data.prepare import build_splits

    cfg = DataConfig(
        source="dialogsum",
        splits={"train": "validation", "validation": None, "test": "test"},
        limits={"test": n},
    )
    return list(build_splits(cfg, data_dir, seed=0).test)


def parity(fp32_texts: list[str], fast_texts: list[str], references: list[list[str]], seed: int = 0) -> dict:
    """ROUGE-1 of both runs and the paired-bootstrap 95% interval of fast - fp32, as the parity gate computes."""
    from tunebench.evaluate.metrics import compute_metric_stats
    from tunebench.evaluate.stats import paired_bootstrap_stats

    a = compute_metric_stats(fp32_texts, references, ["rouge1"], warn=False)["rouge1"]
    b = compute_metric_stats(fast_texts, references, ["rouge1"], warn=False)["rouge1"]
    paired = paired_bootstrap_stats(a.stats, b.stats, a.score_fn, n_resamples=1000, seed=seed)
    return {"rouge1_fp32": a.score(), "rouge1_fast": b.score(), "delta": paired["delta"], "ci95": paired["ci95"]}


def hf_loop(model: Any, tok: Any, prompts: list[str], max_new: int) -> list[list[int]]:
    """Plain Hugging Face: one prompt per `generate` call; returns the new token ids of each."""
    import torch

    eos, pad = eos_token_ids(model, tok), pad_token_id(tok, eos_token_ids(model, tok))
    out: list[list[int]] = []
    with torch.inference_mode():
        for ids in encode_prompts(tok, prompts):
            x = torch.tensor([ids])
            y = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=max_new, do_sample=False,
                               eos_token_id=eos, pad_token_id=pad)  # fmt: skip
            row = y[0, len(ids) :].tolist()
            out.append(row[: count_new_tokens(row, eos, pad)])
    return out


def hf_batched(model: Any, tok: Any, prompts: list[str], max_new: int, bs: int) -> list[list[int]]:
    """Hugging Face `generate` on left-padded batches in input order (what most eval scripts do)."""
    import torch

    eos = eos_token_ids(model, tok)
    pad = pad_token_id(tok, eos)
    encoded = encode_prompts(tok, prompts)
    out: list[list[int]] = []
    with torch.inference_mode():
        for i in range(0, len(encoded), bs):
            inputs = pad_batch(encoded[i : i + bs], pad, "left", model.device)
            y = model.generate(
                **inputs, max_new_tokens=max_new, do_sample=False, eos_token_id=eos, pad_token_id=pad
            )
            for row in y[:, inputs["input_ids"].shape[1] :].tolist():
                out.append(row[: count_new_tokens(row, eos, pad)])
    return out


def divergence(model: Any, tok: Any, prompt: str, ref: list[int], other: list[int]) -> dict[str, Any]:
    """Where two token streams part, and the reference's top-1 minus top-2 logit there (unpadded forward)."""
    import torch

    k = next(
        (i for i, (a, b) in enumerate(zip(ref, other, strict=False)) if a != b), min(len(ref), len(other))
    )
    ids = encode_prompts(tok, [prompt])[0] + ref[:k]
    with torch.inference_mode():
        logits = model(torch.tensor([ids])).logits[0, -1].float()
    top = torch.topk(logits, 2)
    return {"token": k, "margin": float(top.values[0] - top.values[1]),
            "ref": tok.decode(ref[k : k + 1]), "other": tok.decode(other[k : k + 1])}  # fmt: skip


def timed(fn: Any) -> tuple[Any, float, float]:
    """(result, wall seconds, CPU seconds of this process): CPU time shows the work when other jobs share the CPU."""
    start, cpu_start = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - start, time.process_time() - cpu_start


def check_equal(
    model: Any,
    tok: Any,
    prompts: list[str],
    loop: list[list[int]],
    name: str,
    texts: list[str],
    report: dict[str, Any],
) -> None:
    """Count outputs that differ from the loop's and say where each parts and how close the loop's choice was."""
    ref_texts = [tok.decode(r, skip_special_tokens=True).strip() for r in loop]
    bad = [i for i, (a, b) in enumerate(zip(ref_texts, texts, strict=True)) if a != b]
    report[f"mismatches_{name}"] = len(bad)
    print(f"{name} outputs equal to the loop's: {len(prompts) - len(bad)}/{len(prompts)}")
    for i in bad:
        other = tok(texts[i], add_special_tokens=False)["input_ids"]
        info = divergence(model, tok, prompts[i], loop[i], other)
        report.setdefault(f"divergences_{name}", []).append({"index": i, **info})
        print(f"  #{i}: parts at new token {info['token']} ({info['ref']!r} vs {info['other']!r}), "
              f"loop's top-1/top-2 logit margin {info['margin']:.4f}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=64, help="DialogSum test prompts")
    ap.add_argument("--batch-size", type=int, default=32, help="our decode slots and HF's batch size")
    ap.add_argument("--max-new-tokens", type=int, default=96, help="as in eval.generation")
    ap.add_argument("--model", default="smollm2-135m-instruct", help="model.ref (alias, local dir, .gguf)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads for all runs (0: torch's default)")
    ap.add_argument(
        "--bf16", action="store_true", help="also time ours under bf16 autocast (outputs may differ)"
    )
    ap.add_argument("--precision", choices=["bf16", "int8"], action="append", default=[],
                    help="also time ours in this fast precision and compare its ROUGE-1 with fp32's (repeatable)")
    ap.add_argument("--prefill-compare", action="store_true",
                    help="also time ours with each prompt prefilled alone")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument(
        "--skip", choices=["loop", "batched"], action="append", default=[], help="skip a baseline"
    )
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)

    import torch

    from tunebench.models.load import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model(ModelConfig(ref=args.model))
    model, tok, family = loaded.model, loaded.tokenizer, loaded.family
    examples = dialogsum_examples(args.n, resolve_data_dir(args.data_dir))
    prompts = [loaded.format_prompt(e.prompt) for e in examples]
    lengths = [len(x) for x in encode_prompts(tok, prompts)]
    gen = GenerationConfig(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    print(
        f"model {args.model} on {model.device}, torch threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.1f}"
    )
    print(f"{len(prompts)} prompts, {min(lengths)}-{max(lengths)} tokens (mean {sum(lengths) / len(lengths):.0f}), "
          f"max_new_tokens {args.max_new_tokens}, batch size {args.batch_size}")  # fmt: skip
    generate_texts(model, tok, prompts[:2], family=family, gen=gen.model_copy(update={"max_new_tokens": 4}))

    jobs: dict[str, Any] = {"ours": lambda: generate_texts(model, tok, prompts, family=family, gen=gen)}
    if "loop" not in args.skip:
        jobs["loop"] = lambda: hf_loop(model, tok, prompts, args.max_new_tokens)
    if "batched" not in args.skip:
        jobs["batched"] = lambda: hf_batched(model, tok, prompts, args.max_new_tokens, args.batch_size)
    if args.bf16:
        jobs["ours_bf16"] = lambda: generate_texts(model, tok, prompts, family=family, gen=gen, bf16=True)
    if args.prefill_compare:
        import functools

        from tunebench.evaluate import decode, generate

        def one_at_a_time_prefill() -> Any:
            real = generate.greedy_decode
            generate.greedy_decode = functools.partial(decode.greedy_decode, prefill_tokens=0)
            try:
                return generate_texts(model, tok, prompts, family=family, gen=gen)
            finally:
                generate.greedy_decode = real

        jobs["ours_prompt_prefill"] = one_at_a_time_prefill
    for name in args.precision:
        from tunebench.models.precision import precision_variant

        fast = precision_variant(model, name)
        generate_texts(fast, tok, prompts[:2], family=family, gen=gen.model_copy(update={"max_new_tokens": 4}))
        jobs[f"ours_{name}"] = lambda fast=fast: generate_texts(fast, tok, prompts, family=family, gen=gen)
    results, wall, cpu = {}, {}, {}
    for name, job in jobs.items():
        results[name], wall[name], cpu[name] = timed(job)
        print(f"{name} done, load {os.getloadavg()[0]:.1f}", flush=True)

    ours = results["ours"]
    report: dict[str, Any] = {"n": len(prompts), "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
                              "threads": torch.get_num_threads(), "device": str(model.device),
                              "mean_new_tokens": sum(r.n_new_tokens for r in ours) / len(ours)}  # fmt: skip
    for name in jobs:
        report[f"{name}_examples_per_s"], report[f"{name}_cpu_s"] = len(prompts) / wall[name], cpu[name]
        print(f"{name:9s} {wall[name]:8.1f} s wall {cpu[name]:8.1f} s cpu  {len(prompts) / wall[name]:7.3f} "
              f"examples/s  {wall[name] / len(prompts):6.2f} s/example")  # fmt: skip
    for name in ("loop", "batched"):
        if name in jobs:
            report[f"speedup_vs_{name}"] = wall[name] / wall["ours"]
            report[f"cpu_speedup_vs_{name}"] = cpu[name] / cpu["ours"]
            print(
                f"ours vs {name}: {wall[name] / wall['ours']:.2f}x wall, {cpu[name] / cpu['ours']:.2f}x cpu time"
            )
    if "loop" in jobs:
        loop = results["loop"]
        check_equal(model, tok, prompts, loop, "ours", [r.text for r in ours], report)
        if "batched" in jobs:
            texts = [tok.decode(r, skip_special_tokens=True).strip() for r in results["batched"]]
            check_equal(model, tok, prompts, loop, "batched", texts, report)
        if args.bf16:
            report["bf16_speedup_vs_loop"] = wall["loop"] / wall["ours_bf16"]
            print(f"ours (bf16 autocast) vs loop: {wall['loop'] / wall['ours_bf16']:.2f}x wall, "
                  f"{cpu['loop'] / cpu['ours_bf16']:.2f}x cpu time")  # fmt: skip
            report["mismatches_ours_bf16"] = sum(
                tok.decode(r, skip_special_tokens=True).strip() != b.text
                for r, b in zip(loop, results["ours_bf16"], strict=True)
            )
            print(f"bf16 outputs equal to the fp32 loop's: {len(prompts) - report['mismatches_ours_bf16']}/{len(prompts)}"
                  " (bf16 rounding changes greedy paths: expected)")  # fmt: skip
    if args.prefill_compare:
        same = sum(a.text == b.text for a, b in zip(ours, results["ours_prompt_prefill"], strict=True))
        report["prefill_speedup"] = wall["ours_prompt_prefill"] / wall["ours"]
        print(f"batched prefill vs per-prompt prefill: {report['prefill_speedup']:.2f}x wall; outputs equal: "
              f"{same}/{len(prompts)}")
    references = [list(e.references) for e in examples]
    for name in args.precision:
        fast = results[f"ours_{name}"]
        figures = parity([r.text for r in ours], [r.text for r in fast], references)
        report[f"parity_{name}"] = figures
        same = sum(a.text == b.text for a, b in zip(ours, fast, strict=True))
        lo, hi = figures["ci95"]
        print(f"{name} vs fp32: {wall['ours'] / wall[f'ours_{name}']:.2f}x wall; ROUGE-1 {figures['rouge1_fast']:.4f} "
              f"vs {figures['rouge1_fp32']:.4f}, delta {figures['delta']:+.4f}, 95% interval [{lo:+.4f}, {hi:+.4f}] "
              f"({'within' if -0.01 <= lo and hi <= 0.01 else 'not within'} the gate's ±0.01); outputs equal "
              f"{same}/{len(prompts)}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
