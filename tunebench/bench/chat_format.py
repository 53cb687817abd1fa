"""Benchmark prompts in the model's chat template, exactly as lm-evaluation-harness's `--apply_chat_template`.

Source: lm-evaluation-harness 0.4.13, `lm_eval/api/task.py` (`ConfigurableTask.fewshot_context`, `build_qa_turn`,
`construct_requests`), `lm_eval/api/utils.py` (`maybe_delimit`, `multiturn_to_singleturn`),
`lm_eval/models/huggingface.py` (`HFLM.apply_chat_template`) and `lm_eval/config/evaluate_config.py`
(`fewshot_as_multiturn` is switched on by `--apply_chat_template` unless the user passes `false`):
- system message: the model's system prompt and the task description joined by `maybe_delimit` with the
  few-shot delimiter (no system message when both are empty);
- few-shot as multi-turn (lm-eval's default with the chat template): each demonstration is a user turn holding
  its query and an assistant turn holding its answer, then the example's query is the last user turn; otherwise
  (`fewshot_as_multiturn false`) one user message holds the plain few-shot text (query + target delimiter +
  answer + few-shot delimiter per demonstration) followed by the query;
- rendered with `add_generation_prompt=True` (tunebench tasks have no `gen_prefix`, the assistant prefix); a
  template that fails with the system role is rendered again without it, as lm-eval retries;
- the choices are scored with no target delimiter (the generation prompt already ends the context), and lm-eval
  moves the context's trailing whitespace to the continuation, which `loglik.split_tokens` does too.
Without the chat template the prompt is the plain text (`Instance.prompt`) and the choices keep their delimiter.
"""

from __future__ import annotations

from typing import Any

from tunebench.bench.instances import Instance
from tunebench.errors import ModelError
from tunebench.models.chat import render_messages

CHAT_FORMAT = "lm-eval fewshot_as_multiturn"
"""The layout of chat-templated benchmark prompts, recorded in each task's protocol (results.json)."""


def maybe_delimit(prefix: str | None, suffix: str | None, delimiter: str = " ") -> str:
    """prefix + delimiter + suffix, without the delimiter when either side has whitespace at the join, and just
    the other one when one is empty (lm_eval/api/utils.py `maybe_delimit`)."""
    if not prefix:
        return suffix or ""
    if not suffix:
        return prefix
    return prefix + suffix if prefix[-1].isspace() or suffix[0].isspace() else prefix + delimiter + suffix


def chat_messages(inst: Instance, system_prompt: str | None = None, *, multiturn: bool = True
                  ) -> list[dict[str, str]]:
    """The messages lm-eval's `fewshot_context` builds for one instance (before its chat template)."""
    messages: list[dict[str, str]] = []
    system = maybe_delimit(system_prompt, inst.description, inst.fewshot_delimiter)
    if system:
        messages.append({"role": "system", "content": system})
    if multiturn:
        for query, answer in inst.demos:
            messages += [{"role": "user", "content": query}, {"role": "assistant", "content": answer}]
        messages.append({"role": "user", "content": inst.query})
    else:
        shots = "".join(q + inst.target_delimiter + a + inst.fewshot_delimiter for q, a in inst.demos)
        messages.append({"role": "user", "content": shots + inst.query})
    return messages


def render_chat(tokenizer: Any, inst: Instance, system_prompt: str | None = None, *, multiturn: bool = True) -> str:
    """The chat-templated context of one instance, with the generation prompt; ModelError for a failing template
    (after one retry without the system message, as lm-eval's HFLM.apply_chat_template)."""
    messages = chat_messages(inst, system_prompt, multiturn=multiturn)
    try:
        return render_messages(tokenizer, messages)
    except ModelError:
        if messages[0]["role"] != "system":
            raise
        return render_messages(tokenizer, messages[1:])


def bench_prompt(loaded: Any, inst: Instance, *, multiturn: bool = True) -> str:
    """The exact context the model is given for `inst`: chat-templated when the model was loaded to use its chat
    template (`loaded.use_chat`, set from `bench.chat_template`), else the plain prompt."""
    if not getattr(loaded, "use_chat", False):
        return inst.prompt
    return render_chat(loaded.tokenizer, inst, getattr(loaded, "system_prompt", None), multiturn=multiturn)


def choice_delimiter(loaded: Any, inst: Instance) -> str:
    """What goes before each choice: the task's target delimiter, or nothing after a chat generation prompt."""
    return "" if getattr(loaded, "use_chat", False) else inst.target_delimiter
