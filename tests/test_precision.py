"""Precision chosen by measurement (the probe and its cache), inference precisions, the precision in every score's
signature, compare's refusal of mixed precisions, and the parity gate."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from train_helpers import make_cfg

from tunebench.config import EvalConfig, GenerationConfig, ModelConfig, ParityConfig, load_config
from tunebench.data.example import Example
from tunebench.errors import ConfigError
from tunebench.evaluate import parity, run_eval
from tunebench.models import precision as prec
from tunebench.pipeline import write_evaluation
from tunebench.rundir import EvalDir

CPU = torch.device("cpu")
SHAPES = [(256, 64, 64), (256, 64, 128)]


def _timer(seconds: dict[str, float], calls: list | None = None):
    """A constructed timer: each precision takes `seconds[name]` per unit of m*k*n/1e6 work."""

    def timer(name, shape):
        if calls is not None:
            calls.append((name, shape))
        m, k, n = shape
        return seconds[name] * m * k * n / 1e6

    return timer


def test_auto_picks_the_precision_the_constructed_timings_make_fastest(tmp_path):
    flops = sum(2 * m * k * n for m, k, n in SHAPES)
    work = sum(m * k * n for m, k, n in SHAPES) / 1e6
    for fast in ("bf16", "fp32"):
        seconds = {"fp32": 0.002, "bf16": 0.004} if fast == "fp32" else {"fp32": 0.004, "bf16": 0.001}
        choice = prec.choose_precision(SHAPES, CPU, training=True, timer=_timer(seconds),
                                       cache_dir=tmp_path / fast, budget_bytes=2**40)
        assert choice.picked == fast and not choice.cached
        for name, secs in seconds.items():  # GFLOP/s = flops / seconds, computed here independently
            assert choice.gflops[name] == pytest.approx(flops / (secs * work) / 1e9, rel=1e-3)
        assert f"{fast} {choice.gflops[fast]:.1f}" in choice.reason


def test_candidates_follow_the_device_and_fp16_is_gpu_only():
    assert prec.candidates(CPU, training=True) == ["fp32", "bf16"]
    assert prec.candidates(CPU, training=False) == ["fp32", "bf16"]  # int8 only when asked for, never timed
    assert "fp16" in prec.PRECISIONS and prec.PRECISIONS["fp16"].devices == ("cuda",)


def test_a_precision_that_does_not_fit_memory_is_not_picked(tmp_path):
    timer = _timer({"fp32": 0.001, "bf16": 0.004})  # fp32 is faster ...
    n_params = 1000
    choice = prec.choose_precision(SHAPES, CPU, training=False, n_params=n_params, budget_bytes=3 * n_params,
                                   timer=timer, cache_dir=tmp_path)  # ... but 4 bytes a weight do not fit 3
    assert choice.picked == "bf16" and choice.too_big == ["fp32"] and "would not fit" in choice.reason


def test_a_cached_measurement_skips_the_probe(tmp_path):
    calls: list = []
    first = prec.choose_precision(SHAPES, CPU, training=True, timer=_timer({"fp32": 0.003, "bf16": 0.001}, calls),
                                  cache_dir=tmp_path, budget_bytes=2**40)
    assert calls and not first.cached
    assert len(list((tmp_path / "precision").glob("probe-*.json"))) == 1

    def refuse(name, shape):
        raise AssertionError("the probe ran despite a cached measurement")

    again = prec.choose_precision(SHAPES, CPU, training=True, timer=refuse, cache_dir=tmp_path, budget_bytes=2**40)
    assert again.cached and again.picked == first.picked == "bf16" and again.gflops == first.gflops
    calls.clear()  # another shape set is another key: measured again
    prec.choose_precision([(256, 32, 32)], CPU, training=True, timer=_timer({"fp32": 1, "bf16": 2}, calls),
                          cache_dir=tmp_path, budget_bytes=2**40)
    assert calls


def test_the_probe_shapes_are_the_models_own(tiny_causal_dir):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_causal_dir)
    assert prec.model_shapes(config) == [(prec.PROBE_TOKENS, 64, 64), (prec.PROBE_TOKENS, 64, 128)]
    assert prec.time_matmul("fp32", (8, 16, 16), seconds=0.001) > 0


def test_yaml_booleans_are_accepted_for_on_off_switches(tmp_path):
    assert load_config(None, ["train.bf16=on"]).train.bf16 == "on"  # YAML reads `on` as True
    assert load_config(None, ["train.bf16=off"]).train.bf16 == "off"
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  bf16: off\n")
    assert load_config(path).train.bf16 == "off"
    with pytest.raises(ConfigError, match=r"train\.bf16"):
        load_config(None, ["train.bf16=maybe"])


def test_training_records_which_precision_auto_picked_and_why(tmp_path, monkeypatch, tiny_causal_dir, data_dir):
    from tunebench.train.loop import train

    monkeypatch.setenv("TUNEBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(prec, "time_matmul", lambda name, shape, device=None: 1.0 if name == "fp32" else 3.0)
    cfg = make_cfg(tmp_path, tiny_causal_dir, max_steps=1)
    assert cfg.train.bf16 == "auto"
    summary = train(cfg, data_dir=data_dir, progress=False).summary
    assert summary["bf16"] is False and summary["precision"]["picked"] == "fp32"
    assert summary["precision"]["gflops"]["fp32"] == pytest.approx(3 * summary["precision"]["gflops"]["bf16"])


# ---------------------------------------------------------------- inference precisions and signatures

EXAMPLES = [Example(f"ex{i}", f"Summarize: #Person1#: parcel {i} is late. #Person2#: ok.", "c", (f"parcel {i}",))
            for i in range(6)]


@pytest.fixture(scope="module")
def loaded(tiny_causal_dir):
    from tunebench.models.load import load_model

    return load_model(ModelConfig(ref=str(tiny_causal_dir)))


def _cfg(**kw) -> EvalConfig:
    return EvalConfig(**{"metrics": ["rouge1"], **kw}, bootstrap=200,
                      generation=GenerationConfig(max_new_tokens=8, batch_size=4))


def test_bf16_and_int8_variants_convert_a_copy(loaded):
    bf16 = prec.precision_variant(loaded.model, "bf16")
    assert bf16 is not loaded.model and prec.model_precision(bf16) == "bf16"
    assert prec.model_precision(loaded.model) == "fp32"  # the original is untouched
    assert prec.precision_variant(loaded.model, "fp32") is loaded.model
    int8 = prec.precision_variant(loaded.model, "int8")
    assert prec.model_precision(int8) == "int8"
    assert not any(type(m) is torch.nn.Linear for m in int8.model.layers.modules())
    for model in (bf16, int8):  # both generate
        evaluation = run_eval.evaluate(dataclasses.replace(loaded, model=model), EXAMPLES[:2], cfg=_cfg(),
                                       system={"name": "s"}, progress=False)
        assert len(evaluation.predictions) == 2


def test_the_signature_names_the_precision(loaded):
    fp32 = run_eval.evaluate(loaded, EXAMPLES[:2], cfg=_cfg(), system={"name": "a"}, progress=False).scores
    bf16 = run_eval.evaluate(dataclasses.replace(loaded, model=prec.precision_variant(loaded.model, "bf16")),
                             EXAMPLES[:2], cfg=_cfg(), system={"name": "b"}, progress=False).scores
    assert fp32["generation"]["precision"] == "fp32" and bf16["generation"]["precision"] == "bf16"
    assert "|precision:fp32|version:" in fp32["metrics"]["rouge1"]["signature"]
    assert "|precision:bf16|version:" in bf16["metrics"]["rouge1"]["signature"]


def test_compare_refuses_systems_scored_at_different_precisions(loaded, tmp_path):
    from tunebench.cli import main
    from tunebench.evaluate.compare import compare_systems

    for name, model in (("fp32", loaded.model), ("bf16", prec.precision_variant(loaded.model, "bf16")),
                        ("fp32b", loaded.model)):
        write_evaluation(EvalDir(tmp_path / name), run_eval.evaluate(
            dataclasses.replace(loaded, model=model), EXAMPLES[:3], cfg=_cfg(), system={"name": name},
            progress=False))
    with pytest.raises(ConfigError, match="fp32 was scored at precision fp32 and bf16 at bf16"):
        compare_systems([tmp_path / "fp32", tmp_path / "bf16"], n_resamples=50)
    assert main(["compare", str(tmp_path / "fp32"), str(tmp_path / "bf16"), "--out", str(tmp_path / "c2"),
                 "--resamples", "50"]) == 2
    same = compare_systems([tmp_path / "fp32", tmp_path / "fp32b"], n_resamples=50)
    assert "|precision:fp32|" in same["systems"]["fp32b"]["metrics"]["rouge1"]["signature"]


# ---------------------------------------------------------------- the parity gate


def _perturbed(model, name):
    """fp32 as is; the 'fast' precision: the same model with noise added to every weight."""
    if name == "fp32":
        return model
    noisy = prec.precision_variant(model, "bf16").float()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in noisy.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * p.std() * 2)
    return noisy


def _gate_cfg(**kw) -> EvalConfig:
    """Exact match (whitespace-normalised string equality): the tiny model's outputs are punctuation, which
    ROUGE's a-z0-9 tokenizer would see as empty."""
    return _cfg(metrics=["exact_match"], **kw)


