"""Training throughput: tunebench's loop against Hugging Face `Trainer` (+ PEFT) on the same model, data and method.

    python speed/train_throughput.py [--methods lora,full,ia3,...] [--steps 12] [--examples 96] [--batch-size 8]
                                     [--reference-batches same|own] [--data-dir DIR] [--compile] [--ablate]
    python speed/train_throughput.py --precisions   # ours only: tokens/s in fp32 and bf16, and what auto picked
    python speed/train_throughput.py --processes 1,2  # ours only: 1 process against 2 (gloo), same global batch

Both trainers get the same tokenized DialogSum dev dialogues (chat template, completion-only labels), the same
method applied to the model by the methods table (LoRA: all-linear, r16, alpha 32, dropout 0.05; every other
method its config defaults), batch size, learning rate (LoRA 5e-4, the others their methods-table default),
warmup and number of steps, and by default the same batches in the same order: the reference's DataLoader is
given our trainer's batch list for the run (`epoch_batches`: length-grouped, seed 0), so both train on exactly
the same examples, padded alike, and count the same tokens. `--reference-batches own` lets the reference draw its
own batches instead (Trainer's default random sampler: more padding per real token, and, unless --steps x
--batch-size covers --examples exactly, other examples than ours). The reference is a plain `Trainer` set-up:
DataCollatorForSeq2Seq padding, bf16
autocast when the CPU has native bf16, fp32 weights, the model's own loss; it is "Trainer + PEFT" for the
methods PEFT implements (lora, ia3, prompt_tuning, prefix_tuning) and plain `Trainer` on the same prepared model
for the others (full; freeze and the bottleneck adapter, which PEFT does not have). Each trainer runs in its own
subprocess so its peak RSS is its own.

Throughput counts real (non-padding) tokens per second of training. Model FLOP/s use the standard estimate
4 * N + 2 * T per token (forward 2N and the backward pass's activation gradients 2N through every weight a token
passes through, N, the tied output head included; weight gradients 2T for the T trainable parameters only: 6N
for full fine-tuning, about 4N for LoRA; adapters' own and attention's L^2 terms are left out) -- the same
nominal count for both trainers, whatever work each actually skips. The peak is the faster of the measured bf16
and fp32 matmul rates (bf16 is emulated, and far slower, on CPUs without native bf16).

`--processes 1,2` runs our trainer alone, once per process count, each run launched by torchrun (the launcher
`accelerate launch --multi_gpu` wraps; gloo on the CPU) except the one-process run, all with the same global batch:
`--batch-size` examples per process and micro-batch, times the largest process count (the one-process run
accumulates that many micro-batches per step), so every run takes the same optimizer steps on the same examples.
The machine's cores are split evenly between the processes (OMP_NUM_THREADS). tokens/s counts every process's
tokens over the main process's wall time of the steps.
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
    """The run config of `args.method`: LoRA at its measured settings, other methods at their defaults."""
    from tunebench.config import config_from_dict

    return config_from_dict({
        "name": "bench", "output_dir": str(out), "seed": 0, "model": {"ref": args.model},
        "data": {**DATA_KEYS, "limits": {"train": args.examples, "test": 1}},
        "train": {"method": args.method, "lora": {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"},
                  "batch_size": args.batch_size, "max_steps": args.steps, "global_batch_size": args.global_batch,
                  "lr": LR if args.method == "lora" else None, "warmup_ratio": WARMUP_RATIO,
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

    with tempfile.TemporaryDirectory() as tmp:
        cfg = run_config(args, Path(args.out or tmp))  # several processes share the parent's folder
        extra = switch_off(args.without, cfg) if args.without else {}
        s = train(cfg, data_dir=resolve_data_dir(args.data_dir, cfg), progress=False, **extra).summary
    return {"processes": s["num_processes"], "grad_accum": s["grad_accum"], "global_batch": s["global_batch_size"],
            "threads": s["threads"], "tokens": s["train_tokens"], "train_s": s["train_time_s"], "cpu_s": s["train_cpu_s"],
            "peak_rss_gib": s["peak_rss_gib"], "params": s["total_params"], "trainable": s["trainable_params"],
            "bf16": s["bf16"], "precision": s["precision"]}


def our_batches(lengths: list[int], cfg: Any, steps: int) -> list[list[int]]:
    """The batches (example indices) our trainer draws for `steps` optimizer steps of one process without gradient
    accumulation: each epoch's `epoch_batches` (the config's seed and group_by_length), epoch after epoch."""
    from tunebench.data.batching import epoch_batches

    batches: list[list[int]] = []
    epoch = 0
    while len(batches) < steps:
        batches += epoch_batches(lengths, cfg.train.batch_size, cfg.seed, epoch,
                                 group_by_length=cfg.train.group_by_length)
        epoch += 1
    return batches[:steps]


def run_hf(args: argparse.Namespace) -> dict[str, Any]:
    from torch.utils.data import DataLoader
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
        model = apply_method(loaded.model, cfg.train)  # the same method (PEFT's where PEFT has it), fp32 weights
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
            max_steps=args.steps, learning_rate=cfg.train.lr, warmup_steps=warmup_steps(args.steps, WARMUP_RATIO),
            lr_scheduler_type="linear", max_grad_norm=1.0, weight_decay=0.0, seed=0, logging_steps=1,
            save_strategy="no", report_to="none", disable_tqdm=True, remove_unused_columns=False,
            dataloader_num_workers=0, torch_compile=args.compile,
        )
        trainer_class = Trainer
        if args.reference_batches == "same":
            batches = our_batches([r.length for r in rows], cfg, args.steps)

            class SameBatchesTrainer(Trainer):
                """Trainer whose training DataLoader yields our trainer's batches, in our order."""

                def get_train_dataloader(self) -> DataLoader:
                    return DataLoader(dataset, batch_sampler=batches, collate_fn=collate)

            trainer_class = SameBatchesTrainer
        trainer = trainer_class(model=model, args=targs, train_dataset=dataset, data_collator=collate)
        start, cpu_start = time.perf_counter(), time.process_time()
        trainer.train()
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    trainable, total = parameter_counts(model)
    return {"tokens": counted["tokens"], "train_s": round(elapsed, 2), "cpu_s": round(cpu, 2),
            "peak_rss_gib": round(peak_rss_bytes() / 2**30, 3), "params": total, "trainable": trainable,
            "bf16": bf16, "peft": hasattr(model, "peft_config")}


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
                  bf16: str | None = None, method: str = "lora", processes: int = 1,
                  global_batch: int | None = None) -> dict[str, Any]:
    """One trainer's run in a fresh process (torchrun with `processes` > 1); its summary figures."""
    launcher = [sys.executable]
    if processes > 1:
        import socket

        with socket.socket() as sock:  # a free port for the process group
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        launcher += ["-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port", str(port)]
    cmd = [*launcher, __file__, "--only", which, "--steps", str(args.steps), "--examples", str(args.examples),
           "--batch-size", str(args.batch_size), "--model", args.model, "--bf16", bf16 or args.bf16,
           "--method", method]
    cmd += ["--compile"] if args.compile else []
    cmd += ["--reference-batches", args.reference_batches]
    cmd += ["--global-batch", str(global_batch)] if global_batch else []
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    if without:
        cmd += ["--without", without]
    env = {**os.environ, "TQDM_DISABLE": "1"}
    # Both trainers run with the same OpenMP wait policy (ours sets PASSIVE when imported first); an empty value
    # makes libgomp fall back to its default spinning.
    env["OMP_WAIT_POLICY"] = "" if without == "omp_passive" else env.get("OMP_WAIT_POLICY", "PASSIVE")
    if global_batch:  # a process-count comparison: the cores split evenly between the processes
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // processes))
    with tempfile.TemporaryDirectory() as out:
        done = subprocess.run([*cmd, "--out", out], capture_output=True, text=True, env=env)
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


