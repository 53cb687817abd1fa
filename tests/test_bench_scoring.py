"""Log-likelihood scoring on tiny models: the prefix-cached, single-pass scorer equals the straightforward one."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunebench.bench.instances import prepare_task
from tunebench.bench.loglik import (
    Request,
    encode,
    loglikelihoods,
    loglikelihoods_naive,
    loglikelihoods_seq2seq,
    split_tokens,
)
from tunebench.bench.scoring import choice_probs, mean_stderr, score_task
from tunebench.bench.spec import resolve_tasks

SUBJECTS = ["abstract_algebra", "anatomy"]


@pytest.fixture(scope="module")
def tiny(tiny_causal_loaded):
    return tiny_causal_loaded(use_chat=True)


def mmlu_task(name: str, data_dir: Path, *, shots: int = 2, per_subject: int = 3):
    (spec,) = resolve_tasks([name], data_dir)
    spec = spec.derive(subtasks={"param": "subject", "values": SUBJECTS})
    return prepare_task(spec, data_dir=data_dir, shots=shots, limit=per_subject * len(SUBJECTS), seed=0)


def requests_of(task, tok, use_chat: bool) -> list[Request]:
    from tunebench.models.chat import format_prompt

    return [
        Request(format_prompt(tok, i.prompt, use_chat=use_chat), tuple(" " + c for c in i.choices), i.prefix)
        for i in task.instances
    ]


def count_forwards(model) -> tuple[list[int], object]:
    calls: list[int] = []
    handle = model.register_forward_pre_hook(lambda _m, args, kwargs: calls.append(kwargs["input_ids"].shape[1]),
                                             with_kwargs=True)
    return calls, handle


@pytest.mark.parametrize(("name", "use_chat"), [("mmlu", True), ("mmlu_cloze", False)])
def test_cached_scorer_equals_straightforward(tiny, data_dir: Path, name: str, use_chat: bool) -> None:
    task = mmlu_task(name, data_dir)
    requests = requests_of(task, tiny.tokenizer, use_chat)
    calls, handle = count_forwards(tiny.model)
    try:
        fast = loglikelihoods(tiny.model, tiny.tokenizer, requests, batch_size=4)
    finally:
        handle.remove()
    slow = loglikelihoods_naive(tiny.model, tiny.tokenizer, requests)
    assert len(fast) == 6 and all(len(row) == 4 for row in fast)
    assert max(abs(a - b) for fr, sr in zip(fast, slow, strict=True) for a, b in zip(fr, sr, strict=True)) < 1e-4
    # each subject's prefix runs once; letters: one row per question; cloze: one row per question and choice
    rows = 6 if name == "mmlu" else 24
    assert len(calls) == len(SUBJECTS) + sum(-(-n // 4) for n in [rows // 2] * 2)
    # the first call is the shared prefix (chat header, description, demonstrations), the others are short
    assert calls[0] >= len(encode(tiny.tokenizer, task.instances[0].prefix)) - 1
    assert max(calls[1:]) < calls[0]


def test_zero_shot_questions_are_batched_across_questions_exactly(tiny_causal_loaded, data_dir: Path) -> None:
    """PIQA zero-shot: every question is one prefix group, so rows of different questions and lengths share right-
    padded batches; each choice's log-likelihood equals the one-forward-per-choice path's to 1e-6 relative (fp32:
    these sums are 100-300 nats, where one float32 step is already 1.5e-5 to 3e-5 absolute)."""
    plain = tiny_causal_loaded(use_chat=False)
    (spec,) = resolve_tasks(["piqa"], data_dir)
    task = prepare_task(spec, data_dir=data_dir, shots=0, limit=10, seed=0)
    requests = [Request(i.prompt, tuple(i.target_delimiter + c for c in i.choices), i.prefix) for i in task.instances]
    assert len({r.group for r in requests}) == 1
    calls, handle = count_forwards(plain.model)
    try:
        fast = loglikelihoods(plain.model, plain.tokenizer, requests, batch_size=8)
    finally:
        handle.remove()
    slow = loglikelihoods_naive(plain.model, plain.tokenizer, requests)
    assert max(abs(a - b) / abs(b) for fr, sr in zip(fast, slow, strict=True) for a, b in zip(fr, sr, strict=True)) \
        < 1e-6
    assert len(calls) <= 1 + -(-20 // 8)  # 20 rows (2 choices x 10 questions): a shared prefix, then 3 batches


def test_letter_scoring_is_one_pass_per_question(tiny, data_dir: Path) -> None:
    from tunebench.bench.loglik import _rows

    requests = requests_of(mmlu_task("mmlu", data_dir), tiny.tokenizer, True)
    rows = _rows(tiny.tokenizer, requests)
    assert len(rows) == len(requests) and all(r.choice is None and len(r.targets) == 4 for r in rows)
    letters = {tiny.tokenizer.decode([t]) for t in rows[0].targets}
    assert letters == {" A", " B", " C", " D"}


def test_token_split_concatenation_equals_whole(tiny) -> None:
    tok = tiny.tokenizer
    for context, continuation in [("Answer:", " A"), ("Answer: ", "A"), ("x = ", "3.14159"), ("Q\n", "\nA")]:
        tokens, boundary = split_tokens(tok, context, continuation)
        assert tokens == encode(tok, context + continuation)
        assert 1 <= boundary < len(tokens)
    tokens, boundary = split_tokens(tok, "Answer: ", "A")  # the trailing space joins the continuation token
    assert tok.decode(tokens[boundary:]) == " A"


def test_prefix_reuse_off_gives_same_scores(tiny, data_dir: Path) -> None:
    requests = requests_of(mmlu_task("mmlu_cloze", data_dir, shots=1, per_subject=1), tiny.tokenizer, False)
    with_cache = loglikelihoods(tiny.model, tiny.tokenizer, requests, batch_size=3)
    without = loglikelihoods(tiny.model, tiny.tokenizer, requests, batch_size=3, reuse_prefix=False)
    assert max(abs(a - b) for x, y in zip(with_cache, without, strict=True) for a, b in zip(x, y, strict=True)) < 1e-4


def test_score_task_rows_and_metrics(tiny, data_dir: Path) -> None:
    task = mmlu_task("mmlu", data_dir, shots=1)
    scores = score_task(tiny, task, batch_size=8)
    row = scores.samples[0]
    assert set(row) >= {"id", "prompt", "choices", "target", "loglikelihoods", "probs", "prediction", "correct"}
    assert abs(sum(row["probs"]) - 1) < 1e-9 and row["prediction"] == max(range(4), key=row["loglikelihoods"].__getitem__)
    acc = [s["scores"]["acc"] for s in scores.samples]
    assert scores.metrics["acc"] == pytest.approx(mean_stderr(acc))
    # a perturbed copy of the instances scores through the same entry point (HELM robustness)
    from dataclasses import replace

    perturbed = [replace(i, query=i.query.upper()) for i in task.instances]
    sample = score_task(tiny, task, perturbed).samples[0]
    # the stored prompt is the exact text the model was given: the chat template around the perturbed prompt, in
    # lm-eval's --apply_chat_template form (description as system message, demonstrations as turns)
    (demo_q, demo_a), = perturbed[0].demos
    assert sample["prompt"] == tiny.tokenizer.apply_chat_template(
        [{"role": "system", "content": perturbed[0].description}, {"role": "user", "content": demo_q},
         {"role": "assistant", "content": demo_a}, {"role": "user", "content": perturbed[0].query}],
        tokenize=False, add_generation_prompt=True)
    assert perturbed[0].prompt == perturbed[0].description + demo_q + " " + demo_a + "\n\n" + perturbed[0].query
    assert perturbed[0].prompt.endswith("ANSWER:")


def test_seq2seq_scores_do_not_depend_on_batching(tiny_t5_dir: Path) -> None:
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_t5_dir)
    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_t5_dir)
    requests = [Request("Is the sky blue?", (" yes", " no", " it depends")), Request("2 + 2 =", (" 4", " five"))]
    batched = loglikelihoods_seq2seq(model, tok, requests, batch_size=8)
    single = loglikelihoods_seq2seq(model, tok, requests, batch_size=1)
    assert max(abs(a - b) for x, y in zip(batched, single, strict=True) for a, b in zip(x, y, strict=True)) < 1e-4
    assert all(v < 0 for row in batched for v in row)


def test_mean_stderr_and_probs() -> None:
    assert mean_stderr([1.0, 0.0, 1.0, 0.0]) == pytest.approx({"value": 0.5, "stderr": (1 / 3) ** 0.5 / 2})
    assert mean_stderr([1.0]) == {"value": 1.0, "stderr": 0.0}
    assert choice_probs([0.0, 0.0]) == [0.5, 0.5]


def test_seq2seq_runs_the_encoder_once_per_context_and_matches_a_plain_forward(tiny_t5_dir: Path) -> None:
    """Reference: transformers' own forward of each (context, continuation) pair, one at a time."""
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_t5_dir)
    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_t5_dir).eval()
    requests = [Request("Is the sky blue?", (" yes", " no", " it depends")),
                Request("2 + 2 = ? Think about it carefully.", (" 4", " five")), Request("Pick one.", (" a", " b"))]
    expected = []
    for req in requests:
        source = torch.tensor([tok(req.context)["input_ids"]])
        row = []
        for continuation in req.continuations:
            labels = torch.tensor([tok(continuation, add_special_tokens=False)["input_ids"]])
            with torch.no_grad():
                logprobs = torch.log_softmax(model(input_ids=source, labels=labels).logits[0].float(), -1)
            row.append(float(logprobs.gather(-1, labels[0][:, None]).sum()))
        expected.append(row)
    rows = []  # encoder input rows: one per context, not one per (context, choice) pair
    hook = model.get_encoder().register_forward_hook(
        lambda module, args, kwargs, output: rows.append(kwargs["input_ids"].shape[0]), with_kwargs=True)
    try:
        got = loglikelihoods_seq2seq(model, tok, requests, batch_size=4)
    finally:
        hook.remove()
    assert [len(r) for r in got] == [3, 2, 2]
    assert max(abs(a - b) for x, y in zip(got, expected, strict=True) for a, b in zip(x, y, strict=True)) < 1e-4
    assert sum(rows) == len(requests) and len(rows) == 3  # 4 decoder rows a batch: {2}, {3}, {2} by length


def test_examples_with_their_own_demonstrations_are_batched(tiny_causal_loaded, data_dir: Path) -> None:
    """lm-eval's sampler gives each example its own prefix: those one-row groups run in batches, same numbers."""
    plain = tiny_causal_loaded(use_chat=False)
    (spec,) = resolve_tasks(["mmlu"], data_dir)
    spec = spec.derive(subtasks={"param": "subject", "values": ["anatomy"]},
                       fewshot={"n": 2, "split": "dev", "sampler": "lm-eval"})
    task = prepare_task(spec, data_dir=data_dir, limit=6, seed=0)
    requests = requests_of(task, plain.tokenizer, False)
    assert len({r.group for r in requests}) == 6  # every example its own demonstrations
    calls, handle = count_forwards(plain.model)
    try:
        fast = loglikelihoods(plain.model, plain.tokenizer, requests, batch_size=4)
    finally:
        handle.remove()
    slow = loglikelihoods_naive(plain.model, plain.tokenizer, requests)
    assert max(abs(a - b) for fr, sr in zip(fast, slow, strict=True) for a, b in zip(fr, sr, strict=True)) < 1e-4
    assert len(calls) == 1 + 2  # the shared description once, then 6 rows in batches of 4 and 2
