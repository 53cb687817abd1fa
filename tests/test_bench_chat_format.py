"""`bench.chat_template: on` formats benchmark prompts as lm-evaluation-harness's --apply_chat_template.

The expected strings are built here from lm-eval 0.4.13's rules (api/task.py fewshot_context and build_qa_turn,
api/utils.py multiturn_to_singleturn, HFLM.apply_chat_template), written out message by message, then rendered
with the tokenizer's own chat template.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tunebench.bench.chat_format import bench_prompt, chat_messages, choice_delimiter, maybe_delimit
from tunebench.bench.instances import Instance, prepare_task
from tunebench.bench.loglik import Request, loglikelihoods, loglikelihoods_naive, split_tokens
from tunebench.bench.scoring import score_task
from tunebench.bench.spec import resolve_tasks

INST = Instance(
    id="0", prefix="About cats.\n\nQ: one?\nAnswer: yes\n\nQ: two?\nAnswer: no\n\n", query="Q: three?\nAnswer:",
    choices=("yes", "no"), target=0, description="About cats.\n\n",
    demos=(("Q: one?\nAnswer:", "yes"), ("Q: two?\nAnswer:", "no")),
)


@pytest.fixture(scope="module")
def chat(tiny_causal_loaded):
    return tiny_causal_loaded(use_chat=True)


def _template(tok, messages) -> str:
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def test_multiturn_is_lm_evals_default_with_the_chat_template(chat) -> None:
    want = _template(chat.tokenizer, [
        {"role": "system", "content": "About cats.\n\n"},
        {"role": "user", "content": "Q: one?\nAnswer:"}, {"role": "assistant", "content": "yes"},
        {"role": "user", "content": "Q: two?\nAnswer:"}, {"role": "assistant", "content": "no"},
        {"role": "user", "content": "Q: three?\nAnswer:"},
    ])
    assert bench_prompt(chat, INST) == want
    assert want.endswith("<|im_start|>assistant\n")  # the generation prompt: no assistant prefix of ours
    assert choice_delimiter(chat, INST) == ""  # lm-eval drops the target delimiter after a generation prompt


def test_single_turn_and_system_prompt(chat) -> None:
    """fewshot_as_multiturn false: one user message of the plain few-shot text; the system instruction is joined
    to the description with the few-shot delimiter (maybe_delimit)."""
    assert chat_messages(INST, "Be brief.", multiturn=False) == [
        {"role": "system", "content": "Be brief.\n\nAbout cats.\n\n"},
        {"role": "user", "content": "Q: one?\nAnswer: yes\n\nQ: two?\nAnswer: no\n\nQ: three?\nAnswer:"},
    ]
    bare = dataclasses.replace(INST, description="", demos=(), prefix="")
    assert chat_messages(bare) == [{"role": "user", "content": "Q: three?\nAnswer:"}]
    assert chat_messages(bare, "Sys") == [{"role": "system", "content": "Sys"},
                                          {"role": "user", "content": "Q: three?\nAnswer:"}]
    assert maybe_delimit("a ", "b") == "a b" and maybe_delimit("a", "b", "\n\n") == "a\n\nb"
    assert maybe_delimit(None, "b") == "b" and maybe_delimit("a", "") == "a"


def test_plain_prompts_stay_plain(tiny_causal_loaded) -> None:
    plain = tiny_causal_loaded(use_chat=False)
    assert bench_prompt(plain, INST) == INST.prompt == INST.prefix + INST.query
    assert choice_delimiter(plain, INST) == " "


def test_trailing_whitespace_of_the_context_is_scored_with_the_choice(chat) -> None:
    """lm-eval's _encode_pair: "...assistant\\n" + "A" scores "\\n" and "A" after "...assistant"."""
    context = bench_prompt(chat, INST)
    tokens, boundary = split_tokens(chat.tokenizer, context, "yes")
    assert tokens == chat.tokenizer(context + "yes", add_special_tokens=False)["input_ids"]
    assert chat.tokenizer.decode(tokens[boundary:]) == "\nyes"
    assert tokens[:boundary] == chat.tokenizer(context.rstrip(), add_special_tokens=False)["input_ids"]


def test_chat_mmlu_scores_like_the_straightforward_scorer(chat, data_dir: Path) -> None:
    """Letters after a chat generation prompt ("\\n" then "A".."D") still take one pass, with the same numbers."""
    (spec,) = resolve_tasks(["mmlu"], data_dir)
    spec = spec.derive(subtasks={"param": "subject", "values": ["anatomy"]})
    task = prepare_task(spec, data_dir=data_dir, shots=2, limit=4, seed=0)
    requests = [Request(bench_prompt(chat, i), tuple(choice_delimiter(chat, i) + c for c in i.choices), i.prefix)
                for i in task.instances]
    fast = loglikelihoods(chat.model, chat.tokenizer, requests, batch_size=2)
    slow = loglikelihoods_naive(chat.model, chat.tokenizer, requests)
    assert max(abs(a - b) for fr, sr in zip(fast, slow, strict=True) for a, b in zip(fr, sr, strict=True)) < 1e-4
    from tunebench.bench.loglik import _rows

    assert all(r.choice is None and len(r.shared) == 1 for r in _rows(chat.tokenizer, requests))  # one pass each
    rows = score_task(chat, task).samples
    assert [x for r in rows for x in r["loglikelihoods"]] == pytest.approx([x for r in fast for x in r], abs=1e-4)
    assert rows[0]["prompt"] == requests[0].context


def test_the_protocol_records_the_chat_layout(chat, tiny_causal_loaded, data_dir: Path) -> None:
    from tunebench.bench.chat_format import CHAT_FORMAT
    from tunebench.bench.runner import protocol

    (spec,) = resolve_tasks(["piqa"], data_dir)
    task = prepare_task(spec, data_dir=data_dir, limit=2)
    assert protocol(chat, task, 2)["chat_format"] == CHAT_FORMAT == "lm-eval fewshot_as_multiturn"
    assert protocol(tiny_causal_loaded(use_chat=False), task, 2)["chat_format"] is None
