"""Log-likelihood of continuations given a context: the engine behind multiple-choice benchmarks.

Written here because transformers has no scorer and lm-evaluation-harness is a heavy dependency that re-runs
the whole prompt per choice. Two speed-ups, both exact up to float rounding:
- prefix reuse: requests of one group (a subject's few-shot prompt) share their leading tokens; those run once
  and every batch starts from a copy of their KV cache (a `DynamicCache` expanded along the batch);
- single pass: when the choices differ only in their last token after the same context (" A" .. " D"; after a
  chat generation prompt "\n" then "A" .. "D"), one forward pass scores all of them.
`loglikelihoods_naive` is the straightforward reference: one full forward pass per request and choice.

Token boundaries follow lm-evaluation-harness (`lm_eval/api/model.py` `_encode_pair`): trailing whitespace of the
context moves to the continuation (a chat generation prompt ends in a newline, which lm-eval scores with each
choice); then encode context + continuation as a whole and the context alone; the continuation is what the whole
has beyond their common prefix, so context + continuation tokens always equal the tokenization of the whole text.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from tunebench.models.chat import encode_prompt, pad_token_id
from tunebench.models.methods import prepended_positions, uses_prompt_learning

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Request:
    """Score each continuation after `context` (already chat-formatted). Requests with the same `group` should
    share a long common prefix (their few-shot demonstrations); any grouping is correct, a good one is fast."""

    context: str
    continuations: tuple[str, ...]
    group: str = ""


@dataclass
class _Row:
    request: int
    choice: int | None  # None: one row scores every choice (single pass)
    input_ids: list[int]
    positions: list[int]  # absolute positions whose next-token logits are needed
    targets: list[int]  # choice rows: the token after each position; single-pass rows: each choice's last token
    shared: list[int] = field(default_factory=list)  # single-pass rows: the tokens every choice has before its last


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids as generation sees them (`chat.encode_prompt`), without a trailing EOS the tokenizer appends."""
    ids = encode_prompt(tokenizer, text)
    eos = tokenizer.eos_token_id
    if ids and eos is not None and ids[-1] == eos and not text.endswith(tokenizer.eos_token or "\0"):
        ids.pop()  # tokenizers that append EOS would make it part of every continuation
    return ids


def split_tokens(tokenizer: Any, context: str, continuation: str, limit: int | None = None) -> tuple[list[int], int]:
    """Tokens of context + continuation and the index where the continuation starts (at least 1).

    `limit`: the model's positions; the input (all tokens but the last) is cut from the left to fit, keeping a
    leading BOS, as lm-evaluation-harness cuts `(context + continuation)[-(max_length + 1):]`.
    """
    spaces = len(context) - len(context.rstrip())
    if spaces:  # lm-eval's _encode_pair: the context's trailing whitespace is scored as part of the continuation
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = encode(tokenizer, context + continuation)
    ctx = encode(tokenizer, context)
    boundary = 0
    while boundary < min(len(whole), len(ctx)) and whole[boundary] == ctx[boundary]:
        boundary += 1
    if boundary == len(whole):
        raise ValueError(f"continuation {continuation!r} adds no tokens to its context")
    if boundary == 0:
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if start is None:
            raise ValueError("an empty context needs a BOS or EOS token to condition on; the tokenizer has neither")
        whole, boundary = [start, *whole], 1
    if limit is not None and len(whole) - 1 > limit:
        bos = getattr(tokenizer, "bos_token_id", None)
        head = whole[:1] if bos is not None and whole[0] == bos else []
        keep = limit + 1 - len(head)
        n_cut = len(whole) - len(head) - keep
        whole, boundary = head + whole[len(whole) - keep :], boundary - n_cut
        if boundary < 1:
            raise ValueError(f"continuation {continuation!r} alone is longer than the model's {limit} positions")
    return whole, boundary


def cut_count(tokenizer: Any, requests: Sequence[Request], limit: int | None) -> int:
    """How many requests have a context + continuation longer than `limit` positions (their context is cut)."""
    if limit is None:
        return 0

    def too_long(context: str, continuation: str) -> bool:
        if len((context + continuation).encode("utf-8")) + 2 <= limit:  # tokens never outnumber bytes + specials
            return False
        return len(split_tokens(tokenizer, context, continuation)[0]) - 1 > limit

    return sum(1 for req in requests if any(too_long(req.context, c) for c in req.continuations))


