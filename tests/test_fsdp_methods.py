"""FSDP and the methods table: which methods FSDP1 can shard with flat parameters, and the start-up refusals.

Accelerate's FSDP plugin does not run on CPU processes (see `tunebench.processes.check_sharding` and
docs/scaling.md), so the end-to-end refusal fakes the state Accelerate has on GPUs. The table's
`fsdp_needs_orig_params` column is checked against torch's own FSDP, which does run on two CPU processes (gloo):
the right values are what torch does with each method's model.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from accelerate.utils import DistributedType
from train_helpers import free_port

from tunebench.errors import ConfigError
from tunebench.models.methods import METHODS, get_method
from tunebench.processes import check_fsdp_device, check_sharding

REPO = Path(__file__).resolve().parents[1]


def fsdp_state(*, version: int = 1, orig_params: bool | None = False) -> SimpleNamespace:
    """What `Accelerator.state` holds under `distributed_type: FSDP` (the fields check_sharding reads)."""
    return SimpleNamespace(distributed_type=DistributedType.FSDP,
                           fsdp_plugin=SimpleNamespace(fsdp_version=version, use_orig_params=orig_params))


def test_flat_fsdp1_is_refused_for_exactly_the_methods_the_table_marks():
    refused = []
    for name, method in METHODS.items():
        try:
            check_sharding(method, fsdp_state(), env={})
        except ConfigError as exc:
            refused.append(name)
            assert str(exc) == (f"train.method '{name}' mixes trainable and frozen weights in one FSDP unit, which "
                                "FSDP1 shards only with fsdp_use_orig_params: true in the accelerate config "
                                "(FSDP_USE_ORIG_PARAMS=true) or with fsdp_version: 2")
        for state in (fsdp_state(orig_params=True), fsdp_state(version=2, orig_params=None),
                      SimpleNamespace(distributed_type=DistributedType.MULTI_CPU),
                      SimpleNamespace(distributed_type=DistributedType.NO)):
            check_sharding(method, state, env={})  # original parameters, FSDP2, DDP, one process: no refusal
    assert refused == [n for n, m in METHODS.items() if m.fsdp_needs_orig_params]
    assert "full" not in refused and {"lora", "adapter", "prompt_tuning", "prefix_tuning"} <= set(refused)


def test_fsdp_asked_for_on_the_cpu_or_where_accelerate_does_not_set_it_up_is_refused():
    asked = {"ACCELERATE_USE_FSDP": "true"}
    with pytest.raises(ConfigError, match=r"^distributed_type: FSDP \(ACCELERATE_USE_FSDP=true\) cannot run on CPU "
                                          r"processes"):
        check_fsdp_device("cpu", env=asked)
    check_fsdp_device("cuda", env=asked)
    check_fsdp_device("cpu", env={"ACCELERATE_USE_FSDP": "false"})
    one_process = SimpleNamespace(distributed_type=DistributedType.NO)  # e.g. on a GPU, without a launcher
    with pytest.raises(ConfigError, match=r"^distributed_type: FSDP \(ACCELERATE_USE_FSDP=true\) was asked for but "
                                          r"Accelerate runs this launch as NO, not FSDP"):
        check_sharding(get_method("full"), one_process, env=asked)
    check_sharding(get_method("full"), one_process, env={})


def _run_files(run_dir: Path) -> dict[str, str]:
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


def test_fsdp_refusals_exit_2_naming_the_setting_and_leave_the_run_untouched(tmp_path, tiny_causal_dir, data_dir,
                                                                           monkeypatch, capsys):
    from tunebench.cli import main
    from tunebench.train import loop

    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump({
        "name": "fsdp", "output_dir": str(tmp_path / "runs"), "model": {"ref": str(tiny_causal_dir)},
        "data": {"source": "dialogsum", "splits": {"train": "validation", "validation": None, "test": "test"},
                 "limits": {"train": 2, "test": 1}, "max_length": 96},
        "train": {"method": "lora", "batch_size": 2, "max_steps": 1, "save_every": 1, "eval_every": None},
    }))
    args = ["train", str(config), "--data-dir", str(data_dir), "--resume"]
    assert main(args[:-1]) == 0
    run_dir = tmp_path / "runs" / "fsdp"
    before = _run_files(run_dir)
    assert "checkpoints/step-1/trainable.safetensors" in before
    capsys.readouterr()

    # asked for on the CPU (where Accelerate's FSDP plugin itself would raise)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_SYNC_MODULE_STATES", "true")
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "distributed_type: FSDP" in err and len(err.splitlines()) == 1 and "Traceback" not in err
    monkeypatch.delenv("FSDP_SYNC_MODULE_STATES")
    monkeypatch.delenv("ACCELERATE_USE_FSDP")

    # FSDP1 with flat parameters (Accelerate's default), as Accelerate's state says on GPUs
    real = loop.check_sharding
    monkeypatch.setattr(loop, "check_sharding", lambda method, state: real(method, fsdp_state(), env={}))
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "train.method 'lora'" in err and "fsdp_use_orig_params: true" in err and len(err.splitlines()) == 1
    assert _run_files(run_dir) == before


# Each method's model, wrapped as Accelerate's FSDP1 plugin wraps it (FULL_SHARD, TRANSFORMER_BASED_WRAP on the
# model's block class), with flat and with original parameters. A method whose row says it mixes trainable and
# frozen weights in one unit is given settings that do (freeze: attention modules only, inside frozen blocks).
FSDP_SCRIPT = """
import functools, json, os, sys
sys.path.insert(0, {repo!r})
import torch, torch.distributed as dist
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP, ShardingStrategy
from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaDecoderLayer
from tunebench.config import TrainConfig
from tunebench.models.methods import METHODS, apply_method

