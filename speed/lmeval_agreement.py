"""Agreement and speed against lm-evaluation-harness: the same tasks, model and local files, scored by both.

    python speed/lmeval_agreement.py [--mmlu anatomy,astronomy,business_ethics] [--piqa 500] [--wikitext 6]
                                     [--out lmeval_agreement.json]

Run from the repository root with tunebench's environment (`.venv/bin/python`, or PYTHONPATH=. with any python
that has tunebench's dependencies). lm-evaluation-harness runs from its own environment, `speed/.lmeval-venv`
(git-ignored); when that folder is missing the script creates it with one command, the same that installs it by
hand (CPU torch pinned as the Makefile does, transformers pinned to tunebench's own version, so both score with
the same library):

    python3 -m venv speed/.lmeval-venv && speed/.lmeval-venv/bin/pip install "lm-eval[hf]==0.4.13" \\
        torch==2.13.0 transformers==<tunebench's> accelerate peft

Three tasks, each run once by each tool as its own process, so the wall times include start-up (imports, model
load, data reading) as a user sees them; offline (HF_HUB_OFFLINE=1, HF_DATASETS_OFFLINE=1), float32 on CPU,
batch size 16, without the chat template (both tools' default):
- MMLU, 5-shot, lm-eval's demonstration sampler: whole subjects (default anatomy + astronomy + business
  ethics, 387 questions), letter form. The script writes one lm-eval task YAML per subject over the local CSV
  files (`dataset_path: csv`), and tunebench runs those same YAML files (`tunebench bench --tasks FILE.yaml`),
  so the prompts come from one definition. lm-eval's sampler is its default ContextSampler (random.Random(1234)
  per task, n demonstrations per example in order); tunebench reads the YAML's default sampler as its
  `fewshot.sampler: lm-eval`. `--sampler first_n` writes what lm-eval's own mmlu YAMLs set (the first five
  dev questions for every example; tunebench's `first`, whose shared prefix tunebench runs once per subject).
- PIQA, 0-shot: tunebench's built-in `piqa` task with `--limit N` (a seeded subset); lm-eval scores the same
  documents (`--samples`) through a YAML over the same valid.jsonl whose `process_docs` attaches the labels of
  valid-labels.lst.
- WikiText-2 perplexity: tunebench's built-in `wikitext2` with `--limit N` articles; lm-eval's own wikitext
  task settings (loglikelihood_rolling, its wikitext_detokenizer and process_results) over the same test.txt,
  read with `datasets`' text loader and cut into the same articles by `process_docs`.

Printed: per-example prediction agreement (acc and acc_norm picks; each disagreement with its two
log-likelihood gaps, so a tie-level flip is told from a real difference), the largest relative difference of
per-choice log-likelihoods and of per-document log-likelihoods and perplexities (target 1e-3), the task
metrics from each tool, wall times and their ratio (target: tunebench at least 3x faster). `--out` keeps it
all as JSON.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
VENV = REPO / "speed" / ".lmeval-venv"
LM_EVAL_VERSION = "0.4.13"
TORCH_VERSION = "2.13.0"  # the Makefile's CPU torch pin
BATCH_SIZE = 16
FEWSHOT_SEED = 1234  # lm-eval's default fewshot_random_seed


# ---------------------------------------------------------------- environment


def ensure_lmeval_venv(venv: Path) -> Path:
    """The lm_eval executable of `venv`, creating the environment first when it is missing."""
    exe = venv / "bin" / "lm_eval"
    if exe.is_file():
        return exe
    transformers = importlib.metadata.version("transformers")
    print(f"creating {venv} (lm-eval {LM_EVAL_VERSION}, torch {TORCH_VERSION}, transformers {transformers})",
          file=sys.stderr)
    subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"lm-eval[hf]=={LM_EVAL_VERSION}",
                    f"torch=={TORCH_VERSION}", f"transformers=={transformers}", "accelerate", "peft"], check=True)
    return exe


def model_folder(alias: str) -> Path:
    """The safetensors folder tunebench loads for `alias` (its converted cache), which lm-eval's `hf` model reads
    as `pretrained=PATH`: both tools score the same weights."""
    sys.path.insert(0, str(REPO))
    from tunebench.models.load import default_gguf_path, dense_gguf_dir

    return dense_gguf_dir(default_gguf_path(alias), alias)


def offline_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


# ---------------------------------------------------------------- task files


MMLU_TEXT = "{{question.strip()}}\nA. {{choice0}}\nB. {{choice1}}\nC. {{choice2}}\nD. {{choice3}}\nAnswer:"

UTILS = '''"""process_docs and wikitext helpers for the local lm-eval tasks of speed/lmeval_agreement.py."""
import re

from datasets import Dataset
from lm_eval.tasks.wikitext.preprocess_wikitext import process_results, wikitext_detokenizer  # noqa: F401

PIQA_LABELS = {labels!r}
ARTICLE = re.compile(r"^ = [^=].* = $")


def piqa_with_labels(dataset):
    """valid.jsonl has no label: attach the line-aligned valid-labels.lst."""
    with open(PIQA_LABELS, encoding="utf-8") as fh:
        labels = [int(line) for line in fh if line.strip()]
    assert len(labels) == len(dataset), (len(labels), len(dataset))
    return dataset.add_column("label", labels)


def wikitext_articles(dataset):
    """The whole file (one row) cut into articles: from one ' = Title = ' line to the next, verbatim, as
    lm-eval's wikitext_document_level pages (and tunebench's `documents: wikitext_articles`)."""
    text = "".join(dataset["text"])
    pages = []
    for line in text.splitlines(keepends=True):
        if ARTICLE.match(line.rstrip("\\n")) or not pages:
            pages.append([])
        pages[-1].append(line)
    return Dataset.from_list([{{"page": "".join(p)}} for p in pages if "".join(p).strip()])
'''


def write_tasks(folder: Path, data_dir: Path, subjects: list[str], sampler: str = "default") -> dict[str, Any]:
    """lm-eval task YAMLs (and their utils.py) over the local files; returns task names and MMLU YAML paths."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "utils.py").write_text(UTILS.format(labels=str(data_dir / "piqa" / "valid-labels.lst")),
                                     encoding="utf-8")
    mmlu = []
    for subject in subjects:
        task = {
            "task": f"mmlu_local_{subject}",
            "dataset_path": "csv",
            "dataset_kwargs": {"data_files": {"test": str(data_dir / "mmlu" / "test" / f"{subject}_test.csv"),
                                              "dev": str(data_dir / "mmlu" / "dev" / f"{subject}_dev.csv")}},
            "test_split": "test",
            "fewshot_split": "dev",
            "num_fewshot": 5,
            "description": f"The following are multiple choice questions (with answers) about "
                           f"{subject.replace('_', ' ')}.\n\n",
            "output_type": "multiple_choice",
            "doc_to_text": MMLU_TEXT,
            "doc_to_choice": ["A", "B", "C", "D"],
            "doc_to_target": "answer",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}],
            "metadata": {"version": 1.0},
        }
        if sampler != "default":  # lm-eval's own mmlu YAMLs: first_n (tunebench reads it as `first`)
            task["fewshot_config"] = {"sampler": sampler}
        path = folder / f"mmlu_local_{subject}.yaml"
        path.write_text(yaml.safe_dump(task, sort_keys=False, allow_unicode=True), encoding="utf-8")
        mmlu.append(path)
    # PIQA and WikiText need process_docs (a Python hook: lm-eval's `!function` tag), which tunebench's YAML
    # reader does not take, so tunebench runs its built-in piqa and wikitext2 on the same files instead.
    (folder / "piqa_local.yaml").write_text(
        "task: piqa_local\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    validation: {json.dumps(str(data_dir / 'piqa' / 'valid.jsonl'))}\n"
        "validation_split: validation\n"
        "process_docs: !function utils.piqa_with_labels\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "Question: {{goal}}\\nAnswer:"\n'
        "doc_to_target: label\n"
        'doc_to_choice: "{{[sol1, sol2]}}"\n'
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n"
        "metadata:\n  version: 1.0\n", encoding="utf-8")
    (folder / "wikitext_local.yaml").write_text(
        "task: wikitext_local\n"
        "dataset_path: text\n"
        f"dataset_kwargs:\n  sample_by: document\n  data_files:\n"
        f"    test: {json.dumps(str(data_dir / 'wikitext2' / 'test.txt'))}\n"
        "test_split: test\n"
        "process_docs: !function utils.wikitext_articles\n"
        "output_type: loglikelihood_rolling\n"
        'doc_to_text: ""\n'
        "doc_to_target: !function utils.wikitext_detokenizer\n"
        "process_results: !function utils.process_results\n"
        "metric_list:\n  - metric: word_perplexity\n  - metric: byte_perplexity\n  - metric: bits_per_byte\n"
        "metadata:\n  version: 2.0\n", encoding="utf-8")
    return {"mmlu": [p.stem for p in mmlu], "mmlu_yaml": mmlu, "piqa": "piqa_local", "wikitext": "wikitext_local"}


