"""Assemble results.json: everything a run directory holds, in one versioned document for other tools.

Each stage wrote its own file (docs/formats.md); this module gathers them and tolerates missing stages, so a
run without training or benchmarks, an eval-only run, or a compare output directory alone all report what
exists. The schema is documented in docs/results_schema.md, whose required-keys table is REQUIRED_KEYS below.
The key check is written by hand because a JSON-Schema dependency would be heavier than the rules it enforces.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tunebench import __version__
from tunebench.errors import DataError
from tunebench.io import read_json, read_jsonl
from tunebench.rundir import (
    BENCH_SCHEMA,
    COMPARE_SCHEMA,
    EVAL_SCHEMA,
    HELM_SCHEMA,
    LAYOUT,
    RESULTS_SCHEMA,
    BenchDir,
    CompareDir,
    EvalDir,
    RunDir,
)

SCHEMA = RESULTS_SCHEMA

# Object pattern -> keys it must hold. `<name>` walks a mapping's values, `[]` a list's items.
REQUIRED_KEYS: dict[str, tuple[str, ...]] = {
    "top level": (
        "schema", "tunebench_version", "created", "run_name", "source", "warnings", "config", "data_stats",
        "training", "test_set", "systems", "comparisons", "benchmarks", "forgetting", "helm",
    ),
    "source": ("dir", "kind", "files"),
    "training": ("summary", "log"),
    "systems.<name>": ("path", "test_set", "metrics", "per_example"),
    "systems.<name>.metrics.<metric>": ("score", "ci95", "signature"),
    "comparisons[]": ("baseline", "candidate", "metrics", "win_tie_loss", "examples"),
    "comparisons[].metrics.<metric>": ("baseline", "candidate", "delta", "ci95", "p_value", "method"),
    "comparisons[].examples": ("gains", "losses"),
    "benchmarks.<system>": ("tasks",),
    "benchmarks.<system>.tasks.<task>": ("version", "n", "metrics"),
    "forgetting[]": ("task", "metric", "base", "tuned", "delta", "ci95", "p_value", "significant_drop"),
}


class _ShapeError(Exception):
    def __init__(self, path: str, expected: str, node: Any) -> None:
        super().__init__(f"{path}: expected {expected}, got {type(node).__name__}")


def _select(obj: Any, pattern: str) -> Iterator[tuple[str, Any]]:
    """Yield (key path, node) for every node the pattern names; null optional sections yield nothing."""
    nodes: list[tuple[str, Any]] = [("", obj)]
    if pattern == "top level":
        yield from nodes
        return
    for part in pattern.split("."):
        name, is_list = (part[:-2], True) if part.endswith("[]") else (part, False)
        step: list[tuple[str, Any]] = []
        for path, node in nodes:
            if name.startswith("<"):
                if not isinstance(node, dict):
                    raise _ShapeError(path or "top level", "a mapping", node)
                step.extend((f"{path}.{key}".lstrip("."), value) for key, value in node.items())
            elif isinstance(node, dict) and node.get(name) is not None:
                step.append((f"{path}.{name}".lstrip("."), node[name]))
        if is_list:
            listed: list[tuple[str, Any]] = []
            for path, node in step:
                if not isinstance(node, list):
                    raise _ShapeError(path, "a list", node)
                listed.extend((f"{path}[{i}]", item) for i, item in enumerate(node))
            step = listed
        nodes = step
    yield from nodes


def check_keys(obj: Any, rules: dict[str, tuple[str, ...]], where: str, fix: str) -> None:
    """Raise DataError naming `where`, the key path and the missing key when `obj` breaks a rule."""
    for pattern, keys in rules.items():
        try:
            nodes = list(_select(obj, pattern))
        except _ShapeError as exc:
            raise DataError(f"{where}: {exc}; {fix}") from None
        for path, node in nodes:
            label = f"{where}: {path}" if path else where
            if not isinstance(node, dict):
                raise DataError(f"{label}: expected a mapping, got {type(node).__name__}; {fix}")
            missing = [k for k in keys if k not in node]
            if missing:
                raise DataError(f"{label}: missing key '{missing[0]}'; {fix}")


def validate_results(results: dict[str, Any], where: str = "results.json") -> None:
    """Check a results document against the documented required keys and schema version."""
    check_keys(results, REQUIRED_KEYS, where, "rebuild it with `tunebench report`")
    if results["schema"] != SCHEMA:
        raise DataError(f"{where}: schema '{results['schema']}' is not '{SCHEMA}'; rebuild it with `tunebench report`")


class _Reader:
    """Reads the run directory's JSON files, remembering which ones went into the results."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files: list[str] = []

    def _note(self, path: Path) -> None:
        try:
            self.files.append(str(path.resolve().relative_to(self.root.resolve())))
        except ValueError:
            self.files.append(str(path.resolve()))

    def json(self, path: Path, schema: str | None = None) -> Any:
        doc = read_json(path, fix="regenerate the file")
        found = doc.get("schema") if isinstance(doc, dict) else None
        if schema is not None and found is not None and found != schema:
            raise DataError(f"{path}: schema '{found}' is not supported (expected '{schema}'); "
                            "regenerate it with this tunebench version")
        self._note(path)
        return doc

    def jsonl(self, path: Path) -> list[dict[str, Any]]:
        rows = read_jsonl(path)
        self._note(path)
        return rows

    def yaml(self, path: Path) -> Any:
        import yaml

        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
        except yaml.YAMLError as exc:
            raise DataError(f"{path}: invalid YAML ({exc}); regenerate the file") from None
        self._note(path)
        return doc


