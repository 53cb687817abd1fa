"""forgetting_table on synthetic benchmark logs: a clear drop is flagged, a tie is not, mismatches are refused."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tunebench.bench.forgetting import forgetting_table
from tunebench.errors import DataError
from tunebench.io import atomic_write_json, atomic_write_jsonl


def write_run(
    folder: Path, tasks: dict[str, list[float]], *, version: int = 1, shots: int = 0, ids: list[str] | None = None,
    choices: int = 2, protocol: dict | None = None,
) -> Path:
    results = {"schema": "tunebench.bench/1", "model": {"ref": folder.name}, "tasks": {}}
    for task, correct in tasks.items():
        names = ids or [f"q{i}" for i in range(len(correct))]
        rows = [{"id": name, "correct": bool(c), "choices": [str(k) for k in range(choices)],
                 "scores": {"acc": c, "acc_norm": c}} for name, c in zip(names, correct, strict=True)]
        rows.reverse()  # the tuned run may log in another order: matching is by id
        atomic_write_jsonl(folder / f"samples_{task}.jsonl", rows)
        mean = sum(correct) / len(correct)
        results["tasks"][task] = {
            "version": version, "n": len(correct), "shots": shots, "output_type": "multiple_choice",
            "metrics": {"acc": {"value": mean, "stderr": 0.0}, "acc_norm": {"value": mean, "stderr": 0.0}},
            "samples": f"samples_{task}.jsonl", **({"protocol": protocol} if protocol else {}),
        }
    atomic_write_json(folder / "results.json", results)
    return folder


def test_clear_drop_flagged_tie_not(tmp_path: Path) -> None:
    rng = random.Random(0)
    base_drop = [1.0 if rng.random() < 0.8 else 0.0 for _ in range(300)]
    tuned_drop = [c if rng.random() < 0.6 else 0.0 for c in base_drop]  # loses ~40% of what it knew
    tie = [1.0 if rng.random() < 0.5 else 0.0 for _ in range(300)]
    tie_shuffled = tie[:150] + tie[150:][::-1]  # same accuracy, different examples right
    base = write_run(tmp_path / "base", {"mmlu": base_drop, "cb": tie, "only_base": [1.0]})
    tuned = write_run(tmp_path / "tuned", {"mmlu": tuned_drop, "cb": tie_shuffled})
    rows = forgetting_table(base, tuned, n_resamples=500, seed=0)
    by_key = {(r["task"], r["metric"]): r for r in rows}
    assert set(by_key) == {("mmlu", "acc"), ("mmlu", "acc_norm"), ("cb", "acc"), ("cb", "acc_norm")}
    drop = by_key[("mmlu", "acc")]
    assert drop["significant_drop"] and drop["delta"] < -0.2 and drop["ci95"][1] < 0 and drop["p_value"] < 0.01
    assert drop["base"] == pytest.approx(sum(base_drop) / 300) and drop["tuned"] == pytest.approx(sum(tuned_drop) / 300)
    assert drop["delta"] == pytest.approx(drop["tuned"] - drop["base"])
    tie_row = by_key[("cb", "acc")]
    assert tie_row["delta"] == pytest.approx(0.0) and not tie_row["significant_drop"] and tie_row["p_value"] > 0.5
    assert set(drop) == {"task", "metric", "n", "base", "tuned", "delta", "ci95", "p_value", "significant_drop",
                         "higher_is_better", "chance", "above_chance_p", "above_chance", "discordance", "mde",
                         "mde_basis", "measurable", "status"}
    assert drop["status"] == "significant drop" and tie_row["status"] in ("no significant drop",
                                                                         "not measurable at this size")


def test_one_question_has_no_interval_and_is_not_a_drop(tmp_path: Path) -> None:
    # one question, right before and wrong after: the bootstrap would redraw it every time (zero-width interval,
    # p at its floor 1/(resamples + 1)) and call it a significant drop
    rows = forgetting_table(write_run(tmp_path / "base", {"piqa": [1.0]}), write_run(tmp_path / "tuned", {"piqa": [0.0]}),
                            n_resamples=200, seed=0)
    for row in rows:
        assert row["delta"] == -1.0 and row["ci95"] is None and row["p_value"] is None
        assert not row["significant_drop"] and not row["measurable"]
        assert row["status"] == "not measurable at this size"


def test_an_improvement_is_not_a_drop(tmp_path: Path) -> None:
    base = write_run(tmp_path / "base", {"rte": [0.0] * 80 + [1.0] * 20})
    tuned = write_run(tmp_path / "tuned", {"rte": [1.0] * 80 + [1.0] * 20})
    (row, _) = forgetting_table(base, tuned, n_resamples=200)
    assert row["delta"] > 0 and row["p_value"] < 0.05 and not row["significant_drop"]


def test_mismatched_samples_are_refused(tmp_path: Path) -> None:
    base = write_run(tmp_path / "base", {"sst2": [1.0, 0.0, 1.0]})
    tuned = write_run(tmp_path / "tuned", {"sst2": [1.0, 0.0, 1.0]}, ids=["q0", "q1", "q7"])
    with pytest.raises(DataError, match=r"task 'sst2': base and tuned scored different examples .*'q2'.*'q7'"):
        forgetting_table(base, tuned)
    other_version = write_run(tmp_path / "v2", {"sst2": [1.0, 0.0, 1.0]}, version=2)
    with pytest.raises(DataError, match="task 'sst2': base ran version 1 and tuned version 2"):
        forgetting_table(base, other_version)
    five_shot = write_run(tmp_path / "shots", {"sst2": [1.0, 0.0, 1.0]}, shots=5)
    with pytest.raises(DataError, match="task 'sst2': base ran 0-shot and tuned 5-shot"):
        forgetting_table(base, five_shot)
    with pytest.raises(DataError, match="results.json: cannot read benchmark results"):
        forgetting_table(base, tmp_path / "nowhere")


def test_sensitivity_matches_hand_computation(tmp_path: Path) -> None:
    """Chance 1/2, the exact one-sided binomial p-value, and Connor's (1987) MDE solved by hand at the observed
    discordance: n = 400, base 260/400 right, 40 discordant pairs (30 losses, 10 gains)."""
    import math
    from statistics import NormalDist

    base = [1.0] * 260 + [0.0] * 140
    tuned = list(base)
    for i in range(30):  # 30 losses among the right ones
        tuned[i] = 0.0
    for i in range(260, 270):  # 10 gains among the wrong ones
        tuned[i] = 1.0
    (row, _) = forgetting_table(write_run(tmp_path / "b", {"piqa": base}), write_run(tmp_path / "t", {"piqa": tuned}),
                                n_resamples=200)
    assert row["chance"] == pytest.approx(0.5)
    p_hand = sum(math.comb(400, k) for k in range(260, 401)) / 2**400
    assert row["above_chance_p"] == pytest.approx(p_hand, rel=1e-9) and row["above_chance"] is True
    assert row["discordance"] == pytest.approx(40 / 400)
    za, zb, psi = NormalDist().inv_cdf(0.975), NormalDist().inv_cdf(0.8), 0.1
    # Connor's n(delta) at the reported MDE gives back n = 400
    d = row["mde"]
    n_back = (za * math.sqrt(psi) + zb * math.sqrt(psi - d * d)) ** 2 / d**2
    assert n_back == pytest.approx(400, rel=1e-6)
    assert 0.04 < d < 0.05 and row["measurable"] and row["status"] == "significant drop"


def test_mde_before_a_tuned_run_uses_independent_errors() -> None:
    import math
    from statistics import NormalDist

    from tunebench.bench.sensitivity import accuracy_sensitivity

    base = [1.0] * 64 + [0.0] * 36
    sens = accuracy_sensitivity(base * 3, None, 0.5)
    za, zb, p, d = NormalDist().inv_cdf(0.975), NormalDist().inv_cdf(0.8), 0.64, sens["mde"]
    psi = p * (1 - p + d) + (p - d) * (1 - p)
    assert (za * math.sqrt(psi) + zb * math.sqrt(psi - d * d)) ** 2 / d**2 == pytest.approx(300, rel=1e-6)
    assert sens["discordance"] is None and sens["measurable"]


def test_row_at_chance_is_not_measurable(tmp_path: Path) -> None:
    rng = random.Random(1)
    base = [1.0 if rng.random() < 0.25 else 0.0 for _ in range(100)]  # MMLU-like: four choices, at chance
    tuned = [1.0 if rng.random() < 0.25 else 0.0 for _ in range(100)]
    rows = forgetting_table(write_run(tmp_path / "b", {"mmlu": base}, choices=4),
                            write_run(tmp_path / "t", {"mmlu": tuned}, choices=4), n_resamples=200)
    row = rows[0]
    assert row["chance"] == pytest.approx(0.25) and row["above_chance"] is False
    assert not row["measurable"] and row["status"] == "not measurable at this size"


def test_different_protocols_are_refused(tmp_path: Path) -> None:
    proto = {"chat_template": False, "fewshot_sampler": "first", "shots": 0, "limit": None}
    base = write_run(tmp_path / "b", {"rte": [1.0, 0.0]}, protocol=proto)
    tuned = write_run(tmp_path / "t", {"rte": [1.0, 0.0]}, protocol={**proto, "chat_template": True})
    with pytest.raises(DataError, match=r"task 'rte': base and tuned ran different protocols \(chat_template: "
                                        r"base False, tuned True\)"):
        forgetting_table(base, tuned)


def test_a_chat_run_from_before_the_chat_format_key_is_refused_a_plain_one_is_not(tmp_path: Path) -> None:
    """Results written before `chat_format` existed: plain runs still compare (no format to differ in); a chat
    run laid out the old way (one user message) does not compare with one in lm-eval's multi-turn form."""
    old = {"chat_template": False, "fewshot_sampler": "first", "shots": 0, "limit": None}
    base = write_run(tmp_path / "b", {"rte": [1.0, 0.0]}, protocol=old)
    tuned = write_run(tmp_path / "t", {"rte": [1.0, 0.0]}, protocol={**old, "chat_format": None})
    assert forgetting_table(base, tuned)
    base = write_run(tmp_path / "b2", {"rte": [1.0, 0.0]}, protocol={**old, "chat_template": True})
    tuned = write_run(tmp_path / "t2", {"rte": [1.0, 0.0]},
                      protocol={**old, "chat_template": True, "chat_format": "lm-eval fewshot_as_multiturn"})
    with pytest.raises(DataError, match=r"different protocols \(chat_format: base None, tuned 'lm-eval "
                                        r"fewshot_as_multiturn'\)"):
        forgetting_table(base, tuned)


