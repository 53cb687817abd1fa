"""The report end to end on synthetic run directories written here, stage file by stage file (docs/formats.md)."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest

from tunebench.config import config_from_dict, dump_config
from tunebench.errors import DataError
from tunebench.io import atomic_write_json, atomic_write_jsonl, atomic_write_text
from tunebench.pipeline import write_report
from tunebench.report.results import REQUIRED_KEYS, SCHEMA, build_results, validate_results

REPO = Path(__file__).resolve().parents[1]
N = 40
SCRIPT = "<script>alert('pwned')</script>"
TEST_SET = {"split": "test", "n": N, "hash": "ab12" * 16}
ROUGE_SIG = "rougeL|tok:rouge_score-default|stem:yes|lsum_split:newline|refs:3|agg:best-f|version:tunebench-0.1.0"
BLEU_SIG = "nrefs:3|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0"
MEANS = {"base-0shot": 0.244, "base-3shot": 0.27, "tuned": 0.331}


def _eval_dir(path: Path, system: str, mean: float, test_set: dict, rng: np.random.Generator) -> list[float]:
    rouge_l = np.clip(rng.normal(mean, 0.1, N), 0.0, 1.0).round(4).tolist()
    rows = [{"id": f"test_{i}", "prompt": f"#Person1#: hello {i}\n#Person2#: hi", "references": [f"ref {i}"] * 3,
             "prediction": SCRIPT if system == "tuned" and i == 0 else f"summary {i}",
             "scores": {"rouge1": min(1.0, v + 0.08), "rougeL": v}} for i, v in enumerate(rouge_l)]
    atomic_write_jsonl(path / "predictions.jsonl", rows)
    atomic_write_json(path / "scores.json", {
        "schema": "tunebench.eval/1", "system": {"name": system, "model": "tiny", "shots": 3 * ("3shot" in system)},
        "test_set": test_set, "generation": {"max_new_tokens": 96, "num_beams": 1}, "examples_per_s": 2.5,
        "metrics": {"rougeL": {"score": mean, "ci95": [mean - 0.01, mean + 0.01], "signature": ROUGE_SIG, "n": N},
                    "bleu": {"score": 100 * mean / 3, "ci95": [9.0, 12.5], "signature": BLEU_SIG, "n": N}}})
    return rouge_l


def _delta(base: float, cand: float, p: float) -> dict:
    d = cand - base
    return {"baseline": base, "candidate": cand, "delta": d, "ci95": [d - 0.012, d + 0.012], "p_value": p,
            "method": "paired-bootstrap"}


def _comparison(eval_paths: dict[str, str]) -> dict:
    gain = {"id": "test_0", "prompt": "#Person1#: <b>bold</b> move", "references": ["ref A", "ref B"],
            "baseline": "a weak summary", "candidate": SCRIPT, "delta": 0.42}
    loss = {"id": "test_7", "prompt": "#Person1#: bye", "references": ["ref C"], "baseline": "good",
            "candidate": "worse & shorter", "delta": -0.25}
    comparisons = []
    for base, p in (("base-0shot", 0.0031), ("base-3shot", 0.2)):
        comparisons.append({
            "baseline": base, "candidate": "tuned",
            "metrics": {"rougeL": _delta(MEANS[base], MEANS["tuned"], p),
                        "bleu": _delta(100 * MEANS[base] / 3, 100 * MEANS["tuned"] / 3, 0.04)},
            "win_tie_loss": {"rougeL": {"win": 27, "tie": 4, "loss": 9}},
            "examples": {"metric": "rougeL", "gains": [gain], "losses": [loss]}})
    return {"schema": "tunebench.compare/1", "test_set": TEST_SET,
            "systems": {name: {"path": path, "metrics": {"rougeL": {"score": MEANS[name], "ci95": None,
                                                                    "signature": ROUGE_SIG}}}
                        for name, path in eval_paths.items()},
            "comparisons": comparisons}


def _bench(root: Path) -> None:
    for system, acc in (("base", 0.31), ("tuned", 0.26)):
        atomic_write_json(root / "bench" / system / "results.json", {"schema": "tunebench.bench/1", "tasks": {
            "mmlu": {"version": 1, "n": 100, "shots": 5,
                     "metrics": {"acc": {"value": acc, "stderr": 0.046}, "acc_norm": {"value": acc, "stderr": 0.046}}},
            "sst2": {"version": 1, "n": 100, "shots": 0, "metrics": {"acc": {"value": 0.8, "stderr": 0.04}}}}})
        atomic_write_json(root / "bench" / system / "helm.json", {
            "accuracy": acc, "calibration_ece": 0.123 if system == "base" else 0.0871, "robustness": 0.25,
            "fairness": 0.27, "bias": None, "toxicity": 0.0, "efficiency": {"tokens_per_s": 812.5}})
    atomic_write_json(root / "compare" / "forgetting.json", [
        {"task": "mmlu", "metric": "acc", "base": 0.31, "tuned": 0.26, "delta": -0.05, "ci95": [-0.08, -0.02],
         "p_value": 0.002, "significant_drop": True},
        {"task": "sst2", "metric": "acc", "base": 0.8, "tuned": 0.8, "delta": 0.0, "ci95": [-0.03, 0.03],
         "p_value": 1.0, "significant_drop": False}])


def _training(root: Path) -> None:
    atomic_write_text(root / "config.yaml", dump_config(config_from_dict({"name": "synthetic"})))
    log = [{"step": s, "epoch": s / 40, "loss": 3.0 - s / 40, "lr": 2e-4, "tokens_per_s": 900.0}
           for s in range(5, 45, 5)]
    log += [{"step": s, "val_loss": 2.9 - s / 50} for s in (10, 20, 30, 40)]
    log += [{"step": s, "gen_metric": {"rougeL": 0.2 + s / 400}} for s in (20, 40)]
    atomic_write_jsonl(root / "train_log.jsonl", log)
    atomic_write_json(root / "train_summary.json", {
        "method": "lora", "trainable_params": 921_600, "total_params": 135_436_608, "steps": 40,
        "wall_time_s": 123.4, "tokens_per_s": 850.2, "peak_rss_mb": 1234.5,
        "val_loss": {"initial": 2.91, "final": 2.11, "best": 2.05}})


def make_run(root: Path, *, training: bool = True, benchmarks: bool = True) -> dict[str, list[float]]:
    """A run directory as `tunebench run` leaves it; returns the per-example rougeL written per system."""
    rng = np.random.default_rng(0)
    written = {name: _eval_dir(root / "eval" / name, name, mean, TEST_SET, rng) for name, mean in MEANS.items()}
    atomic_write_json(root / "compare" / "comparison.json",
                      _comparison({name: f"eval/{name}" for name in MEANS}))
    if benchmarks:
        _bench(root)
    if training:
        _training(root)
    return written


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def test_full_run_writes_every_artifact(tmp_path: Path) -> None:
    written = make_run(tmp_path)
    paths = write_report(tmp_path)
    assert set(paths) == {"results", "markdown", "html"}
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary files left behind"

    results = json.loads(paths["results"].read_text())
    assert results["schema"] == SCHEMA and results["run_name"] == "synthetic"
    assert list(results["systems"]) == ["base-0shot", "base-3shot", "tuned"]
    assert results["systems"]["tuned"]["per_example"]["rougeL"] == written["tuned"]
    assert results["comparisons"][0]["metrics"]["rougeL"]["p_value"] == 0.0031
    assert [r["task"] for r in results["forgetting"]] == ["mmlu", "sst2"]
    assert set(results["benchmarks"]) == set(results["helm"]) == {"base", "tuned"}
    assert len(results["training"]["log"]) == 14 and results["training"]["summary"]["steps"] == 40
    assert results["config"]["name"] == "synthetic" and results["warnings"] == []
    assert "compare/comparison.json" in results["source"]["files"]

    md = paths["markdown"].read_text()
    assert "| rougeL | 0.2440 | 0.3310 | +0.0870 | [0.0750, 0.0990] | 0.0031 | paired-bootstrap | gain |" in md
    assert "| bleu | 8.13 | 11.03 | +2.90 | [2.89, 2.91] | 0.0400 | paired-bootstrap | gain |" in md
    assert "| rougeL | 0.2700 | 0.3310 | +0.0610 | [0.0490, 0.0730] | 0.2000 | paired-bootstrap | n.s. |" in md
    assert "| mmlu | acc | 0.3100 | 0.2600 | -0.0500 | [-0.0800, -0.0200] | 0.0020 | — | — | YES ⚠ significant drop |" in md
    assert ("| sst2 | acc | 0.8000 | 0.8000 | 0.0000 | [-0.0300, 0.0300] | 1.0000 | — | — | "
            "no significant drop (sensitivity unknown) |") in md
    assert "| rougeL | 27 | 4 | 9 |" in md
    assert "| ECE-10 ↓ | 0.123 | 0.087 |" in md
    assert "| tokens/s ↑ | 812.5 | 812.5 |" in md
    assert "| trainable_params | 921,600 |" in md
    assert "| rougeL | 0.2440 [0.2340, 0.2540] | 0.2700 [0.2600, 0.2800] | 0.3310 [0.3210, 0.3410] |" in md
    assert ROUGE_SIG.replace("|", "\\|") in md and BLEU_SIG.replace("|", "\\|") in md  # pipes escaped in cells

    page = paths["html"].read_text()
    images = _images(page)
    assert len(images) == 3 and all(img.startswith(b"\x89PNG\r\n\x1a\n") for img in images)
    for text in ("0.0031", "+0.0870", "[0.0750, 0.0990]", "▲ significant gain", "Per-example rougeL",
                 "0.087", "812.5", ROUGE_SIG, BLEU_SIG, "version:1|shots:5|n:100"):
        assert text in page, text
    drop_rows = re.findall(r'<tr class="drop">(.*?)</tr>', page, flags=re.S)
    assert len(drop_rows) == 1 and "<td>mmlu</td>" in drop_rows[0] and "-0.0500" in drop_rows[0]


def test_html_escapes_model_output_and_loads_nothing(tmp_path: Path) -> None:
    make_run(tmp_path)
    page = write_report(tmp_path)["html"].read_text()
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;" in page
    assert "&lt;b&gt;bold&lt;/b&gt;" in page and "worse &amp; shorter" in page
    assert not re.search(r"https?://", page)
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:image/png;base64,|#)""", page)
    md = (tmp_path / "report.md").read_text()
    outside_fences = re.sub(r"(`{3,})text\n.*?\n\1", "", md, flags=re.S)
    assert "<script" not in outside_fences and SCRIPT in md  # verbatim only inside code fences