@pytest.fixture(scope="module")
def plain(loaded):
    return dataclasses.replace(loaded, use_chat=False)


@pytest.fixture(scope="module")
def calibration(plain):
    """Examples whose reference is the fp32 model's own output: fp32 scores exact match 1.0 on them."""
    examples = [Example(f"cal{i}", f"Summarize: #Person1#: the {w} is {i} days late.", "c", ("x",))
                for i, w in enumerate(["parcel", "train", "letter", "bus", "report", "pizza", "plane", "invoice"])]
    out = run_eval.evaluate(plain, examples, cfg=_gate_cfg(), system={"name": "r"}, progress=False)
    kept = [dataclasses.replace(e, references=(row["prediction"],))
            for e, row in zip(examples, out.predictions, strict=True) if row["prediction"].strip()]
    assert len(kept) == len(examples)
    return kept


def test_the_gate_metric_and_margin_defaults():
    assert parity.gate_metric(_cfg(metrics=["rouge", "bleu"])) == "rouge1"
    assert parity.gate_margin(_cfg(), "rouge1") == 0.01  # 0.01 ROUGE-1 F1
    assert parity.gate_margin(_cfg(), "accuracy") == 0.01  # one accuracy point on the 0-1 scale
    assert parity.gate_margin(_cfg(), "bleu") == 1.0  # one BLEU point on sacreBLEU's 0-100 scale
    assert parity.gate_metric(_cfg(metrics=["bleu"])) == "bleu"