def test_compare_and_report_take_two_bench_folders(tmp_path: Path, capsys) -> None:
    from tunebench.cli import main
    from tunebench.evaluate.stats import paired_bootstrap

    base_acc = [1.0] * 30 + [0.0] * 10
    tuned_acc = [1.0] * 18 + [0.0] * 22
    base = write_run(tmp_path / "bench_base", {"sst2": base_acc})
    tuned = write_run(tmp_path / "bench_tuned", {"sst2": tuned_acc})
    out = tmp_path / "cmp"
    assert main(["compare", str(base), str(tuned), "--out", str(out), "--resamples", "500"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    doc = __import__("json").loads((out / "forgetting.json").read_text())
    assert doc["base"] == str(base.resolve()) and doc["tuned"] == str(tuned.resolve())
    row = next(r for r in doc["rows"] if r["metric"] == "acc")
    expected = paired_bootstrap(base_acc, tuned_acc, n_resamples=500, seed=0)  # ids match in order q0..q39
    assert (row["base"], row["tuned"]) == (0.75, 0.45) and row["p_value"] == expected["p_value"]
    assert row["significant_drop"] and "DROP" in text and "(paired-bootstrap)" in text
    assert main(["report", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "## Forgetting" in md and "| sst2 | acc | 0.7500 | 0.4500 |" in md
    assert "| base | tuned |" in md  # both bench folders' scores, side by side
    before = (base / "results.json").read_text()
    assert main(["report", str(base)]) == 0  # a bench folder on its own: the report goes beside, not over it
    assert (base / "results.json").read_text() == before
    assert "## Benchmarks" in (base / "report" / "report.md").read_text()
    assert "standard error" in (base / "report" / "report.md").read_text()
    assert main(["report", str(tuned), "--out", str(base)]) == 1  # never over a benchmark's results.json
    assert "is not a report's results.json" in capsys.readouterr().err
    assert (base / "results.json").read_text() == before
