"""The command line: errors are one line with the right exit code, configs and examples validate."""

import subprocess
import sys
from pathlib import Path

import pytest

from tunebench.cli import main
from tunebench.config import load_config

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((REPO / "examples").glob("*.yaml")) + [REPO / "tunebench/configs/demo.yaml"],
                         ids=lambda p: p.name)
def test_example_configs_validate(path):
    load_config(path)


def test_config_error_exit_code_2_without_traceback(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("train:\n  methd: lora\n")
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "train.methd: unknown key" in err
    assert "Traceback" not in err


def test_set_override_reaches_config(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: x\n")
    assert main(["config", "show", str(cfg), "--set", "train.lora.r=4"]) == 0
    assert "r: 4" in capsys.readouterr().out
    assert main(["config", "show", str(cfg), "--set", "train.lora.r=zero"]) == 2


def test_missing_config_file_is_one_sentence(tmp_path, capsys):
    assert main(["train", str(tmp_path / "nope.yaml")]) == 2
    assert "cannot read the config" in capsys.readouterr().err


def test_help_is_fast_and_does_not_import_torch():
    code = "import sys; from tunebench.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_python_dash_m_entry():
    out = subprocess.run([sys.executable, "-m", "tunebench", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and "tunebench" in out.stdout


def test_config_schema_lists_descriptions(capsys):
    assert main(["config", "schema"]) == 0
    assert "Train only the top k transformer blocks" in capsys.readouterr().out


def _subparsers():
    import argparse

    from tunebench.cli import build_parser

    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_every_option_of_every_command_has_help_and_shows_its_default():
    for name, sub in _subparsers().items():
        text = sub.format_help()
        for action in sub._actions:
            if action.help == "==SUPPRESS==":
                continue
            assert action.help, f"{name} {action.option_strings or action.dest}: no help text"
            if action.default not in (None, False, [], "==SUPPRESS==") and action.option_strings:
                assert f"default: {action.default}" in " ".join(text.split()) or "default" in action.help, \
                    f"{name} {action.option_strings}: default {action.default!r} not shown"


def test_one_convention_for_limit_lists_and_resamples(capsys):
    from tunebench.cli import build_parser

    parser = build_parser()
    for argv in (["eval", "--out", "o"], ["bench", "--out", "o"], ["data", "preview", "c.yaml"]):
        assert parser.parse_args([*argv, "-n", "5"]).limit == 5
        assert parser.parse_args([*argv, "--limit", "0"]).limit == 0  # 0 = all, everywhere
        for bad, message in (("-1", "expected N >= 0 (0 means all)"), ("two", "expected a whole number, got 'two'")):
            with pytest.raises(SystemExit) as exit_:
                parser.parse_args([*argv, "--limit", bad])
            assert exit_.value.code == 2
            assert f"argument -n/--limit: {message}" in capsys.readouterr().err
    assert parser.parse_args(["eval", "--out", "o", "--shots", "0,3"]).shots == [0, 3]
    assert parser.parse_args(["bench", "--tasks", "sst2,rte"]).tasks == ["sst2", "rte"]
    assert parser.parse_args(["score", "--pred", "p", "--metric", "rouge,bleu"]).metric == ["rouge", "bleu"]
    assert parser.parse_args(["score", "--pred", "p", "--resamples", "7"]).resamples == 7
    assert parser.parse_args(["score", "--pred", "p", "--bootstrap", "7"]).resamples == 7  # the old name still works
    assert parser.parse_args(["compare", "a", "--out", "o", "--resamples", "9"]).resamples == 9
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["export", "run"])  # --merge is required, and shown as such
    assert exit_.value.code == 2


def test_limit_zero_means_all_in_eval_and_bench(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from tunebench import pipeline
    from tunebench.pipeline.stages import eval_examples

    cfg = load_config(None, ["eval.limit=2"])
    splits = SimpleNamespace(test=list(range(5)))
    assert eval_examples(cfg, splits, "test", 0) == [0, 1, 2, 3, 4]
    assert eval_examples(cfg, splits, "test", None) == [0, 1]
    assert eval_examples(cfg, splits, "test", 3) == [0, 1, 2]
    seen = {}
    from tunebench.bench.runner import BenchResults

    monkeypatch.setattr("tunebench.bench.runner.run_benchmarks",
                        lambda *a, **kw: seen.update(kw) or BenchResults(results={"tasks": {}}))
    pipeline.bench_loaded(load_config(None, ["bench.helm=false"]), None, tmp_path, None, tasks=["sst2"], limit=0)
    assert seen["limit"] is None


def test_set_list_values_and_errors_exit_2_naming_set(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: x\n")
    assert main(["config", "show", str(cfg), "--set", "eval.metrics=rouge,chrf"]) == 0
    assert "  - rouge\n  - chrf\n" in capsys.readouterr().out
    assert main(["config", "show", str(cfg), "--set", "train.batch_size=lots"]) == 2
    assert capsys.readouterr().err.startswith("error: --set: train.batch_size:")


def test_bench_list_names_every_task(capsys, data_dir):
    from tunebench.bench.spec import builtin_tasks

    assert main(["bench", "--list", "--data-dir", str(data_dir)]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    expected = sorted(set(builtin_tasks()) - {"bbh"}) + [f"bbh:{p.stem}" for p in sorted((data_dir / "bbh").glob("*.json"))]
    assert names == expected


def test_unknown_bench_task_fails_before_the_model_loads(monkeypatch, tmp_path, capsys, data_dir):
    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the task names were checked")

    monkeypatch.setattr("tunebench.models.load.load_model", no_load)
    assert main(["bench", "--tasks", "sst", "--out", str(tmp_path / "b"), "--data-dir", str(data_dir)]) == 2
    err = capsys.readouterr().err
    assert "unknown task 'sst'; did you mean 'sst2'?" in err and "tunebench bench --list" in err
    assert main(["bench", "--tasks", "bbh:date", "--out", str(tmp_path / "b"), "--data-dir", str(data_dir)]) == 1
    assert "did you mean 'bbh:date_understanding'" not in (err := capsys.readouterr().err)
    assert "did you mean 'date_understanding'?" in err and "available: boolean_expressions" in err


def test_templates_name_shows_every_phrasing(capsys):
    from tunebench.data.templates import BUILTIN_TEMPLATES

    assert main(["templates", "sentiment"]) == 0
    out = capsys.readouterr().out
    spec = BUILTIN_TEMPLATES["sentiment"]
    assert all(p in out for p in spec.prompts) and spec.completion in out
    assert "eval.metrics [accuracy, macro_f1]" in out
    assert main(["templates", "sentimnt"]) == 2
    assert "did you mean 'sentiment'?" in capsys.readouterr().err


def test_config_schema_table_format(capsys):
    assert main(["config", "schema", "--format", "table"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["key", "type", "default", "description"]
    assert any(line.split()[:3] == ["train.lora.r", "int", "16"] for line in lines)


@pytest.mark.parametrize("argv,marker", [
    (["eval", "--out", "{d}", "--limit", "1"], "scores.json"),
    (["compare", "x", "--out", "{d}"], "comparison.json"),
    (["bench", "--tasks", "sst2", "--out", "{d}"], "results.json"),
])
def test_existing_results_are_refused_without_overwrite(tmp_path, capsys, argv, marker):
    out = tmp_path / "out"
    out.mkdir()
    (out / marker).write_text("{}")
    assert main([a.format(d=out) for a in argv]) == 1
    assert f"{out} already holds a result ({marker}): pass --overwrite" in capsys.readouterr().err
    assert (out / marker).read_text() == "{}"


def test_export_refuses_a_non_empty_folder_and_train_overwrite_only_replaces_runs(tmp_path, capsys):
    out = tmp_path / "merged"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["export", str(tmp_path / "run"), "--merge", str(out)]) == 1
    assert "pass --overwrite" in capsys.readouterr().err
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"name: r\noutput_dir: {tmp_path}\n")
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "notes.txt").write_text("not a run")
    assert main(["train", str(cfg), "--overwrite"]) == 1
    assert "is not a tunebench run" in capsys.readouterr().err
    assert (tmp_path / "r" / "notes.txt").read_text() == "not a run"
    assert main(["train", str(cfg), "--overwrite", "--resume"]) == 2


def test_ctrl_c_says_what_happened(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr("tunebench.cli.cmd_bench", interrupted)
    assert main(["bench", "--list"]) == 130
    err = capsys.readouterr().err
    assert "interrupted (Ctrl-C) during `tunebench bench`: finished tasks are kept" in err


def test_train_prints_its_table_or_how_to_resume(monkeypatch, tmp_path, capsys):
    from tunebench.train.loop import TrainResult

    summary = {"steps": 6, "total_steps": 6, "examples": 26, "initial_val_loss": 4.33, "final_val_loss": 1.12,
               "val_loss_drop": (1.12 - 4.33) / 4.33, "select_best_by": "val_loss", "best_step": 6,
               "tokens_per_s": 300.0, "train_time_s": 12.5, "output_weights": "last (step 6)"}
    result = TrainResult(tmp_path, tmp_path / "adapter", 6, 6, summary=summary)
    monkeypatch.setattr("tunebench.train.loop.train", lambda *a, **kw: result)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: x\n")
    assert main(["train", str(cfg)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "validation loss │ 4.3300 → 1.1200 (-74%)" in out
    result.interrupted, result.steps, result.output_dir = True, 3, None
    assert main(["train", str(cfg)]) == 130
    assert f"interrupted at step 3 of 6: checkpoint saved in {tmp_path / 'checkpoints'}; continue with " \
           f"`tunebench train {cfg} --resume`" in capsys.readouterr().err


def test_library_noise_is_silenced_unless_verbose(tiny_causal_dir):
    code = (
        "import sys; from tunebench.cli import _quiet; _quiet(sys.argv[1] == 'verbose');"
        "from transformers import AutoModelForCausalLM; from peft import LoraConfig, get_peft_model;"
        f"m = AutoModelForCausalLM.from_pretrained({str(tiny_causal_dir)!r});"
        "get_peft_model(m, LoraConfig(r=2, target_modules=['q_proj']))"
    )
    env = {k: v for k, v in __import__("os").environ.items()
           if k not in ("TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS")}
    # both at once (each is mostly the imports of torch, transformers and peft, on one core)
    procs = {mode: subprocess.Popen([sys.executable, "-c", code, mode], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, env=env) for mode in ("quiet", "verbose")}
    stderr = {}
    for mode, proc in procs.items():
        _, stderr[mode] = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[mode][-3000:]
    assert "is_gradient_checkpointing" in stderr["verbose"]  # the noise exists, so the quiet run can be checked
    assert "is_gradient_checkpointing" not in stderr["quiet"]
    assert "Loading weights" not in stderr["quiet"]


def test_readme_own_data_walkthrough_config_works_as_written(tmp_path):
    """The README's "your own data" config, copied as written beside a 40-row CSV, splits and evaluates as it says."""
    import re

    from tunebench.data.prepare import build_splits

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Your own data, step by step"):]
    yaml_text = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    project = tmp_path / "my_project"
    project.mkdir()
    (project / "config.yaml").write_text("\n".join(line.removeprefix("   ") for line in yaml_text.splitlines()))
    (project / "reviews.csv").write_text("review,sentiment\n" + "".join(
        f"review number {i},{'positive' if i % 2 else 'negative'}\n" for i in range(40)))
    cfg = load_config(project / "config.yaml")
    splits = build_splits(cfg.data, None, cfg.seed)
    expected_test, expected_val = round(40 * 0.25), round(40 * 0.1)  # the fractions the walkthrough sets
    assert (len(splits.test), len(splits.validation), len(splits.train)) == (
        expected_test, expected_val, 40 - expected_test - expected_val)
    assert cfg.eval.metrics == ["accuracy", "macro_f1"] and cfg.eval.generation.max_new_tokens == 8
    assert splits.train[0].completion in ("positive", "negative")


def test_negative_bench_shots_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:  # as `-n -1` is
        main(["bench", "--tasks", "sst2", "--shots", "-1", "--out", "never"])
    assert exit_.value.code == 2
    assert "argument --shots: expected a whole number >= 0, got '-1'" in capsys.readouterr().err
    assert not Path("never").exists()


def test_methods_did_you_mean_ignores_case(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: x\n")
    assert main(["sweep", str(cfg), "--methods", "LoRA,full", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "--methods: unknown method 'LoRA'; did you mean 'lora'?" in err and "Traceback" not in err
    assert not (tmp_path / "s").exists()


def test_readme_names_the_commands_that_have_overwrite():
    have = [name for name, p in _subparsers().items()
            if any("--overwrite" in a.option_strings for a in p._actions)]
    assert have == ["train", "eval", "compare", "bench", "export"]  # run, sweep and demo continue instead
    readme = " ".join((REPO / "README.md").read_text().split())
    listed = ", ".join(f"`{n}`" for n in have[:-1]) + f" and `{have[-1]}` refuse to replace a result"
    assert listed in readme
    assert "`run`, `sweep` and `demo` have no `--overwrite`" in readme
    for name in ("run", "sweep", "demo"):
        assert not any("--overwrite" in a.option_strings for a in _subparsers()[name]._actions)


def test_readme_launch_command_runs_the_module():
    """The README's multi-process line, given to Accelerate's own launch parser, launches `-m tunebench run`."""
    import re
    import shlex

    from accelerate.commands.launch import launch_command_parser

    readme = " ".join((REPO / "README.md").read_text().split())
    line = re.search(r"`(accelerate launch [^`]*)`", readme).group(1)
    args = launch_command_parser().parse_args(shlex.split(line.replace(" N ", " 2 "))[2:])
    assert args.module and args.training_script == "tunebench" and args.training_script_args == ["run", "CONFIG"]
    assert args.multi_gpu and args.num_processes == 2


def test_scaling_worked_example_names_real_run_folders():
    import re

    text = (REPO / "docs/scaling.md").read_text()
    example = text[text.index("## Worked example"):]
    example = example[: example.index("```", example.index("```") + 3)]
    named = set(re.findall(r"--set name=([\w.-]+)", example))
    demo = load_config(REPO / "tunebench/configs/demo.yaml")
    folders = re.findall(r"runs/([\w.-]+)/", example)
    assert demo.name in folders and set(folders) <= {demo.name} | named


def test_dialogsum_example_is_the_demo_under_another_name():
    demo = load_config(REPO / "tunebench/configs/demo.yaml").model_dump()
    example = load_config(REPO / "examples/dialogsum_lora.yaml").model_dump()
    assert example.pop("name") != demo.pop("name")
    assert example == demo
    assert "under another name" in (REPO / "examples/dialogsum_lora.yaml").read_text()


@pytest.mark.parametrize("argv, named", [
    (["score", "--pred", "{d}/nope.jsonl"], "--pred: no such file: {d}/nope.jsonl"),
    (["score", "--pred", "{d}/here.jsonl", "--ref", "{d}/nope.jsonl"], "--ref: no such file: {d}/nope.jsonl"),
    (["compare", "{d}/nope1", "{d}/nope2", "--out", "{d}/c1"], "compare: no such file or folder: {d}/nope1"),
    (["report", "{d}/nope"], "report: no such folder: {d}/nope"),
    (["parity", "{d}/c.yaml", "--adapter", "{d}/no/such/run"], "--adapter: no such run or adapter folder: "
                                                                 "{d}/no/such/run"),
    (["eval", "--adapter", "{d}/no/such/run", "--out", "{d}/e"], "--adapter: no such run or adapter folder"),
])
def test_a_missing_path_on_the_command_line_is_a_usage_error(tmp_path, capsys, monkeypatch, argv, named):
    import tunebench.pipeline as pipeline

    (tmp_path / "here.jsonl").write_text('{"prediction": "a", "reference": "a"}\n')
    (tmp_path / "c.yaml").write_text("name: x\n")
    monkeypatch.setattr(pipeline, "parity_reference", lambda *a, **k: pytest.fail("parity ran"))
    assert main([a.format(d=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {named.format(d=tmp_path)}") and err.count("\n") == 1
    assert not (tmp_path / "c1").exists() and not (tmp_path / "e").exists()


def test_score_help_lists_the_metric_registry(capsys):
    from tunebench.evaluate.metrics.base import known_names

    with pytest.raises(SystemExit):
        main(["score", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "metrics: " + ", ".join(known_names("text")) + " (default: rouge,bleu)" in text
    assert "['rouge'" not in text and "seqeval" in known_names("text")


def test_schema_descriptions_match_the_layout_and_the_code():
    from tunebench.config import schema_rows
    from tunebench.rundir import RunDir

    rows = {r[0]: r[3] for r in schema_rows()}
    run = RunDir(Path("runs/x"))
    task_folder = run.task_dir("NAME").path.relative_to(run.path).as_posix()  # where a task's results go
    from tunebench.config import TaskConfig

    assert f"{task_folder.replace('NAME', '<name>')}/" in TaskConfig.model_fields["name"].description
    assert "eval/<name>" not in TaskConfig.model_fields["name"].description
    assert "measured" in rows["train.bf16"] and "has it" not in rows["train.bf16"]
    assert "replaces epochs" in rows["train.max_steps"]
    from tunebench.train.schedule import total_optimizer_steps

    assert total_optimizer_steps(10, epochs=3.0, max_steps=7) == 7  # what "replaces epochs" says


def test_results_schema_documents_every_forgetting_sensitivity_key():
    import re

    from tunebench.bench.sensitivity import accuracy_sensitivity, ratio_sensitivity

    text = (REPO / "docs/results_schema.md").read_text()
    section = text.split("## `forgetting[]`", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`([a-z_0-9]+)`", section))
    produced = set(accuracy_sensitivity([1, 0, 1, 1], [1, 1, 0, 1], 0.5)) | set(ratio_sensitivity(40.0, [0.5, 1.5], 6))
    assert produced | {"status", "relative_delta"} <= documented
