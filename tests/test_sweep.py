"""`tunebench sweep` on a tiny model: one table row per method, the base evaluated once, resumable, bad methods.

The sweep runs lora, full and adapter; adapter is given a reduction factor that leaves no hidden unit, so it is the
method that does not apply to the model: it fails with its sentence while the others finish.
"""

import json
import shutil

import pytest
import yaml
from pipeline_helpers import train_in_process

from tunebench.cli import main

METHODS = "lora,full,adapter"


class Spies:
    """Records the sweep's evaluations, benchmark runs and methods' trainings, and lets them run: each training in
    its own process as the sweep does, or with `in_process` in this one (`train_in_process`)."""

    def __init__(self, monkeypatch, in_process=False):
        import tunebench.pipeline.run as run_stages
        import tunebench.pipeline.sweep as sweep_stages

        self.evaluated, self.benched, self.trained = [], [], []
        evaluate_into, bench_loaded = run_stages.evaluate_into, run_stages.bench_loaded
        train = train_in_process if in_process else sweep_stages._train_in_subprocess

        def spy_evaluate(out, cfg, loaded, examples, splits, system, shots, *args, **kwargs):
            self.evaluated.append((system["name"], out.path.parent.parent.name))
            return evaluate_into(out, cfg, loaded, examples, splits, system, shots, *args, **kwargs)

        def spy_bench(cfg, loaded, out_dir, *args, **kwargs):
            self.benched.append((out_dir.name, out_dir.parent.parent.name))
            return bench_loaded(cfg, loaded, out_dir, *args, **kwargs)

        def spy_train(method, run, data_dir):
            self.trained.append(method)
            return train(method, run, data_dir)

        monkeypatch.setattr(run_stages, "evaluate_into", spy_evaluate)  # where run_all (the sweep's runs) looks
        monkeypatch.setattr(run_stages, "bench_loaded", spy_bench)
        monkeypatch.setattr(sweep_stages, "_train_in_subprocess", spy_train)


class DisagreeingProbe:
    """`eval.precision: auto` whose probe picks fp32 on its first call and bf16 on every later one (as a change of
    free memory can make it), with a parity gate that accepts every precision: were the probe asked again for a
    later method, that method would be evaluated in bf16 against the base's fp32 and compare would refuse it."""

    def __init__(self, monkeypatch):
        import tunebench.evaluate.parity as parity
        import tunebench.models.precision as prec

        self.calls = 0

        def probe(shapes, device, *, training, **kwargs):
            self.calls += 1
            picked = "fp32" if self.calls == 1 else "bf16"
            return prec.PrecisionChoice(picked=picked, gflops={"fp32": 1.0, "bf16": 1.0}, reason="faked")

        def gate(loaded, examples, cfg, fast, **kwargs):
            return parity.GateResult(model="tiny", adapter=None, precision=fast, metric="rouge1", n=1, margin=1.0,
                                     fp32_score=0.0, fast_score=0.0, delta=0.0, ci95=[0.0, 0.0], accepted=True,
                                     reason="faked")

        monkeypatch.setattr(prec, "choose_precision", probe)
        monkeypatch.setattr(parity, "parity_gate", gate)


@pytest.fixture(scope="module")
def sweep_setup(tmp_path_factory, tiny_causal_dir, data_dir):
    root = tmp_path_factory.mktemp("sweep")
    cfg = {
        "name": "tiny",
        "output_dir": str(root / "runs"),
        "seed": 5,
        "model": {"ref": str(tiny_causal_dir)},
        "data": {"source": "dialogsum", "splits": {"train": "validation", "validation": None, "test": "test"},
                 "fractions": {"validation": 0.2}, "limits": {"train": 12, "validation": 6, "test": 6},
                 "max_length": 192},
        "train": {"lora": {"r": 4, "alpha": 8}, "adapter": {"reduction_factor": 128}, "batch_size": 4,
                  "max_steps": 3, "eval_every": 3, "save_every": 3, "log_every": 1},
        "eval": {"limit": 6, "shots": [0], "bootstrap": 100, "precision": "auto",
                 "generation": {"max_new_tokens": 8, "batch_size": 6}},
        "bench": {"tasks": ["sst2"], "limit": 6, "shots": 0},  # LM drift rows: tests/test_pipeline.py
    }
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    sweep_dir = root / "sweep"
    with pytest.MonkeyPatch.context() as mp:
        spies, probe = Spies(mp), DisagreeingProbe(mp)
        code = main(["sweep", str(path), "--methods", METHODS, "--against", "lora", "--out", str(sweep_dir),
                     "--data-dir", str(data_dir)])
    return {"root": root, "config": path, "dir": sweep_dir, "code": code, "spies": spies, "probe": probe}


