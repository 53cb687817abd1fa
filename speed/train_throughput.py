"""Training throughput: tunebench's loop against Hugging Face `Trainer` + PEFT on the same model, data and LoRA.

    python speed/train_throughput.py [--steps 12] [--examples 96] [--batch-size 8] [--data-dir DIR] [--compile]
    python speed/train_throughput.py --precisions   # ours only: tokens/s in fp32 and bf16, and what auto picked

Both trainers get the same tokenized DialogSum dev dialogues (chat template, completion-only labels), the same
LoRA (all-linear, r16, alpha 32, dropout 0.05), batch size, learning rate, warmup and number of steps. The
reference is a plain `Trainer` set-up: DataCollatorForSeq2Seq padding, bf16 autocast when the CPU has native
bf16, fp32 weights, the model's own loss. Each trainer runs in its own subprocess so its peak RSS is its own.

Throughput counts real (non-padding) tokens per second of training. Model FLOP/s use the standard estimate
for LoRA, 4 * N * tokens (forward 2N, backward 2N for the activation gradients through the frozen weights; the
frozen weight gradients, 2N of full fine-tuning's 6N, are not computed; LoRA's own and attention's L^2 terms
are left out), with N every parameter a token passes through, the tied output head included -- the same
nominal count for both trainers, whatever work each actually skips. The peak is a measured bf16 matmul rate.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

DATA_KEYS = {"source": "dialogsum", "splits": {"train": "validation", "validation": None, "test": "test"},
             "fractions": {"validation": 0.0}, "limits": {"test": 1}, "max_length": 768}
LR, WARMUP_RATIO = 5e-4, 0.06


def run_config(args: argparse.Namespace, out: Path) -> Any:
    from tunebench.config import config_from_dict

    return config_from_dict({
        "name": "bench", "output_dir": str(out), "seed": 0, "model": {"ref": args.model},
        "data": {**DATA_KEYS, "limits": {"train": args.examples, "test": 1}},
        "train": {"method": "lora", "lora": {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"},
                  "batch_size": args.batch_size, "max_steps": args.steps, "lr": LR, "warmup_ratio": WARMUP_RATIO,
                  "scheduler": "linear", "eval_every": None, "save_every": None, "log_every": 1,
                  "compile": args.compile, "bf16": args.bf16},
    })


# What `--ablate` switches off, one at a time, in our trainer (by patching it in the benchmark's subprocess).
LEVERS = {
    "logits_to_keep": "output head and loss at every position (then masked) instead of target positions only",
    "frozen_bf16": "frozen weights held in float32 (autocast casts them on every forward)",
    "no_attention_mask": "attention mask passed for right-padded causal batches (SDPA's masked path)",
    "peft_input_cast": "PEFT casts each LoRA input to float32",
    "forward_chunks": "whole batch of 8 in one forward pass, however long its rows",
    "group_by_length": "random batches instead of length-grouped ones",
    "pad_to_16": "batches padded to their longest row, not to a multiple of 16",
    "malloc_trim": "freed heap memory kept by glibc between steps (no malloc_trim)",
    "omp_passive": "OpenMP threads spin while waiting (OMP_WAIT_POLICY unset)",
}


def switch_off(lever: str, cfg: Any) -> dict[str, Any]:
    """Patch our trainer so `lever` is off; returns extra keyword arguments for `train`."""
    import contextlib

    from tunebench.train import loop

    if lever == "logits_to_keep":
        loop.supports_logits_to_keep = lambda model: False
    elif lever == "frozen_bf16":
        cfg.train.frozen_bf16 = False
    elif lever == "no_attention_mask":
        real = loop.completion_loss_sum

        def with_mask(model: Any, batch: dict[str, Any], **kwargs: Any) -> Any:
            mask = batch["attention_mask"]
            return real(lambda **kw: model(attention_mask=mask, **kw), batch, **kwargs)

        loop.completion_loss_sum = with_mask
    elif lever == "peft_input_cast":
        loop.keep_lora_input_dtype = lambda model, active=True: contextlib.nullcontext()
    elif lever == "forward_chunks":
        return {"max_forward_tokens": None}
    elif lever == "group_by_length":
        cfg.train.group_by_length = False
    elif lever == "pad_to_16":
        real_collator = loop.PaddingCollator
        loop.PaddingCollator = lambda pad_id, family, pad_to_multiple_of=None: real_collator(pad_id, family)
    elif lever == "malloc_trim":
        loop.release_free_memory = lambda: False
    return {}


def run_ours(args: argparse.Namespace) -> dict[str, Any]:
    from tunebench.config import resolve_data_dir
    from tunebench.train.loop import train

    with tempfile.TemporaryDirectory() as out:
        cfg = run_config(args, Path(out))
        extra = switch_off(args.without, cfg) if args.without else {}
        s = train(cfg, data_dir=resolve_data_dir(args.data_dir, cfg), progress=False, **extra).summary
    return {"tokens": s["train_tokens"], "train_s": s["train_time_s"], "cpu_s": s["train_cpu_s"],
            "peak_rss_gib": s["peak_rss_gib"], "params": s["total_params"], "bf16": s["bf16"],
            "precision": s["precision"]}


def run_hf(args: argparse.Namespace) -> dict[str, Any]:
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from tunebench.config import resolve_data_dir
    from tunebench.data.prepare import build_splits
    from tunebench.data.tokenize import tokenize_examples
    from tunebench.memory import peak_rss_bytes
    from tunebench.models import apply_method, load_model, parameter_counts
    from tunebench.models.precision import bf16_native
    from tunebench.train.schedule import warmup_steps

    with tempfile.TemporaryDirectory() as out:
        cfg = run_config(args, Path(out))
        splits = build_splits(cfg.data, resolve_data_dir(args.data_dir, cfg), cfg.seed)
        loaded = load_model(cfg.model)
        rows, _ = tokenize_examples(splits.train, loaded.tokenizer, family=loaded.family,
                                    format_prompt=loaded.format_prompt, max_length=cfg.data.max_length)
        dataset = [{"input_ids": r.input_ids, "attention_mask": [1] * len(r.input_ids), "labels": r.labels}
                   for r in rows]
        model = apply_method(loaded.model, cfg.train)  # PEFT LoRA, fp32 weights
        model.train()
        counted = {"tokens": 0}
        pad = DataCollatorForSeq2Seq(loaded.tokenizer, model=None, padding=True, label_pad_token_id=-100)

        def collate(features: list[dict[str, Any]]) -> dict[str, Any]:
            batch = pad(features)
            counted["tokens"] += int(batch["attention_mask"].sum())
            return batch

        bf16 = bf16_native(torch.device("cpu"))
        targs = TrainingArguments(
            output_dir=out, use_cpu=True, bf16=bf16, per_device_train_batch_size=args.batch_size,
            max_steps=args.steps, learning_rate=LR, warmup_steps=warmup_steps(args.steps, WARMUP_RATIO),
            lr_scheduler_type="linear", max_grad_norm=1.0, weight_decay=0.0, seed=0, logging_steps=1,
            save_strategy="no", report_to="none", disable_tqdm=True, remove_unused_columns=False,
            dataloader_num_workers=0, torch_compile=args.compile,
        )
        trainer = Trainer(model=model, args=targs, train_dataset=dataset, data_collator=collate)
        start, cpu_start = time.perf_counter(), time.process_time()
        trainer.train()
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return {"tokens": counted["tokens"], "train_s": round(elapsed, 2), "cpu_s": round(cpu, 2),
            "peak_rss_gib": round(peak_rss_bytes() / 2**30, 3), "params": parameter_counts(model)[1], "bf16": bf16}


def matmul_peak(dtype: torch.dtype, n: int = 2048, seconds: float = 3.0) -> float:
    """Measured FLOP/s of a square matmul in `dtype` with this process's threads."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.matmul(a, b)
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.matmul(a, b)
        runs += 1
    return 2 * n**3 * runs / (time.perf_counter() - start)