# ---------------------------------------------------------------- the two runs


REUSE = False  # --reuse: a run whose <log>.time exists is not run again (its time and outputs are read back)


def timed(cmd: list[str], env: dict[str, str], log: Path) -> float:
    """Run `cmd` to completion (output to `log`); its wall time in seconds, also kept in `<log>.time`. Exits
    naming the log when the command fails."""
    stamp = log.with_suffix(".time")
    if REUSE and stamp.is_file():
        return float(stamp.read_text(encoding="utf-8"))
    start = time.perf_counter()
    with log.open("w", encoding="utf-8") as fh:
        proc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed (exit {proc.returncode}); its log {log}:\n{tail}")
    stamp.write_text(f"{elapsed:.3f}\n", encoding="utf-8")
    return elapsed


def run_tunebench(tasks: list[str], limit: int | None, out: Path, alias: str, env: dict[str, str]) -> float:
    cmd = [sys.executable, "-m", "tunebench", "bench", "--model", alias, "--tasks", ",".join(tasks), "--out",
           str(out), "--overwrite"]
    if limit is not None:
        cmd += ["--limit", str(limit)]
    env = {**env, "PYTHONPATH": str(REPO) + os.pathsep + env.get("PYTHONPATH", "")}
    return timed(cmd, env, out.with_suffix(".log"))


