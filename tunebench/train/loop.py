"""The trainer as a recipe, torchtune style (`recipes/lora_finetune_single_device.py`): no callbacks.

`Recipe.setup()` runs `_setup_processes` (device, Accelerate, run directory, seed), `_setup_model` (load, apply
the method), `_setup_data` (splits, tokenization, batching), `_setup_optimizer` (AdamW, schedule, DDP wrap) and
`_restore` (the last checkpoint when resuming). `Recipe.train()` is the loop, to read top to bottom: for epoch ->
for optimizer step -> for forward chunk: forward, loss, backward -> clip, step -> log -> `evaluate` -> `save`.
`summary()` is what `train_summary.json` holds. Accelerate does what differs between one CPU and many GPUs (device
placement, DDP/FSDP under `accelerate launch`, gradient sync, bf16 autocast); the rest is plain PyTorch.

Exact resume: the batch order is a pure function of (seed, epoch), a checkpoint stores the `TrainerState` (the
next window of the epoch among the rest) and every process's RNG state at a step boundary, and evaluation and
generation leave the RNG untouched, so `resume=True` replays the same steps on the same data with the same
dropout masks. Ctrl-C is handled at a forward-chunk boundary: the weights have not changed since the last optimizer
step, so that step's state is checkpointed and `train` returns a result with `interrupted=True` (a second Ctrl-C
aborts at once).
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, gather_object, set_seed

from tunebench.config import RunConfig
from tunebench.data.batching import PaddingCollator, pad_token_id
from tunebench.data.mixture import format_composition, mixture_batches
from tunebench.data.tasks import build_task_set, mixture_for
from tunebench.data.tokenize import tokenize_examples
from tunebench.errors import ConfigError, DataError
from tunebench.evaluate.metrics import metric_class
from tunebench.io import atomic_write_json
from tunebench.memory import peak_rss_bytes
from tunebench.models import apply_method, get_method, load_model, parameter_counts, save_trained
from tunebench.models.device import accelerate_cpu, load_dtype, resolve_device
from tunebench.models.load import capped_max_length, load_model_config
from tunebench.models.precision import resolve_bf16
from tunebench.processes import check_fsdp_device, check_sharding
from tunebench.rundir import CheckpointDir, CheckpointRoot, RunDir
from tunebench.train import checkpoint as ckpt
from tunebench.train.batches import (
    DEFAULT_MAX_FORWARD_TOKENS,
    accumulation_steps,
    forward_chunks,
    step_windows,
)
from tunebench.train.fast_paths import keep_lora_input_dtype, release_free_memory
from tunebench.train.gen_eval import gen_eval_generation, gen_eval_set, run_gen_eval
from tunebench.train.loss import base_model, completion_loss_sum, supports_logits_to_keep, target_count
from tunebench.train.progress import ProgressBar, TensorBoardLog, Throughput, TrainLog, write_loss_curve
from tunebench.train.rundir import prepare_run_dir, relative_drop
from tunebench.train.schedule import build_optimizer, build_scheduler, total_optimizer_steps


def selection_higher_is_better(metric: str) -> bool:
    """Direction of a best-checkpoint metric: `val_loss` is lower-is-better, a generation metric's direction is
    the metric registry's. ConfigError for an unknown metric name."""
    return metric != "val_loss" and metric_class(metric).higher_is_better


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


