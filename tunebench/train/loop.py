"""The training loop, torchtune style: one function to read top to bottom, no callbacks.

set-up -> for epoch -> for optimizer step -> for forward chunk: forward, loss, backward -> clip, step -> log ->
evaluate -> checkpoint. Accelerate does what differs between one CPU and many GPUs (device placement, DDP/FSDP
under `accelerate launch`, gradient sync, bf16 autocast); the rest is plain PyTorch.

Exact resume: the batch order is a pure function of (seed, epoch), a checkpoint records the next window of the
epoch and every process's RNG state at a step boundary, and evaluation and generation leave the RNG untouched,
so `resume=True` replays the same steps on the same data with the same dropout masks. Ctrl-C is handled at a
forward-chunk boundary: the weights have not changed since the last optimizer step, so that step's state is
checkpointed and `train` returns a result with `interrupted=True` (a second Ctrl-C aborts at once).
"""

from __future__ import annotations

import signal
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, gather_object, set_seed

from tunebench.config import RunConfig
from tunebench.data.batching import PaddingCollator, epoch_batches, pad_token_id
from tunebench.data.prepare import build_splits
from tunebench.data.tokenize import tokenize_examples
from tunebench.errors import DataError
from tunebench.evaluate.metrics import metric_class
from tunebench.io import atomic_write_json
from tunebench.models import apply_method, load_model, parameter_counts, save_trained
from tunebench.models.load import capped_max_length
from tunebench.rundir import RunDir
from tunebench.train import checkpoint as ckpt
from tunebench.train.batches import DEFAULT_MAX_FORWARD_TOKENS, forward_chunks, step_windows
from tunebench.train.fast_paths import keep_lora_input_dtype, release_free_memory
from tunebench.train.gen_eval import gen_eval_generation, gen_eval_set, run_gen_eval
from tunebench.train.loss import base_model, completion_loss_sum, supports_logits_to_keep, target_count
from tunebench.train.precision import multi_process_cpu, probe_device, resolve_bf16
from tunebench.train.progress import ProgressBar, Throughput, TrainLog, plot_loss_curve
from tunebench.train.rundir import peak_rss_bytes, prepare_run_dir, relative_drop
from tunebench.train.schedule import build_optimizer, build_scheduler, total_optimizer_steps


@dataclass
class TrainResult:
    """What a training call produced. `output_dir` is None when the run was interrupted."""

    run_dir: Path
    output_dir: Path | None
    steps: int
    total_steps: int
    interrupted: bool = False
    stopped_early: bool = False
    best_step: int | None = None
    summary: dict[str, Any] = field(default_factory=dict)