def run_lmeval(exe: Path, tasks: list[str], include: Path, model_dir: Path, out: Path, env: dict[str, str],
               samples: dict[str, list[int]] | None = None) -> float:
    cmd = [str(exe), "run", "--model", "hf", "--model_args", f"pretrained={model_dir},dtype=float32",
           "--tasks", ",".join(tasks), "--include_path", str(include), "--device", "cpu",
           "--batch_size", str(BATCH_SIZE), "--log_samples", "--output_path", str(out)]
    if samples:
        cmd += ["--samples", json.dumps(samples)]
    out.mkdir(parents=True, exist_ok=True)
    return timed(cmd, env, out.with_suffix(".log"))


def read_tunebench(out: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """task -> id -> sample row, from tunebench's samples_<task>.jsonl files."""
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    rows: dict[str, dict[str, dict[str, Any]]] = {}
    for name, entry in results["tasks"].items():
        with (out / entry["samples"]).open(encoding="utf-8") as fh:
            rows[name] = {str(r["id"]): r for r in map(json.loads, fh)}
    return rows


def read_lmeval(out: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """task -> doc_id -> sample row, from lm-eval's samples_<task>_<time>.jsonl files (--log_samples)."""
    rows: dict[str, dict[str, dict[str, Any]]] = {}
    for path in sorted(out.rglob("samples_*.jsonl")):
        task = re.sub(r"^samples_(.*)_\d{4}-\d\d-\d\dT.*$", r"\1", path.stem)
        with path.open(encoding="utf-8") as fh:
            rows[task] = {str(r["doc_id"]): r for r in map(json.loads, fh)}
    return rows


# ---------------------------------------------------------------- comparison


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))