def _is_bench_results(path: Path) -> bool:
    """A benchmark folder's results.json (not the results.json `tunebench report` writes into a run dir)."""
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("schema") == BENCH_SCHEMA
    except (OSError, ValueError, AttributeError):
        return False


def _detect_kind(root: Path) -> str:
    if CompareDir(root).comparison.is_file() or CompareDir(root).forgetting.is_file():
        return "compare"
    if EvalDir(root).scores.is_file():
        return "eval"
    run = RunDir(root)
    if _is_bench_results(BenchDir(root).results):
        return "bench"
    run_markers = (run.compare_dir.comparison, run.eval_root, run.bench_root, run.train_summary, run.train_log)
    if any(m.exists() for m in run_markers):
        return "run"
    if CompareDir(root).tasks_root.is_dir():  # `compare` of multi-task runs: tasks/<task>/comparison.json
        return "compare"
    raise DataError(f"{root}: nothing to report (no comparison.json, forgetting.json, scores.json, results.json, "
                    "eval/, bench/ or training files); point `tunebench report` at a run, compare, eval or bench "
                    "directory")


def _per_example(rows: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Per-example metric values in file order, from predictions.jsonl `scores`."""
    out: dict[str, list[float]] = {}
    for row in rows:
        for metric, value in (row.get("scores") or {}).items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                out.setdefault(metric, []).append(float(value))
    return out


def _eval_system(reader: _Reader, eval_dir: EvalDir) -> dict[str, Any]:
    scores_path = eval_dir.scores
    doc = reader.json(scores_path, EVAL_SCHEMA)
    check_keys(doc, {"top level": ("metrics",), "metrics.<metric>": ("score", "ci95", "signature")},
               str(scores_path), "re-run `tunebench eval`")
    preds = eval_dir.predictions
    rows = reader.jsonl(preds) if preds.is_file() else []
    return {
        "path": str(eval_dir.path),
        "info": doc.get("system"),
        "test_set": doc.get("test_set"),
        "generation": doc.get("generation"),
        "examples_per_s": doc.get("examples_per_s"),
        "metrics": doc["metrics"],
        "diagnostics": doc.get("diagnostics") or _diagnostics(rows, list(doc["metrics"])),
        "per_example": _per_example(rows),
    }


def _diagnostics(rows: list[dict[str, Any]], metrics: list[str]) -> dict[str, Any] | None:
    """The outputs' diagnostics of an evaluation whose scores.json predates them, from its predictions.jsonl."""
    rows = [r for r in rows if isinstance(r.get("prediction"), str) and isinstance(r.get("references"), list)
            and r["references"] and all(isinstance(x, str) for x in r["references"])]
    if not rows:
        return None
    from tunebench.evaluate.verdicts import diagnostics

    return diagnostics([r["prediction"] for r in rows], [r["references"] for r in rows], metrics)


def _resolve_system_dir(raw: str | None, compare_dir: Path) -> EvalDir | None:
    """The eval directory a comparison names; relative paths may be from the caller's cwd or the run dir."""
    if not raw:
        return None
    path = Path(raw)
    candidates = [path] if path.is_absolute() else [Path.cwd() / path, compare_dir.parent / path, compare_dir / path]
    for cand in candidates:
        found = EvalDir(cand.parent if cand.is_file() else cand)
        if found.scores.is_file():
            return found
    return None


def _comparisons(reader: _Reader, compare_dir: Path, systems: dict[str, Any]) -> tuple[list[Any], Any]:
    path = CompareDir(compare_dir).comparison
    if not path.is_file():
        return [], None
    doc = reader.json(path, COMPARE_SCHEMA)
    fix = "re-run `tunebench compare`"
    check_keys(doc, {
        "top level": ("systems", "comparisons"),
        "systems.<name>": ("metrics",),
        "systems.<name>.metrics.<metric>": ("score",),
        "comparisons[]": ("baseline", "candidate", "metrics"),
        "comparisons[].metrics.<metric>": REQUIRED_KEYS["comparisons[].metrics.<metric>"],
    }, str(path), fix)
    for name, entry in doc["systems"].items():
        if name in systems:
            continue
        eval_dir = _resolve_system_dir(entry.get("path"), compare_dir)
        if eval_dir is not None:
            systems[name] = _eval_system(reader, eval_dir)
        else:
            metrics = {m: {"ci95": None, "signature": None, **v} for m, v in entry["metrics"].items()}
            systems[name] = {"path": entry.get("path"), "info": None, "test_set": doc.get("test_set"),
                             "generation": None, "examples_per_s": None, "metrics": metrics,
                             "diagnostics": entry.get("diagnostics"), "per_example": {}}
    comparisons = []
    for comp in doc["comparisons"]:
        examples = comp.get("examples") or {}
        comparisons.append({**comp, "win_tie_loss": comp.get("win_tie_loss") or {},
                            "examples": {"gains": examples.get("gains") or [], "losses": examples.get("losses") or [],
                                         **{k: v for k, v in examples.items() if k not in ("gains", "losses")}}})
    return comparisons, doc.get("test_set")


def _forgetting(reader: _Reader, compare_dir: Path) -> list[dict[str, Any]]:
    path = CompareDir(compare_dir).forgetting
    if not path.is_file():
        return []
    doc = reader.json(path)
    rows = doc.get("rows") if isinstance(doc, dict) else doc
    if not isinstance(rows, list):
        raise DataError(f"{path}: expected a list of rows (or {{\"rows\": [...]}}); re-run the benchmark comparison")
    check_keys({"forgetting": rows}, {"forgetting[]": REQUIRED_KEYS["forgetting[]"]}, str(path),
               "re-run the benchmark comparison")
    return rows


def _benchmarks(reader: _Reader, bench_dirs: dict[str, BenchDir]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Benchmark results per system name: a run's `bench/<system>/`, or the bench folders themselves."""
    benchmarks: dict[str, Any] = {}
    helm: dict[str, Any] = {}
    for name, bench_dir in bench_dirs.items():
        results_path = bench_dir.results
        if results_path.is_file():
            doc = reader.json(results_path, BENCH_SCHEMA)
            rules = {"top level": ("tasks",), "tasks.<task>": REQUIRED_KEYS["benchmarks.<system>.tasks.<task>"]}
            check_keys(doc, rules, str(results_path), "re-run `tunebench bench`")
            benchmarks[name] = doc
        if bench_dir.helm.is_file():
            helm[name] = reader.json(bench_dir.helm, HELM_SCHEMA)
    return benchmarks, helm


def _bench_systems(reader: _Reader, root: Path, kind: str) -> dict[str, BenchDir]:
    """The bench folders a report covers: a bench dir itself, a bench compare's two, or a run's bench/<system>/."""
    if kind == "bench":
        return {root.name: BenchDir(root)}
    doc_path = CompareDir(root).forgetting
    if kind == "compare" and doc_path.is_file():
        doc = reader.json(doc_path)
        if isinstance(doc, dict) and doc.get("base") and doc.get("tuned"):
            dirs = {name: BenchDir(Path(doc[name])) for name in ("base", "tuned")}
            return {name: d for name, d in dirs.items() if d.results.is_file()}
    return {d.path.name: d for d in RunDir(root).benchmarks()}


def _training(reader: _Reader, run: RunDir) -> dict[str, Any] | None:
    summary_path, log_path = run.train_summary, run.train_log
    summary = reader.json(summary_path) if summary_path.is_file() else None
    log = reader.jsonl(log_path) if log_path.is_file() else []
    if summary is None and not log:
        return None
    return {"summary": summary, "log": log}


def _tasks(reader: _Reader, root: Path, kind: str) -> dict[str, Any]:
    """Per task of a mixture (a run's tasks/<task>/ with eval/ and compare/, or a compare folder's
    tasks/<task>/comparison.json): its systems, comparisons, test set and warnings, in the shapes of the
    top-level keys."""
    out: dict[str, Any] = {}
    if kind == "compare":
        folders = [(CompareDir(root).task(p.name), []) for p in sorted(CompareDir(root).tasks_root.glob("*"))
                   if p.is_dir()]
    else:
        folders = [(t.compare_dir, t.evaluations()) for t in RunDir(root).task_dirs()]
    for compare_dir, evaluations in folders:
        task = compare_dir.path.name if kind == "compare" else compare_dir.path.parent.name
        systems = {eval_dir.name: _eval_system(reader, eval_dir) for eval_dir in evaluations}
        comparisons, test_set = _comparisons(reader, compare_dir.path, systems)
        if not systems and not comparisons:
            continue
        test_set = test_set or next((s["test_set"] for s in systems.values() if s.get("test_set")), None)
        out[task] = {"systems": systems, "comparisons": comparisons, "test_set": test_set,
                     "warnings": _warnings(systems)}
    return out


def _warnings(systems: dict[str, Any]) -> list[str]:
    """Flag numbers that should not be compared: different test sets or different score signatures."""
    out: list[str] = []
    hashes = {n: (s.get("test_set") or {}).get("hash") for n, s in systems.items()}
    known = {h for h in hashes.values() if h}
    if len(known) > 1:
        groups = ", ".join(f"{n}={h[:12]}" for n, h in hashes.items() if h)
        out.append(f"systems were evaluated on different test sets ({groups}): their scores are not comparable")
    recorded = {n: s["generation"] for n, s in systems.items() if (s.get("generation") or {}).get("prompt_format")}
    formats = {n: (g["prompt_format"], g.get("system_prompt")) for n, g in recorded.items()}
    if len(set(formats.values())) > 1:
        listed = ", ".join(f"{n}={f}" + (f" ({p!r})" if p else "") for n, (f, p) in formats.items())
        out.append(f"systems were prompted in different formats ({listed}): their deltas include the format's effect")
    metrics = sorted({m for s in systems.values() for m in s["metrics"]})
    for metric in metrics:
        sigs = {n: s["metrics"][metric].get("signature") for n, s in systems.items() if metric in s["metrics"]}
        if len({v for v in sigs.values() if v}) > 1:
            out.append(f"{metric}: signatures differ between systems ({', '.join(sorted(sigs))}): "
                       "the scores were computed with different settings")
    return out


def build_results(run_dir: Path) -> dict[str, Any]:
    """Gather a run directory (or a compare or eval output directory) into one results document."""
    root = Path(run_dir)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory; give a run directory (runs/<name>) or a compare output directory")
    kind = _detect_kind(root)
    run = RunDir(root)
    reader = _Reader(root)
    systems: dict[str, Any] = {}
    if kind == "eval":
        systems[root.name] = _eval_system(reader, EvalDir(root))
    if kind == "run":
        for eval_dir in run.evaluations():
            systems[eval_dir.name] = _eval_system(reader, eval_dir)
    compare_dir = root if kind == "compare" else run.compare_dir.path
    comparisons, compare_test_set = _comparisons(reader, compare_dir, systems)
    forgetting = _forgetting(reader, compare_dir)
    tasks = _tasks(reader, root, kind)
    mixture = reader.json(run.mixture) if run.mixture.is_file() else None
    single_vs_multi = reader.json(run.single_vs_multi) if run.single_vs_multi.is_file() else None
    benchmarks, helm = _benchmarks(reader, _bench_systems(reader, root, kind))
    config = reader.yaml(run.config) if run.config.is_file() else None
    data_stats = reader.json(run.data_stats) if run.data_stats.is_file() else None
    test_set = compare_test_set or next((s["test_set"] for s in systems.values() if s.get("test_set")), None)
    run_name = config.get("name") if isinstance(config, dict) and config.get("name") else root.resolve().name
    results = {
        "schema": SCHEMA,
        "tunebench_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "run_name": run_name,
        "source": {"dir": str(root.resolve()), "kind": kind, "layout": LAYOUT, "files": reader.files},
        "warnings": _warnings(systems),
        "config": config,
        "data_stats": data_stats,
        "training": _training(reader, run),
        "test_set": test_set,
        "systems": systems,
        "comparisons": comparisons,
        "benchmarks": benchmarks,
        "forgetting": forgetting,
        "helm": helm,
        "tasks": tasks,
        "mixture": mixture,
        "single_vs_multi": single_vs_multi,
    }
    validate_results(results, where=f"results for {root}")
    return results