def train(
    cfg: RunConfig,
    *,
    data_dir: Path | None,
    resume: bool = False,
    progress: bool = True,
    max_forward_tokens: int | None = DEFAULT_MAX_FORWARD_TOKENS,
) -> TrainResult:
    """Fine-tune `cfg.model` on `cfg.data` as `cfg.train` says, writing everything into `cfg.run_dir`."""
    wall_start = time.perf_counter()
    tc = cfg.train
    use_bf16 = resolve_bf16(tc.bf16, probe_device())
    accelerator = Accelerator(mixed_precision="bf16" if use_bf16 else "no", cpu=multi_process_cpu())
    rank, world, is_main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    run_dir = prepare_run_dir(cfg, resume=resume, write=is_main)
    paths = RunDir(run_dir)
    ckpt_root = paths.checkpoints
    set_seed(cfg.seed)

    # ---- data and model
    splits = build_splits(cfg.data, data_dir, cfg.seed)
    loaded = load_model(cfg.model)
    tokenizer, family = loaded.tokenizer, loaded.family
    max_length = capped_max_length(cfg.data.max_length, loaded.model)  # never past the model's positions
    shared = dict(family=family, format_prompt=loaded.format_prompt, max_length=max_length,
                  truncation=cfg.data.truncation)
    train_set, train_stats = tokenize_examples(splits.train, tokenizer, train_on_prompt=tc.train_on_prompt, **shared)
    val_set, val_stats = tokenize_examples(splits.validation, tokenizer, **shared)  # always completion-only
    if not train_set:
        raise DataError(f"no training example fits data.max_length {cfg.data.max_length}: raise it or use truncate")
    if is_main:
        atomic_write_json(paths.data_stats, {**splits.stats, "tokenized": {"train": train_stats,
                                                                         "validation": val_stats}})
    lengths = [ex.length for ex in train_set]
    targets = [target_count(ex, family) for ex in train_set]
    # widths in multiples of 16: few distinct tensor shapes, so freed memory is reused instead of fragmenting
    collate = PaddingCollator(pad_token_id(tokenizer), family, pad_to_multiple_of=16)
    gen_subset = gen_eval_set(splits.validation, tc.gen_eval.examples, loaded.format_prompt) if tc.gen_eval.every else None

    frozen_bf16 = use_bf16 and tc.frozen_bf16 and tc.method != "full"
    model = apply_method(loaded.model, tc, frozen_dtype=torch.bfloat16 if frozen_bf16 else None)
    model.train()
    lean_lora = tc.method == "lora" and accelerator.device.type == "cpu"
    trainable_params, total_params = parameter_counts(model)
    optimizer = build_optimizer(model, lr=tc.lr, weight_decay=tc.weight_decay)
    steps_per_epoch = len(step_windows(epoch_batches(lengths, tc.batch_size, cfg.seed, 0), tc.grad_accum, world))
    total_steps = total_optimizer_steps(steps_per_epoch, epochs=tc.epochs, max_steps=tc.max_steps)
    scheduler = build_scheduler(optimizer, tc.scheduler, total_steps=total_steps, warmup_ratio=tc.warmup_ratio)
    ddp_model, optimizer = accelerator.prepare(model, optimizer)
    forward_model = torch.compile(ddp_model, dynamic=True) if tc.compile else ddp_model
    keep_logits = supports_logits_to_keep(model)
    decoder_inputs = base_model(model).prepare_decoder_input_ids_from_labels if family == "seq2seq" else None
    trainable = [p for p in model.parameters() if p.requires_grad]

    def loss_sum(net: Any, rows: list[int], examples: list[Any]) -> torch.Tensor:
        batch = {k: v.to(accelerator.device) for k, v in collate([examples[i] for i in rows]).items()}
        with accelerator.autocast():
            return completion_loss_sum(net, batch, family=family, keep_logits=keep_logits,
                                       decoder_inputs=decoder_inputs)

    def validation_loss() -> float:
        """Mean loss per completion token over the validation split (this process's share, then summed)."""
        val_lengths = [e.length for e in val_set]
        order = sorted(range(len(val_set)), key=lambda i: -val_lengths[i])
        totals = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
        model.eval()
        with torch.no_grad():
            for start in range(rank * tc.batch_size, len(order), world * tc.batch_size):
                for rows in forward_chunks(order[start : start + tc.batch_size], val_lengths, max_forward_tokens):
                    totals[0] += loss_sum(model, rows, val_set).double()
                    totals[1] += sum(target_count(val_set[i], family) for i in rows)
        model.train()
        totals = accelerator.reduce(totals, "sum")
        return float(totals[0] / totals[1].clamp(min=1))

    # ---- state: fresh, or the last checkpoint's
    state: dict[str, Any] = {"epoch": 0, "window": 0, "tokens": 0, "train_time_s": 0.0, "train_cpu_s": 0.0, "best": None,
                             "bad_evals": 0, "initial_val_loss": None, "last_val_loss": None,
                             "last_gen": None, "stopped_early": False, "unlogged_losses": []}
    step = 0
    log = TrainLog(paths.train_log)
    resumed_from = ckpt.latest_checkpoint(ckpt_root) if resume else None
    if resumed_from is not None:
        saved, rngs = ckpt.load_checkpoint(resumed_from, model=model, optimizer=optimizer, scheduler=scheduler)
        step = saved.pop("step")
        state.update({k: v for k, v in saved.items() if k != "format"})
        if len(rngs) != world:
            raise ckpt.CheckpointError(f"{resumed_from}: saved by {len(rngs)} process(es), resumed with {world}; "
                                       "resume with the same number of processes")
        ckpt.restore_rng(rngs[rank])
        log = TrainLog.resume(log.path, step) if is_main else log
    elif is_main:
        log.flush()

    def save(rng: list[dict[str, Any]]) -> None:
        if is_main:
            ckpt.save_checkpoint(ckpt_root, step, model=model, optimizer=optimizer, scheduler=scheduler, rng=rng,
                                 trainer_state=state)
            best = state["best"]["step"] if state["best"] else None
            ckpt.prune_checkpoints(ckpt_root, tc.keep_checkpoints, best)
            plot_loss_curve(log, paths.loss_curve, title=cfg.name)
        accelerator.wait_for_everyone()

    # ---- the loop (LoRA on CPU keeps its bf16 input: see fast_paths.py)
    bar = ProgressBar(total_steps, step, enabled=progress and is_main)
    speed = Throughput()
    interrupted = False
    stop = _StopRequest()
    with stop, keep_lora_input_dtype(model, active=lean_lora and use_bf16):
        if resumed_from is None and val_set and tc.eval_every:
            state["initial_val_loss"] = state["last_val_loss"] = validation_loss()
            if is_main:
                log.append({"step": 0, "epoch": 0.0, "val_loss": state["initial_val_loss"]})
        while step < total_steps and not state["stopped_early"] and not interrupted:
            epoch = state["epoch"]
            windows = step_windows(epoch_batches(lengths, tc.batch_size, cfg.seed, epoch,
                                                 group_by_length=tc.group_by_length), tc.grad_accum, world)
            for w in range(state["window"], len(windows)):
                step_start, cpu_start, rng_at_start = time.perf_counter(), time.process_time(), capture_all_rng()
                n_targets = max(1, sum(targets[i] for batch in windows[w] for i in batch))
                chunks = [c for batch in windows[w][rank::world] for c in forward_chunks(batch, lengths, max_forward_tokens)]
                step_loss = 0.0
                for k, rows in enumerate(chunks):
                    last = k == len(chunks) - 1
                    # accelerator.accumulate() assumes a fixed count of backward passes per step; chunk counts
                    # vary, so set the same two switches it sets: sync only on the last, and no_sync before.
                    accelerator.sync_gradients = last
                    with nullcontext() if last else accelerator.no_sync(ddp_model):
                        chunk_loss = loss_sum(forward_model, rows, train_set)
                        accelerator.backward(chunk_loss * (world / n_targets))
                    step_loss += chunk_loss.item()
                    if stop.requested:
                        accelerator.set_trigger()
                    if accelerator.check_trigger():
                        interrupted = True
                        break
                if interrupted:  # weights are those of `step`: checkpoint it, with this window still to do
                    optimizer.zero_grad(set_to_none=True)
                    state["window"] = w
                    save(rng_at_start)
                    bar.write(f"interrupted: checkpoint of step {step} saved; resume with --resume")
                    break
                grad_norm = accelerator.clip_grad_norm_(trainable, tc.max_grad_norm) if tc.max_grad_norm else None
                lr = scheduler.get_last_lr()[0]  # the rate this step uses
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                if accelerator.device.type == "cpu":
                    release_free_memory()
                step += 1
                state["window"] = w + 1
                step_tokens = sum(lengths[i] for batch in windows[w] for i in batch)
                state["tokens"] += step_tokens
                state["train_time_s"] += time.perf_counter() - step_start
                state["train_cpu_s"] += time.process_time() - cpu_start
                speed.add(step_tokens)
                train_loss = float(accelerator.reduce(torch.tensor(step_loss, device=accelerator.device))) / n_targets
                losses = state["unlogged_losses"]
                losses.append(train_loss)
                at_epoch = round(epoch + (w + 1) / len(windows), 4)
                if step % tc.log_every == 0 or step == total_steps:
                    if is_main:
                        log.append({"step": step, "epoch": at_epoch, "loss": sum(losses) / len(losses),
                                    "lr": lr, "tokens_per_s": round(speed.rate(), 1),
                                    "grad_norm": None if grad_norm is None else float(grad_norm)})
                    losses.clear()
                bar.update(train_loss, lr, speed.rate())

                # ---- evaluate: validation loss, generation metric; best step and early stopping
                done = step >= total_steps
                scores: dict[str, float] = {}
                if val_set and tc.eval_every and (step % tc.eval_every == 0 or done):
                    scores["val_loss"] = state["last_val_loss"] = validation_loss()
                    if is_main:
                        log.append({"step": step, "epoch": at_epoch, "val_loss": scores["val_loss"]})
                if gen_subset and tc.gen_eval.every and (step % tc.gen_eval.every == 0 or done):
                    result = None
                    if is_main:
                        result = run_gen_eval(model, tokenizer, gen_subset, family=family, metric=tc.gen_eval.metric,
                                              generation=gen_eval_generation(cfg), settings=cfg.eval.metric_settings(),
                                              bf16=use_bf16, seed=cfg.seed)
                        log.append({"step": step, "epoch": at_epoch, "gen_metric": {result["metric"]: result["value"]},
                                    "gen_n": result["n"], "gen_time_s": result["time_s"],
                                    "gen_example": result["example"]})
                    result = broadcast_object_list([result])[0]
                    scores[tc.gen_eval.metric] = result["value"]
                    state["last_gen"] = {"metric": result["metric"], "value": result["value"]}
                improved = _record_selection(state, step, scores.get(tc.select_best_by), tc.select_best_by,
                                             tc.early_stopping_patience)

                # ---- checkpoint
                if improved or done or state["stopped_early"] or (tc.save_every and step % tc.save_every == 0):
                    if improved and is_main:
                        ckpt.write_best(ckpt_root, step, tc.select_best_by, state["best"]["value"])
                    save(capture_all_rng())
                if done or state["stopped_early"]:
                    break
            else:
                state["epoch"], state["window"] = epoch + 1, 0
    bar.close()

    # ---- outputs: the best (or last) weights, the summary, the loss curve
    output_dir, summary = None, None
    best = state["best"]
    if is_main:
        if not interrupted:
            if best is not None and best["step"] != step:
                ckpt.load_trainable(model, ckpt.step_dir(ckpt_root, best["step"]) / "trainable.safetensors")
            output_dir = save_trained(model, tokenizer, paths.adapter if tc.method == "lora" else paths.model,
                                      method=tc.method)
        summary = {
            "method": tc.method, "trainable_params": trainable_params, "total_params": total_params,
            "steps": step, "total_steps": total_steps, "epochs": round(step / steps_per_epoch, 4),
            "examples": len(train_set), "train_tokens": state["tokens"],
            "train_time_s": round(state["train_time_s"], 2),
            "tokens_per_s": round(state["tokens"] / state["train_time_s"], 1) if state["train_time_s"] else None,
            "train_cpu_s": round(state["train_cpu_s"], 2), "threads": torch.get_num_threads(),
            "wall_time_s": round(time.perf_counter() - wall_start, 2), "peak_rss_gib": round(peak_rss_bytes() / 2**30, 3),
            "initial_val_loss": state["initial_val_loss"], "final_val_loss": state["last_val_loss"],
            "val_loss_drop": relative_drop(state["initial_val_loss"], state["last_val_loss"]),
            "best_val_loss": min(log.series("val_loss")[1], default=None),
            "select_best_by": tc.select_best_by, "best_step": best["step"] if best else None,
            "best_value": best["value"] if best else None, "final_gen_metric": state["last_gen"],
            "output_weights": "none (interrupted)" if interrupted else
            (f"best (step {best['step']})" if best else f"last (step {step})"),
            "stopped_early": state["stopped_early"], "interrupted": interrupted,
            "resumed_from_step": None if resumed_from is None else int(resumed_from.name.split("-")[1]),
            "bf16": use_bf16, "frozen_bf16": frozen_bf16, "compile": tc.compile, "num_processes": world,
            "max_forward_tokens": max_forward_tokens, "logits_only_at_targets": keep_logits,
            "lean_lora": lean_lora,
            "device": str(accelerator.device),
        }
        atomic_write_json(paths.train_summary, summary)
        plot_loss_curve(log, paths.loss_curve, title=cfg.name)
    summary = broadcast_object_list([summary])[0]
    accelerator.wait_for_everyone()
    return TrainResult(run_dir, output_dir, step, total_steps, interrupted, state["stopped_early"],
                       best["step"] if best else None, summary)


def capture_all_rng() -> list[dict[str, Any]]:
    """Every process's RNG state, index = process rank (gathered so the main process can save them)."""
    return gather_object([ckpt.capture_rng()])


def _record_selection(state: dict[str, Any], step: int, value: float | None, metric: str,
                      patience: int | None) -> bool:
    """Track the best step by `metric` (val_loss: lower is better; a generation metric: as the metric registry
    says) and count
    evaluations without improvement for early stopping. Returns whether `step` is the new best."""
    if value is None:
        return False
    best = state["best"]
    better = best is None or (value < best["value"] if metric == "val_loss"
                              else metric_class(metric).is_better(value, best["value"]))
    if better:
        state["best"], state["bad_evals"] = {"step": step, "value": value}, 0
    else:
        state["bad_evals"] += 1
        state["stopped_early"] = patience is not None and state["bad_evals"] >= patience
    return better


class _StopRequest:
    """The first Ctrl-C asks the loop to checkpoint and return; a second one raises KeyboardInterrupt."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