@dataclass
class TrainerState:
    """Where a run stands between optimizer steps: exactly the `trainer_state.json` of a checkpoint.

    `window` is the next optimizer-step window of `epoch`; `best` is {"step", "value"} of the best evaluation by
    `train.select_best_by`; `bad_evals` counts evaluations since it (early stopping); times are seconds of the
    optimizer steps only (wall and CPU); `unlogged_losses` are the mean losses of steps since the last log row.
    """

    step: int = 0
    epoch: int = 0
    window: int = 0
    tokens: int = 0
    train_time_s: float = 0.0
    train_cpu_s: float = 0.0
    best: dict[str, Any] | None = None
    bad_evals: int = 0
    initial_val_loss: float | None = None
    last_val_loss: float | None = None
    last_gen: dict[str, Any] | None = None
    stopped_early: bool = False
    unlogged_losses: list[float] = field(default_factory=list)

    @classmethod
    def from_checkpoint(cls, saved: dict[str, Any]) -> TrainerState:
        """The state `ckpt.load_checkpoint` returned (its `format` marker dropped)."""
        return cls(**{f.name: saved[f.name] for f in fields(cls) if f.name in saved})

    def record_evaluation(self, value: float | None, *, higher_is_better: bool, patience: int | None) -> bool:
        """Track the best step and count evaluations without improvement (early stopping after `patience`).

        Returns whether the current step is the new best; a step without a value of the selection metric is not.
        """
        if value is None:
            return False
        best = self.best
        better = best is None or (value > best["value"] if higher_is_better else value < best["value"])
        if better:
            self.best, self.bad_evals = {"step": self.step, "value": value}, 0
        else:
            self.bad_evals += 1
            self.stopped_early = patience is not None and self.bad_evals >= patience
        return better



def _forget_other_precision(mixed_precision: str) -> None:
    """Let a second run in one process train in another precision (a notebook: bf16 after fp32).

    Accelerate keeps one process-wide `AcceleratorState` and raises ValueError when a later `Accelerator` asks for
    another `mixed_precision`. On a single process the state holds nothing else a later run needs, so it is
    cleared the way Accelerate's own test case does between tests (`AcceleratorState._reset_state`); the
    process-group state (`PartialState`) is kept. Under a launcher every rank asks for the same precision, so
    nothing is cleared there.
    """
    from accelerate.state import AcceleratorState, PartialState

    state = AcceleratorState._shared_state
    if not state or PartialState().num_processes > 1:
        return
    if state.get("_mixed_precision", mixed_precision) != mixed_precision:  # a str enum: equal to its value
        AcceleratorState._reset_state()