def compare_processes(args: argparse.Namespace) -> None:
    """Our trainer on 1 and on N CPU processes with the same global batch: tokens/s of each, and N over 1."""
    global_batch = args.batch_size * max(args.processes)
    print(f"{args.steps} steps, global batch {global_batch} ({args.batch_size} per process and micro-batch), "
          f"{args.examples} DialogSum dialogues, {args.method}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    print(f"{'processes':<11}{'threads':>8}{'accum':>7}{'tokens':>8}{'seconds':>9}{'tokens/s':>10}{'vs 1':>7}"
          f"{'peak RSS':>11}  load", flush=True)
    first = None
    for n in args.processes:
        r = in_subprocess("ours", args, method=args.method, processes=n, global_batch=global_batch)
        rate = r["tokens"] / r["train_s"]
        first = first or rate
        print(f"{r['processes']:<11}{r['threads']:>8}{r['grad_accum']:>7}{r['tokens']:>8}{r['train_s']:>9.1f}"
              f"{rate:>10.1f}{rate / first:>6.2f}x{r['peak_rss_gib']:>7.2f} GiB  {os.getloadavg()[0]:.1f}",
              flush=True)
    print("threads: per process; peak RSS: of the main process; vs 1: tokens/s over the first row's")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps each trainer runs")
    parser.add_argument("--examples", type=int, default=96, help="DialogSum dev dialogues to draw batches from")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--data-dir", help="folder holding dialogsum/ (default: $TUNEBENCH_DATA_DIR)")
    parser.add_argument("--compile", action="store_true", help="torch.compile in both trainers")
    parser.add_argument("--reference-batches", choices=["same", "own"], default="same",
                        help="same: the reference trains on our trainer's batches in our order (default); own: on "
                        "Trainer's default random batches")
    parser.add_argument("--ablate", action="store_true", help="also rerun ours with each speed lever switched off")
    parser.add_argument("--precisions", action="store_true",
                        help="ours only, once per precision (train.bf16 off, on, auto): tokens/s of each and which "
                        "one auto picked")
    parser.add_argument("--bf16", choices=["auto", "on", "off"], default="auto", help="train.bf16 of our trainer")
    parser.add_argument("--methods", type=lambda v: [m.strip() for m in v.split(",") if m.strip()],
                        default=["lora"], help="methods to measure, e.g. full,lora,freeze,adapter,ia3,prompt_tuning")
    parser.add_argument("--processes", type=lambda v: [int(n) for n in v.split(",") if n.strip()], default=None,
                        metavar="N[,N...]", help="ours only: tokens/s of each process count (e.g. 1,2) with the same "
                        "global batch (--batch-size per process x the largest count)")
    parser.add_argument("--method", default="lora", help=argparse.SUPPRESS)
    parser.add_argument("--global-batch", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--only", choices=["ours", "hf"], help=argparse.SUPPRESS)
    parser.add_argument("--without", choices=sorted(LEVERS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    from tunebench.sweep import check_methods

    args.methods = check_methods(args.methods)
    if args.only:
        result = run_ours(args) if args.only == "ours" else run_hf(args)
        if os.environ.get("RANK", "0") == "0":  # under torchrun every process returns the same summary
            print(json.dumps(result))
        return
    if args.processes:
        compare_processes(args)
        return

    if args.precisions:
        compare_precisions(args)
        return
    peak_bf16, peak_fp32 = matmul_peak(torch.bfloat16), matmul_peak(torch.float32)
    print(f"{args.steps} steps, batch {args.batch_size}, {args.examples} DialogSum dialogues, "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")
    peak = max(peak_bf16, peak_fp32)  # "of peak" against the faster: bf16 is emulated (far slower) on some CPUs
    print(f"measured matmul peak: bf16 {peak_bf16 / 1e9:.1f} GFLOP/s, fp32 {peak_fp32 / 1e9:.1f} GFLOP/s")
    print("reference batches: " + ("ours, in our order (both trainers see the same tokens)"
                                   if args.reference_batches == "same" else "its own (Trainer's random sampler)"))
    print(f"{'method':<15}{'trainer':<20}{'tokens':>8}{'seconds':>9}{'tokens/s':>10}{'tok/CPU-s':>11}{'GFLOP/s':>9}"
          f"{'of peak':>9}{'peak RSS':>10}{'speed-up':>10}{'CPU-s':>8}  load", flush=True)
    measured: dict[str, dict[str, Any]] = {}
    for method in args.methods:
        results = measured[method] = {name: in_subprocess(name, args, method=method) for name in ("hf", "ours")}
        labels = {"hf": "HF Trainer + PEFT" if results["hf"].get("peft") else "HF Trainer", "ours": "tunebench"}
        for name in ("hf", "ours"):
            r = results[name]
            rate, per_cpu = r["tokens"] / r["train_s"], r["tokens"] / r["cpu_s"]
            flops = (4 * r["params"] + 2 * r["trainable"]) * rate
            r.update(tokens_per_s=rate, tokens_per_cpu_s=per_cpu)
            ratios = ""
            if name == "ours":
                ratio = rate / results["hf"]["tokens_per_s"]
                cpu_ratio = per_cpu / results["hf"]["tokens_per_cpu_s"]
                ratios = f"{ratio:>9.2f}x{cpu_ratio:>7.2f}x"
            print(f"{method:<15}{labels[name]:<20}{r['tokens']:>8}{r['train_s']:>9.1f}{rate:>10.1f}{per_cpu:>11.1f}"
                  f"{flops / 1e9:>9.1f}{flops / peak:>9.1%}{r['peak_rss_gib']:>6.2f} GiB{ratios:>18}"
                  f"  {os.getloadavg()[0]:.1f}", flush=True)
    print("speed-up: tunebench over the HF Trainer reference in tokens/s, and in tokens per CPU-second "
          "(target >= 1.5x)")
    unequal = [m for m, r in measured.items() if r["hf"]["tokens"] != r["ours"]["tokens"]]
    if args.reference_batches == "same" and unequal:
        print(f"WARNING: the trainers counted different tokens for {', '.join(unequal)}: not the same batches")
    if args.ablate:
        # On a shared machine wall time swings with other load; CPU time per token is the steadier measure.
        lora = measured["lora"]["ours"] if "lora" in measured else in_subprocess("ours", args)  # levers of LoRA
        base = lora["tokens"] / lora["cpu_s"]
        print(f"\n{'ours without':<20}{'tokens/s':>10}{'tok/CPU-s':>11}{'vs all on':>11}{'peak RSS':>10}  what changes")
        for lever, what in LEVERS.items():
            r = in_subprocess("ours", args, without=lever)
            rate, per_cpu = r["tokens"] / r["train_s"], r["tokens"] / r["cpu_s"]
            print(f"{lever:<20}{rate:>10.1f}{per_cpu:>11.1f}{per_cpu / base:>10.2f}x{r['peak_rss_gib']:>6.2f} GiB  "
                  f"{what} (load {os.getloadavg()[0]:.1f})", flush=True)


if __name__ == "__main__":
    main()
