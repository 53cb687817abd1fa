"""Batched generation for evaluation and in-training metrics: fast on CPU, equal to one-at-a-time decoding.

Greedy decoding of decoder-only models (the evaluation default) runs through `decode.greedy_decode`: per-prompt
prefill, continuous batching, an in-place KV cache. Everything else (beam search, sampling, seq2seq models,
caches with sliding-window or linear layers, checkpoints whose generation config adds logits processors) goes
through Hugging Face `generate` (KV cache, `stop_strings`, early exit once every row has finished). Around both,
this module adds: length-sorted batches returned in input order (sorting cuts the padding each row computes),
left padding for decoder-only models without mutating the caller's tokenizer, end-of-turn tokens of chat models
as extra EOS ids, cutting the text at the first stop string, per-example token counts and time shares, and
decoding settings taken only from our GenerationConfig, so two runs with equal configs decode alike whatever a
checkpoint's `generation_config.json` says (its penalties aside, which also route decoding to `generate`).

Measured on 2 CPU cores with SmolLM2-135M and DialogSum (speed/eval_throughput.py): the greedy decoder with 32
slots is ~4.9x a one-at-a-time `generate` loop with equal outputs (16 slots ~3.9x, 64 slots a little faster
than 32); a static KV cache in `generate` is no faster than the dynamic one, and HF continuous batching
(`generate_batch`) is slower on CPU; with more torch threads than free cores every matrix product waits for a
descheduled thread, so on a busy machine run with one torch thread.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from tunebench.config import GenerationConfig
from tunebench.evaluate.decode import greedy_decode, greedy_decode_seq2seq, supports_fast_greedy
from tunebench.models.chat import encode_prompt, pad_token_id
from tunebench.models.methods import uses_prompt_learning

log = logging.getLogger(__name__)

# Special tokens that end an assistant turn in common chat templates (ChatML, Llama 3, Gemma, Phi-3).
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>")


@dataclass(frozen=True)
class GenerationResult:
    """One completion. `time_s`: its prefill plus its share of each decode step it was in (greedy decoder), or
    its share of its batch's wall time (`generate`, where a batch runs as one)."""

    text: str
    n_prompt_tokens: int
    n_new_tokens: int
    time_s: float
    n_cut_tokens: int = 0  # prompt tokens cut from the left to fit the model's positions
    cut_prompt: str | None = None  # when cut: the text of the tokens the model was given


def fit_prompts(encoded: list[list[int]], limit: int | None, reserve: int, bos_id: int | None,
                where: str = "generation.max_new_tokens") -> tuple[list[list[int]], list[int]]:
    """Cut each prompt from the left so prompt + `reserve` new tokens fit `limit` positions; (ids, tokens cut).

    A leading BOS stays (the model always saw one there). The oldest text goes first, as lm-evaluation-harness
    cuts contexts (`(context + continuation)[-max_length:]`); a few-shot prompt loses its demonstrations before
    its query. Raises ConfigError when `reserve` leaves no room for a prompt.
    """
    if limit is None:
        return encoded, [0] * len(encoded)
    room = limit - reserve
    if room < 2:
        from tunebench.errors import ConfigError

        raise ConfigError(f"{where} {reserve} leaves no room for a prompt in the model's {limit} positions: "
                          f"lower it below {limit - 1}")
    out, cut = [], []
    for ids in encoded:
        if len(ids) <= room:
            out.append(ids)
            cut.append(0)
            continue
        head = ids[:1] if bos_id is not None and ids[0] == bos_id else []
        out.append(head + ids[len(ids) - (room - len(head)):])
        cut.append(len(ids) - room)
    return out, cut