class Recipe:
    """One fine-tuning run of `cfg`: `setup()` once, then `train()`; everything lands in `cfg.run_dir`.

    max_forward_tokens caps padded tokens per forward pass (a larger batch runs as several chunks whose gradients
    add up: see `train/batches.py`); None runs each micro-batch whole.
    """

    def __init__(self, cfg: RunConfig, *, data_dir: Path | None, resume: bool = False, progress: bool = True,
                 max_forward_tokens: int | None = DEFAULT_MAX_FORWARD_TOKENS) -> None:
        self.cfg, self.tc = cfg, cfg.train
        self.data_dir, self.resume, self.progress = data_dir, resume, progress
        self.max_forward_tokens = max_forward_tokens
        self.state = TrainerState()
        self.resumed_from: Path | None = None
        self.interrupted = False

    # ------------------------------------------------------------------ set-up

    def setup(self) -> None:
        """Processes and run directory, model and method, data, optimizer; the last checkpoint when resuming."""
        self.wall_start = time.perf_counter()
        self._setup_processes()
        self._setup_model()
        self._setup_data()
        self._setup_optimizer()
        self._restore()

    def _setup_processes(self) -> None:
        device = resolve_device(self.cfg.model.device)
        check_fsdp_device(device.type)  # Accelerate's FSDP plugin would raise a traceback on the CPU
        self.use_bf16, self.precision = self._choose_precision(device)
        _forget_other_precision("bf16" if self.use_bf16 else "no")
        self.accelerator = Accelerator(mixed_precision="bf16" if self.use_bf16 else "no", cpu=accelerate_cpu(device))
        acc = self.accelerator
        check_sharding(get_method(self.tc.method), acc.state)  # before anything is written
        self.rank, self.world, self.is_main = acc.process_index, acc.num_processes, acc.is_main_process
        tc = self.tc
        self.grad_accum = accumulation_steps(tc.batch_size, tc.grad_accum, tc.global_batch_size, self.world,
                                             grad_accum_set="grad_accum" in tc.model_fields_set)
        self.run_dir = prepare_run_dir(self.cfg, resume=self.resume, write=self.is_main)
        self.paths = RunDir(self.run_dir)
        self.ckpt_root = self.paths.checkpoints
        set_seed(self.cfg.seed)

    def _choose_precision(self, device: torch.device) -> tuple[bool, dict[str, Any]]:
        """train.bf16: auto measures fp32 and bf16 on this model's matmul shapes (cached per machine); with
        several processes the main one decides for all, so every rank autocasts alike."""
        from accelerate import PartialState
        from accelerate.utils import broadcast_object_list

        if self.tc.bf16 != "auto":
            return resolve_bf16(self.tc.bf16, device)
        state = PartialState(cpu=accelerate_cpu(device))
        decided: list[Any] = [None]
        if state.is_main_process:
            decided = [resolve_bf16("auto", device, config=load_model_config(self.cfg.model))]
        if state.num_processes > 1:
            broadcast_object_list(decided)
        return decided[0]

    def _setup_model(self) -> None:
        tc, device = self.tc, self.accelerator.device
        self.loaded = load_model(self.cfg.model, dtype=load_dtype(self.cfg.model.dtype, device, training=True),
                                 device=device)
        self.tokenizer, self.family = self.loaded.tokenizer, self.loaded.family
        self.method = get_method(tc.method)
        self.frozen_bf16 = self.use_bf16 and tc.frozen_bf16 and self.method.freezes_base
        self.model = apply_method(self.loaded.model, tc, frozen_dtype=torch.bfloat16 if self.frozen_bf16 else None)
        self.model.train()
        # PEFT's float32 input cast costs time and memory under CPU bf16 autocast (see fast_paths.py)
        self.lean_lora = self.method.peft_input_casting and device.type == "cpu"
        self.trainable_params, self.total_params = parameter_counts(self.model)
        self.keep_logits = supports_logits_to_keep(self.model)
        self.decoder_inputs = (base_model(self.model).prepare_decoder_input_ids_from_labels
                               if self.family == "seq2seq" else None)

    def _setup_data(self) -> None:
        """Every task's splits, tokenized task by task (so the mixture knows each task's size after over-long
        examples are dropped); the mixture over them; data_stats.json and, for a mixture, mixture.json."""
        cfg, tc = self.cfg, self.tc
        task_set = build_task_set(cfg.data, cfg.eval, self.data_dir, cfg.seed)
        max_length = capped_max_length(cfg.data.max_length, self.loaded.model)  # never past the model's positions
        shared = dict(family=self.family, format_prompt=self.loaded.format_prompt, max_length=max_length,
                      truncation=cfg.data.truncation)
        parts = [tokenize_examples(t.splits.train, self.tokenizer, train_on_prompt=tc.train_on_prompt, **shared)
                 for t in task_set.tasks]
        self.train_set = [ex for part, _ in parts for ex in part]
        self.val_set, val_stats = tokenize_examples(task_set.validation, self.tokenizer, **shared)  # completion only
        if not self.train_set:
            raise DataError(f"no training example fits data.max_length {cfg.data.max_length}: raise it or use "
                            "truncate")
        self.lengths = [ex.length for ex in self.train_set]
        self.mixture = mixture_for(cfg.data, task_set.names, [len(part) for part, _ in parts])
        train_stats: dict[str, Any] = (parts[0][1] if not task_set.multitask else
                                       {name: stats for name, (_, stats) in zip(task_set.names, parts, strict=True)})
        data_stats = {**task_set.stats(), "tokenized": {"train": train_stats, "validation": val_stats}}
        if task_set.multitask:
            data_stats["mixture"] = self.mixture.composition(self.lengths, cfg.seed)
            if self.is_main:
                print(format_composition(data_stats["mixture"]), file=sys.stderr)
                atomic_write_json(self.paths.mixture, data_stats["mixture"])
        if self.is_main:
            atomic_write_json(self.paths.data_stats, data_stats)
        self.targets = [target_count(ex, self.family) for ex in self.train_set]
        # widths in multiples of 16: few distinct tensor shapes, so freed memory is reused instead of fragmenting
        self.collate = PaddingCollator(pad_token_id(self.tokenizer), self.family, pad_to_multiple_of=16)
        self.gen_subset = (gen_eval_set(task_set.validation, tc.gen_eval.examples, self.loaded.format_prompt)
                           if tc.gen_eval.every else None)

    def _setup_optimizer(self) -> None:
        tc = self.tc
        self.optimizer = build_optimizer(self.model, lr=tc.lr, weight_decay=tc.weight_decay)
        first_epoch = mixture_batches(self.mixture, self.lengths, tc.batch_size, self.cfg.seed, 0)
        self.steps_per_epoch = len(step_windows(first_epoch, self.grad_accum, self.world))
        self.total_steps = total_optimizer_steps(self.steps_per_epoch, epochs=tc.epochs, max_steps=tc.max_steps)
        self.scheduler = build_scheduler(self.optimizer, tc.scheduler, total_steps=self.total_steps,
                                         warmup_ratio=tc.warmup_ratio)
        self.ddp_model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        self.forward_model = torch.compile(self.ddp_model, dynamic=True) if tc.compile else self.ddp_model
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]

    def _restore(self) -> None:
        """Fresh state, or the last checkpoint's weights, optimizer, schedule, RNG and `TrainerState`."""
        self.log = TrainLog(self.paths.train_log)
        self.resumed_from = ckpt.latest_checkpoint(self.ckpt_root) if self.resume else None
        if self.resumed_from is None:
            if self.is_main:
                self.log.flush()
                self.tensorboard = TensorBoardLog(self.paths.tensorboard, purge_step=0)
            return
        saved, rngs = ckpt.load_checkpoint(self.resumed_from, model=self.model, optimizer=self.optimizer,
                                           scheduler=self.scheduler)
        self.state = TrainerState.from_checkpoint(saved)
        if len(rngs) != self.world:  # a usage error: the checkpoint is fine, the launch differs
            raise ConfigError(f"{self.resumed_from} was saved by {len(rngs)} process(es) and this run has "
                              f"{self.world}: resume with the same number of processes (accelerate launch "
                              f"--num_processes {len(rngs)}), or start a new run with --set name=NEW_NAME")
        ckpt.restore_rng(rngs[self.rank])
        if self.is_main:
            self.log = TrainLog.resume(self.log.path, self.state.step)
            self.tensorboard = TensorBoardLog(self.paths.tensorboard, purge_step=self.state.step + 1)

    # ------------------------------------------------------------------ the loop

    def train(self) -> TrainResult:
        """Train to `total_steps` (or early stop, or Ctrl-C), then write the output weights and the summary."""
        tc, st, acc = self.tc, self.state, self.accelerator
        bar = ProgressBar(self.total_steps, st.step, enabled=self.progress and self.is_main)
        speed = Throughput()
        stop = _StopRequest()
        with stop, keep_lora_input_dtype(self.model, active=self.lean_lora and self.use_bf16):
            if self.resumed_from is None and self.val_set and tc.eval_every:
                st.initial_val_loss = st.last_val_loss = self.validation_loss()
                self._log({"step": 0, "epoch": 0.0, "val_loss": st.initial_val_loss})
            while st.step < self.total_steps and not st.stopped_early and not self.interrupted:
                epoch = st.epoch
                windows = step_windows(mixture_batches(self.mixture, self.lengths, tc.batch_size, self.cfg.seed,
                                                       epoch, group_by_length=tc.group_by_length),
                                       self.grad_accum, self.world)
                for w in range(st.window, len(windows)):
                    step_start, cpu_start, rng_at_start = time.perf_counter(), time.process_time(), capture_all_rng()
                    n_targets = max(1, sum(self.targets[i] for batch in windows[w] for i in batch))
                    chunks = [c for batch in windows[w][self.rank :: self.world]
                              for c in forward_chunks(batch, self.lengths, self.max_forward_tokens)]
                    step_loss = 0.0
                    for k, rows in enumerate(chunks):
                        last = k == len(chunks) - 1
                        # accelerator.accumulate() assumes a fixed count of backward passes per step; chunk counts
                        # vary, so set the same two switches it sets: sync only on the last, and no_sync before.
                        acc.sync_gradients = last
                        with nullcontext() if last else acc.no_sync(self.ddp_model):
                            chunk_loss = self.loss_sum(self.forward_model, rows, self.train_set)
                            acc.backward(chunk_loss * (self.world / n_targets))
                        step_loss += chunk_loss.item()
                        if stop.requested:
                            acc.set_trigger()
                        if acc.check_trigger():
                            self.interrupted = True
                            break
                    if self.interrupted:  # weights are those of `step`: checkpoint it, with this window still to do
                        self.optimizer.zero_grad(set_to_none=True)
                        st.window = w
                        self.save(rng_at_start)
                        bar.write(f"interrupted: checkpoint of step {st.step} saved; resume with --resume")
                        break
                    grad_norm = acc.clip_grad_norm_(self.trainable, tc.max_grad_norm) if tc.max_grad_norm else None
                    lr = self.scheduler.get_last_lr()[0]  # the rate this step uses
                    self.optimizer.step()
                    self.scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                    if acc.device.type == "cpu":
                        release_free_memory()

                    # ---- account and log the step
                    st.step, st.window = st.step + 1, w + 1
                    step_tokens = sum(self.lengths[i] for batch in windows[w] for i in batch)
                    st.tokens += step_tokens
                    st.train_time_s += time.perf_counter() - step_start
                    st.train_cpu_s += time.process_time() - cpu_start
                    speed.add(step_tokens)
                    train_loss = float(acc.reduce(torch.tensor(step_loss, device=acc.device))) / n_targets
                    st.unlogged_losses.append(train_loss)
                    at_epoch = round(epoch + (w + 1) / len(windows), 4)
                    if st.step % tc.log_every == 0 or st.step == self.total_steps:
                        self._log({"step": st.step, "epoch": at_epoch,
                                   "loss": sum(st.unlogged_losses) / len(st.unlogged_losses), "lr": lr,
                                   "tokens_per_s": round(speed.rate(), 1),
                                   "grad_norm": None if grad_norm is None else float(grad_norm)})
                        st.unlogged_losses.clear()
                    bar.update(train_loss, lr, speed.rate())

                    # ---- evaluate, then checkpoint
                    done = st.step >= self.total_steps
                    improved = self.evaluate(st.step, epoch=at_epoch, final=done)
                    if improved or done or st.stopped_early or (tc.save_every and st.step % tc.save_every == 0):
                        if improved and self.is_main:
                            ckpt.write_best(self.ckpt_root, st.step, tc.select_best_by, st.best["value"])
                        self.save(capture_all_rng())
                    if done or st.stopped_early:
                        break
                else:
                    st.epoch, st.window = epoch + 1, 0
        bar.close()
        return self._finish()

    # ------------------------------------------------------------------ evaluation, checkpoints, outputs

    def loss_sum(self, net: Any, rows: list[int], examples: list[Any]) -> torch.Tensor:
        """Summed completion-token cross-entropy of `examples[rows]` (one forward pass, under autocast)."""
        batch = {k: v.to(self.accelerator.device) for k, v in self.collate([examples[i] for i in rows]).items()}
        with self.accelerator.autocast():
            return completion_loss_sum(net, batch, family=self.family, keep_logits=self.keep_logits,
                                       decoder_inputs=self.decoder_inputs)

    def validation_loss(self) -> float:
        """Mean loss per completion token over the validation split (this process's share, then summed)."""
        batch_size, val_set = self.tc.batch_size, self.val_set
        val_lengths = [e.length for e in val_set]
        order = sorted(range(len(val_set)), key=lambda i: -val_lengths[i])
        totals = torch.zeros(2, dtype=torch.float64, device=self.accelerator.device)
        self.model.eval()
        with torch.no_grad():
            for start in range(self.rank * batch_size, len(order), self.world * batch_size):
                for rows in forward_chunks(order[start : start + batch_size], val_lengths, self.max_forward_tokens):
                    totals[0] += self.loss_sum(self.model, rows, val_set).double()
                    totals[1] += sum(target_count(val_set[i], self.family) for i in rows)
        self.model.train()
        totals = self.accelerator.reduce(totals, "sum")
        return float(totals[0] / totals[1].clamp(min=1))

    def evaluate(self, step: int, *, epoch: float, final: bool) -> bool:
        """Validation loss and the generation metric when due at `step` (always at the `final` step); updates the
        best step and early stopping. Returns whether `step` is the new best by `train.select_best_by`."""
        tc, st = self.tc, self.state
        scores: dict[str, float] = {}
        if self.val_set and tc.eval_every and (step % tc.eval_every == 0 or final):
            scores["val_loss"] = st.last_val_loss = self.validation_loss()
            self._log({"step": step, "epoch": epoch, "val_loss": scores["val_loss"]})
        if self.gen_subset and tc.gen_eval.every and (step % tc.gen_eval.every == 0 or final):
            result = None
            if self.is_main:
                result = run_gen_eval(self.model, self.tokenizer, self.gen_subset, family=self.family,
                                      metric=tc.gen_eval.metric, generation=gen_eval_generation(self.cfg),
                                      settings=self.cfg.eval.metric_settings(), bf16=self.use_bf16, seed=self.cfg.seed)
                self._log({"step": step, "epoch": epoch, "gen_metric": {result["metric"]: result["value"]},
                           "gen_n": result["n"], "gen_time_s": result["time_s"], "gen_example": result["example"]})
            result = broadcast_object_list([result])[0]
            scores[tc.gen_eval.metric] = result["value"]
            st.last_gen = {"metric": result["metric"], "value": result["value"]}
        return st.record_evaluation(scores.get(tc.select_best_by), patience=tc.early_stopping_patience,
                                    higher_is_better=selection_higher_is_better(tc.select_best_by))

    def save(self, rng: list[dict[str, Any]]) -> None:
        """Checkpoint the current step (weights, optimizer, schedule, `rng` per process, `TrainerState`), prune old
        ones (keeping the best) and redraw the loss curve; every process waits for the main one."""
        if self.is_main:
            st = self.state
            ckpt.save_checkpoint(self.ckpt_root, st.step, model=self.model, optimizer=self.optimizer,
                                 scheduler=self.scheduler, rng=rng, trainer_state=asdict(st))
            ckpt.prune_checkpoints(self.ckpt_root, self.tc.keep_checkpoints, st.best["step"] if st.best else None)
            write_loss_curve(self.log, self.paths.loss_curve, title=self.cfg.name)
        self.accelerator.wait_for_everyone()

    def summary(self) -> dict[str, Any]:
        """What `train_summary.json` records: sizes, steps, time and throughput, losses, the selected weights."""
        st, tc, best = self.state, self.tc, self.state.best
        return {
            "method": tc.method, "trainable_params": self.trainable_params, "total_params": self.total_params,
            "steps": st.step, "total_steps": self.total_steps, "epochs": round(st.step / self.steps_per_epoch, 4),
            "examples": len(self.train_set), "train_tokens": st.tokens, "train_time_s": round(st.train_time_s, 2),
            "tokens_per_s": round(st.tokens / st.train_time_s, 1) if st.train_time_s else None,
            "train_cpu_s": round(st.train_cpu_s, 2), "threads": torch.get_num_threads(),
            "wall_time_s": round(time.perf_counter() - self.wall_start, 2),
            "peak_rss_gib": round(peak_rss_bytes() / 2**30, 3),
            "peak_gpu_gib": (round(torch.cuda.max_memory_allocated(self.accelerator.device) / 2**30, 3)
                             if self.accelerator.device.type == "cuda" else None),
            "initial_val_loss": st.initial_val_loss, "final_val_loss": st.last_val_loss,
            "val_loss_drop": relative_drop(st.initial_val_loss, st.last_val_loss),
            "best_val_loss": min(self.log.series("val_loss")[1], default=None),
            "select_best_by": tc.select_best_by, "best_step": best["step"] if best else None,
            "best_value": best["value"] if best else None, "final_gen_metric": st.last_gen,
            "output_weights": "none (interrupted)" if self.interrupted else
            (f"best (step {best['step']})" if best else f"last (step {st.step})"),
            "stopped_early": st.stopped_early, "interrupted": self.interrupted,
            "resumed_from_step": None if self.resumed_from is None else CheckpointDir(self.resumed_from).step,
            "bf16": self.use_bf16, "precision": self.precision, "frozen_bf16": self.frozen_bf16, "compile": tc.compile,
            "num_processes": self.world, "grad_accum": self.grad_accum,
            "global_batch_size": self.tc.batch_size * self.grad_accum * self.world,
            "max_forward_tokens": self.max_forward_tokens,
            "logits_only_at_targets": self.keep_logits, "lean_lora": self.lean_lora,
            "device": str(self.accelerator.device),
        }

    def _finish(self) -> TrainResult:
        """Save the best (or last) weights as the method's output, and write the summary and loss curve."""
        st, output_dir, summary = self.state, None, None
        if self.is_main:
            if not self.interrupted:
                if st.best is not None and st.best["step"] != st.step:
                    best_weights = CheckpointRoot(self.ckpt_root).step(st.best["step"]).trainable
                    ckpt.load_trainable(self.model, best_weights)
                output_dir = save_trained(self.model, self.tokenizer, getattr(self.paths, self.method.output),
                                          method=self.tc.method)
            summary = self.summary()
            atomic_write_json(self.paths.train_summary, summary)
            write_loss_curve(self.log, self.paths.loss_curve, title=self.cfg.name)
            self.tensorboard.close()
        summary = broadcast_object_list([summary])[0]
        self.accelerator.wait_for_everyone()
        return TrainResult(self.run_dir, output_dir, st.step, self.total_steps, self.interrupted, st.stopped_early,
                           st.best["step"] if st.best else None, summary)

    def _log(self, row: dict[str, Any]) -> None:
        if self.is_main:
            self.log.append(row)
            self.tensorboard.append(row)


def train(
    cfg: RunConfig,
    *,
    data_dir: Path | None,
    resume: bool = False,
    progress: bool = True,
    max_forward_tokens: int | None = DEFAULT_MAX_FORWARD_TOKENS,
) -> TrainResult:
    """Fine-tune `cfg.model` on `cfg.data` as `cfg.train` says, writing everything into `cfg.run_dir`.

    Raises ConfigError/RunDirError (bad config or run dir), DataError (no usable example), ModelError,
    CheckpointError (an unusable checkpoint on resume).
    """
    recipe = Recipe(cfg, data_dir=data_dir, resume=resume, progress=progress, max_forward_tokens=max_forward_tokens)
    recipe.setup()
    return recipe.train()


def capture_all_rng() -> list[dict[str, Any]]:
    """Every process's RNG state, index = process rank (gathered so the main process can save them)."""
    return gather_object([ckpt.capture_rng()])


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