def in_subprocess(which: str, args: argparse.Namespace, without: str | None = None,
                  bf16: str | None = None) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--only", which, "--steps", str(args.steps), "--examples", str(args.examples),
           "--batch-size", str(args.batch_size), "--model", args.model, "--bf16", bf16 or args.bf16]
    cmd += ["--compile"] if args.compile else []
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    if without:
        cmd += ["--without", without]
    env = {**os.environ, "TQDM_DISABLE": "1"}
    # Both trainers run with the same OpenMP wait policy (ours sets PASSIVE when imported first); an empty value
    # makes libgomp fall back to its default spinning.
    env["OMP_WAIT_POLICY"] = "" if without == "omp_passive" else env.get("OMP_WAIT_POLICY", "PASSIVE")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"{which} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare_precisions(args: argparse.Namespace) -> None:
    """Our trainer with train.bf16 auto, off (fp32) and on (bf16): tokens/s of each, printed as each run ends,
    auto's pick (from its probe, or the probe's cached figures for this machine) and how far auto is from the
    faster fixed setting. Where bf16 is emulated it can be many times slower, so auto and fp32 run first."""
    print(f"{args.steps} steps, batch {args.batch_size}, {args.examples} DialogSum dialogues, LoRA r16 all-linear, "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}", flush=True)
    print(f"{'train.bf16':<12}{'precision':>10}{'tokens':>8}{'seconds':>9}{'tokens/s':>10}{'tok/CPU-s':>11}"
          f"{'peak RSS':>10}  load", flush=True)
    runs = {}
    for mode in ("auto", "off", "on"):
        r = runs[mode] = in_subprocess("ours", args, bf16=mode)
        r["tokens_per_s"] = r["tokens"] / r["train_s"]
        print(f"{mode:<12}{r['precision']['picked']:>10}{r['tokens']:>8}{r['train_s']:>9.1f}"
              f"{r['tokens_per_s']:>10.1f}{r['tokens'] / r['cpu_s']:>11.1f}{r['peak_rss_gib']:>6.2f} GiB"
              f"  {os.getloadavg()[0]:.1f}", flush=True)
        if mode == "auto":
            auto = r["precision"]
            print(f"auto picked {auto['picked']}{' (cached probe)' if auto['cached'] else ''}: {auto['reason']}",
                  flush=True)
    fastest = max(("off", "on"), key=lambda m: runs[m]["tokens_per_s"])
    print(f"auto runs at {runs['auto']['tokens_per_s'] / runs[fastest]['tokens_per_s']:.1%} of the faster fixed "
          f"setting ({runs[fastest]['precision']['picked']}; target >= 95%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps each trainer runs")
    parser.add_argument("--examples", type=int, default=96, help="DialogSum dev dialogues to draw batches from")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--data-dir", help="folder holding dialogsum/ (default: $TUNEBENCH_DATA_DIR)")
    parser.add_argument("--compile", action="store_true", help="torch.compile in both trainers")
    parser.add_argument("--ablate", action="store_true", help="also rerun ours with each speed lever switched off")
    parser.add_argument("--precisions", action="store_true",
                        help="ours only, once per precision (train.bf16 off, on, auto): tokens/s of each and which "
                        "one auto picked")
    parser.add_argument("--bf16", choices=["auto", "on", "off"], default="auto", help="train.bf16 of our trainer")
    parser.add_argument("--only", choices=["ours", "hf"], help=argparse.SUPPRESS)
    parser.add_argument("--without", choices=sorted(LEVERS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only:
        print(json.dumps(run_ours(args) if args.only == "ours" else run_hf(args)))
        return

    if args.precisions:
        compare_precisions(args)
        return
    results = {name: in_subprocess(name, args) for name in ("hf", "ours")}
    peak_bf16, peak_fp32 = matmul_peak(torch.bfloat16), matmul_peak(torch.float32)
    print(f"{args.steps} steps, batch {args.batch_size}, {args.examples} DialogSum dialogues, LoRA r16 all-linear, "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")
    print(f"measured matmul peak: bf16 {peak_bf16 / 1e9:.1f} GFLOP/s, fp32 {peak_fp32 / 1e9:.1f} GFLOP/s")
    print(f"{'trainer':<20}{'tokens':>8}{'seconds':>9}{'tokens/s':>10}{'tok/CPU-s':>11}{'GFLOP/s':>9}"
          f"{'of peak':>9}{'peak RSS':>10}")
    for name, label in (("hf", "HF Trainer + PEFT"), ("ours", "tunebench")):
        r = results[name]
        rate, per_cpu = r["tokens"] / r["train_s"], r["tokens"] / r["cpu_s"]
        flops = 4 * r["params"] * rate
        r.update(tokens_per_s=rate, tokens_per_cpu_s=per_cpu)
        print(f"{label:<20}{r['tokens']:>8}{r['train_s']:>9.1f}{rate:>10.1f}{per_cpu:>11.1f}{flops / 1e9:>9.1f}"
              f"{flops / peak_bf16:>9.1%}{r['peak_rss_gib']:>6.2f} GiB")
    ratio = results["ours"]["tokens_per_s"] / results["hf"]["tokens_per_s"]
    cpu_ratio = results["ours"]["tokens_per_cpu_s"] / results["hf"]["tokens_per_cpu_s"]
    print(f"speed-up of tunebench over HF Trainer: {ratio:.2f}x in tokens/s, {cpu_ratio:.2f}x in tokens per "
          "CPU-second (target >= 1.5x)")
    if args.ablate:
        # On a shared machine wall time swings with other load; CPU time per token is the steadier measure.
        base = results["ours"]["tokens_per_cpu_s"]
        print(f"\n{'ours without':<20}{'tokens/s':>10}{'tok/CPU-s':>11}{'vs all on':>11}{'peak RSS':>10}  what changes")
        for lever, what in LEVERS.items():
            r = in_subprocess("ours", args, without=lever)
            rate, per_cpu = r["tokens"] / r["train_s"], r["tokens"] / r["cpu_s"]
            print(f"{lever:<20}{rate:>10.1f}{per_cpu:>11.1f}{per_cpu / base:>10.2f}x{r['peak_rss_gib']:>6.2f} GiB  "
                  f"{what} (load {os.getloadavg()[0]:.1f})", flush=True)


if __name__ == "__main__":
    main()
