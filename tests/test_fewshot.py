"""Few-shot prompts: train-only demonstrations, chat/plain rendering, and demonstrations dropped to fit."""

from __future__ import annotations

import pytest

from tunebench.config import ModelConfig
from tunebench.data.example import Example
from tunebench.errors import DataError
from tunebench.evaluate.fewshot import (
    build_fewshot_prompts,
    choose_demonstrations,
    context_limit,
    render_chat,
    render_plain,
)


def _ex(i: str, prompt: str, completion: str) -> Example:
    return Example(id=i, prompt=prompt, completion=completion, references=(completion,))


TEST = [
    _ex(f"test_{i}", f"Summarize dialogue number {i} about topic {i * 7}.", f"gold test summary {i}")
    for i in range(4)
]
TRAIN = [_ex(f"train_{i}", f"Summarize the train dialogue {i}.", f"train summary {i}") for i in range(30)]


@pytest.fixture(scope="module")
def chat_model(tiny_causal_dir):
    from tunebench.models.load import load_model

    return load_model(ModelConfig(ref=str(tiny_causal_dir)))


@pytest.fixture(scope="module")
def plain_model(tiny_t5_dir):
    from tunebench.models.load import load_model

    return load_model(ModelConfig(ref=str(tiny_t5_dir)))


def test_demonstrations_never_come_from_the_test_set():
    # a train copy of a test prompt (re-spaced) and a train item reusing a test id must both be left out
    leaky = [
        _ex("train_leak", "Summarize  dialogue number 2 about\ntopic 14.", "x"),
        _ex("test_1", "other", "y"),
    ]
    pool = TRAIN[:5] + leaky
    demos = choose_demonstrations(pool, 5, seed=0, test=TEST)
    assert {d.id for d in demos} == {e.id for e in TRAIN[:5]}
    with pytest.raises(DataError, match="eval.shots"):
        choose_demonstrations(pool, 6, seed=0, test=TEST)


def test_fewshot_prompts_hold_train_demonstrations_and_no_test_example(chat_model):
    fs = build_fewshot_prompts(chat_model, TEST, k=3, pool=TRAIN + TEST, seed=1, max_new_tokens=8)
    assert len(fs.demo_ids) == 3 and all(i.startswith("train_") for i in fs.demo_ids)
    for ex, text in zip(TEST, fs.model_prompts, strict=True):
        others = [t for t in TEST if t is not ex]
        assert not any(o.prompt in text or o.completion in text for o in others)
        assert text.count(ex.prompt) == 1
    assert fs.kept == [3] * len(TEST) and fs.stats["dropped_total"] == 0


def test_selection_is_seeded_and_shared_by_every_example(chat_model):
    a = build_fewshot_prompts(chat_model, TEST, k=2, pool=TRAIN, seed=5, max_new_tokens=8)
    b = build_fewshot_prompts(chat_model, TEST, k=2, pool=TRAIN, seed=5, max_new_tokens=8)
    c = build_fewshot_prompts(chat_model, TEST, k=2, pool=TRAIN, seed=6, max_new_tokens=8)
    assert a.model_prompts == b.model_prompts and a.demo_ids == b.demo_ids
    assert a.demo_ids != c.demo_ids
    prefix = a.plain_prompts[0][: a.plain_prompts[0].index(TEST[0].prompt)]
    assert all(p.startswith(prefix) for p in a.plain_prompts)


def test_chat_models_get_alternating_turns(chat_model):
    fs = build_fewshot_prompts(chat_model, TEST[:1], k=2, pool=TRAIN, seed=0, max_new_tokens=8)
    text = fs.model_prompts[0]
    assert text.count("<|im_start|>user") == 3
    assert text.count("<|im_start|>assistant") == 3  # two answered demonstrations and the generation prompt
    assert text.endswith("<|im_start|>assistant\n")
    demo = next(d for d in TRAIN if d.id == fs.demo_ids[0])
    assert f"{demo.prompt}<|im_end|>\n<|im_start|>assistant\n{demo.completion}<|im_end|>" in text
    assert fs.plain_prompts[0] == render_plain(
        [d for i in fs.demo_ids for d in TRAIN if d.id == i], TEST[0].prompt
    )


def test_zero_shot_is_the_formatted_prompt(chat_model, plain_model):
    fs = build_fewshot_prompts(chat_model, TEST, k=0, pool=None, seed=0, max_new_tokens=8)
    assert fs.model_prompts == [chat_model.format_prompt(e.prompt) for e in TEST]
    assert fs.plain_prompts == [e.prompt for e in TEST]
    plain = build_fewshot_prompts(plain_model, TEST, k=0, pool=None, seed=0, max_new_tokens=8)
    assert plain.model_prompts == [e.prompt for e in TEST]


def test_plain_models_get_blank_line_separated_blocks(plain_model):
    fs = build_fewshot_prompts(plain_model, TEST[:1], k=2, pool=TRAIN, seed=0, max_new_tokens=8)
    demos = [next(d for d in TRAIN if d.id == i) for i in fs.demo_ids]
    expected = f"{demos[0].prompt}\n{demos[0].completion}\n\n{demos[1].prompt}\n{demos[1].completion}\n\n{TEST[0].prompt}"
    assert fs.model_prompts[0] == expected == fs.plain_prompts[0]


def test_demonstrations_that_do_not_fit_are_dropped_longest_first_and_counted(chat_model):
    tok = chat_model.tokenizer

    def n_tokens(text: str) -> int:
        return len(tok(text, add_special_tokens=False)["input_ids"])

    long_demo = _ex("train_long", "Summarize this very long dialogue. " + "blah " * 120, "long summary")
    pool = [long_demo, *TRAIN[:2]]
    short_query, max_new = TEST[0], 8
    full = build_fewshot_prompts(chat_model, [short_query], k=3, pool=pool, seed=0, max_new_tokens=max_new)
    budget = n_tokens(full.model_prompts[0]) + max_new - 1  # all three demonstrations miss by one token
    # a query that fits alone but not beside even the shortest demonstration (" words" is one token)
    one_demo = n_tokens(render_chat(tok, TRAIN[:1], short_query.prompt, None)) - n_tokens(
        chat_model.format_prompt(short_query.prompt)
    )
    base = n_tokens(chat_model.format_prompt("Summarize:" + " words"))
    long_query = _ex("test_long", "Summarize:" + " words" * (budget - max_new - base - one_demo // 2), "s")
    fs = build_fewshot_prompts(
        chat_model, [short_query, long_query], k=3, pool=pool, seed=0, max_new_tokens=max_new, budget=budget
    )
    assert fs.kept == [2, 0]
    assert "blah blah" not in fs.model_prompts[0]  # the long demonstration went first
    assert fs.stats["dropped_total"] == 4 and fs.stats["examples_with_dropped"] == 2
    assert fs.stats["context_limit"] == budget and fs.stats["prompts_over_limit"] == 0
    for text in fs.model_prompts:
        assert n_tokens(text) + max_new <= budget
    assert fs.plain_prompts[1] == long_query.prompt


def test_a_query_too_long_even_alone_is_counted(chat_model):
    fs = build_fewshot_prompts(chat_model, TEST[:1], k=1, pool=TRAIN, seed=0, max_new_tokens=8, budget=12)
    assert fs.kept == [0] and fs.stats["prompts_over_limit"] == 1


def test_context_limit_takes_the_smallest_real_limit(chat_model):
    assert context_limit(chat_model.model, chat_model.tokenizer, None) == 2048  # the fixture's positions
    assert context_limit(chat_model.model, chat_model.tokenizer, 300) == 300