def compare_choices(tb: dict[str, dict[str, Any]], le: dict[str, dict[str, Any]], prefix: str = ""
                    ) -> dict[str, Any]:
    """Per-example agreement of one multiple-choice task: lm-eval rows keyed by doc id, tunebench's by id."""
    ids = sorted(le, key=int)
    missing = [i for i in ids if prefix + i not in tb]
    worst, differ = 0.0, []
    for i in ids:
        if prefix + i in tb:
            t, e = tb[prefix + i], le[i]
            lls_t = [float(x) for x in t["loglikelihoods"]]
            lls_e = [float(r[0]) for r in e["filtered_resps"]]
            worst = max(worst, *(rel(a, b) for a, b in zip(lls_t, lls_e, strict=True)))
            lengths = [len(c) for c in t["choices"]]
            norm_e = _argmax([x / n for x, n in zip(lls_e, lengths, strict=True)])
            for kind, pt, pe, gap_vals in (("acc", t["prediction"], _argmax(lls_e), lls_e),
                                           ("acc_norm", t["prediction_norm"], norm_e,
                                            [x / n for x, n in zip(lls_e, lengths, strict=True)])):
                if pt != pe:
                    gap = abs(gap_vals[pt] - gap_vals[pe])
                    differ.append({"id": i, "metric": kind, "tunebench": pt, "lm_eval": pe,
                                   "lm_eval_gap": gap, "lls_tunebench": lls_t, "lls_lm_eval": lls_e})
    n = len(ids) - len(missing)
    return {"n": n, "missing_in_tunebench": missing, "differ": differ,
            "acc_differ": sum(1 for d in differ if d["metric"] == "acc"),
            "acc_norm_differ": sum(1 for d in differ if d["metric"] == "acc_norm"),
            "max_rel_loglik": worst,
            "tunebench": {m: sum(float(tb[prefix + i]["scores"][m]) for i in ids if prefix + i in tb) / max(n, 1)
                          for m in ("acc", "acc_norm")},
            "lm_eval": {m: sum(float(le[i][m]) for i in ids) / max(len(ids), 1) for m in ("acc", "acc_norm")}}