def _documented_required_keys() -> dict[str, tuple[str, ...]]:
    text = (REPO / "docs" / "results_schema.md").read_text()
    section = text.split("## Required keys", 1)[1].split("\n## ", 1)[0]
    table: dict[str, tuple[str, ...]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and "`" in cells[1]:
            table[cells[0].strip("`")] = tuple(re.findall(r"`([^`]+)`", cells[1]))
    return table


def test_results_validate_against_documented_keys(tmp_path: Path) -> None:
    assert _documented_required_keys() == REQUIRED_KEYS
    make_run(tmp_path)
    results = build_results(tmp_path)
    validate_results(results)
    for pattern, keys in _documented_required_keys().items():
        assert pattern == "top level" or pattern.split(".")[0].rstrip("[]") in results
        assert keys
    for key in REQUIRED_KEYS["top level"]:
        broken = {k: v for k, v in results.items() if k != key}
        with pytest.raises(DataError, match=f"missing key '{key}'"):
            validate_results(broken)
    del results["systems"]["tuned"]["metrics"]["rougeL"]["signature"]
    with pytest.raises(DataError, match=r"systems\.tuned\.metrics\.rougeL: missing key 'signature'"):
        validate_results(results)
    with pytest.raises(DataError, match="schema"):
        validate_results({**build_results(tmp_path), "schema": "tunebench.results/0"})


def test_without_training_and_benchmarks(tmp_path: Path) -> None:
    make_run(tmp_path, training=False, benchmarks=False)
    paths = write_report(tmp_path)
    results = json.loads(paths["results"].read_text())
    assert results["training"] is None and results["config"] is None
    assert results["benchmarks"] == {} and results["forgetting"] == [] and results["helm"] == {}
    page = paths["html"].read_text()
    assert len(_images(page)) == 2  # deltas and distribution, no loss curves
    for section in ('id="training"', 'id="benchmarks"', 'id="forgetting"', 'id="helm"'):
        assert section not in page
    assert "+0.0870" in page
    md = paths["markdown"].read_text()
    assert "## Training" not in md and "## Forgetting" not in md and "## Comparisons" in md


def test_compare_directory_alone(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    evals = {name: tmp_path / "evals" / name for name in MEANS}
    written = {name: _eval_dir(path, name, MEANS[name], TEST_SET, rng) for name, path in evals.items()}
    cmp_dir = tmp_path / "cmp"
    atomic_write_json(cmp_dir / "comparison.json", _comparison({n: str(p) for n, p in evals.items()}))
    paths = write_report(cmp_dir)
    assert all(p.parent == cmp_dir for p in paths.values())
    results = json.loads(paths["results"].read_text())
    assert results["source"]["kind"] == "compare" and results["training"] is None
    assert results["systems"]["base-0shot"]["per_example"]["rougeL"] == written["base-0shot"]
    assert results["systems"]["tuned"]["metrics"]["bleu"]["signature"] == BLEU_SIG

    atomic_write_json(cmp_dir / "comparison.json", _comparison({n: f"gone/{n}" for n in MEANS}))
    results = build_results(cmp_dir)
    assert results["systems"]["tuned"]["per_example"] == {}
    assert results["systems"]["tuned"]["metrics"]["rougeL"] == {"score": 0.331, "ci95": None, "signature": ROUGE_SIG}
    page = write_report(cmp_dir)["html"].read_text()
    assert len(_images(page)) == 1 and 'id="distribution"' not in page


def test_eval_directory_alone_into_other_out_dir(tmp_path: Path) -> None:
    make_run(tmp_path / "run", training=False, benchmarks=False)
    out = tmp_path / "out"
    paths = write_report(tmp_path / "run" / "eval" / "tuned", out)
    assert {p.parent for p in paths.values()} == {out}
    results = json.loads(paths["results"].read_text())
    assert results["source"]["kind"] == "eval" and list(results["systems"]) == ["tuned"]
    assert results["comparisons"] == [] and results["test_set"] == TEST_SET
    md = paths["markdown"].read_text()
    assert "| bleu | 11.03 [9.00, 12.50] |" in md and "| rougeL | 0.3310 [0.3210, 0.3410] |" in md
    assert "| n | 40 |" in md


def test_mismatched_test_sets_and_signatures_are_warned(tmp_path: Path) -> None:
    make_run(tmp_path, training=False, benchmarks=False)
    scores_path = tmp_path / "eval" / "base-3shot" / "scores.json"
    scores = json.loads(scores_path.read_text())
    scores["test_set"] = {**TEST_SET, "hash": "ff" * 32}
    scores["metrics"]["bleu"]["signature"] = BLEU_SIG.replace("13a", "intl")
    atomic_write_json(scores_path, scores)
    results = build_results(tmp_path)
    assert any("different test sets" in w for w in results["warnings"])
    assert any(w.startswith("bleu: signatures differ") for w in results["warnings"])
    page = write_report(tmp_path)["html"].read_text()
    assert "Warning:</strong> systems were evaluated on different test sets" in page


def test_errors_name_the_file_and_key(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nothing to report"):
        build_results(tmp_path)
    with pytest.raises(DataError, match="not a directory"):
        build_results(tmp_path / "missing")
    make_run(tmp_path, training=False, benchmarks=False)
    path = tmp_path / "compare" / "comparison.json"
    good = json.loads(path.read_text())
    atomic_write_json(path, {**good, "schema": "tunebench.compare/2"})
    with pytest.raises(DataError, match=r"comparison\.json: schema 'tunebench.compare/2' is not supported"):
        build_results(tmp_path)
    del good["comparisons"][0]["metrics"]["rougeL"]["p_value"]
    atomic_write_json(path, good)
    with pytest.raises(DataError, match=r"comparison\.json: comparisons\[0\]\.metrics\.rougeL: missing key 'p_value'"):
        build_results(tmp_path)
    path.write_text("{not json")
    with pytest.raises(DataError, match=r"comparison\.json: invalid JSON"):
        build_results(tmp_path)
    path.unlink()
    row = {"task": "rte", "metric": "acc", "base": 0.5, "tuned": 0.5, "delta": 0.0, "ci95": None, "p_value": None,
           "significant_drop": False}
    atomic_write_json(tmp_path / "compare" / "forgetting.json", {"schema": "tunebench.forgetting/1", "rows": [row]})
    assert build_results(tmp_path)["forgetting"] == [row]
    atomic_write_json(tmp_path / "compare" / "forgetting.json", {"table": []})
    with pytest.raises(DataError, match=r"forgetting\.json: expected a list of rows"):
        build_results(tmp_path)
    (tmp_path / "compare" / "forgetting.json").unlink()
    (tmp_path / "eval" / "tuned" / "predictions.jsonl").write_text('{"id": 1}\n[oops\n')
    with pytest.raises(DataError, match=r"predictions\.jsonl:2: invalid JSON"):
        build_results(tmp_path)


def test_training_or_benchmarks_alone(tmp_path: Path) -> None:
    _training(tmp_path / "train-only")
    paths = write_report(tmp_path / "train-only")
    results = json.loads(paths["results"].read_text())
    assert results["systems"] == {} and results["comparisons"] == [] and results["training"]["summary"]["steps"] == 40
    page = paths["html"].read_text()
    assert len(_images(page)) == 1 and 'id="training"' in page and 'id="comparisons"' not in page
    _bench(tmp_path / "bench-only")
    md = write_report(tmp_path / "bench-only")["markdown"].read_text()
    assert "| mmlu | acc | 100 | 5 | 1 | 0.3100 ± 0.0460 | 0.2600 ± 0.0460 |" in md
    assert "## Training" not in md and "## Forgetting (tuned vs base)" in md


def test_rendering_writes_nothing_and_the_writer_writes_what_was_rendered(tmp_path: Path) -> None:
    from tunebench.report.html import render_report

    make_run(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    report = render_report(tmp_path)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    paths = write_report(tmp_path)
    written = json.loads(paths["results"].read_text())
    # the same report, but for the time of rendering
    assert paths["markdown"].read_text(encoding="utf-8") == report.markdown.replace(
        report.results["created"], written["created"])
    assert {k: v for k, v in written.items() if k != "created"} == {
        k: v for k, v in json.loads(json.dumps(report.results)).items() if k != "created"}


def test_forgetting_headline_speaks_only_from_measurable_rows(tmp_path: Path) -> None:
    from tunebench.report.tables import forgetting_headline, forgetting_rows

    at_chance = {"task": "mmlu", "metric": "acc", "base": 0.25, "tuned": 0.25, "delta": 0.0, "ci95": [-0.05, 0.05],
                 "p_value": 1.0, "significant_drop": False, "chance": 0.25, "above_chance_p": 0.5,
                 "above_chance": False, "mde": 0.12, "measurable": False, "status": "not measurable at this size"}
    piqa = {"task": "piqa", "metric": "acc", "base": 0.64, "tuned": 0.63, "delta": -0.01, "ci95": [-0.03, 0.01],
            "p_value": 0.3, "significant_drop": False, "chance": 0.5, "above_chance_p": 1e-9, "above_chance": True,
            "mde": 0.025, "discordance": 0.1, "measurable": True, "status": "no significant drop"}
    ppl = {"task": "wikitext2", "metric": "word_perplexity", "base": 40.0, "tuned": 41.0, "delta": 1.0,
           "relative_delta": 0.025, "ci95": [0.5, 1.5], "p_value": 0.001, "significant_drop": True, "chance": None,
           "mde": 0.6, "mde_relative": 0.015, "measurable": True, "status": "significant drop"}
    only_chance = forgetting_headline({"forgetting": [at_chance]})
    assert only_chance is not None and "no row of the suite can measure a drop" in only_chance
    assert "mmlu acc" in only_chance and "no significant" not in only_chance
    quiet = forgetting_headline({"forgetting": [at_chance, piqa]})
    assert quiet == ("Forgetting: no significant drop on the 1 measurable rows (smallest detectable drops: piqa acc "
                     "≥ 2.5 pts); not measurable at this size: mmlu acc.")
    loud = forgetting_headline({"forgetting": [at_chance, piqa, ppl]})
    assert loud is not None and loud.startswith("Forgetting: significant drop on wikitext2 word_perplexity (+1.00")
    rows = {r["task"]: r for r in forgetting_rows({"forgetting": [at_chance, piqa, ppl]})}
    assert rows["mmlu"]["status"] == "not measurable at this size" and rows["mmlu"]["chance"].startswith("0.25")
    assert rows["piqa"]["mde"] == "2.5 pts" and rows["wikitext2"]["mde"] == "1.5%"
    assert rows["wikitext2"]["delta"] == "+1.00 (+2.5%)"

    # the terminal table `tunebench run` and `compare` print: the same sensitivity columns and the same headline
    from rich.console import Console

    from tunebench.report.terminal import forgetting_table

    table, headline = forgetting_table([at_chance, piqa, ppl])
    assert headline == loud
    console = Console(width=250, record=True)
    console.print(table)
    lines = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
             for line in console.export_text().splitlines() if line.startswith("│")}
    assert lines["mmlu"][-1] == "not measurable at this size" and lines["mmlu"][-4:-1] == ["0.25", "0.5000", "12.0 pts"]
    assert lines["piqa"][-1] == "no significant drop" and lines["piqa"][-3:-1] == ["<0.0001", "2.5 pts"]
    assert lines["wikitext2"][-1] == "DROP significant drop" and lines["wikitext2"][-2] == "1.5%"
    assert forgetting_table({"rows": [piqa]})[1] == quiet.replace("; not measurable at this size: mmlu acc", "")


def test_bench_summary_speaks_of_the_one_model_and_says_why_no_drop_is_detectable():
    from tunebench.bench.sensitivity import above_chance_p, accuracy_sensitivity
    from tunebench.report.tables import DASH, bench_summary_lines

    base = [1.0, 1.0, 0.0, 1.0]  # 4 examples: no drop is detectable at 80% power (mde None)
    sens = accuracy_sensitivity(base, None, 0.5)
    assert sens["mde"] is None
    results = {"tasks": {"sst2": {"n": 4, "metrics": {"acc": {"value": 0.75, "stderr": 0.25}},
                                  "sensitivity": {"acc": sens}}}}
    line = bench_summary_lines(results)[1]
    p = above_chance_p(3, 4, 0.5)  # P(X >= 3), X ~ Binomial(4, 0.5) = 5/16
    assert p == pytest.approx(5 / 16)
    assert f"chance 0.50 (model above chance: p {p:.4f})" in line
    assert "no drop is detectable at 80% power with n=4 (not measurable at this size)" in line
    assert "base" not in line and DASH not in line
    sens = accuracy_sensitivity([1.0] * 150 + [0.0] * 50, None, 0.5)  # a detectable drop: shown in points
    line = bench_summary_lines({"tasks": {"sst2": {"n": 200, "metrics": {}, "sensitivity": {"acc": sens}}}})[1]
    assert f"minimum detectable drop {100 * sens['mde']:.1f} pts at 80% power" in line