def _doc(sweep_dir):
    return json.loads((sweep_dir / "sweep.json").read_text())


def test_sweep_evaluates_and_benchmarks_the_base_once(sweep_setup):
    spies = sweep_setup["spies"]
    assert spies.evaluated.count(("base-0shot", "base")) == 1
    assert sorted(spies.evaluated) == [("base-0shot", "base"), ("tuned", "full"), ("tuned", "lora")]
    assert sorted(spies.benched) == [("base", "base"), ("tuned", "full"), ("tuned", "lora")]
    assert spies.trained == ["lora", "full", "adapter"]
    for method in ("lora", "full"):  # every method's comparison points at the one shared base evaluation
        comparison = json.loads((sweep_setup["dir"] / method / "compare/comparison.json").read_text())
        base_path = comparison["systems"]["base-0shot"]["path"]
        assert base_path == str((sweep_setup["dir"] / "base/eval/base-0shot").resolve())


def test_sweep_table_rows(sweep_setup, tiny_causal_dir):
    from transformers import AutoModelForCausalLM

    sweep_dir = sweep_setup["dir"]
    doc = _doc(sweep_dir)
    assert doc["schema"] == "tunebench.sweep/1" and doc["methods"] == ["lora", "full", "adapter"]
    rows = {r["method"]: r for r in doc["rows"]}
    assert rows["lora"]["status"] == rows["full"]["status"] == "done"
    # learning rates: each method's documented default, since the config sets none (README "Methods")
    assert (rows["full"]["lr"], rows["lora"]["lr"]) == (2e-5, 2e-4)
    assert rows["lora"]["lr_source"] == "method default"
    # full fine-tuning trains every parameter of the model
    n_params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_causal_dir).parameters())
    assert rows["full"]["trainable_params"] == rows["full"]["total_params"] == n_params
    assert rows["full"]["trainable_pct"] == 100.0
    lora = rows["lora"]
    assert 0 < lora["trainable_params"] < n_params
    assert lora["trainable_pct"] == pytest.approx(100 * lora["trainable_params"] / lora["total_params"], abs=1e-4)
    for method in ("lora", "full"):
        row = rows[method]
        assert row["steps"] == 3 and row["tokens_per_s"] > 0 and row["peak_rss_gib"] > 0
        # the task delta is tuned minus base, read independently from the two evaluations' scores.json
        base = json.loads((sweep_dir / "base/eval/base-0shot/scores.json").read_text())["metrics"]
        tuned = json.loads((sweep_dir / method / "eval/tuned/scores.json").read_text())["metrics"]
        for metric, entry in row["task"].items():
            assert entry["delta"] == pytest.approx(tuned[metric]["score"] - base[metric]["score"], abs=1e-9)
            assert entry["ci95"][0] <= entry["delta"] <= entry["ci95"][1]
        forgetting = json.loads((sweep_dir / method / "compare/forgetting.json").read_text())
        assert [(f["task"], f["metric"], f["delta"]) for f in row["forgetting"]] == [
            (f["task"], f["metric"], f["delta"]) for f in forgetting]
        assert ("sst2", "acc") in {(f["task"], f["metric"]) for f in row["forgetting"]}
    assert doc["task_metric"] == "rougeL"
    assert doc["forgetting_measure"] == ["sst2", "acc_norm"]  # acc_norm before acc, as lm-eval headlines
    # pairwise: full against lora, on the same examples
    (pair,) = doc["pairwise"]
    assert (pair["baseline"], pair["candidate"]) == ("lora", "full")
    lora_tuned = json.loads((sweep_dir / "lora/eval/tuned/scores.json").read_text())["metrics"]
    full_tuned = json.loads((sweep_dir / "full/eval/tuned/scores.json").read_text())["metrics"]
    assert pair["metrics"]["rougeL"]["delta"] == pytest.approx(
        full_tuned["rougeL"]["score"] - lora_tuned["rougeL"]["score"], abs=1e-9)
    assert {b["task"] for b in pair["benchmarks"]} == {"sst2"}
    assert all(b["metric"] != "kl" for b in pair["benchmarks"])