def compare_perplexity(tb: dict[str, dict[str, Any]], le: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per-article log-likelihoods and the corpus word/byte perplexities of both tools."""
    ids = sorted(le, key=int)
    worst_doc = 0.0
    sums = {"tb_nll": 0.0, "le_nll": 0.0, "words": 0.0, "bytes": 0.0, "le_words": 0.0, "le_bytes": 0.0}
    counts_differ = []
    for i in ids:
        t, e = tb[i], le[i]
        le_ll = float(e["word_perplexity"][0])
        worst_doc = max(worst_doc, rel(-float(t["nll"]), le_ll))
        sums["tb_nll"] += float(t["nll"])
        sums["le_nll"] += -le_ll
        sums["words"] += float(t["words"])
        sums["bytes"] += float(t["bytes"])
        sums["le_words"] += float(e["word_perplexity"][1])
        sums["le_bytes"] += float(e["byte_perplexity"][1])
        if (float(t["words"]), float(t["bytes"])) != (float(e["word_perplexity"][1]), float(e["byte_perplexity"][1])):
            counts_differ.append(i)
    ppl = {
        "tunebench": {"word_perplexity": math.exp(sums["tb_nll"] / sums["words"]),
                      "byte_perplexity": math.exp(sums["tb_nll"] / sums["bytes"]),
                      "bits_per_byte": sums["tb_nll"] / sums["bytes"] / math.log(2)},
        "lm_eval": {"word_perplexity": math.exp(sums["le_nll"] / sums["le_words"]),
                    "byte_perplexity": math.exp(sums["le_nll"] / sums["le_bytes"]),
                    "bits_per_byte": sums["le_nll"] / sums["le_bytes"] / math.log(2)},
    }
    return {"n": len(ids), "max_rel_doc_loglik": worst_doc, "word_or_byte_counts_differ": counts_differ,
            **ppl, "max_rel_perplexity": max(rel(ppl["tunebench"][k], ppl["lm_eval"][k]) for k in ppl["lm_eval"])}


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="tunebench model alias")
    parser.add_argument("--mmlu", default="anatomy,astronomy,business_ethics", help="MMLU subjects (whole files)")
    parser.add_argument("--sampler", choices=["default", "first_n"], default="default",
                        help="MMLU demonstrations: lm-eval's default sampler (its ContextSampler, seed 1234), or "
                        "first_n as lm-eval's own mmlu task files set it")
    parser.add_argument("--piqa", type=int, default=500, help="PIQA questions (tunebench's seeded subset)")
    parser.add_argument("--wikitext", type=int, default=6, help="WikiText-2 test articles (seeded subset)")
    parser.add_argument("--tasks", default="mmlu,piqa,wikitext", help="which of mmlu, piqa, wikitext to run")
    parser.add_argument("--data-dir", default=os.environ.get("TUNEBENCH_DATA_DIR", str(REPO.parent / "shared" /
                                                                                       "data")))
    parser.add_argument("--venv", default=str(VENV), help="lm-eval's environment (created when missing)")
    parser.add_argument("--work", default=None, help="folder for task files and both tools' outputs (default: temp)")
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    parser.add_argument("--reuse", action="store_true", help="with --work: keep the runs already finished there "
                        "(their recorded wall times) and run only the missing ones")
    args = parser.parse_args()
    global REUSE
    REUSE = args.reuse

    data_dir = Path(args.data_dir).resolve()
    exe = ensure_lmeval_venv(Path(args.venv))
    model_dir = model_folder(args.model)
    work = Path(args.work or tempfile.mkdtemp(prefix="lmeval_agreement_"))
    env = {**offline_env(), "TUNEBENCH_DATA_DIR": str(data_dir), "HF_DATASETS_CACHE": str(work / "hf_datasets")}
    tasks = write_tasks(work / "tasks", data_dir, [s.strip() for s in args.mmlu.split(",") if s.strip()],
                        args.sampler)
    wanted = {t.strip() for t in args.tasks.split(",")}
    report: dict[str, Any] = {"model": args.model, "model_dir": str(model_dir), "lm_eval": LM_EVAL_VERSION,
                              "mmlu_sampler": args.sampler,
                              "batch_size": BATCH_SIZE, "work": str(work), "load_before": os.getloadavg(),
                              "tasks": {}}

    if "mmlu" in wanted:
        t_tb = run_tunebench([str(p) for p in tasks["mmlu_yaml"]], None, work / "tb_mmlu", args.model, env)
        t_le = run_lmeval(exe, tasks["mmlu"], work / "tasks", model_dir, work / "le_mmlu", env)
        tb, le = read_tunebench(work / "tb_mmlu"), read_lmeval(work / "le_mmlu")
        per = {name: compare_choices(tb[name], le[name]) for name in tasks["mmlu"]}
        n = sum(p["n"] for p in per.values())
        report["tasks"]["mmlu"] = {
            "n": n, "tunebench_s": t_tb, "lm_eval_s": t_le, "ratio": t_le / t_tb, "subjects": per,
            "acc_differ": sum(p["acc_differ"] for p in per.values()),
            "acc_norm_differ": sum(p["acc_norm_differ"] for p in per.values()),
            "max_rel_loglik": max(p["max_rel_loglik"] for p in per.values()),
            "tunebench": {m: sum(p["tunebench"][m] * p["n"] for p in per.values()) / n for m in ("acc", "acc_norm")},
            "lm_eval": {m: sum(p["lm_eval"][m] * p["n"] for p in per.values()) / n for m in ("acc", "acc_norm")},
        }
    if "piqa" in wanted:
        t_tb = run_tunebench(["piqa"], args.piqa, work / "tb_piqa", args.model, env)
        tb = read_tunebench(work / "tb_piqa")["piqa"]
        ids = sorted(int(i) for i in tb)
        t_le = run_lmeval(exe, [tasks["piqa"]], work / "tasks", model_dir, work / "le_piqa", env,
                          samples={tasks["piqa"]: ids})
        cmp = compare_choices(tb, read_lmeval(work / "le_piqa")[tasks["piqa"]])
        report["tasks"]["piqa"] = {"tunebench_s": t_tb, "lm_eval_s": t_le, "ratio": t_le / t_tb, **cmp}
    if "wikitext" in wanted:
        t_tb = run_tunebench(["wikitext2"], args.wikitext, work / "tb_wikitext", args.model, env)
        tb = read_tunebench(work / "tb_wikitext")["wikitext2"]
        ids = sorted(int(i) for i in tb)
        t_le = run_lmeval(exe, [tasks["wikitext"]], work / "tasks", model_dir, work / "le_wikitext", env,
                          samples={tasks["wikitext"]: ids})
        cmp = compare_perplexity(tb, read_lmeval(work / "le_wikitext")[tasks["wikitext"]])
        report["tasks"]["wikitext2"] = {"tunebench_s": t_tb, "lm_eval_s": t_le, "ratio": t_le / t_tb, **cmp}
    report["load_after"] = os.getloadavg()
    print_report(report)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def print_report(report: dict[str, Any]) -> None:
    print(f"model {report['model']} ({report['model_dir']}), lm-eval {report['lm_eval']}, batch {report['batch_size']}, "
          f"load {report['load_before'][0]:.2f} before / {report['load_after'][0]:.2f} after")
    for name, r in report["tasks"].items():
        print(f"\n{name}: tunebench {r['tunebench_s']:.1f} s, lm-eval {r['lm_eval_s']:.1f} s, "
              f"ratio {r['ratio']:.2f}x (wall time, start-up included)")
        if "acc_differ" in r:
            print(f"  n={r['n']}  acc tunebench {r['tunebench']['acc']:.4f} lm-eval {r['lm_eval']['acc']:.4f}; "
                  f"acc_norm {r['tunebench']['acc_norm']:.4f} / {r['lm_eval']['acc_norm']:.4f}")
            print(f"  predictions that differ: acc {r['acc_differ']}, acc_norm {r['acc_norm_differ']}; "
                  f"max relative log-likelihood difference {r['max_rel_loglik']:.2e}")
            diffs = r.get("differ") or [d for s in r.get("subjects", {}).values() for d in s["differ"]]
            for d in diffs[:10]:
                print(f"    {d['metric']} id {d['id']}: tunebench picks {d['tunebench']}, lm-eval {d['lm_eval']}, "
                      f"lm-eval's own gap between the two {d['lm_eval_gap']:.2e}")
        else:
            print(f"  n={r['n']} articles; max relative per-article log-likelihood difference "
                  f"{r['max_rel_doc_loglik']:.2e}; perplexities differ by at most {r['max_rel_perplexity']:.2e}")
            for k in ("word_perplexity", "byte_perplexity", "bits_per_byte"):
                print(f"  {k}: tunebench {r['tunebench'][k]:.6f}  lm-eval {r['lm_eval'][k]:.6f}")
            if r["word_or_byte_counts_differ"]:
                print(f"  word/byte counts differ on articles {r['word_or_byte_counts_differ']}")


if __name__ == "__main__":
    main()