def test_the_gate_accepts_a_mode_whose_outputs_equal_fp32s(plain, calibration, tmp_path):
    same = parity.parity_gate(plain, calibration, _gate_cfg(), "bf16", cache_dir=tmp_path,
                              variant=lambda model, name: model)
    assert same.accepted and same.delta == 0 and same.ci95 == [0.0, 0.0] and same.fp32_score == 1.0
    assert same.metric == "exact_match" and same.margin == 0.01 and same.n == len(calibration)


def test_the_gate_rejects_a_perturbed_mode_and_caches_its_verdict(plain, calibration, tmp_path):
    cfg = _gate_cfg(parity=ParityConfig(examples=5))
    bad = parity.parity_gate(plain, calibration, cfg, "bf16", cache_dir=tmp_path, variant=_perturbed)
    assert not bad.accepted and not bad.cached and bad.n == 5
    assert bad.fast_score < bad.fp32_score - bad.margin and bad.ci95[0] < -bad.margin
    assert "not within ±0.01" in bad.reason

    def refuse(model, name):
        raise AssertionError("the gate generated despite a cached verdict")

    again = parity.parity_gate(plain, calibration, cfg, "bf16", cache_dir=tmp_path, variant=refuse)
    assert again.cached and again.as_dict() == {**bad.as_dict(), "cached": True}
    used, record = parity.decide_precision([lambda: plain], calibration, cfg.model_copy(update={"precision": "bf16"}),
                                           cache_dir=tmp_path, variant=refuse)
    assert used == "fp32" and record["gates"][0]["accepted"] is False and "fell back to fp32" in record["reason"]


def test_auto_measuring_fp32_fastest_needs_no_gate(plain, calibration, tmp_path):
    cfg = _gate_cfg(precision="auto")

    def refuse(model, name):
        raise AssertionError("no gate is needed when fp32 is the fastest")

    used, record = parity.decide_precision([lambda: plain], calibration, cfg, cache_dir=tmp_path, variant=refuse,
                                           timer=lambda name, shape: 1.0 if name == "fp32" else 2.0)
    assert used == "fp32" and record["probe"]["picked"] == "fp32" and "gates" not in record
    assert json.loads(json.dumps(record)) == record  # goes into scores.json as is


def test_parity_command_then_eval_reuse_the_cached_gate(tiny_causal_dir, tmp_path, monkeypatch, capsys):
    from tunebench.cli import main

    monkeypatch.setenv("TUNEBENCH_CACHE", str(tmp_path / "cache"))
    config = tmp_path / "c.yaml"
    config.write_text(f"model: {{ref: '{tiny_causal_dir}', chat_template: never}}\n"
                      "eval: {limit: 4, bootstrap: 50, metrics: [exact_match],\n"
                      "       parity: {examples: 3}, generation: {max_new_tokens: 4}}\n")
    assert main(["parity", str(config), "--precision", "bf16"]) == 0
    first = capsys.readouterr().out
    assert first.startswith(("accepted:", "rejected:")) and "3 calibration examples" in first
    assert main(["parity", str(config), "--precision", "bf16"]) == 0
    assert "(cached)" in capsys.readouterr().out
    assert main(["eval", "--config", str(config), "--set", "eval.precision=bf16", "--out", str(tmp_path / "e")]) == 0
    scores = json.loads((tmp_path / "e" / "scores.json").read_text())
    choice = scores["generation"]["precision_choice"]
    gate = choice["gates"][0]
    assert gate["cached"] and choice["requested"] == "bf16"
    assert scores["generation"]["precision"] == choice["used"] == ("bf16" if gate["accepted"] else "fp32")
    assert first.startswith("accepted" if gate["accepted"] else "rejected")
    assert f"precision:{choice['used']}" in scores["metrics"]["exact_match"]["signature"]
