"""The eval stage returns predictions and scores; the pipeline writes them with the fields docs/formats.md documents."""

from __future__ import annotations

import json

import pytest

from tunebench.config import DataConfig, EvalConfig, GenerationConfig, ModelConfig
from tunebench.data.example import Example
from tunebench.errors import DataError
from tunebench.evaluate import run_eval
from tunebench.pipeline import write_evaluation
from tunebench.rundir import EvalDir

ROW_KEYS = {
    "id",
    "prompt",
    "references",
    "prediction",
    "scores",
    "gen_time_s",
    "n_prompt_tokens",
    "n_new_tokens",
    "n_cut_tokens",
}
EXAMPLES = [
    Example(f"test_{i}", f"Summarize: #Person1#: item {i} is late. #Person2#: ok.", f"item {i} late", (f"item {i} is late", f"late {i}"))
    for i in range(5)
]  # fmt: skip


@pytest.fixture(scope="module")
def loaded(tiny_causal_dir):
    from tunebench.models.load import load_model

    return load_model(ModelConfig(ref=str(tiny_causal_dir)))


def _cfg(**kw) -> EvalConfig:
    return EvalConfig(bootstrap=50, generation=GenerationConfig(max_new_tokens=6, batch_size=2), **kw)


def _evaluate_and_write(out_dir, *args, **kwargs) -> dict:
    """The stage, then the pipeline's writer: what `tunebench eval` does; returns scores.json's content."""
    evaluation = run_eval.evaluate(*args, **kwargs)
    write_evaluation(EvalDir(out_dir), evaluation)
    return evaluation.scores