def _rows(tokenizer: Any, requests: Sequence[Request], limit: int | None = None) -> list[_Row]:
    rows = []
    for r, req in enumerate(requests):
        split = [split_tokens(tokenizer, req.context, c, limit) for c in req.continuations]
        # single pass: the choices differ only in their last token after one context (" A" .. " D", or "\n" + "A"
        # .. "D" after a chat generation prompt), so one forward gives every choice's log-likelihood
        if len({(b, tuple(tokens[:-1])) for tokens, b in split}) == 1 and len(split[0][0]) > split[0][1]:
            tokens, b = split[0]
            rows.append(_Row(r, None, tokens[:-1], list(range(b - 1, len(tokens) - 1)), [t[-1] for t, _ in split],
                             shared=tokens[b:-1]))
            continue
        for c, (tokens, b) in enumerate(split):
            rows.append(_Row(r, c, tokens[:-1], list(range(b - 1, len(tokens) - 1)), tokens[b:]))
    return rows


def _common_prefix(rows: Sequence[_Row]) -> int:
    """Leading tokens shared by every row and needed by none as a scored position."""
    first = rows[0].input_ids
    n = min(min(len(r.input_ids) for r in rows), min(r.positions[0] for r in rows))
    for row in rows[1:]:
        ids = row.input_ids
        i = 0
        while i < n and ids[i] == first[i]:
            i += 1
        n = i
    return n


@contextlib.contextmanager
def inference(model: Any) -> Iterator[None]:
    """Eval mode and no autograd for scoring; the caller's training mode comes back afterwards."""
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def _scores(rows: Sequence[_Row], logprobs: Any, out: list[list[float]]) -> None:
    """Fill `out` from log-probabilities of shape (rows, positions kept, vocab)."""
    import torch

    for i, row in enumerate(rows):
        targets = torch.tensor(row.targets, device=logprobs.device)
        if row.choice is None:
            shared = sum(float(logprobs[i, j, t]) for j, t in enumerate(row.shared))
            out[row.request] = [shared + x for x in logprobs[i, len(row.shared), targets].tolist()]
        else:
            picked = logprobs[i, : len(row.targets)].gather(-1, targets.unsqueeze(-1))
            out[row.request][row.choice] = float(picked.sum())


def _cache_bytes(cache: Any) -> int:
    """Memory of one copy of a KV cache (0 when its layout is unknown: then batches are not capped)."""
    layers = getattr(cache, "layers", None) or []
    return sum(t.nbytes for layer in layers for t in (getattr(layer, "keys", None), getattr(layer, "values", None))
               if hasattr(t, "nbytes"))


class _Forward:
    """One model's forward calls, adapted to its transformers version (cache keyword, logits subset)."""

    def __init__(self, model: Any) -> None:
        from tunebench.models.load import forward_params

        params = forward_params(model)
        self.model = model
        self.subset = "logits_to_keep" in params
        self.cache_kw = "cache" if "cache" in params else "past_key_values"
        self.virtual = prepended_positions(model)  # a soft prompt's positions come first in the output

    def prefix(self, ids: list[int]) -> Any:
        """Run shared leading tokens once; only their KV cache is kept (no vocabulary projection)."""
        import torch

        x = torch.tensor([ids], device=self.model.device)
        out = self.model(input_ids=x, use_cache=True, **({"logits_to_keep": 1} if self.subset else {}))
        return out[self.cache_kw] if self.cache_kw in out else out.past_key_values

    def logprobs(self, batch: Sequence[_Row], n_prefix: int, prefix_cache: Any, pad: int) -> Any:
        """Log-probabilities (rows, positions kept, vocab) at each row's scored positions, after the prefix."""
        import torch

        width = max(len(r.input_ids) for r in batch) - n_prefix
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        for i, row in enumerate(batch):  # right padding: real tokens never attend to the pads (causal)
            ids[i, : len(row.input_ids) - n_prefix] = torch.tensor(row.input_ids[n_prefix:])
        k = max(len(r.positions) for r in batch)
        keep = torch.tensor(
            [[p - n_prefix for p in r.positions] + [r.positions[-1] - n_prefix] * (k - len(r.positions)) for r in batch],
            device=self.model.device,
        ) + self.virtual
        kwargs: dict[str, Any] = {"input_ids": ids.to(self.model.device), "use_cache": prefix_cache is not None}
        if prefix_cache is not None:
            cache = copy.deepcopy(prefix_cache)  # the forward pass appends to it; the prefix serves the next batch
            cache.batch_repeat_interleave(len(batch))
            kwargs[self.cache_kw] = cache
        if self.subset:
            logits = self.model(**kwargs, logits_to_keep=keep).logits
        else:
            logits = torch.take_along_dim(self.model(**kwargs).logits, keep[..., None], dim=1)
        return torch.log_softmax(logits.float(), dim=-1)


