"""Evaluation and benchmark scoring sharded over processes give exactly a one-process run's results.

Two CPU processes (gloo) are started by torchrun, the launcher `accelerate launch` wraps. Right values: the same
command run in one process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from train_helpers import free_port

from tunebench.processes import map_sharded, shard_order

REPO = Path(__file__).resolve().parents[1]


def test_shard_order_keeps_groups_together_and_covers_every_item():
    keys = ["a", "b", "a", "c", "b", "a", "c"]
    shards = shard_order(keys, 2)
    flat = [i for shard in shards for i in shard]
    assert sorted(flat) == list(range(len(keys)))
    assert flat == [0, 2, 5, 1, 4, 3, 6]  # grouped by first appearance, in order within a group
    assert [len(s) for s in shards] == [3, 4]
    assert shard_order(5, 3) == [[0], [1, 2], [3, 4]]
    assert shard_order(1, 2) == [[], [0]]


def test_map_sharded_in_one_process_is_a_plain_call():
    assert map_sharded(lambda xs: [x * 2 for x in xs], [1, 2, 3]) == [2, 4, 6]
    with pytest.raises(ValueError, match="outside a world"):
        map_sharded(lambda xs: xs, [1], rank=2, world_size=2)


def _torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=cwd)


@pytest.mark.slow
def test_two_processes_shard_disjointly_and_gather_in_order(tmp_path):
    script = tmp_path / "shard.py"
    script.write_text(textwrap.dedent(f"""
        import json, os, sys
        sys.path.insert(0, {str(REPO)!r})
        from tunebench.processes import current_process, map_sharded
        rank, world = current_process("cpu")
        seen = []
        out = map_sharded(lambda xs: (seen.extend(xs), [x * x for x in xs])[1], list(range(7)), rank=rank,
                          world_size=world, keys=[x % 3 for x in range(7)])
        with open(os.path.join({str(tmp_path)!r}, f"rank{{rank}}.json"), "w") as f:
            json.dump({{"world": world, "seen": seen, "out": out}}, f)
    """))
    done = _torchrun([str(script)], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world"] == 2 and r["out"] == [x * x for x in range(7)] for r in ranks)
    assert set(ranks[0]["seen"]).isdisjoint(ranks[1]["seen"])
    assert sorted(ranks[0]["seen"] + ranks[1]["seen"]) == list(range(7))


# The one-process run uses two threads, the shards one each: fp32 sums differ in the last bits (compared to 1e-5
# relative), every decision (prediction, id, count) is exact.


def _numbers(tree, path=""):
    """Flatten nested dicts/lists to {path: value}, so floats compare approximately and the rest exactly."""
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _numbers(sub, f"{path}/{key}").items()}
    if isinstance(tree, list):
        return {k: v for i, sub in enumerate(tree) for k, v in _numbers(sub, f"{path}/{i}").items()}
    return {path: tree}


def _same(a, b) -> bool:
    fa, fb = _numbers(a), _numbers(b)
    return fa.keys() == fb.keys() and all(
        fa[k] == pytest.approx(fb[k], rel=1e-5) if isinstance(fa[k], float) else fa[k] == fb[k] for k in fa)


def _jsonl(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in ("gen_time_s", "time_s")} for row in rows]


@pytest.mark.slow
def test_eval_and_bench_on_two_processes_equal_one_process(tmp_path, tiny_causal_dir, data_dir):
    from tunebench.cli import main

    (tmp_path / "text.txt").write_text("The cat sat on the mat.\n\nA dog ran in the park today.\n\n"
                                       "Rain fell all night long.\n\nShe read a book by the fire.\n")
    (tmp_path / "drift.yaml").write_text(yaml.safe_dump({
        "name": "drift", "version": 1, "output_type": "perplexity", "template": "{{ text }}", "eval_split": "test",
        "source": {"format": "text", "documents": "paragraphs", "splits": {"test": str(tmp_path / "text.txt")}}}))
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"ref": str(tiny_causal_dir), "chat_template": "never"},
        "data": {"source": "dialogsum", "limits": {"test": 5}},
        "eval": {"metrics": ["rouge"], "bootstrap": 50, "generation": {"max_new_tokens": 6, "batch_size": 2}},
    }))
    common = ["--config", str(config), "--data-dir", str(data_dir)]
    bench = ["bench", *common, "--tasks", f"mmlu:anatomy,piqa,{tmp_path / 'drift.yaml'}", "--limit", "5", "--shots", "2"]
    eval_ = ["eval", *common]
    for args in (eval_, bench):
        done = _torchrun(["-m", "tunebench", *args, "--out", str(tmp_path / f"{args[0]}-2")], tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        assert main([*args, "--out", str(tmp_path / f"{args[0]}-1")]) == 0

    one, two = tmp_path / "eval-1", tmp_path / "eval-2"
    assert _same(_jsonl(two / "predictions.jsonl"), _jsonl(one / "predictions.jsonl"))
    s1, s2 = (json.loads((d / "scores.json").read_text()) for d in (one, two))
    assert _same(s2["metrics"], s1["metrics"]) and s2["test_set"] == s1["test_set"]

    one, two = tmp_path / "bench-1", tmp_path / "bench-2"
    r1, r2 = (json.loads((d / "results.json").read_text()) for d in (one, two))
    assert set(r1["tasks"]) == {"mmlu:anatomy", "piqa", "drift"}
    for name, task in r1["tasks"].items():
        assert _same(r2["tasks"][name]["metrics"], task["metrics"]), name
        assert r2["tasks"][name]["n"] == task["n"]
        assert _same(_jsonl(two / task["samples"]), _jsonl(one / task["samples"])), name
