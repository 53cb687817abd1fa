"""Charts and table formatting of the report, on small hand-made inputs."""

from __future__ import annotations

import pytest

from tunebench.report import plots, tables
from tunebench.report.markdown import _fenced, cell

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _size(png: bytes) -> tuple[int, int]:
    assert png.startswith(PNG_MAGIC)
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def _comparison(candidate: str, metrics: dict[str, tuple[float, list[float] | None, float]]) -> dict:
    return {"baseline": "base", "candidate": candidate, "metrics": {
        m: {"baseline": 0.3, "candidate": 0.3 + d, "delta": d, "ci95": ci, "p_value": p, "method": "paired-bootstrap"}
        for m, (d, ci, p) in metrics.items()}}


def test_delta_chart_grows_with_metrics_and_tolerates_missing_intervals() -> None:
    one = [_comparison("tuned", {"rougeL": (0.05, [0.01, 0.09], 0.01)})]
    four = [_comparison("tuned", {m: (-0.02, None, 0.5) for m in ("rouge1", "rouge2", "rougeL", "bleu")}),
            _comparison("tuned-2", {"rougeL": (0.1, [0.05, 0.15], 0.001)})]
    small, big = _size(plots.delta_chart_png(one)), _size(plots.delta_chart_png(four))
    assert big[0] > small[0] and big[1] > small[1]  # 3 columns x 2 rows of panels vs one panel
    assert plots.delta_chart_png([]) is None


def test_loss_curves_need_losses_and_add_a_panel_for_generation_metrics() -> None:
    log = [{"step": s, "loss": 3.0 / s, "lr": 1e-4} for s in range(1, 20)] + [{"step": 10, "val_loss": 0.5}]
    plain = plots.loss_curves_png(log)
    with_gen = plots.loss_curves_png(log + [{"step": 10, "gen_metric": {"rougeL": 0.3}}])
    assert _size(with_gen)[0] > _size(plain)[0]
    assert plots.loss_curves_png([{"step": 1, "gen_metric": {"rougeL": 0.3}}]) is None
    assert plots.loss_curves_png([{"step": 1, "loss": float("nan")}]) is None


def test_score_distribution_bounded_and_unbounded() -> None:
    assert plots.score_distribution_png({"base": [0.1, 0.2, 0.5], "tuned": [0.3, 0.4, 0.9]}, "rougeL")
    assert plots.score_distribution_png({"base": [10.0, 35.5], "tuned": [40.0, 80.0]}, "bleu")
    assert plots.score_distribution_png({"base": [], "tuned": []}, "rougeL") is None


def test_pick_distribution_metric_prefers_rouge_l() -> None:
    def systems(*metrics: str) -> dict:
        return {"tuned": {"per_example": {m: [0.5] for m in metrics}}}

    assert plots.pick_distribution_metric(systems("rouge1", "rougeL", "bleu")) == "rougeL"
    assert plots.pick_distribution_metric(systems("rouge1", "rouge2")) == "rouge1"
    assert plots.pick_distribution_metric(systems("chrf")) == "chrf"
    assert plots.pick_distribution_metric({"tuned": {"per_example": {"rougeL": []}}}) is None


@pytest.mark.parametrize(("value", "digits", "text"), [
    (None, None, "—"), (True, None, "yes"), (1234567, None, "1,234,567"), (0.41234, None, "0.4123"),
    (12.345, None, "12.35"), (2e-5, None, "2e-05"), (0.41234, 2, "0.41"), (12345.678, 2, "12,345.68"),
])
def test_fmt_num(value: object, digits: int | None, text: str) -> None:
    assert tables.fmt_num(value, digits) == text


def test_row_formatting_keeps_scale_and_marks_significance() -> None:
    assert tables.digits_for(0.2, 0.9) == 4 and tables.digits_for(0.2, 31.5) == 2 and tables.digits_for(None) == 4
    assert tables.fmt_signed(0.05, 4) == "+0.0500" and tables.fmt_signed(-0.05, 4) == "-0.0500"
    assert tables.fmt_ci([0.1, None]) == "—" and tables.fmt_ci([1.0, 2.5], 2) == "[1.00, 2.50]"
    assert tables.fmt_p(0.00001) == "<0.0001" and tables.fmt_p(0.0123456) == "0.0123"
    assert tables.verdict({"delta": 0.1, "p_value": 0.01}) == "gain"
    assert tables.verdict({"delta": -0.1, "p_value": 0.01}) == "loss"
    assert tables.verdict({"delta": 0.1, "p_value": 0.2}) == "n.s."
    assert tables.verdict({"delta": 0.1, "p_value": 0.01, "significant": False}) == "n.s."  # e.g. after Holm


def test_flatten_and_values() -> None:
    tree = {"accuracy": 0.5, "efficiency": {"tokens_per_s": 800.0, "latency": {"p50": 0.1}}, "bias": {}}
    assert tables.flatten(tree) == [("accuracy", 0.5), ("efficiency.tokens_per_s", 800.0),
                                    ("efficiency.latency.p50", 0.1), ("bias", {})]
    assert tables.fmt_value([0.5, "x"]) == "0.5000, x" and tables.fmt_value({}) == "—"
    assert tables.fmt_value(list(range(100))) == "[100 values]"


def test_markdown_cells_and_fences_hold_any_text() -> None:
    assert cell("<b>a|b</b>\nc & d") == "&lt;b&gt;a\\|b&lt;/b&gt;<br>c &amp; d"
    fenced = _fenced("code: ````x````")
    assert fenced[0] == "`````text" and fenced[-1] == "`````"
    assert _fenced("y" * 700, 600)[1].endswith(" …")