def _precision(scores_path):
    return json.loads(scores_path.read_text())["generation"]["precision"]


def test_auto_precision_is_resolved_once_and_pinned_for_every_method(sweep_setup):
    sweep_dir = sweep_setup["dir"]
    assert sweep_setup["probe"].calls == 1  # the probe ran for the shared base's evaluation only
    doc = _doc(sweep_dir)
    assert doc["shared"]["precision"] == "auto" and doc["shared"]["pinned_precision"] == "fp32"
    assert _precision(sweep_dir / "base/eval/base-0shot/scores.json") == "fp32"
    for method in ("lora", "full"):  # both compared (the later probe's bf16 would have been refused)
        assert next(r for r in doc["rows"] if r["method"] == method)["status"] == "done"
        scores = json.loads((sweep_dir / method / "eval/tuned/scores.json").read_text())
        assert scores["generation"]["precision"] == "fp32"
    choice = json.loads((sweep_dir / "full/eval/tuned/scores.json").read_text())["generation"]["precision_choice"]
    assert choice["requested"] == "auto" and choice["pinned"] == "fp32"
    assert "pinned to the sweep's shared base precision fp32" in choice["reason"]


def test_report_rerenders_a_sweep_from_its_stored_data(sweep_setup, tmp_path, monkeypatch, capsys):
    import tunebench.pipeline.run as run_stages
    import tunebench.pipeline.sweep as sweep_stages

    sweep_dir = sweep_setup["dir"]
    html, chart = (sweep_dir / "report.html").read_text(), (sweep_dir / "gain_vs_forgetting.png").read_bytes()
    data = (sweep_dir / "sweep.json").read_bytes()
    for module, name in ((run_stages, "evaluate_into"), (run_stages, "bench_loaded"),
                         (sweep_stages, "_train_in_subprocess"), (sweep_stages, "run_all")):  # nothing runs again
        monkeypatch.setattr(module, name, lambda *a, **k: pytest.fail("report ran a stage"))
    out = tmp_path / "elsewhere"
    assert main(["report", str(sweep_dir), "--out", str(out)]) == 0
    assert (out / "report.html").read_text() == html and (out / "gain_vs_forgetting.png").read_bytes() == chart
    assert not (out / "sweep.json").exists() and (sweep_dir / "sweep.json").read_bytes() == data
    # in place, from what sweep.json says now: an edited error sentence shows up in the re-rendered report
    doc = json.loads(data)
    failed = next(r for r in doc["rows"] if r["status"] == "failed")
    failed["error"] = "method 'adapter': an edited <sentence>"
    (sweep_dir / "report.html").unlink()
    (sweep_dir / "sweep.json").write_text(json.dumps(doc))
    try:
        assert main(["report", str(sweep_dir)]) == 0
        assert "an edited &lt;sentence&gt;" in (sweep_dir / "report.html").read_text()
        assert f"html: {sweep_dir / 'report.html'}" in capsys.readouterr().out
    finally:
        (sweep_dir / "sweep.json").write_bytes(data)
        (sweep_dir / "report.html").write_text(html)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad/sweep.json").write_text(json.dumps({"schema": "tunebench.bench/1"}))
    assert main(["report", str(tmp_path / "bad")]) == 1
    err = capsys.readouterr().err
    assert "is not a sweep's data (schema 'tunebench.bench/1'" in err and "Traceback" not in err


def test_method_that_does_not_apply_fails_alone(sweep_setup, capsys):
    assert sweep_setup["code"] == 2  # the adapter's ConfigError; the other methods finished
    row = next(r for r in _doc(sweep_setup["dir"])["rows"] if r["method"] == "adapter")
    assert row["status"] == "failed" and row["exit_code"] == 2
    assert row["error"].startswith("method 'adapter': train.adapter.reduction_factor 128")
    assert "\n" not in row["error"] and "Traceback" not in row["error"]
    html = (sweep_setup["dir"] / "report.html").read_text()
    assert "failed:" in html and "reduction_factor 128" in html