def test_evaluate_writes_both_files_with_documented_fields(loaded, tmp_path):
    from tunebench.evaluate.generate import generate_texts

    system = {"name": "base-0shot", "model": "tiny", "adapter": None}
    scores = _evaluate_and_write(tmp_path, loaded, EXAMPLES, cfg=_cfg(), system=system, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [e.id for e in EXAMPLES]
    assert all(set(r) == ROW_KEYS for r in rows)
    assert {"rouge1", "rouge2", "rougeL", "rougeLsum", "bleu"} <= set(rows[0]["scores"])
    # the stored prompt is the exact text the model saw: here the chat template around the plain prompt
    chat = loaded.tokenizer.apply_chat_template([{"role": "user", "content": EXAMPLES[0].prompt}], tokenize=False,
                                                add_generation_prompt=True)
    assert rows[0]["prompt"] == chat and rows[0]["references"] == list(EXAMPLES[0].references)
    expected = generate_texts(
        loaded.model, loaded.tokenizer, [loaded.format_prompt(e.prompt) for e in EXAMPLES],
        family="causal", gen=_cfg().generation,
    )  # fmt: skip
    assert [r["prediction"] for r in rows] == [g.text for g in expected]
    assert [r["n_prompt_tokens"] for r in rows] == [g.n_prompt_tokens for g in expected]

    on_disk = json.loads((tmp_path / "scores.json").read_text())
    assert on_disk == json.loads(json.dumps(scores))
    assert on_disk["schema"] == "tunebench.eval/1" and on_disk["system"] == system
    assert on_disk["test_set"] == {"split": "test", "n": 5, "hash": run_eval.test_set_hash(EXAMPLES)}
    assert on_disk["test_set"]["hash"] == run_eval.test_set_hash(rows)
    assert on_disk["generation"]["max_new_tokens"] == 6 and on_disk["generation"]["prompt_format"] == "chat"
    assert {"rouge1", "rougeL", "bleu"} <= set(on_disk["metrics"]) and on_disk["metrics"]["rouge1"]["n"] == 5
    assert len(on_disk["metrics"]["rougeL"]["ci95"]) == 2
    assert on_disk["examples_per_s"] > 0 and on_disk["fewshot"]["k"] == 0
    assert not list(tmp_path.glob(".*.tmp"))


def test_fewshot_evaluation_on_dialogsum_records_demonstrations(loaded, tmp_path, data_dir):
    from tunebench.data.prepare import build_splits

    data = DataConfig(
        splits={"train": "validation", "validation": None, "test": "test"}, limits={"train": 40, "test": 3}
    )
    splits = build_splits(data, data_dir, seed=0)
    scores = _evaluate_and_write(
        tmp_path, loaded, splits.test, cfg=_cfg(metrics=["rougeL"]), system={"name": "base-2shot"},
        shots=2, demos=splits.train, seed=3, progress=False, context_budget=1500,
    )  # fmt: skip
    fs = scores["fewshot"]
    assert fs["k"] == 2 and len(fs["demo_ids"]) == 2 and fs["context_limit"] == 1500
    train_by_id = {e.id: e for e in splits.train}
    assert all(i in train_by_id for i in fs["demo_ids"])
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    kept = []
    for row, ex in zip(rows, splits.test, strict=True):
        assert ex.prompt in row["prompt"] and row["prompt"].endswith("<|im_start|>assistant\n")
        kept.append(sum(train_by_id[i].completion in row["prompt"] for i in fs["demo_ids"]))
        assert row["n_prompt_tokens"] + 6 <= 1500
    assert fs["dropped_total"] == sum(2 - n for n in kept) and fs["prompts_over_limit"] == 0
    assert scores["test_set"]["n"] == 3


def test_examples_are_scored_as_given_and_the_split_is_recorded(loaded, tmp_path):
    # the caller applies eval.limit (the CLI's --limit may differ from the config's), so evaluate must not
    scores = _evaluate_and_write(
        tmp_path, loaded, EXAMPLES[:2], cfg=_cfg(limit=1, metrics=["exact_match"]), system={},
        progress=False, split="validation",
    )  # fmt: skip
    assert scores["test_set"] == {"split": "validation", "n": 2, "hash": run_eval.test_set_hash(EXAMPLES[:2])}
    assert len((tmp_path / "predictions.jsonl").read_text().splitlines()) == 2


def test_test_set_hash_ignores_order_and_sees_reference_changes():
    h = run_eval.test_set_hash(EXAMPLES)
    assert h == run_eval.test_set_hash(list(reversed(EXAMPLES)))
    changed = [*EXAMPLES[:-1], Example("test_4", "p", "c", ("another reference",))]
    assert h != run_eval.test_set_hash(changed)
    assert h != run_eval.test_set_hash(EXAMPLES[:-1])
    assert len(h) == 64


def test_empty_split_is_a_user_error(loaded, tmp_path):
    with pytest.raises(DataError, match="no examples"):
        run_eval.evaluate(loaded, [], cfg=_cfg(), system={}, progress=False)


def test_the_stage_returns_data_and_writes_nothing(loaded, tmp_path, monkeypatch, two_processes):
    monkeypatch.chdir(tmp_path)
    cfg = _cfg(metrics=["exact_match"])
    evaluation = run_eval.evaluate(loaded, EXAMPLES[:3], cfg=cfg, system={"name": "s"}, progress=False)
    assert list(tmp_path.iterdir()) == []
    from tunebench.evaluate.generate import generate_texts

    expected = generate_texts(loaded.model, loaded.tokenizer, [loaded.format_prompt(e.prompt) for e in EXAMPLES[:3]],
                              family="causal", gen=cfg.generation)
    assert [(r["id"], r["prediction"]) for r in evaluation.predictions] == [
        (e.id, g.text) for e, g in zip(EXAMPLES[:3], expected, strict=True)]
    assert evaluation.scores["test_set"]["n"] == 3 and evaluation.scores["metrics"]["exact_match"]["n"] == 3
    # two processes each generate their shard and both return the whole evaluation, in the examples' order
    shards: list[list[str]] = []

    def spy(model, tokenizer, prompts, **kwargs):
        shards.append(list(prompts))
        return generate_texts(model, tokenizer, prompts, **kwargs)

    monkeypatch.setattr("tunebench.evaluate.generate.generate_texts", spy)
    both = two_processes(lambda rank: run_eval.evaluate(loaded, EXAMPLES[:3], cfg=cfg, system={"name": "s"},
                                                        progress=True, rank=rank, world_size=2))
    assert all([r["prediction"] for r in other.predictions] == [r["prediction"] for r in evaluation.predictions]
               for other in both)
    assert both[0].scores["metrics"] == evaluation.scores["metrics"] == both[1].scores["metrics"]
    assert len(shards) == 2 and all(shards) and not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == sorted(loaded.format_prompt(e.prompt) for e in EXAMPLES[:3])
    with pytest.raises(ValueError, match="rank 2 is outside a world of 2"):
        run_eval.evaluate(loaded, EXAMPLES[:3], cfg=cfg, system={}, rank=2, world_size=2)


def test_only_the_main_process_writes(loaded, tmp_path, two_processes):
    from types import SimpleNamespace

    from tunebench.pipeline import evaluate_into

    cfg = SimpleNamespace(eval=_cfg(metrics=["exact_match"]), seed=0)
    args = (cfg, loaded, EXAMPLES[:2], None, {"name": "s"}, 0)
    main, other = two_processes(lambda rank: evaluate_into(EvalDir(tmp_path / ("main", "other")[rank]), *args,
                                                           rank=rank, world_size=2).scores)
    assert not (tmp_path / "other").exists()
    on_disk = json.loads(EvalDir(tmp_path / "main").scores.read_text())
    assert on_disk["metrics"] == json.loads(json.dumps(main["metrics"])) and other["metrics"] == main["metrics"]
    assert len(EvalDir(tmp_path / "main").predictions.read_text().splitlines()) == 2
