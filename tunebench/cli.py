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


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _add_config_args(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    if required:
        p.add_argument("config", help="run config (YAML)")
    else:
        p.add_argument("--config", default=None, help="run config (YAML) for data, template and generation")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.lr=1e-4 (repeatable)")
    p.add_argument("--data-dir", default=None, help="data directory (default: $TUNEBENCH_DATA_DIR)")


def _config(args: argparse.Namespace):
    from tunebench.config import load_config

    return load_config(args.config, args.overrides)


def cmd_train(args: argparse.Namespace) -> int:
    cfg = _config(args)
    from tunebench.config import resolve_data_dir
    from tunebench.train.loop import train

    result = train(cfg, data_dir=resolve_data_dir(args.data_dir, cfg), resume=args.resume)
    print(f"trained: {result.output_dir}")
    return 130 if getattr(result, "interrupted", False) else 0


def cmd_eval(args: argparse.Namespace) -> int:
    from tunebench.pipeline import evaluate_reference

    cfg = _config(args)
    if args.model:
        cfg.model.ref = args.model
    scores = evaluate_reference(
        cfg, data_dir=args.data_dir, adapter=args.adapter, split=args.split, limit=args.limit,
        shots=args.shots, out_dir=Path(args.out),
    )
    from tunebench.evaluate.score import render_score_table

    _print(render_score_table(scores["metrics"]))
    from tunebench.rundir import EvalDir

    print(f"predictions: {EvalDir(Path(args.out)).predictions}")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    import json

    from tunebench.evaluate.metrics import MetricSettings, check_metric_names
    from tunebench.evaluate.metrics.base import check_tokenizers
    from tunebench.evaluate.score import render_score_table, score_files

    check_metric_names(args.metric, "--metric")
    try:
        check_tokenizers(args.bleu_tokenize, args.rouge_tokenize, ("--bleu-tokenize", "--rouge-tokenize"))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    settings = MetricSettings(stem=not args.no_stem, bleu_tokenize=args.bleu_tokenize,
                              rouge_tokenize=args.rouge_tokenize, language=args.language)
    result = score_files(Path(args.pred), Path(args.ref) if args.ref else None, args.metric,
                         bootstrap=args.bootstrap, seed=args.seed, settings=settings)
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        _print(render_score_table(result))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from tunebench.pipeline import compare_paths

    out = compare_paths([Path(p) for p in args.paths], Path(args.out), baseline=args.baseline,
                        n_resamples=args.resamples, seed=args.seed)
    print(f"comparison: {out}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _config(args)
    from tunebench.pipeline import run_all

    paths = run_all(cfg, data_dir=args.data_dir)
    print(f"report: {paths['html']}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from tunebench.config import load_config
    from tunebench.pipeline import DEMO_CONFIG, run_all

    cfg = load_config(DEMO_CONFIG, args.overrides)
    paths = run_all(cfg, data_dir=args.data_dir)
    print(f"report: {paths['html']}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from tunebench.pipeline import bench_reference

    cfg = _config(args)
    if args.model:
        cfg.model.ref = args.model
    results = bench_reference(cfg, tasks=args.tasks, data_dir=args.data_dir, adapter=args.adapter,
                              limit=args.limit, shots=args.shots, out_dir=Path(args.out), helm=args.helm,
                              reference=args.reference)
    from tunebench.report.tables import bench_summary_lines

    for line in bench_summary_lines(results):
        print(line)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from tunebench.models.export import export_merged

    if not args.merge:
        raise TunebenchError("export needs --merge OUT_DIR (the directory for the merged full model)")
    out = export_merged(Path(args.run), Path(args.merge), trust_remote_code=args.trust_remote_code)
    print(f"merged model: {out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from tunebench.pipeline import write_report

    paths = write_report(Path(args.dir), Path(args.out) if args.out else None)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


def cmd_data_preview(args: argparse.Namespace) -> int:
    from tunebench.config import resolve_data_dir
    from tunebench.data.preview import preview
    from tunebench.models.load import load_tokenizer_only

    cfg = _config(args)
    loaded = None if args.no_tokenizer else load_tokenizer_only(cfg.model)
    _print(preview(cfg, resolve_data_dir(args.data_dir, cfg), args.n, loaded))
    return 0


def cmd_templates(args: argparse.Namespace) -> int:
    from tunebench.data.templates import list_templates

    for name, description in list_templates():
        print(f"{name:18s} {description}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    import json

    from tunebench.config import RunConfig, dump_config, load_config

    if args.action == "schema":
        print(json.dumps(RunConfig.model_json_schema(), indent=2))
    else:
        print(dump_config(load_config(args.config, args.overrides)), end="")
    return 0


def _print(renderable: object) -> None:
    if isinstance(renderable, str):
        print(renderable)
        return
    from rich.console import Console

    Console().print(renderable)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tunebench", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"tunebench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Callable[[argparse.Namespace], int], help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(handler=handler)
        return p

    p = add("train", cmd_train, "fine-tune a model as the config says")
    _add_config_args(p)
    p.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")

    p = add("eval", cmd_eval, "generate on a split and score it")
    _add_config_args(p, required=False)
    p.add_argument("--model", default=None, help="model reference (default: the config's model.ref)")
    p.add_argument("--adapter", default=None, help="PEFT adapter dir or tunebench run dir")
    p.add_argument("--split", default=None, choices=["train", "validation", "test"])
    p.add_argument("--limit", type=int, default=None, help="first N examples")
    p.add_argument("--shots", type=int, default=0, help="in-context demonstrations from the train split")
    p.add_argument("--out", required=True, help="output directory")

    p = add("score", cmd_score, "score predictions against references")
    p.add_argument("--pred", required=True, help="JSONL with id and prediction (and optionally references)")
    p.add_argument("--ref", default=None, help="JSONL with id and references (list) or reference")
    p.add_argument("--metric", type=_csv, default=["rouge", "bleu"], help="comma-separated metrics")
    p.add_argument("--json", action="store_true", help="print one JSON object keyed by metric")
    p.add_argument("--no-stem", action="store_true", help="turn Porter stemming off for ROUGE")
    p.add_argument("--language", default=None, help="target language (ISO 639-1, e.g. zh): picks the tokenizers")
    p.add_argument("--bleu-tokenize", default=None, help="sacreBLEU tokenizer for bleu (13a, zh, intl, char, ...)")
    p.add_argument("--rouge-tokenize", default=None, help="ROUGE tokenizer: rouge_score or unicode (any script)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for intervals")
    p.add_argument("--seed", type=int, default=0)

    p = add("compare", cmd_compare, "paired comparison of evaluations on the same test set")
    p.add_argument("paths", nargs="+", help="eval dirs or run dirs")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--baseline", default=None, help="system name of the baseline (default: the first)")
    p.add_argument("--resamples", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)

    p = add("run", cmd_run, "train, evaluate base and tuned, compare, benchmark and report")
    _add_config_args(p)

    p = add("demo", cmd_demo, "the whole job on the built-in config (default model, DialogSum, LoRA)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--data-dir", default=None)

    p = add("bench", cmd_bench, "run benchmark suites (MMLU, SuperGLUE, SST-2, BBH, ...)")
    _add_config_args(p, required=False)
    p.add_argument("--model", default=None)
    p.add_argument("--adapter", default=None)
    p.add_argument("--tasks", type=_csv, required=True, help="e.g. mmlu,cb,rte,sst2,bbh:date_understanding")
    p.add_argument("--limit", type=int, default=None, help="examples per task, a seeded subset (default: all)")
    p.add_argument("--shots", type=int, default=None)
    p.add_argument("--helm", action="store_true", help="add the HELM-style metrics")
    p.add_argument("--reference", default=None, metavar="MODEL",
                   help="perplexity tasks: also measure KL(p_MODEL ‖ p_model) (same tokenizer needed); an "
                        "--adapter is compared with its own base without this")
    p.add_argument("--out", required=True)

    p = add("export", cmd_export, "write a merged full model from a LoRA run")
    p.add_argument("run", help="run dir or PEFT adapter dir")
    p.add_argument("--merge", metavar="OUT", help="directory for the merged model")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="run the base model's custom code (never taken from the run's config.yaml)")

    p = add("report", cmd_report, "write results.json, report.md and report.html for a run or compare dir")
    p.add_argument("dir")
    p.add_argument("--out", default=None)

    p = add("data", cmd_data_preview, "inspect data: `tunebench data preview CONFIG`")
    p.add_argument("action", choices=["preview"])
    _add_config_args(p)
    p.add_argument("-n", type=int, default=3, help="examples to show per split")
    p.add_argument("--no-tokenizer", action="store_true", help="skip token-length statistics")

    add("templates", cmd_templates, "list built-in prompt templates")

    p = add("config", cmd_config, "print the JSON schema, or a resolved config")
    p.add_argument("action", choices=["schema", "show"])
    p.add_argument("config", nargs="?", default=None)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except TunebenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