SETTINGS = {{"freeze": {{"freeze": {{"trainable_top_k": 0, "trainable_modules": ["self_attn"]}}}},
            "ia3": {{"ia3": {{"target_modules": ["k_proj", "v_proj", "down_proj"], "feedforward_modules": ["down_proj"]}}}}}}

def build(name):
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128))
    torch.manual_seed(1)
    model = apply_method(model, TrainConfig(method=name, **SETTINGS.get(name, {{}})))
    return model.eval()  # no dropout: the wrapped and the plain model compute the same

dist.init_process_group("gloo")
torch.manual_seed(2)
ids = torch.randint(0, 300, (2, 10))
policy = functools.partial(transformer_auto_wrap_policy, transformer_layer_cls={{LlamaDecoderLayer}})
found = {{}}
for name in METHODS:
    want = build(name)(input_ids=ids, labels=ids).loss.item()
    for orig in (False, True):
        try:
            wrapped = FSDP(build(name), sharding_strategy=ShardingStrategy.FULL_SHARD, auto_wrap_policy=policy,
                           use_orig_params=orig, device_id=torch.device("cpu"))
            loss = wrapped(input_ids=ids, labels=ids).loss
            loss.backward()
            found[f"{{name}}/{{orig}}"] = {{"loss": loss.item(), "want": want}}
        except ValueError as exc:
            found[f"{{name}}/{{orig}}"] = {{"error": str(exc)}}
if dist.get_rank() == 0:
    with open(os.path.join({out!r}, "fsdp.json"), "w") as f:
        json.dump(found, f)
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_the_methods_table_says_which_methods_fsdp1_shards_with_flat_parameters(tmp_path):
    script = tmp_path / "fsdp_methods.py"
    script.write_text(textwrap.dedent(FSDP_SCRIPT.format(repo=str(REPO), out=str(tmp_path))))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(script)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads((tmp_path / "fsdp.json").read_text())
    for name, method in METHODS.items():
        flat, orig = found[f"{name}/False"], found[f"{name}/True"]
        # with original parameters every method shards and computes what the plain model computes
        assert "error" not in orig, (name, orig)
        assert orig["loss"] == pytest.approx(orig["want"], rel=1e-5), name
        if method.fsdp_needs_orig_params:
            assert "uniform `requires_grad`" in flat.get("error", ""), (name, flat)
        else:
            assert flat.get("loss") == pytest.approx(flat.get("want"), rel=1e-5), (name, flat)


FSDP_CONFIG = {"compute_environment": "LOCAL_MACHINE", "distributed_type": "FSDP", "num_processes": 2,
               "num_machines": 1, "machine_rank": 0, "mixed_precision": "no",
               "fsdp_config": {"fsdp_sharding_strategy": "FULL_SHARD", "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                               "fsdp_state_dict_type": "FULL_STATE_DICT", "fsdp_use_orig_params": True}}


@pytest.mark.slow
def test_accelerate_launch_with_an_fsdp_config_on_cpu_processes_is_one_sentence(tmp_path, tiny_causal_dir, data_dir):
    """The user's command itself: `accelerate launch --config_file fsdp.yaml -m tunebench train` on two CPU
    processes. A process says why in one sentence and exits 2 (the launcher then reports the failed processes)."""
    (tmp_path / "fsdp.yaml").write_text(yaml.safe_dump(FSDP_CONFIG))
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump({
        "name": "fsdp", "output_dir": str(tmp_path / "runs"), "model": {"ref": str(tiny_causal_dir)},
        "data": {"source": "dialogsum", "splits": {"train": "validation", "validation": None, "test": "test"},
                 "limits": {"train": 4, "test": 1}, "max_length": 96},
        "train": {"method": "lora", "batch_size": 2, "max_steps": 1, "eval_every": None},
    }))
    accelerate = Path(sys.executable).parent / "accelerate"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "TUNEBENCH_DATA_DIR": str(data_dir)}
    cmd = [str(accelerate), "launch", "--config_file", str(tmp_path / "fsdp.yaml"), "--main_process_port",
           str(free_port()), "-m", "tunebench", "train", str(tmp_path / "cfg.yaml")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode != 0
    sentence = "distributed_type: FSDP (ACCELERATE_USE_FSDP=true) cannot run on CPU processes"
    # the launcher stops the other process when the first one exits, so one or both may have said it
    assert sentence in done.stderr and "failed (exitcode: 2)" in done.stderr, done.stderr[-3000:]
    assert "tunebench/cli.py" not in done.stderr and "no available devices" not in done.stderr
    assert not (tmp_path / "runs").exists()
