"""The metric registry: every consumer asks it, statistics are computed once, and non-Latin text is scored."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import sacrebleu
from rouge_score import rouge_scorer

from tunebench.config import config_from_dict
from tunebench.errors import ConfigError
from tunebench.evaluate.metrics import (
    METRICS,
    Metric,
    MetricSettings,
    MetricWarning,
    compute_metric_stats,
    metric_class,
    per_example_scores,
    register_metric,
    rouge,
    score_corpus,
)

# Hand-written Chinese sentences (some with ASCII words and a newline, for ROUGE-Lsum), and a system's outputs.
ZH_REFS = [
    "我们今天下午去公园散步，天气很好。",
    "他把这本书借给了他的同学小王。",
    "会议推迟到下周三上午十点举行。",
    "请在周五之前把报告发给我。\n谢谢你的帮助。",
    "这家餐厅的菜很好吃但是价格有点贵。",
    "她每天早上坐地铁去上班。",
    "明天可能会下雨，记得带伞。",
    "我们的 project 需要更多 time 来完成。",
]
ZH_PREDS = [
    "我们今天去公园散步，天气不错。",
    "他把书借给了同学小王。",
    "会议改到下周三上午举行。",
    "请周五前把报告发给我。\n非常感谢。",
    "这家餐厅的菜好吃，价格贵。",
    "她每天坐地铁上班。",
    "明天会下雨，带伞。",
    "这个 project 需要更多 time。",
]


class _ZhTokenizer:
    """rouge_score tokenizer built on sacreBLEU's zh tokenizer (an independent split of Chinese characters),
    lowercased, punctuation tokens dropped as ROUGE drops them."""

    def __init__(self) -> None:
        from sacrebleu.tokenizers.tokenizer_zh import TokenizerZh

        self._zh = TokenizerZh()

    def tokenize(self, text: str) -> list[str]:
        return [t for t in self._zh(text).lower().split() if any(ch.isalnum() for ch in t)]


def test_chinese_bleu_follows_sacrebleu_zh_tokenizer():
    refs = [[r] for r in ZH_REFS]
    expected = sacrebleu.metrics.BLEU(tokenize="zh").corpus_score(ZH_PREDS, [ZH_REFS])
    named = score_corpus(ZH_PREDS, refs, ["bleu"], bootstrap=0, settings=MetricSettings(bleu_tokenize="zh"))
    by_language = score_corpus(ZH_PREDS, refs, ["bleu"], bootstrap=0, settings=MetricSettings(language="zh"))
    for out in (named, by_language):
        assert out["bleu"]["score"] == pytest.approx(expected.score, abs=1e-9) and expected.score > 20
        assert "|tok:zh|" in out["bleu"]["signature"]
    sentence = per_example_scores(ZH_PREDS, refs, ["bleu"], settings=MetricSettings(language="zh"))
    assert [row["bleu"] for row in sentence] == pytest.approx(
        [sacrebleu.sentence_bleu(p, [r], tokenize="zh").score for p, r in zip(ZH_PREDS, ZH_REFS, strict=True)],
        abs=1e-9,
    )
    # the silent zero the issue reports: identical Chinese texts with 13a score 0, and now a warning says why
    with pytest.warns(MetricWarning, match="bleu: the .13a. tokenizer leaves 7 of 8 references almost unsplit"):
        plain = score_corpus(ZH_REFS, refs, ["bleu"], bootstrap=0)
    assert plain["bleu"]["score"] == pytest.approx(
        sacrebleu.metrics.BLEU().corpus_score(ZH_REFS, [ZH_REFS]).score, abs=1e-9
    )


def test_chinese_rouge_with_the_unicode_tokenizer_equals_rouge_score_on_zh_tokens():
    refs = [[r] for r in ZH_REFS]
    settings = MetricSettings(stem=False, rouge_tokenize="unicode")
    out = score_corpus(ZH_PREDS, refs, ["rouge"], bootstrap=0, settings=settings)
    scorer = rouge_scorer.RougeScorer(list(rouge.ROUGE_TYPES), tokenizer=_ZhTokenizer())
    expected = [scorer.score(r, p) for p, r in zip(ZH_PREDS, ZH_REFS, strict=True)]
    for t in rouge.ROUGE_TYPES:
        assert out[t]["score"] == pytest.approx(np.mean([e[t].fmeasure for e in expected]), abs=1e-12)
        assert out[t]["recall"] == pytest.approx(np.mean([e[t].recall for e in expected]), abs=1e-12)
        assert "|tok:unicode|" in out[t]["signature"]
    # identical texts: 1.0 with the unicode tokenizer (chosen by the target language), 0.0 and a warning without
    same = score_corpus(ZH_REFS, refs, ["rouge1"], bootstrap=0, settings=MetricSettings(language="zh"))
    assert same["rouge1"]["score"] == 1.0
    with pytest.warns(MetricWarning, match="rouge1: the rouge_score tokenizer drops most letters of 7 of 8"):
        assert score_corpus(ZH_REFS, refs, ["rouge1"], bootstrap=0)["rouge1"]["score"] < 0.15


def test_unicode_tokens_by_hand():
    assert rouge.tokenize("Привет, мир! 你好world 3.5 Ærø", False, "unicode") == [
        "привет", "мир", "你", "好", "world", "3", "5", "ærø",
    ]  # fmt: skip
    assert rouge.tokenize("Running dogs", True, "unicode") == rouge.tokenize("Running dogs", True) == ["run", "dog"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # English text: no warning from either tokenizer
        score_corpus(["the cat sat"], [["the cat sat down"]], ["rouge1", "bleu"], bootstrap=0)


def test_score_cli_takes_the_tokenizers(tmp_path: Path, capsys):
    from tunebench.cli import main

    pred = tmp_path / "p.jsonl"
    pred.write_text(
        "".join(json.dumps({"id": k, "prediction": p, "references": [r]}, ensure_ascii=False) + "\n"
                for k, (p, r) in enumerate(zip(ZH_PREDS, ZH_REFS, strict=True))),
        encoding="utf-8",
    )
    assert main(["score", "--pred", str(pred), "--metric", "bleu,rouge1", "--bleu-tokenize", "zh",
                 "--rouge-tokenize", "unicode", "--json", "--bootstrap", "10"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["bleu"]["score"] == pytest.approx(
        sacrebleu.metrics.BLEU(tokenize="zh").corpus_score(ZH_PREDS, [ZH_REFS]).score, abs=1e-9
    )
    assert "tok:unicode" in out["rouge1"]["signature"]
    assert main(["score", "--pred", str(pred), "--bleu-tokenize", "zhh"]) == 2
    assert "--bleu-tokenize: unknown tokenizer 'zhh'; did you mean 'zh'?" in capsys.readouterr().err


def test_compare_recomputes_with_the_stored_tokenizers(tmp_path: Path):
    from tunebench.evaluate.compare import compare_systems
    from tunebench.evaluate.score import hash_test_set

    refs = [[r] for r in ZH_REFS]
    settings = MetricSettings(language="zh")
    for name, preds in (("base", ZH_PREDS), ("tuned", ZH_REFS)):
        d = tmp_path / name
        d.mkdir()
        rows = [{"id": str(k), "prediction": p, "references": r} for k, (p, r) in enumerate(zip(preds, refs, strict=True))]
        (d / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        scores = {"metrics": score_corpus(preds, refs, ["rouge1", "bleu"], bootstrap=10, settings=settings),
                  "test_set": {"hash": hash_test_set([str(k) for k in range(len(refs))], refs)}}
        (d / "scores.json").write_text(json.dumps(scores), encoding="utf-8")
    result = compare_systems([tmp_path / "base", tmp_path / "tuned"], n_resamples=50)
    for name in ("base", "tuned"):
        stored = json.loads((tmp_path / name / "scores.json").read_text())["metrics"]
        for m in ("rouge1", "bleu"):
            assert result["systems"][name]["metrics"][m]["signature"] == stored[m]["signature"]
            assert result["systems"][name]["metrics"][m]["score"] == pytest.approx(stored[m]["score"], abs=1e-12)
    assert result["systems"]["tuned"]["metrics"]["rouge1"]["score"] == 1.0


def test_every_metric_states_its_facts():
    for name, cls in METRICS.items():
        assert cls.name == name and isinstance(cls.higher_is_better, bool) and cls.scale in (1.0, 100.0)
        assert cls.aggregation in ("mean", "corpus") and cls.inputs in ("text", "choice", "document")
        assert cls.has_per_example or cls.aggregation == "corpus"
    assert metric_class("bleu").scale == 100.0 and metric_class("rougeL").higher_is_better
    with pytest.raises(ConfigError, match="unknown metric 'blue'; did you mean 'bleu'"):
        metric_class("blue")


@pytest.fixture
def length_error():
    """A lower-is-better metric on a 0-100 scale, registered only for one test (one class, one line)."""

    @register_metric
    class LengthError(Metric):
        name = "length_error"
        higher_is_better = False
        scale = 100.0

        def stats(self, predictions, references):
            return np.array([[abs(len(p) - len(r[0])) / max(len(r[0]), 1) * 100] for p, r in zip(predictions, references, strict=True)])

    yield LengthError
    del METRICS["length_error"]


def test_a_new_metric_reaches_every_consumer(length_error):
    from tunebench.bench.spec import metrics_for
    from tunebench.evaluate.score import _fmt
    from tunebench.train.loop import TrainerState, selection_higher_is_better

    preds, refs = ["abcd", "ab"], [["abcd"], ["abcd"]]
    assert score_corpus(preds, refs, ["length_error"], bootstrap=0)["length_error"]["score"] == 25.0
    assert per_example_scores(preds, refs, ["length_error"]) == [{"length_error": 0.0}, {"length_error": 50.0}]
    assert _fmt(25.0, "length_error") == "25.00" and _fmt(0.25, "rougeL") == "0.2500"
    higher = selection_higher_is_better("length_error")
    assert higher is False and selection_higher_is_better("rougeL") is True
    state = TrainerState(best={"step": 1, "value": 30.0})
    state.step = 2
    assert state.record_evaluation(20.0, higher_is_better=higher, patience=None) and state.best["step"] == 2
    state.step = 3
    assert not state.record_evaluation(25.0, higher_is_better=higher, patience=None) and state.bad_evals == 1
    assert "length_error" in metrics_for("generate") and "length_error" not in metrics_for("multiple_choice")
    cfg = config_from_dict({"eval": {"metrics": ["length_error"]}, "train": {"gen_eval": {"metric": "length_error"}}})
    assert cfg.train.gen_eval.metric == "length_error"


def test_statistics_are_computed_once(monkeypatch):
    calls: list[tuple[str, ...]] = []
    real = rouge.rouge_prf

    def counting(*args, **kwargs):
        calls.append(tuple(args[2]))
        return real(*args, **kwargs)

    monkeypatch.setattr(rouge, "rouge_prf", counting)
    stats = compute_metric_stats(["a b c"], [["a b d"]], ["rouge", "bleu"])
    assert calls == [rouge.ROUGE_TYPES] and list(stats) == [*rouge.ROUGE_TYPES, "bleu"]
    assert stats["rouge1"].score() == pytest.approx(2 / 3) and stats["rouge1"].per_example.tolist() == [2 / 3]


def test_bench_corpus_metric_stderr_is_the_bootstrap_std():
    from tunebench.bench.scoring import STDERR_BOOTSTRAP, value_stderr
    from tunebench.evaluate.stats import resample_indices

    refs = [[r] for r in ZH_REFS]
    ms = compute_metric_stats(ZH_PREDS, refs, ["bleu"], settings=MetricSettings(language="zh"))["bleu"]
    out = value_stderr(ms, seed=3)
    bleu = sacrebleu.metrics.BLEU(tokenize="zh")
    boot = [
        bleu.corpus_score([ZH_PREDS[i] for i in idx], [[ZH_REFS[i] for i in idx]]).score
        for chunk in resample_indices(len(ZH_PREDS), STDERR_BOOTSTRAP, 3)
        for idx in chunk
    ]
    assert out["value"] == pytest.approx(bleu.corpus_score(ZH_PREDS, [ZH_REFS]).score, abs=1e-9)
    assert out["stderr"] == pytest.approx(float(np.std(boot, ddof=1)), abs=1e-9)


def test_a_task_spec_takes_the_tokenizers(tmp_path: Path):
    from tunebench.bench.spec import load_spec

    path = tmp_path / "zh.yaml"
    path.write_text(
        "name: zh_gen\nversion: 1\nsource: {format: jsonl, splits: {test: zh.jsonl}}\ntemplate: '{{ q }}'\n"
        "target: '{{ a }}'\noutput_type: generate\nmetrics: [bleu, rouge1]\nlanguage: zh\n", encoding="utf-8")
    settings = load_spec(path).metric_settings()
    assert settings == MetricSettings(language="zh") and settings.rouge_tokenizer() == "unicode"


def test_chrf_plus_plus_equals_sacrebleu(data_dir):
    rows = [json.loads(line) for line in (data_dir / "dialogsum" / "dialogsum.test.jsonl").open(encoding="utf-8")][:40]
    preds = [" ".join(r["dialogue"].split("\n")[:2]) for r in rows]
    refs = [[r["summary1"], r["summary2"], r["summary3"]] for r in rows]
    out = score_corpus(preds, refs, ["chrf++"], bootstrap=0)["chrf++"]
    chrf_pp = sacrebleu.metrics.CHRF(word_order=2)
    assert out["score"] == pytest.approx(chrf_pp.corpus_score(preds, [list(s) for s in zip(*refs, strict=True)]).score,
                                         abs=1e-9)
    assert out["signature"] == chrf_pp.get_signature().format() and "|nw:2|" in out["signature"]
    assert [row["chrf++"] for row in per_example_scores(preds[:5], refs[:5], ["chrf++"])] == pytest.approx(
        [sacrebleu.sentence_chrf(p, r, word_order=2).score for p, r in zip(preds[:5], refs[:5], strict=True)],
        abs=1e-9,
    )
    assert metric_class("chrf++").scale == 100.0


def test_compare_uses_the_statistics_an_evaluation_hands_on(tmp_path: Path, monkeypatch):
    from tunebench.evaluate import compare
    from tunebench.evaluate.score import hash_test_set

    refs = [[r, r[::-1]] for r in ("the cat sat", "a dog ran off", "rain all day", "sun at noon", "we met")]
    ids = [f"x{k}" for k in range(len(refs))]
    computed = {}
    for name, preds, order in (("base", ["cat", "dog", "rain", "sun", "met"], [0, 1, 2, 3, 4]),
                               ("tuned", ["the cat", "a dog ran", "rain all", "noon", "we met"], [4, 2, 0, 1, 3])):
        d = tmp_path / name
        d.mkdir()
        rows = [{"id": ids[k], "prediction": preds[k], "references": refs[k]} for k in order]  # own file order
        (d / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        stats = compute_metric_stats([r["prediction"] for r in rows], [r["references"] for r in rows],
                                     ["rouge1", "bleu", "macro_f1"])
        scores = {"metrics": {m: ms.summary(bootstrap=10, seed=0) for m, ms in stats.items()},
                  "test_set": {"hash": hash_test_set(ids, refs)}}
        (d / "scores.json").write_text(json.dumps(scores), encoding="utf-8")
        computed[d] = stats
    paths = [tmp_path / "base", tmp_path / "tuned"]
    recomputed = compare.compare_systems(paths, n_resamples=100)

    def no_recomputation(*args, **kwargs):
        raise AssertionError("compare recomputed statistics it was handed")

    monkeypatch.setattr(compare, "compute_metric_stats", no_recomputation)
    assert compare.compare_systems(paths, n_resamples=100, computed=computed) == recomputed