def _limit_with_notice(model: Any, tokenizer: Any, requests: Sequence[Request]) -> int | None:
    """The model's positions, with a count of the contexts that will be cut to fit them."""
    from tunebench.models.load import position_limit

    limit = position_limit(model)
    n_cut = cut_count(tokenizer, requests, limit)
    if n_cut:
        log.warning("%d of %d contexts cut from the left to fit the model's %d positions", n_cut, len(requests), limit)
    return limit


def loglikelihoods(
    model: Any, tokenizer: Any, requests: Sequence[Request], *, batch_size: int = 16, progress: bool = False,
    reuse_prefix: bool = True, max_cache_bytes: int = 2**30,
) -> list[list[float]]:
    """Log-likelihood of every continuation of every request (causal LMs), reusing each group's prefix cache.

    max_cache_bytes caps the prefix cache expanded along a batch (long few-shot prompts shrink the batch).
    """
    limit = _limit_with_notice(model, tokenizer, requests)
    rows = _rows(tokenizer, requests, limit)
    out: list[list[float]] = [[0.0] * len(req.continuations) for req in requests]
    reuse_prefix = reuse_prefix and not uses_prompt_learning(model)  # its forward brings its own cache / inputs
    groups: dict[str, list[_Row]] = {}
    for row in rows:
        groups.setdefault(requests[row.request].group, []).append(row)
    groups = _pool_singletons(groups)
    pad = pad_token_id(tokenizer)
    forward = _Forward(model)
    bar = _progress_bar(len(rows), progress)
    with inference(model):
        for group_rows in groups.values():
            n_prefix = _common_prefix(group_rows) if reuse_prefix and len(group_rows) > 1 else 0
            prefix_cache = forward.prefix(group_rows[0].input_ids[:n_prefix]) if n_prefix > 0 else None
            per_row = _cache_bytes(prefix_cache)
            size = max(1, min(batch_size, max_cache_bytes // per_row)) if per_row else batch_size
            ordered = sorted(group_rows, key=lambda r: -len(r.input_ids))
            for start in range(0, len(ordered), size):
                batch = ordered[start : start + size]
                _scores(batch, forward.logprobs(batch, n_prefix, prefix_cache, pad), out)
                if bar is not None:
                    bar.update(len(batch))
    if bar is not None:
        bar.close()
    return out


def _pool_singletons(groups: dict[str, list[_Row]]) -> dict[str, list[_Row]]:
    """Groups of one row (each example with demonstrations of its own, as lm-eval's sampler draws them) are batched
    together instead of run one by one; their common leading tokens (a task description) still run once."""
    singles = [rows[0] for rows in groups.values() if len(rows) == 1]
    if len(singles) < 2:
        return groups
    pooled = {key: rows for key, rows in groups.items() if len(rows) > 1}
    pooled[min(groups, key=len) + "\0singles"] = singles  # a key no request's group has
    return pooled


def loglikelihoods_naive(model: Any, tokenizer: Any, requests: Sequence[Request]) -> list[list[float]]:
    """The straightforward scorer: one forward pass over the whole context + continuation per request and choice."""
    import torch

    limit = _limit_with_notice(model, tokenizer, requests)
    out: list[list[float]] = []
    with inference(model):
        for req in requests:
            scores = []
            for continuation in req.continuations:
                tokens, b = split_tokens(tokenizer, req.context, continuation, limit)
                ids = torch.tensor([tokens[:-1]], device=model.device)
                logprobs = torch.log_softmax(model(input_ids=ids).logits[0, b - 1 :].float(), dim=-1)
                targets = torch.tensor(tokens[b:], device=model.device)
                scores.append(float(logprobs.gather(-1, targets.unsqueeze(-1)).sum()))
            out.append(scores)
    return out


def loglikelihoods_seq2seq(
    model: Any, tokenizer: Any, requests: Sequence[Request], *, batch_size: int = 16, progress: bool = False
) -> list[list[float]]:
    """Encoder-decoder models: the context is the encoder input, each continuation the decoder's labels.

    The encoder runs once per context and its states are shared by the decoder passes of every choice (the
    encoder-decoder form of the causal path's shared prefix). `batch_size` counts decoder rows (choices).

    A context longer than the model's positions (BART's `max_position_embeddings`; T5's relative positions have
    no limit) is cut from the left, keeping a leading BOS, as the causal path and generation cut theirs; a
    continuation longer than the decoder's positions raises ValueError.
    """
    import torch

    from tunebench.evaluate.generate import fit_prompts
    from tunebench.models.load import position_limit

    limit = position_limit(model)
    sources, cuts = fit_prompts([list(tokenizer(req.context)["input_ids"]) for req in requests], limit, 0,
                                getattr(tokenizer, "bos_token_id", None), where="the encoder")
    if any(cuts):
        log.warning("%d of %d contexts cut from the left to fit the model's %d positions", sum(1 for c in cuts if c),
                    len(requests), limit)
    choices: list[list[list[int]]] = []
    for req in requests:
        labels_of = []
        for continuation in req.continuations:
            labels = list(tokenizer(continuation, add_special_tokens=False)["input_ids"])
            if not labels:
                raise ValueError(f"continuation {continuation!r} has no tokens")
            if limit is not None and len(labels) > limit:
                raise ValueError(f"continuation {continuation!r} alone is longer than the model's {limit} positions")
            labels_of.append(labels)
        choices.append(labels_of)
    out: list[list[float]] = [[0.0] * len(req.continuations) for req in requests]
    pad = pad_token_id(tokenizer)
    order = sorted(range(len(requests)), key=lambda r: -len(sources[r]))
    bar = _progress_bar(sum(len(c) for c in choices), progress)
    prompt_learning = uses_prompt_learning(model)
    with inference(model):
        encoder = None if prompt_learning else model.get_encoder()
        for group in _request_batches(order, [len(c) for c in choices], batch_size):
            # the encoder runs once per context; every choice's decoder pass reads the same encoder states
            width = max(len(sources[r]) for r in group)
            ids = torch.full((len(group), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, r in enumerate(group):
                ids[i, : len(sources[r])], mask[i, : len(sources[r])] = torch.tensor(sources[r]), 1
            rows = [(i, r, c) for i, r in enumerate(group) for c in range(len(choices[r]))]
            depth = max(len(choices[r][c]) for _, r, c in rows)
            labels = torch.full((len(rows), depth), -100, dtype=torch.long)
            for k, (_, r, c) in enumerate(rows):
                labels[k, : len(choices[r][c])] = torch.tensor(choices[r][c])
            take = torch.tensor([i for i, _, _ in rows])
            ids, mask, labels = ids.to(model.device), mask.to(model.device), labels.to(model.device)
            if prompt_learning:  # virtual tokens join the encoder input inside the PEFT model's own forward
                logits = model(input_ids=ids[take], attention_mask=mask[take], labels=labels).logits
            else:
                states = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
                logits = model(encoder_outputs=(states[take.to(states.device)],), attention_mask=mask[take],
                               labels=labels).logits
            labels = labels.cpu()
            logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
            picked = logprobs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * (labels != -100)
            for k, (_, r, c) in enumerate(rows):
                out[r][c] = float(picked[k].sum())
            if bar is not None:
                bar.update(len(rows))
    if bar is not None:
        bar.close()
    return out


def _request_batches(order: Sequence[int], n_choices: Sequence[int], rows_per_batch: int) -> Iterator[list[int]]:
    """Consecutive requests of `order` whose choices together fill at most `rows_per_batch` decoder rows (a
    request with more choices than that goes alone)."""
    group: list[int] = []
    rows = 0
    for r in order:
        if group and rows + n_choices[r] > rows_per_batch:
            yield group
            group, rows = [], 0
        group.append(r)
        rows += n_choices[r]
    if group:
        yield group


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="score", unit="row")