def test_report_html_and_chart(sweep_setup):
    sweep_dir = sweep_setup["dir"]
    html = (sweep_dir / "report.html").read_text()
    assert html.count("<tr><td>lora</td>") == 1 and html.count("<tr><td>full</td>") == 1
    assert "data:image/png;base64," in html and "full vs lora" in html
    assert (sweep_dir / "gain_vs_forgetting.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (sweep_dir / "lora/report.html").is_file()


def test_tensorboard_events_match_the_train_log(sweep_setup):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = sweep_setup["dir"] / "full"
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    tags = events.Tags()["scalars"]
    assert {"train/loss", "train/lr", "train/tokens_per_s", "val/loss"} <= set(tags)
    for tag, key in (("train/loss", "loss"), ("val/loss", "val_loss"), ("train/lr", "lr")):
        logged = [(r["step"], r[key]) for r in log if r.get(key) is not None]
        scalars = [(e.step, e.value) for e in events.Scalars(tag)]
        assert [s for s, _ in scalars] == [s for s, _ in logged]
        assert [v for _, v in scalars] == pytest.approx([v for _, v in logged], rel=1e-6)


def test_rerun_finishes_only_the_missing_methods(sweep_setup, data_dir, monkeypatch):
    sweep_dir = sweep_setup["dir"]
    kept = [sweep_dir / "lora" / rel for rel in ("train_summary.json", "eval/tuned/scores.json",
                                                 "bench/tuned/results.json")]
    before = [p.stat().st_mtime_ns for p in kept]
    base_scores = (sweep_dir / "base/eval/base-0shot/scores.json").stat().st_mtime_ns
    shutil.rmtree(sweep_dir / "full")  # the sweep was killed before full's run existed
    (sweep_dir / "sweep.json").unlink()
    spies = Spies(monkeypatch, in_process=True)  # the fixture's sweep trained each method in its own process
    code = main(["sweep", str(sweep_setup["config"]), "--methods", METHODS, "--against", "lora",
                 "--out", str(sweep_dir), "--data-dir", str(data_dir)])
    assert code == 2
    assert spies.evaluated == [("tuned", "full")] and spies.benched == [("tuned", "full")]
    assert spies.trained == ["full", "adapter"]  # lora finished; the failed adapter is tried again
    assert [p.stat().st_mtime_ns for p in kept] == before
    assert (sweep_dir / "base/eval/base-0shot/scores.json").stat().st_mtime_ns == base_scores
    assert [r["status"] for r in _doc(sweep_dir)["rows"]] == ["done", "done", "failed"]
    assert _precision(sweep_dir / "full/eval/tuned/scores.json") == "fp32"  # pinned from the base's scores.json


def test_unknown_method_is_a_usage_error(tmp_path, capsys):
    code = main(["sweep", "--methods", "lora,lorra", "--out", str(tmp_path / "s"), str(tmp_path / "none.yaml")])
    assert code == 2
    err = capsys.readouterr().err
    assert "--methods" in err and "did you mean 'lora'" in err and "Traceback" not in err
    assert not (tmp_path / "s").exists()
    assert main(["sweep", "--methods", "lora,full", "--against", "ia3", str(tmp_path / "none.yaml")]) == 2
    assert "--against: 'ia3' is not one of" in capsys.readouterr().err


def test_cli_default_methods_match_the_sweep_module():
    from tunebench.cli import _SWEEP_METHODS
    from tunebench.models.methods import METHODS as TABLE
    from tunebench.sweep import DEFAULT_METHODS

    assert _SWEEP_METHODS == DEFAULT_METHODS and set(DEFAULT_METHODS) <= set(TABLE)


def _fake_run(root, method, *, trainable, total, tuned_rouge, base_rouge, acc_base, acc_tuned):
    """A finished run directory written by hand: the files method_row reads."""
    from tunebench.rundir import RunDir

    run = RunDir(root / method)
    run.compare_dir.path.mkdir(parents=True)
    run.train_summary.write_text(json.dumps({"trainable_params": trainable, "total_params": total,
                                             "peak_rss_gib": 1.5, "train_time_s": 30.0, "tokens_per_s": 400.0,
                                             "steps": 10, "train_tokens": 12000, "device": "cpu"}))
    delta = tuned_rouge - base_rouge
    run.compare_dir.comparison.write_text(json.dumps({"comparisons": [{
        "baseline": "base-0shot", "candidate": "tuned",
        "metrics": {"rougeL": {"baseline": base_rouge, "candidate": tuned_rouge, "delta": delta,
                               "ci95": [delta - 0.01, delta + 0.01], "p_value": 0.01}}}]}))
    d = acc_tuned - acc_base
    run.compare_dir.forgetting.write_text(json.dumps([
        {"task": "piqa", "metric": "acc", "n": 100, "base": acc_base, "tuned": acc_tuned, "delta": d,
         "ci95": [d - 0.02, d + 0.02], "p_value": 0.3, "higher_is_better": True, "significant_drop": False,
         "status": "no significant drop"}]))
    return run


def test_method_row_and_report_from_files(tmp_path):
    from tunebench.report.sweep import gain_forgetting_png, render_sweep_html
    from tunebench.rundir import SweepDir
    from tunebench.sweep import failed_row, headline, method_row, primary_forgetting, primary_task_metric

    sweep = SweepDir(tmp_path)
    lora = _fake_run(tmp_path, "lora", trainable=1_000, total=200_000, tuned_rouge=0.31, base_rouge=0.21,
                     acc_base=0.70, acc_tuned=0.68)
    full = _fake_run(tmp_path, "full", trainable=200_000, total=200_000, tuned_rouge=0.36, base_rouge=0.21,
                     acc_base=0.70, acc_tuned=0.61)
    rows = [method_row("lora", lora, lr=2e-4, lr_source="method default"),
            method_row("full", full, lr=2e-5, lr_source="method default"),
            failed_row("prompt_tuning", "method 'prompt_tuning': <b>PEFT</b> refuses & stops", 2)]
    assert rows[0]["trainable_pct"] == 0.5 and rows[1]["trainable_pct"] == 100.0
    assert rows[0]["task"]["rougeL"]["delta"] == pytest.approx(0.10)
    assert rows[1]["forgetting"][0]["delta"] == pytest.approx(-0.09)
    assert primary_task_metric(rows) == "rougeL" and primary_forgetting(rows) == ("piqa", "acc")
    line = headline(rows[1], "rougeL", ("piqa", "acc"))
    assert "rougeL +0.1500 [0.1400, 0.1600] vs base" in line and "piqa acc -0.0900" in line
    doc = {"schema": "tunebench.sweep/1", "tunebench_version": "x", "created": "now", "dir": str(sweep.path),
           "methods": ["lora", "full", "prompt_tuning"], "against": "lora", "rows": rows, "pairwise": [],
           "shared": {"model": "m", "seed": 1, "max_steps": 10, "epochs": 1.0, "batch_size": 8, "grad_accum": 1,
                      "eval_split": "test", "eval_limit": 100, "bench_tasks": ["piqa"], "base_dir": "base"},
           "task_metric": "rougeL", "forgetting_measure": ["piqa", "acc"]}
    chart = gain_forgetting_png(doc)
    assert chart[:4] == b"\x89PNG"
    html = render_sweep_html(doc, chart)
    assert "&lt;b&gt;PEFT&lt;/b&gt; refuses &amp; stops" in html and "<b>PEFT</b>" not in html
    assert "200,000 (100%)" in html and "1,000 (0.5%)" in html and "+0.1500 [0.1400, 0.1600]" in html
    assert "(method default)" in html and "1.50 GiB" in html
    rows[1]["peak_gpu_gib"] = 7.25  # trained on a GPU: the allocator's peak is the memory shown
    assert "7.25 GiB GPU" in render_sweep_html(doc, None)


def test_against_a_method_that_failed_says_why_there_is_no_pairwise_comparison(tmp_path):
    """`--against adapter` where adapter failed: the report and the terminal say why the comparison asked for is
    missing (before, the section was silently left out)."""
    from tunebench.report.sweep import pairwise_missing, render_sweep_html
    from tunebench.sweep import failed_row, method_row

    lora = _fake_run(tmp_path, "lora", trainable=1_000, total=200_000, tuned_rouge=0.31, base_rouge=0.21,
                     acc_base=0.70, acc_tuned=0.68)
    full = _fake_run(tmp_path, "full", trainable=200_000, total=200_000, tuned_rouge=0.36, base_rouge=0.21,
                     acc_base=0.70, acc_tuned=0.61)
    done = [method_row("lora", lora, lr=2e-4, lr_source="method default"),
            method_row("full", full, lr=2e-5, lr_source="method default")]
    failed = failed_row("adapter", "method 'adapter': train.adapter.reduction_factor 128 leaves 0.50", 2)
    doc = {"schema": "tunebench.sweep/1", "tunebench_version": "x", "created": "now", "dir": str(tmp_path),
           "methods": ["lora", "full", "adapter"], "against": "adapter", "rows": [*done, failed], "pairwise": [],
           "shared": {"model": "m", "seed": 1, "max_steps": 10, "epochs": 1.0, "batch_size": 8, "grad_accum": 1,
                      "eval_split": "test", "eval_limit": 100, "bench_tasks": ["piqa"], "base_dir": "base"},
           "task_metric": "rougeL", "forgetting_measure": ["piqa", "acc"]}
    sentence = ("--against adapter: no method-vs-method comparison, because adapter did not finish (its row says "
                "why)")
    assert pairwise_missing(doc) == sentence
    assert f'<p class="failed">{sentence}</p>' in render_sweep_html(doc, None)
    assert pairwise_missing({**doc, "against": "lora", "rows": [done[0], failed]}) == (
        "--against lora: no method-vs-method comparison, because no other method finished")
    assert pairwise_missing({**doc, "against": "lora"}) == (  # killed after the last method, before the comparison
        "--against lora: no method-vs-method comparison, because the sweep stopped before comparing them (rerun "
        "the same sweep command)")
    assert pairwise_missing({**doc, "against": None}) is None
    assert pairwise_missing({**doc, "pairwise": [{"baseline": "adapter"}]}) is None


def test_a_failed_method_row_shows_the_rate_it_was_given(tmp_path):
    """README: the table records each method's learning rate and its source, failed methods included (before, a
    failed row's error spanned every column and its rate was only in sweep.json)."""
    import io

    from rich.console import Console

    from tunebench.report.sweep import render_sweep_html, sweep_table
    from tunebench.sweep import failed_row

    row = failed_row("adapter", "method 'adapter': no hidden unit", 2, lr=1e-4, lr_source="method default")
    doc = {"schema": "tunebench.sweep/1", "tunebench_version": "x", "created": "now", "dir": str(tmp_path),
           "methods": ["adapter"], "against": None, "rows": [row], "pairwise": [],
           "shared": {"model": "m", "seed": 1, "max_steps": 10, "epochs": 1.0, "batch_size": 8, "grad_accum": 1,
                      "eval_split": "test", "eval_limit": 100, "bench_tasks": [], "base_dir": "base"},
           "task_metric": None, "forgetting_measure": None}
    html = render_sweep_html(doc, None)
    assert ('<td colspan="4"><strong>failed:</strong> method &#39;adapter&#39;: no hidden unit</td>\n'
            '<td class="num">0.0001 <span class="note">(method default)</span></td>') in html
    out = io.StringIO()
    Console(file=out, width=200).print(sweep_table(doc))
    line = next(ln for ln in out.getvalue().splitlines() if "adapter" in ln)
    assert [c.strip() for c in line.strip("│ ").split("│")] == [
        "adapter", "FAILED: method 'adapter': no hidden unit", "", "", "", "0.0001"]


def test_eta_counts_only_methods_that_ran(monkeypatch):
    import tunebench.sweep as sw

    clock = iter([0.0, 100.0, 100.0, 100.5, 100.5, 400.0])
    monkeypatch.setattr(sw.time, "perf_counter", lambda: next(clock))
    eta = sw.Eta(4)
    eta.start()
    assert eta.finish(ran=True) == 100.0
    eta.start()
    eta.finish(ran=False)  # finished by an earlier invocation: no time, no estimate
    assert eta.text() == "2 method(s) left, ETA ~3m20s"
    eta.start()
    eta.finish(ran=True)  # 299.5 s
    assert eta.text() == "1 method(s) left, ETA ~3m20s"  # mean of 100 and 299.5 s


def test_eta_leaves_out_the_shared_base_work(monkeypatch, tmp_path):
    """The first method also evaluates the shared base (generation and benchmark times recorded in the base
    folder); the estimate for the methods left counts only the method's own time."""
    import tunebench.sweep as sw
    from tunebench.rundir import SweepDir

    sweep = SweepDir(tmp_path / "s")
    assert sw.shared_base_seconds(sweep.base) == 0.0  # nothing written yet
    clock = iter([0.0, 1000.0, 1000.0, 1700.0])
    monkeypatch.setattr(sw.time, "perf_counter", lambda: next(clock))
    eta = sw.Eta(3)
    eta.start()
    before = sw.shared_base_seconds(sweep.base)
    scores = sweep.base.path / "eval" / "base-0shot" / "scores.json"
    scores.parent.mkdir(parents=True)
    scores.write_text(json.dumps({"gen_time_s": 180.0, "metrics": {}}))
    results = sweep.base.path / "bench" / "base" / "results.json"
    results.parent.mkdir(parents=True)
    results.write_text(json.dumps({"tasks": {"wikitext2": {"time_s": 236.0}, "piqa": {"time_s": 84.0}}}))
    (sweep.base.path / "bench" / "broken").mkdir()
    (sweep.base.path / "bench" / "broken" / "results.json").write_text("{not json")  # counts nothing
    shared = sw.shared_base_seconds(sweep.base) - before
    assert shared == 500.0
    assert eta.finish(ran=True, shared=shared) == 1000.0  # the method's own line keeps its whole time
    assert eta.text() == "2 method(s) left, ETA ~16m40s"  # 2 x (1000 - 500) s
    eta.start()
    eta.finish(ran=True, shared=sw.shared_base_seconds(sweep.base) - sw.shared_base_seconds(sweep.base))  # 700 s
    assert eta.text() == "1 method(s) left, ETA ~10m00s"  # mean of 500 and 700 s


def _lr_config(tmp_path, train):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"name": "lrs", "output_dir": str(tmp_path / "runs"), "train": train}))
    return path


