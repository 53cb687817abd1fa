"""The `tunebench` command: subcommands only parse arguments and call into the package.

Heavy imports (torch, transformers) happen inside the handlers, so `tunebench --help` and `tunebench score`
start fast. User errors (TunebenchError) print one line and exit with their code; bugs keep their traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from tunebench import __version__
from tunebench.errors import ConfigError, TunebenchError
from tunebench.processes import current_process, is_main

_PARTIAL = "results.partial.json"  # tunebench.bench.runner.PARTIAL, not imported: the CLI starts fast
_PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")  # tunebench.config.PrecisionName, not imported: starts fast
_SWEEP_METHODS = ("full", "lora", "freeze", "adapter", "ia3", "prompt_tuning")  # tunebench.sweep.DEFAULT_METHODS


_METRIC_NAMES = "{the metric registry's names}"  # in a help text: replaced by the registered text metrics


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's defaults formatter, minus the noise: no "(default: None)" or "(default: False)"."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if _METRIC_NAMES in text:  # read from the metric registry only when help is shown (the CLI starts fast)
            from tunebench.evaluate.metrics.base import known_names

            text = text.replace(_METRIC_NAMES, ", ".join(known_names("text")))
        if action.default in (None, False, [], argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action) or text


def _csv(value: str) -> list[str]:
    """A list option: `a,b` (the same for every list-valued option of every subcommand)."""
    return [v.strip() for v in value.split(",") if v.strip()]


def _int_list(value: str) -> list[int]:
    try:
        items = [int(v) for v in _csv(value)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, e.g. 0,3; got {value!r}") from None
    if not items or any(k < 0 for k in items):
        raise argparse.ArgumentTypeError(f"expected integers >= 0 separated by commas; got {value!r}")
    return items


def _count(value: str, *, below_zero: str = "expected a whole number >= 0, got {value!r}") -> int:
    """A whole number >= 0 (`bench --shots K`); argparse names the option in its message and exits 2.

    below_zero: the message for a negative number (formatted with `value`), so each option can say what 0 means.
    """
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(below_zero.format(value=value))
    return n


def _limit(value: str) -> int:
    """`--limit N`: at most N examples; 0 means all of them (every subcommand alike)."""
    return _count(value, below_zero="expected N >= 0 (0 means all)")


def _name(value: str) -> str:
    """A non-empty name (`run --single-task TASK`): an empty one is a usage error, not a silent 'none'."""
    if not value.strip():
        raise argparse.ArgumentTypeError("expected a name, got an empty value")
    return value.strip()


def _add_limit(p: argparse.ArgumentParser, what: str, default: str) -> None:
    p.add_argument("-n", "--limit", type=_limit, default=None, metavar="N",
                   help=f"at most N {what}; 0 means all (default: {default})")


def _add_overwrite(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--overwrite", action="store_true", help=f"replace {what} instead of refusing")


def _refuse_existing(path: Path, marker: str, overwrite: bool, option: str) -> None:
    """Refuse to write over a finished result unless --overwrite (the same rule for every subcommand)."""
    if (path / marker).exists() and not overwrite:
        raise TunebenchError(f"{path} already holds a result ({marker}): pass --overwrite to replace it, "
                             f"or choose another {option}")


def _add_config_args(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    if required:
        p.add_argument("config", help="run config (YAML)")
    else:
        p.add_argument("--config", default=None, help="run config (YAML) for data, template and generation")
    _add_set(p)
    p.add_argument("--data-dir", default=None, help="data directory (default: the config's data_dir, "
                   "else $TUNEBENCH_DATA_DIR)")


def _add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.lr=1e-4 or --set eval.metrics=rouge,bleu "
                   "(repeatable; see `tunebench config schema --format table`)")


def _config(args: argparse.Namespace):
    from tunebench.config import load_config

    return load_config(args.config, args.overrides)


def cmd_train(args: argparse.Namespace) -> int:
    cfg = _config(args)
    from tunebench.config import resolve_data_dir
    from tunebench.report.terminal import train_table
    from tunebench.train.loop import train

    if args.overwrite and args.resume:
        raise ConfigError("choose --resume (continue the run) or --overwrite (start it again), not both")
    if args.overwrite:
        _clear_run(cfg.run_dir)
    result = train(cfg, data_dir=resolve_data_dir(args.data_dir, cfg), resume=args.resume)
    if getattr(result, "interrupted", False):
        print(f"interrupted at step {result.steps} of {result.total_steps}: checkpoint saved in "
              f"{result.run_dir / 'checkpoints'}; continue with `tunebench train {args.config} --resume`",
              file=sys.stderr)
        return 130
    _print(train_table(result.summary, str(result.output_dir)))
    return 0


def _clear_run(run_dir: Path) -> None:
    """`train --overwrite`: remove an earlier tunebench run (only a folder with its config.yaml is touched)."""
    import shutil

    if not run_dir.exists():
        return
    if not (run_dir / "config.yaml").is_file():
        raise TunebenchError(f"{run_dir} exists but is not a tunebench run (no config.yaml); --overwrite "
                             "replaces runs only: choose another name or output_dir")
    shutil.rmtree(run_dir)


def _existing(path: str, option: str, kind: str = "file or folder") -> Path:
    """A path named on the command line: a missing one is a usage error (ConfigError, exit 2) naming `option`."""
    if not Path(path).expanduser().exists():
        raise ConfigError(f"{option}: no such {kind}: {path}")
    return Path(path).expanduser()


def _model_config(args: argparse.Namespace):
    """eval/bench: the config, with the model that --model names, else the --adapter run's own base model.

    Without --config, a run dir given as --adapter lends its own config (data, template, evaluation settings).
    """
    from tunebench.config import load_config

    if args.adapter:  # a local folder (a run or a PEFT adapter): fail before any data or model loads
        _existing(args.adapter, "--adapter", "run or adapter folder")
    run_config = _run_config_file(Path(args.adapter)) if args.adapter else None
    cfg = load_config(run_config, args.overrides) if args.config is None and run_config else _config(args)
    if args.model:
        cfg.model.ref = args.model
    elif args.adapter and run_config is None and "ref" not in cfg.model.model_fields_set:
        # A bare adapter dir: its adapter_config.json names the base. A run dir's own base model and prompt format
        # are applied by the pipeline (pipeline.stages.trained_settings), where an explicit config key still wins.
        from tunebench.models.load import base_model_config

        base = base_model_config(Path(args.adapter), trust_remote_code=cfg.model.trust_remote_code)
        cfg.model = cfg.model.model_copy(update={"ref": base.ref, "revision": base.revision})
    return cfg


def _run_config_file(adapter: Path) -> Path | None:
    for folder in (adapter, adapter.parent):
        if (folder / "config.yaml").is_file() and (folder / "train_summary.json").is_file():
            return folder / "config.yaml"
    return None


def cmd_eval(args: argparse.Namespace) -> int:
    from tunebench.evaluate.score import render_score_table
    from tunebench.pipeline import evaluate_reference
    from tunebench.report.terminal import diagnostics_tables

    cfg = _model_config(args)
    shots = args.shots if args.shots is not None else [0]
    outs = [Path(args.out)] if len(shots) == 1 else [Path(args.out) / f"{k}shot" for k in shots]
    for out in outs:
        _refuse_existing(out, "scores.json", args.overwrite, "--out")
    from tunebench.rundir import EvalDir

    rank, world_size = current_process(cfg.model.device)
    for k, out in zip(shots, outs, strict=True):
        scores = evaluate_reference(
            cfg, data_dir=args.data_dir, adapter=args.adapter, split=args.split, limit=args.limit,
            shots=k, out_dir=out, rank=rank, world_size=world_size,
        )
        if not is_main(rank):
            continue
        if len(shots) > 1:
            print(f"{k}-shot:")
        _print(render_score_table(scores["metrics"]))
        for table in diagnostics_tables(scores.get("diagnostics"), out.name):
            _print(table)
        print(f"predictions: {EvalDir(out).predictions}")
    return 0


def cmd_parity(args: argparse.Namespace) -> int:
    cfg = _model_config(args)
    from tunebench.pipeline import parity_reference

    verdict = parity_reference(cfg, data_dir=args.data_dir, adapter=args.adapter, precision=args.precision,
                               limit=args.limit)
    print(f"{'accepted' if verdict['accepted'] else 'rejected'}{' (cached)' if verdict['cached'] else ''}: "
          f"{verdict['reason']}")
    print(f"{verdict['metric']}: fp32 {verdict['fp32_score']:.4f}, {verdict['precision']} "
          f"{verdict['fast_score']:.4f}")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    import json

    from tunebench.evaluate.metrics import MetricSettings, check_metric_names
    from tunebench.evaluate.metrics.base import check_tokenizers
    from tunebench.evaluate.score import render_score_table, score_and_diagnose
    from tunebench.report.terminal import diagnostics_tables

    check_metric_names(args.metric, "--metric")
    _existing(args.pred, "--pred", "file")
    if args.ref:
        _existing(args.ref, "--ref", "file")
    try:
        check_tokenizers(args.bleu_tokenize, args.rouge_tokenize, ("--bleu-tokenize", "--rouge-tokenize"))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    settings = MetricSettings(stem=not args.no_stem, bleu_tokenize=args.bleu_tokenize,
                              rouge_tokenize=args.rouge_tokenize, language=args.language)
    result, diagnostics = score_and_diagnose(Path(args.pred), Path(args.ref) if args.ref else None, args.metric,
                                             bootstrap=args.resamples, seed=args.seed, settings=settings)
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        _print(render_score_table(result))
        for table in diagnostics_tables(diagnostics, Path(args.pred).name):
            _print(table)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    import json

    from tunebench.pipeline import compare_paths
    from tunebench.report.terminal import comparison_table, forgetting_table

    out_dir = Path(args.out)
    _refuse_existing(out_dir, "comparison.json", args.overwrite, "--out")
    _refuse_existing(out_dir, "forgetting.json", args.overwrite, "--out")
    for path in args.paths:
        _existing(path, "compare")
    out = compare_paths([Path(p) for p in args.paths], out_dir, baseline=args.baseline,
                        n_resamples=args.resamples, seed=args.seed)
    if out.is_file():
        for table in comparison_table(json.loads(out.read_text(encoding="utf-8"))):
            _print(table)
    forgetting = out_dir / "forgetting.json"
    if forgetting.is_file():
        for renderable in forgetting_table(json.loads(forgetting.read_text(encoding="utf-8"))):
            _print(renderable)
    print(f"comparison: {out}")
    return 0


def _print_run_summary(paths: dict[str, Path]) -> None:
    import json

    from tunebench.report.terminal import comparison_table, forgetting_table

    run_dir = Path(paths["html"]).parent
    comparison = run_dir / "compare" / "comparison.json"
    if comparison.is_file():
        for table in comparison_table(json.loads(comparison.read_text(encoding="utf-8"))):
            _print(table)
    forgetting = run_dir / "compare" / "forgetting.json"
    if forgetting.is_file():
        for renderable in forgetting_table(json.loads(forgetting.read_text(encoding="utf-8"))):
            _print(renderable)
    print(f"report: {paths['html']}")


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _config(args)
    from tunebench.pipeline import run_all, run_single_vs_multi

    rank, world_size = current_process(cfg.model.device)
    if args.single_task is not None:
        paths = run_single_vs_multi(cfg, args.single_task, data_dir=args.data_dir, rank=rank, world_size=world_size)
    else:
        paths = run_all(cfg, data_dir=args.data_dir, rank=rank, world_size=world_size)
    if is_main(rank):
        _print_run_summary(paths)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from tunebench.sweep import check_against, check_methods

    methods = check_methods(args.methods)  # usage errors before anything loads
    check_against(args.against, methods)
    from tunebench.pipeline import run_sweep
    from tunebench.report.sweep import pairwise_missing, sweep_table

    doc = run_sweep(args.config, args.overrides, methods, data_dir=args.data_dir, out=args.out,
                    against=args.against, same_lr=args.same_lr, mixtures=args.mixtures)
    _print(sweep_table(doc))
    if missing := pairwise_missing(doc):
        print(missing)
    print(f"report: {Path(doc['dir']) / 'report.html'}")
    print(f"TensorBoard: tensorboard --logdir {doc['dir']}")
    failed = [r for r in doc["rows"] if r["status"] != "done"]
    failed += [r["single_vs_multi"] for r in doc["rows"] if (r.get("single_vs_multi") or {}).get("status") == "failed"]
    for row in failed:
        print(f"error: {row['error']}", file=sys.stderr)
    return max((int(r["exit_code"]) for r in failed), default=0)


def cmd_demo(args: argparse.Namespace) -> int:
    from tunebench.config import load_config
    from tunebench.pipeline import DEMO_CONFIG, run_all

    cfg = load_config(DEMO_CONFIG, args.overrides)
    rank, world_size = current_process(cfg.model.device)
    paths = run_all(cfg, data_dir=args.data_dir, rank=rank, world_size=world_size)
    if is_main(rank):
        _print_run_summary(paths)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import json

    cfg = _config(args)
    if args.list:
        from tunebench.bench.spec import list_tasks
        from tunebench.config import resolve_data_dir

        for name, description in list_tasks(resolve_data_dir(args.data_dir, cfg)):
            print(f"{name:32s} {description}")
        return 0
    if not args.tasks:
        raise ConfigError("bench needs --tasks NAME[,NAME...]; `tunebench bench --list` shows the names")
    if not args.out:
        raise ConfigError("bench needs --out DIR (the folder for results.json and the per-sample logs)")
    from tunebench.pipeline import bench_reference
    from tunebench.report.terminal import bench_table, helm_rows_table

    cfg = _model_config(args)
    if args.precision is not None:
        from tunebench.config import check_precision_device

        try:
            check_precision_device("--precision", args.precision, cfg.model.device)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        cfg.bench.precision = args.precision
    out = Path(args.out)
    _refuse_existing(out, "results.json", args.overwrite, "--out")
    rank, world_size = current_process(cfg.model.device)
    results = bench_reference(cfg, tasks=args.tasks, data_dir=args.data_dir, adapter=args.adapter,
                              limit=args.limit, shots=args.shots, out_dir=out, helm=args.helm,
                              reference=args.reference, rank=rank, world_size=world_size)
    if not is_main(rank):
        return 0
    _print(bench_table(results))
    from tunebench.report.tables import bench_summary_lines

    for line in bench_summary_lines(results):
        print(line)
    if args.helm and (out / "helm.json").is_file():
        _print(helm_rows_table(json.loads((out / "helm.json").read_text(encoding="utf-8"))))
    print(f"results: {out / 'results.json'}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from tunebench.models.export import export_merged

    out = Path(args.merge)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise TunebenchError(f"{out} already exists and is not empty: pass --overwrite to replace it, "
                             "or choose another --merge folder")
    out = export_merged(Path(args.run), out, trust_remote_code=args.trust_remote_code)
    print(f"merged model: {out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from tunebench.pipeline import write_report

    paths = write_report(_existing(args.dir, "report", "folder"), Path(args.out) if args.out else None)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


def cmd_data_preview(args: argparse.Namespace) -> int:
    from tunebench.config import resolve_data_dir
    from tunebench.data.preview import preview
    from tunebench.models.load import load_tokenizer_only

    cfg = _config(args)
    loaded = None if args.no_tokenizer else load_tokenizer_only(cfg.model)
    n = args.limit if args.limit is not None else 3
    _print(preview(cfg, resolve_data_dir(args.data_dir, cfg), n if n else 10**9, loaded))
    return 0


def cmd_templates(args: argparse.Namespace) -> int:
    from tunebench.data.templates import list_templates, show_template

    if args.name:
        print(show_template(args.name), end="")
        return 0
    for name, description in list_templates():
        print(f"{name:18s} {description}")
    print("\n`tunebench templates NAME` shows a template's phrasings, completion and evaluation defaults.")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    import json

    from tunebench.config import config_schema, dump_config, load_config, schema_table

    if args.action == "schema":
        if args.format == "table":
            _print(schema_table())
        else:
            print(json.dumps(config_schema(), indent=2))
    else:
        print(dump_config(load_config(args.config, args.overrides)), end="")
    return 0


def _print(renderable: object) -> None:
    if isinstance(renderable, str):
        print(renderable)
        return
    from rich.console import Console

    console = Console()
    if not console.is_terminal:  # a pipe or a log: rich's 80-column default would wrap the tables' cells
        console = Console(width=max(console.width, 180))
    console.print(renderable)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tunebench", description=__doc__.splitlines()[0],
                                     formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"tunebench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Callable[[argparse.Namespace], int], help_: str,
            interrupted: str = "nothing was written") -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_, formatter_class=_HelpFormatter)
        p.set_defaults(handler=handler, interrupted=interrupted)
        p.add_argument("-v", "--verbose", action="store_true",
                       help="show the warnings and progress bars of transformers, PEFT and datasets")
        return p

    p = add("train", cmd_train, "fine-tune a model as the config says",
            "the checkpoint of the last finished step is kept; continue with --resume")
    _add_config_args(p)
    p.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    _add_overwrite(p, "an earlier run of the same name (its folder is deleted first)")

    p = add("eval", cmd_eval, "generate on a split and score it",
            "nothing was written (results appear only when an evaluation finishes)")
    _add_config_args(p, required=False)
    p.add_argument("--model", default=None, help="model reference (default: the config's model.ref, or the run's "
                   "own base model when --adapter is a run)")
    p.add_argument("--adapter", default=None, help="PEFT adapter dir or tunebench run dir (default: none)")
    p.add_argument("--split", default=None, choices=["train", "validation", "test"],
                   help="split to evaluate (default: the config's eval.split, test)")
    _add_limit(p, "examples of the split", "the config's eval.limit, else all")
    p.add_argument("--shots", type=_int_list, default=None, metavar="K[,K...]",
                   help="in-context demonstrations from the train split; several values (0,3) write one "
                   "folder per value under --out (default: 0)")
    p.add_argument("--out", required=True, help="output directory (predictions.jsonl, scores.json)")
    _add_overwrite(p, "an earlier evaluation in --out")

    p = add("parity", cmd_parity, "the parity gate: does a fast precision change the task metric? (fp32 vs "
            "PRECISION on a seeded calibration slice, paired bootstrap)")
    p.add_argument("config", nargs="?", default=None, help="run config (YAML) for model, data and evaluation")
    _add_set(p)
    p.add_argument("--data-dir", default=None, help="data directory (default: the config's data_dir, "
                   "else $TUNEBENCH_DATA_DIR)")
    p.add_argument("--model", default=None, help="model reference (default: the config's model.ref)")
    p.add_argument("--adapter", default=None, help="PEFT adapter dir or tunebench run dir (default: none)")
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "int8"],
                   help="the fast precision gated against fp32")
    _add_limit(p, "examples of the eval split to draw the calibration slice from", "the config's eval.limit")

    p = add("score", cmd_score, "score predictions against references")
    p.add_argument("--pred", required=True, help="JSONL with id and prediction (and optionally references)")
    p.add_argument("--ref", default=None, help="JSONL with id and references (list) or reference "
                   "(default: references inside --pred)")
    p.add_argument("--metric", type=_csv, default=["rouge", "bleu"], metavar="M[,M...]",
                   help=f"metrics: {_METRIC_NAMES} (default: rouge,bleu)")
    p.add_argument("--json", action="store_true", help="print one JSON object keyed by metric")
    p.add_argument("--no-stem", action="store_true", help="turn Porter stemming off for ROUGE")
    p.add_argument("--language", default=None, help="target language (ISO 639-1, e.g. zh): picks the tokenizers")
    p.add_argument("--bleu-tokenize", default=None, help="sacreBLEU tokenizer for bleu (13a, zh, intl, char, ...)")
    p.add_argument("--rouge-tokenize", default=None, help="ROUGE tokenizer: rouge_score or unicode (any script)")
    _add_resamples(p)

    p = add("compare", cmd_compare, "paired comparison of evaluations on the same test set, or of two benchmark "
            "folders (the forgetting table)")
    p.add_argument("paths", nargs="+", help="eval dirs, one run dir, or two bench dirs (base first)")
    p.add_argument("--out", required=True, help="output directory (comparison.json, forgetting.json)")
    p.add_argument("--baseline", default=None, help="system name of the baseline (default: the first)")
    _add_resamples(p)
    _add_overwrite(p, "an earlier comparison in --out")

    p = add("run", cmd_run, "train, evaluate base and tuned, compare, benchmark and report",
            "finished stages are kept; rerun the same command to continue")
    _add_config_args(p)
    p.add_argument("--single-task", type=_name, default=None, metavar="TASK",
                   help="also train TASK alone (a task of data.tasks) for the mixture run's optimizer steps, "
                   "into <name>-single-TASK, and report both side by side")

    p = add("sweep", cmd_sweep, "train and evaluate several methods (full, lora, adapter, ...) on the same data, "
            "steps and evaluation, against one shared base; one report",
            "finished methods are kept; rerun the same command to finish the others")
    p.epilog = ("Learning rates: the config's train.lr applies to the config's own train.method only; every other "
                "method uses its default from the methods table (README, Methods: full 2e-5, lora 2e-4, ...) unless "
                "--same-lr. Each method's start line prints its rate and where it came from; sweep.json keeps "
                "them (lr, lr_source).")
    _add_config_args(p)
    p.add_argument("--methods", type=_csv, default=",".join(_SWEEP_METHODS), metavar="M[,M...]",
                   help="methods of the methods table to compare")
    p.add_argument("--against", default=None, metavar="M",
                   help="also compare every method with this one (paired deltas on the same examples)")
    p.add_argument("--same-lr", action="store_true",
                   help="give every method the config's train.lr (default: only the config's train.method; the "
                   "others their method default)")
    p.add_argument("--mixtures", default=None, metavar="single[:TASK]",
                   help="with a multi-task config (data.tasks): also train each method on TASK alone (default: "
                   "the first task) for the mixture run's optimizer steps, into SWEEP/METHOD-single-TASK, and "
                   "report mixture vs single task per method (each task's scores and the forgetting of each)")
    p.add_argument("--out", default=None, help="sweep folder (default: OUTPUT_DIR/NAME-sweep of the config)")

    p = add("demo", cmd_demo, "the whole job on the built-in config (default model, DialogSum, LoRA)",
            "finished stages are kept; rerun `tunebench demo` to continue")
    _add_set(p)
    p.add_argument("--data-dir", default=None, help="data directory (default: $TUNEBENCH_DATA_DIR)")

    p = add("bench", cmd_bench, "run benchmark suites (MMLU, SuperGLUE, SST-2, BBH, ...)",
            f"finished tasks are kept in --out/{_PARTIAL}; rerun the same command to continue")
    _add_config_args(p, required=False)
    p.add_argument("--list", action="store_true", help="list the benchmark tasks and exit")
    p.add_argument("--model", default=None, help="model reference (default: the config's model.ref, or the run's "
                   "own base model when --adapter is a run)")
    p.add_argument("--adapter", default=None, help="PEFT adapter dir or tunebench run dir (default: none)")
    p.add_argument("--tasks", type=_csv, default=None, metavar="T[,T...]",
                   help="tasks, e.g. mmlu,cb,rte,sst2,bbh:date_understanding (see --list)")
    _add_limit(p, "examples per task (a seeded subset)", "all")
    p.add_argument("--shots", type=_count, default=None, metavar="K",
                   help="demonstrations per example for every task (default: each task's own)")
    p.add_argument("--helm", action="store_true", help="add the HELM-style metrics")
    p.add_argument("--precision", default=None, choices=_PRECISIONS,
                   help="score in this precision where the parity gate passes on the task (fp32 vs it on a "
                   "seeded calibration slice, bench.parity), else fp32 (default: the config's bench.precision, "
                   "else fp32 as loaded)")
    p.add_argument("--reference", default=None, metavar="MODEL",
                   help="perplexity tasks: also measure KL(p_MODEL ‖ p_model) (same tokenizer needed); an "
                        "--adapter is compared with its own base without this")
    p.add_argument("--out", default=None, help="output directory (results.json, samples_<task>.jsonl)")
    _add_overwrite(p, "earlier results in --out")

    p = add("export", cmd_export, "write a merged full model from a LoRA run")
    p.add_argument("run", help="run dir or PEFT adapter dir")
    p.add_argument("--merge", metavar="OUT", required=True, help="directory for the merged model")
    _add_overwrite(p, "an existing --merge folder")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="run the base model's custom code (never taken from the run's config.yaml)")

    p = add("report", cmd_report, "(re)write results.json, report.md and report.html for a run, compare or "
            "bench dir; a sweep folder's report.html and chart from its sweep.json")
    p.add_argument("dir", help="run dir, compare --out dir, bench --out dir or sweep folder")
    p.add_argument("--out", default=None, help="where the report files go (default: DIR itself)")

    p = add("data", cmd_data_preview, "inspect data: `tunebench data preview CONFIG`")
    p.add_argument("action", choices=["preview"], help="what to do with the data")
    _add_config_args(p)
    _add_limit(p, "examples shown per split", "3")
    p.add_argument("--no-tokenizer", action="store_true", help="skip token-length statistics")

    p = add("templates", cmd_templates, "list built-in prompt templates, or show one")
    p.add_argument("name", nargs="?", default=None, help="a template to show in full (phrasings, completion, "
                   "evaluation defaults)")

    p = add("config", cmd_config, "print the config schema, or a resolved config")
    p.add_argument("action", choices=["schema", "show"], help="schema: every key; show: CONFIG resolved")
    p.add_argument("config", nargs="?", default=None, help="run config (YAML) for `show` (default: the defaults)")
    p.add_argument("--format", choices=["json", "table"], default="json",
                   help="schema as JSON Schema, or a table of key, type, default and description")
    _add_set(p)
    return parser


def _add_resamples(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resamples", type=int, default=1000, metavar="B",
                   help="bootstrap resamples for intervals and paired tests (config: eval.bootstrap)")
    p.add_argument("--bootstrap", dest="resamples", type=int, help=argparse.SUPPRESS)  # the old name of --resamples
    p.add_argument("--seed", type=int, default=0, help="seed of the resampling")


def _quiet(verbose: bool) -> None:
    """Silence the library noise tunebench owns or has made irrelevant; `--verbose` shows all of it.

    Before transformers is imported: its logging (e.g. weight-loading reports) drops to errors and the
    Hugging Face progress bars ("Loading weights") go; PEFT's probe of the deprecated `is_gradient_checkpointing`
    property no longer prints a FutureWarning. tunebench's own progress and every error stay.
    """
    import os
    import warnings

    if verbose:
        return
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet(getattr(args, "verbose", False))
    try:
        return args.handler(args)
    except TunebenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # `tunebench config schema | head`: the reader left, which is not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(f"interrupted (Ctrl-C) during `tunebench {args.command}`: {args.interrupted}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
