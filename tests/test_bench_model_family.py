"""A perplexity task (WikiText-2, in the default forgetting suite) asked of an encoder-decoder model is refused
before anything trains or is scored: one sentence naming the key, exit 2, nothing written. Before, `run` and
`sweep` on a T5 config trained and evaluated, then stopped with a ValueError traceback in the benchmarks."""

from __future__ import annotations

import pytest
import yaml

from tunebench.cli import main


def _config(tmp_path, model_dir, bench: dict | None = None):
    tree = {
        "name": "t5", "output_dir": str(tmp_path / "runs"), "model": {"ref": str(model_dir)},
        "data": {"source": "dialogsum", "splits": {"train": "validation", "validation": None, "test": "test"},
                 "fractions": {"validation": 0.2}, "limits": {"train": 8, "validation": 2, "test": 2}},
        "train": {"max_steps": 1, "batch_size": 2},
        "eval": {"limit": 2},
    }
    if bench is not None:
        tree["bench"] = bench
    path = tmp_path / "t5.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("command", ["run", "sweep"])
def test_default_suite_on_a_seq2seq_model_is_refused_before_training(tmp_path, capsys, tiny_t5_dir, data_dir,
                                                                       command):
    path = _config(tmp_path, tiny_t5_dir)  # default bench.tasks: wikitext2 (perplexity) and piqa
    extra = ["--methods", "lora,adapter"] if command == "sweep" else []
    code = main([command, str(path), *extra, "--data-dir", str(data_dir)])
    line = _error_line(capsys)
    assert code == 2
    assert line == (f"error: bench.tasks: wikitext2 is a perplexity task, scored on decoder-only models only, and "
                    f"'{tiny_t5_dir}' is an encoder-decoder (seq2seq) model; keep only piqa in bench.tasks")
    runs = tmp_path / "runs"
    assert not any(runs.rglob("train_summary.json")) and not any(runs.rglob("checkpoints"))


def test_only_perplexity_tasks_suggest_turning_the_suite_off(tmp_path, capsys, tiny_t5_dir, data_dir):
    path = _config(tmp_path, tiny_t5_dir, bench={"tasks": ["wikitext2"]})
    assert main(["run", str(path), "--data-dir", str(data_dir)]) == 2
    assert _error_line(capsys).endswith("model; name other tasks in bench.tasks or set bench.enabled: false")


def test_bench_command_names_its_tasks_option(tmp_path, capsys, tiny_t5_dir, data_dir):
    code = main(["bench", "--model", str(tiny_t5_dir), "--tasks", "piqa,wikitext2", "-n", "2",
                 "--data-dir", str(data_dir), "--out", str(tmp_path / "b")])
    line = _error_line(capsys)
    assert code == 2
    assert line.startswith("error: --tasks: wikitext2 is a perplexity task") and line.endswith(
        "; keep only piqa in --tasks")
    assert not (tmp_path / "b").exists()


def test_a_causal_model_passes_the_check(tiny_causal_dir, tiny_t5_dir):
    from tunebench.bench.spec import check_model_family, resolve_tasks

    specs = resolve_tasks(["wikitext2", "piqa"], None)
    check_model_family(specs, "causal", str(tiny_causal_dir), "bench.tasks")  # no error
    check_model_family(resolve_tasks(["piqa"], None), "seq2seq", str(tiny_t5_dir), "bench.tasks")  # no perplexity