def test_config_lr_applies_to_its_own_method_only(tmp_path):
    """Issue 11: a rate tuned for the config's method is not given to the others (full would get 25x its rate)."""
    from tunebench.rundir import SweepDir
    from tunebench.sweep import method_config, method_lrs

    methods = ["full", "lora", "ia3"]
    path = _lr_config(tmp_path, {"lr": 5e-4})  # train.method unset: LoRA, the config's default method
    # the other methods' rates: README's methods table (full 2e-5, ia3 3e-3)
    assert method_lrs(path, [], methods) == {"full": (2e-5, "method default"), "lora": (5e-4, "config"),
                                             "ia3": (3e-3, "method default")}
    assert method_lrs(path, ["train.method=full", "train.lr=1e-5"], methods) == {
        "full": (1e-5, "config"), "lora": (2e-4, "method default"), "ia3": (3e-3, "method default")}
    assert method_lrs(path, [], methods, same_lr=True) == {
        "full": (5e-4, "config (--same-lr)"), "lora": (5e-4, "config"), "ia3": (5e-4, "config (--same-lr)")}
    assert method_lrs(_lr_config(tmp_path, {}), [], methods)["lora"] == (2e-4, "method default")
    sweep = SweepDir(tmp_path / "sweep")
    for method, (lr, _) in method_lrs(path, [], methods).items():  # the rate reaches the method's resolved config
        cfg = method_config(path, [], method, sweep, lr)
        assert (cfg.train.method, cfg.train.lr, cfg.name) == (method, lr, method)