def eos_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every id that ends a completion: the tokenizer's and the model's EOS plus chat end-of-turn tokens.

    Chat models often declare the end-of-text token as EOS but close their turn with another one (or the reverse),
    so stopping at only one of them lets the model ramble into a fake next turn.
    """
    ids: list[int] = []

    def add(value: Any) -> None:
        for v in value if isinstance(value, list | tuple) else [value]:
            if isinstance(v, int) and v >= 0 and v not in ids:
                ids.append(v)

    add(tokenizer.eos_token_id)
    gen_cfg = getattr(model, "generation_config", None)
    if gen_cfg is not None:
        add(gen_cfg.eos_token_id)
    add(getattr(model.config, "eos_token_id", None))
    special = set(getattr(tokenizer, "all_special_tokens", []) or [])
    special |= {t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special}
    for token in END_OF_TURN_TOKENS:
        if token in special:
            add(tokenizer.convert_tokens_to_ids(token))
    return ids


def encode_prompts(tokenizer: Any, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of each prompt (`chat.encode_prompt`: special tokens unless the prompt starts with BOS)."""
    return [encode_prompt(tokenizer, prompt) for prompt in prompts]


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest first (memory peaks show up at once)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def pad_batch(
    rows: list[list[int]], pad_id: int, side: Literal["left", "right"], device: Any
) -> dict[str, Any]:
    """One padded batch with its attention mask: left for decoder-only models, so every row ends where it generates."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[i, span] = torch.tensor(row, dtype=torch.long)
        mask[i, span] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


def count_new_tokens(row: Sequence[int], eos_ids: Sequence[int], pad_id: int) -> int:
    """Generated tokens up to and including the first EOS; rows stopped otherwise lose their trailing padding."""
    eos = set(eos_ids)
    for i, tok in enumerate(row):
        if tok in eos:
            return i + 1
    n = len(row)
    while n > 0 and row[n - 1] == pad_id:
        n -= 1
    return n


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """Text before the earliest stop string, whitespace trimmed (generation may end on the stop string)."""
    cut = len(text)
    for stop in stops:
        if stop:
            pos = text.find(stop)
            if pos != -1:
                cut = min(cut, pos)
    return text[:cut].strip()


def hf_generation_kwargs(gen: GenerationConfig, eos_ids: list[int], pad_id: int) -> dict[str, Any]:
    """The decoding settings `generate` gets: ours override the checkpoint's defaults for every knob we own."""
    kwargs: dict[str, Any] = {
        "max_new_tokens": gen.max_new_tokens,
        "num_beams": gen.num_beams,
        "do_sample": gen.do_sample,
        "eos_token_id": eos_ids,
        "pad_token_id": pad_id,
        "num_return_sequences": 1,
        "use_cache": True,
    }
    if gen.do_sample:
        kwargs.update(temperature=gen.temperature, top_p=gen.top_p, top_k=0)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    if gen.num_beams > 1:
        kwargs.update(early_stopping=True, length_penalty=1.0)
    return kwargs


