"""The training loop on the tiny fixture models: it learns, masks prompts, writes the run dir, stops early."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import losses, make_cfg

from tunebench.errors import TunebenchError
from tunebench.io import read_jsonl
from tunebench.train.loop import train


def test_causal_model_overfits_and_writes_the_run_dir(tmp_path, tiny_causal_dir, data_dir):
    cfg = make_cfg(tmp_path, tiny_causal_dir, max_steps=12, eval_every=6, batch_size=4)
    result = train(cfg, data_dir=data_dir, progress=False)

    train_loss = losses(result.run_dir)
    assert len(train_loss) == 12 and train_loss[-1] < 0.7 * train_loss[0]
    run = result.run_dir
    for name in ("config.yaml", "data_stats.json", "train_log.jsonl", "loss_curve.png", "train_summary.json"):
        assert (run / name).is_file(), name
    assert (run / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run / "model" / "model.safetensors").is_file()
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["steps"] == 12 and summary["method"] == "full"
    assert summary["trainable_params"] == summary["total_params"] > 0
    assert summary["final_val_loss"] < summary["initial_val_loss"]
    assert summary["best_step"] == 12 and summary["output_weights"] == "best (step 12)"
    assert summary["tokens_per_s"] > 0 and summary["peak_rss_gib"] > 0
    assert (summary["peak_gpu_gib"] is None) == (not summary["device"].startswith("cuda"))
    stats = json.loads((run / "data_stats.json").read_text())
    assert stats["sizes"]["train"] == 4 and stats["tokenized"]["train"]["kept"] == 4
    assert result.output_dir == run / "model" and not result.interrupted


def test_t5_overfits(tmp_path, tiny_t5_dir, data_dir):
    cfg = make_cfg(tmp_path, tiny_t5_dir, max_steps=10, batch_size=4, lr=1e-2)
    result = train(cfg, data_dir=data_dir, progress=False)
    train_loss = losses(result.run_dir)
    assert train_loss[-1] < 0.7 * train_loss[0]
    assert result.summary["logits_only_at_targets"] is False  # T5 has no logits_to_keep


def test_lora_trains_only_the_adapter(tmp_path, tiny_causal_dir, data_dir):
    cfg = make_cfg(tmp_path, tiny_causal_dir, method="lora", max_steps=3, save_every=3)
    result = train(cfg, data_dir=data_dir, progress=False)
    assert (result.run_dir / "adapter" / "adapter_model.safetensors").is_file()
    saved = load_file(result.run_dir / "checkpoints" / "step-3" / "trainable.safetensors")
    assert saved and all("lora_" in name for name in saved)
    assert result.summary["trainable_params"] < result.summary["total_params"] / 10


def test_freeze_trains_the_top_block(tmp_path, tiny_causal_dir, data_dir):
    cfg = make_cfg(tmp_path, tiny_causal_dir, method="freeze", max_steps=2,
                   freeze={"trainable_top_k": 1})
    result = train(cfg, data_dir=data_dir, progress=False)
    saved = load_file(result.run_dir / "checkpoints" / "step-2" / "trainable.safetensors")
    assert saved and all(name.startswith("model.layers.1.") for name in saved)


def test_seed_makes_runs_repeatable(tmp_path, tiny_causal_dir, data_dir):
    runs = [train(make_cfg(tmp_path, tiny_causal_dir, name=f"s{i}", seed=seed, max_steps=3, n_train=6),
                  data_dir=data_dir, progress=False)
            for i, seed in enumerate((1, 1, 2))]
    first, again, other = (losses(r.run_dir) for r in runs)
    assert first == again
    assert first != other


def test_early_stopping_keeps_the_best_weights(tmp_path, tiny_causal_dir, data_dir):
    # lr 3.0 makes every step after the first evaluation worse, so patience 2 stops the run at step 3
    cfg = make_cfg(tmp_path, tiny_causal_dir, max_steps=20, lr=3.0, eval_every=1, early_stopping_patience=2)
    result = train(cfg, data_dir=data_dir, progress=False)
    val = losses(result.run_dir, "val_loss")
    assert result.stopped_early and result.steps < 20
    best = min(range(1, len(val)), key=lambda i: val[i])  # step 0 is the base model, not a candidate
    assert result.best_step == best
    assert result.steps == best + 2
    final = load_file(result.run_dir / "model" / "model.safetensors")
    kept = load_file(result.run_dir / "checkpoints" / f"step-{best}" / "trainable.safetensors")
    assert all(torch.equal(final[name], kept[name]) for name in final if name in kept)


def test_generation_metric_is_logged_and_selects_the_best(tmp_path, tiny_causal_dir, data_dir):
    cfg = make_cfg(tmp_path, tiny_causal_dir, method="lora", max_steps=2, select_best_by="rougeL",
                   gen_eval={"every": 1, "examples": 2, "max_new_tokens": 4})
    result = train(cfg, data_dir=data_dir, progress=False)
    rows = [r for r in read_jsonl(result.run_dir / "train_log.jsonl") if "gen_metric" in r]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(0.0 <= r["gen_metric"]["rougeL"] <= 1.0 and r["gen_n"] == 2 for r in rows)
    assert result.best_step == 1 + max(range(2), key=lambda i: (rows[i]["gen_metric"]["rougeL"], -i))
    best = json.loads((result.run_dir / "checkpoints" / "best.json").read_text())
    assert best == {"step": result.best_step, "metric": "rougeL", "value": rows[result.best_step - 1]["gen_metric"]["rougeL"]}


def test_unwritable_output_dir_is_one_clear_error(tmp_path, tiny_causal_dir, data_dir):
    blocker = tmp_path / "runs"
    blocker.write_text("a file where the run directory's parent should be")
    with pytest.raises(TunebenchError, match="cannot write the run directory"):
        train(make_cfg(tmp_path, tiny_causal_dir, max_steps=1), data_dir=data_dir, progress=False)


def test_an_existing_run_needs_resume(tmp_path, tiny_causal_dir, data_dir):
    cfg = make_cfg(tmp_path, tiny_causal_dir, max_steps=1)
    train(cfg, data_dir=data_dir, progress=False)
    with pytest.raises(TunebenchError, match="--resume"):
        train(cfg, data_dir=data_dir, progress=False)