def test_sweep_start_lines_print_each_rate_and_same_lr_needs_a_rate(tmp_path, data_dir, capsys, monkeypatch):
    import tunebench.sweep as sw
    from tunebench.errors import ConfigError

    path = _lr_config(tmp_path, {"lr": 5e-4, "method": "ia3"})
    data = {"source": "dialogsum", "splits": {"train": "validation", "validation": None, "test": "test"},
            "fractions": {"validation": 0.5}, "limits": {"train": 4, "validation": 2, "test": 2}}
    path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), "data": data, "bench": {"enabled": False}}))

    def no_training(path_, overrides, method, sweep, lr):  # stop each method before it loads a model
        raise ConfigError(f"stopped {method} at lr {lr}")

    monkeypatch.setattr(sw, "method_config", no_training)
    main(["sweep", str(path), "--methods", "full,ia3", "--out", str(tmp_path / "s"), "--data-dir", str(data_dir)])
    err = " ".join(capsys.readouterr().err.split())
    assert "full (lr 2e-05, method default): starting" in err and "ia3 (lr 0.0005, config): starting" in err
    rows = _doc(tmp_path / "s")["rows"]
    assert [(r["method"], r["lr"], r["lr_source"]) for r in rows] == [("full", 2e-5, "method default"),
                                                                      ("ia3", 5e-4, "config")]
    code = main(["sweep", str(_lr_config(tmp_path, {})), "--same-lr", "--out", str(tmp_path / "s2")])
    assert code == 2 and not (tmp_path / "s2").exists()
    err = capsys.readouterr().err
    assert "--same-lr: the config sets no train.lr" in err and "Traceback" not in err