@contextlib.contextmanager
def _eval_mode(model: Any) -> Iterator[None]:
    """Switch dropout off for generation and restore the caller's mode (training calls this mid-run)."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def generate_texts(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    family: Literal["causal", "seq2seq"],
    gen: GenerationConfig,
    progress: bool = False,
    seed: int = 0,
    bf16: bool = False,
) -> list[GenerationResult]:
    """Complete already-formatted prompts in length-sorted batches; results come back in input order.

    Greedy and beam search are deterministic; sampling is seeded per batch from `seed` inside a forked RNG, so
    the caller's random state (e.g. a training run's data order) is left untouched.
    """
    import torch

    if not prompts:
        return []
    eos_ids = eos_token_ids(model, tokenizer)
    pad_id = pad_token_id(tokenizer, eos_ids)
    from tunebench.models.load import position_limit

    encoded = encode_prompts(tokenizer, prompts)
    if any(not ids for ids in encoded):
        raise ValueError("cannot generate from an empty prompt: every prompt needs at least one token")
    reserve = gen.max_new_tokens if family == "causal" else 0  # a decoder-only model's new tokens take positions too
    encoded, cut = fit_prompts(encoded, position_limit(model), reserve, getattr(tokenizer, "bos_token_id", None))
    if any(cut):
        log.warning("%d of %d prompts cut from the left to fit the model's %s positions", sum(1 for c in cut if c),
                    len(cut), position_limit(model))
    side: Literal["left", "right"] = "left" if family == "causal" else "right"
    kwargs = hf_generation_kwargs(gen, eos_ids, pad_id)
    if gen.stop:
        kwargs.update(stop_strings=list(gen.stop), tokenizer=tokenizer)
    device = model.device
    bar = _progress_bar(len(prompts), progress)
    if uses_prompt_learning(model):
        with _eval_mode(model), torch.inference_mode():
            results = _uncached_greedy(model, tokenizer, encoded, family, gen, eos_ids, bar, bf16)
        if bar is not None:
            bar.close()
        return _with_cuts(results, cut, encoded, tokenizer)
    if supports_fast_greedy(model, family, gen):
        with _eval_mode(model), torch.inference_mode():
            results = _fast_greedy(model, tokenizer, encoded, gen, eos_ids, bar, bf16, family)
        if bar is not None:
            bar.close()
        return _with_cuts(results, cut, encoded, tokenizer)
    results: list[GenerationResult | None] = [None] * len(prompts)
    rng_devices = [device] if device.type == "cuda" else []
    with _eval_mode(model), torch.inference_mode(), torch.random.fork_rng(devices=rng_devices):
        for b, batch in enumerate(length_sorted_batches([len(e) for e in encoded], gen.batch_size)):
            inputs = pad_batch([encoded[i] for i in batch], pad_id, side, device)
            if gen.do_sample:
                torch.manual_seed(seed * 1_000_003 + b)
            start = time.perf_counter()
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
                out = model.generate(**inputs, **kwargs)
            elapsed = time.perf_counter() - start
            new = out[:, inputs["input_ids"].shape[1] :] if family == "causal" else out[:, 1:]
            for row, i in zip(new.tolist(), batch, strict=True):
                n_new = count_new_tokens(row, eos_ids, pad_id)
                text = tokenizer.decode(row[:n_new], skip_special_tokens=True)
                results[i] = GenerationResult(
                    text=cut_at_stop(text, gen.stop),
                    n_prompt_tokens=len(encoded[i]),
                    n_new_tokens=n_new,
                    time_s=elapsed / len(batch),
                )
            if bar is not None:
                bar.update(len(batch))
    if bar is not None:
        bar.close()
    return _with_cuts([r for r in results if r is not None], cut, encoded, tokenizer)


def _with_cuts(results: list[GenerationResult], cut: list[int], encoded: list[list[int]],
               tokenizer: Any) -> list[GenerationResult]:
    """Record on each result how many prompt tokens were cut and, when some were, the text the model was given."""
    return [dataclasses.replace(r, n_cut_tokens=c, cut_prompt=tokenizer.decode(ids)) if c else r
            for r, c, ids in zip(results, cut, encoded, strict=True)]


def _fast_greedy(model: Any, tokenizer: Any, encoded: list[list[int]], gen: GenerationConfig, eos_ids: list[int],
                 bar: Any, bf16: bool, family: Literal["causal", "seq2seq"] = "causal") -> list[GenerationResult]:  # fmt: skip
    """Greedy decoding through `decode.greedy_decode` (causal) or `decode.greedy_decode_seq2seq`: longest prompts
    first, stop strings checked as text."""
    import torch

    decode = greedy_decode if family == "causal" else greedy_decode_seq2seq

    def stopped(tokens: list[int]) -> bool:
        text = tokenizer.decode(tokens, skip_special_tokens=True)
        return any(stop and stop in text for stop in gen.stop)

    rows = decode(
        model, encoded, gen, eos_ids,
        order=sorted(range(len(encoded)), key=lambda i: (-len(encoded[i]), i)),
        is_done_text=stopped if gen.stop else None,
        on_done=(lambda _: bar.update(1)) if bar is not None else None,
        autocast=lambda: torch.autocast(device_type=model.device.type, dtype=torch.bfloat16, enabled=bf16),
    )  # fmt: skip
    return [
        GenerationResult(
            text=cut_at_stop(tokenizer.decode(row.tokens, skip_special_tokens=True), gen.stop),
            n_prompt_tokens=len(ids), n_new_tokens=len(row.tokens), time_s=row.time_s,
        )
        for row, ids in zip(rows, encoded, strict=True)
    ]


def _uncached_greedy(model: Any, tokenizer: Any, encoded: list[list[int]], family: Literal["causal", "seq2seq"],
                     gen: GenerationConfig, eos_ids: list[int], bar: Any, bf16: bool) -> list[GenerationResult]:
    """Greedy decoding of a prompt- or prefix-tuned PEFT model: one prompt at a time, a full forward per token.

    Why not `generate`: under transformers 5 the model takes its KV cache as `cache`, while PEFT 0.21's
    `prepare_inputs_for_generation` still injects the soft prompt / prefix through `past_key_values`, so the
    cached decode steps run without it. A full forward per token goes through PEFT's own `forward`, exactly as
    in training: correct, and slower (quadratic in the output length).
    """
    import torch

    from tunebench.errors import ConfigError

    if gen.do_sample or gen.num_beams != 1:
        raise ConfigError("eval.generation: prompt_tuning and prefix_tuning models decode greedily in tunebench; "
                          "set num_beams 1 and do_sample false")
    device = model.device
    start_id = getattr(getattr(model, "config", None), "decoder_start_token_id", None) or 0
    results = []
    for ids in encoded:
        start = time.perf_counter()
        prompt = torch.tensor([ids], device=device)
        new: list[int] = []
        for _ in range(gen.max_new_tokens):
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
                if family == "seq2seq":
                    decoder = torch.tensor([[start_id, *new]], device=device)
                    logits = model(input_ids=prompt, attention_mask=torch.ones_like(prompt),
                                   decoder_input_ids=decoder, use_cache=False).logits
                else:
                    logits = model(input_ids=torch.cat([prompt, torch.tensor([new], dtype=torch.long,
                                                                             device=device)], dim=1),
                                   use_cache=False).logits
            token = int(logits[0, -1].argmax())
            if token in eos_ids:
                break
            new.append(token)
            if gen.stop and any(stop in tokenizer.decode(new, skip_special_tokens=True) for stop in gen.stop):
                break
        text = tokenizer.decode(new, skip_special_tokens=True)
        results.append(GenerationResult(text=cut_at_stop(text, gen.stop), n_prompt_tokens=len(ids),
                                        n_new_tokens=len(new), time_s=time.perf_counter() - start))
        if bar is not None:
            bar.update(1)
    return results


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="generate", unit="ex")