def test_schema_table_says_the_lr_default_is_the_methods():
    from tunebench.config import schema_rows

    row = next(r for r in schema_rows() if r[0] == "train.lr")
    assert row[2] == "the method's default"


def test_changed_training_settings_refuse_the_sweep_before_anything_changes(tmp_path, data_dir, capsys, monkeypatch,
                                                                             tiny_causal_dir):
    """A sweep folder whose methods were trained with train.max_steps 3, rerun with 4: one sentence naming every
    method and the key, exit 2, and nothing in the folder changed (before, the base's evaluations were redone or
    kept but sweep.json and report.html of the finished sweep were replaced by rows that all failed)."""
    import tunebench.pipeline.sweep as sweep_stages
    from tunebench.pipeline.write import record_base_config, record_run_config
    from tunebench.rundir import SweepDir
    from tunebench.sweep import base_config, method_config, method_lrs

    tree = {"name": "tiny", "output_dir": str(tmp_path / "runs"), "model": {"ref": str(tiny_causal_dir)},
            "data": {"source": "dialogsum", "splits": {"train": "validation", "validation": None, "test": "test"},
                     "limits": {"train": 4, "validation": 2, "test": 2}},
            "train": {"max_steps": 3}, "eval": {"limit": 2}, "bench": {"enabled": False}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tree))
    sweep = SweepDir(tmp_path / "sweep")
    rates = method_lrs(path, [], ["lora", "full"])
    record_base_config(base_config(path, [], sweep))
    for method in ("lora", "full"):  # what a finished sweep left: each method's recorded config and summary
        record_run_config(method_config(path, [], method, sweep, rates[method][0]))
        (sweep.run(method).path / "train_summary.json").write_text("{}")
    (sweep.path / "sweep.json").write_text('{"finished": "sweep"}')
    before = {p: p.read_bytes() for p in sweep.path.rglob("*") if p.is_file()}

    def no_training(*args, **kwargs):
        raise AssertionError("a method trained")

    monkeypatch.setattr(sweep_stages, "_train_in_subprocess", no_training)
    argv = ["sweep", str(path), "--methods", "lora,full", "--out", str(sweep.path), "--data-dir", str(data_dir)]
    assert main([*argv, "--set", "train.max_steps=4"]) == 2
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("error: ")] == [
        f"error: {sweep.path} holds methods trained with other settings: lora (train.max_steps 3 -> 4); full "
        "(train.max_steps 3 -> 4); their results would not match this config: restore those keys, or sweep into a "
        "new folder (--out NEW_FOLDER)"]
    assert {p: p.read_bytes() for p in sweep.path.rglob("*") if p.is_file()} == before
