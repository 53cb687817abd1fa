"""Greedy decoding of decoder-only models with continuous batching, written here because `generate` lacks it on CPU.

Hugging Face `generate` pads a batch's prompts to one width, keeps every row until the batch's last one ends,
and its dynamic KV cache re-copies all past keys and values at every step (`torch.cat`). On a CPU, where each
padded position and each copied byte is paid in compute time, this decoder instead:

1. prefills prompts of similar length together (the admission order is longest first): right-padded to the
   group's longest, so each real token sees exactly its own prefix at its own position (causal attention
   never looks at the padding after it), at most `PREFILL_SLACK` of a row padded and `PREFILL_TOKENS` padded
   tokens per forward pass; each row's keys and values up to its own length go to its slot. A group of one
   is the very forward pass a one-at-a-time loop runs;
2. decodes all active rows together, one token per step, in a preallocated KV cache where each row has its own
   length: a row's new key and value are written in place, the past is never copied;
3. gives a finished row's slot to the next waiting prompt at once (continuous batching), and drops empty slots
   from the batch once no prompt is left.

HF's own continuous batching (`generate_batch`) targets GPUs and measured slower here (see generate.py). This
decoder covers greedy decoding through a cache of plain full-attention layers only; `supports_fast_greedy`
says when, and `generate_texts` uses `generate` for everything else (beam search, sampling, sliding-window or
hybrid caches, checkpoints whose generation config adds logits processors).

Encoder-decoders (T5, BART) get `greedy_decode_seq2seq`: the encoder runs once per batch of prompts, the decoder
takes one token per step through transformers' own `EncoderDecoderCache` (cross-attention keys computed once),
and a finished row leaves the batch at once (`generate` keeps it, padding, until the batch's last row ends).
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tunebench.config import GenerationConfig
from tunebench.models.methods import uses_prompt_learning

MAX_CACHE_BYTES = 2 * 2**30  # cap on the decode slots' preallocated KV cache
PREFILL_TOKENS = 4096  # padded tokens per batched prefill forward pass (~14 DialogSum prompts)
PREFILL_SLACK = 0.1  # a prompt joins a prefill group when padding adds at most this share to it

# Generation-config fields that add a logits processor to greedy decoding in `generate`, with their inactive values.
_PROCESSOR_FIELDS: dict[str, tuple[Any, ...]] = {
    "repetition_penalty": (None, 1.0),
    "no_repeat_ngram_size": (None, 0),
    "bad_words_ids": (None,),
    "suppress_tokens": (None, []),
    "begin_suppress_tokens": (None, []),
    "forced_bos_token_id": (None,),
    "forced_eos_token_id": (None,),
    "sequence_bias": (None,),
    "min_new_tokens": (None, 0),
    "min_length": (None, 0),
    "exponential_decay_length_penalty": (None,),
    "guidance_scale": (None, 1.0),
    "watermarking_config": (None,),
}


def _plain_cache(model: Any) -> Any | None:
    """An empty DynamicCache for the model when all its layers are full-attention `DynamicLayer`s, else None."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    try:
        cache = DynamicCache(config=model.config)
    except Exception:  # noqa: BLE001 - an architecture this decoder does not know: `generate` handles it
        return None
    layers = getattr(cache, "layers", None)
    if not layers or any(type(layer) is not DynamicLayer for layer in layers):
        return None
    return cache


def supports_fast_greedy(model: Any, family: str, gen: GenerationConfig) -> bool:
    """Whether `greedy_decode` (causal) or `greedy_decode_seq2seq` gives what `generate` would: greedy, no
    logits processors, no soft prompt; a decoder-only model also needs a plain full-attention cache."""
    from tunebench.models.load import forward_params

    if gen.do_sample or gen.num_beams != 1 or uses_prompt_learning(model):
        return False  # (prompt / prefix tuning: PEFT's forward supplies its own inputs or cache; `generate` runs it)
    gen_cfg = getattr(model, "generation_config", None)
    for name, inactive in _PROCESSOR_FIELDS.items():
        if getattr(gen_cfg, name, None) not in inactive:
            return False
    if family == "seq2seq":
        return hasattr(model, "get_encoder") and "encoder_outputs" in forward_params(model)
    if family != "causal":
        return False
    params = forward_params(model)
    if "position_ids" not in params or not ({"cache", "past_key_values"} & params):
        return False
    return _plain_cache(model) is not None


def _slot_layer_class() -> type:
    """`_SlotLayer`, built on first use so that importing this module does not import transformers."""
    from transformers.cache_utils import DynamicLayer

    class _SlotLayer(DynamicLayer):
        """One layer's KV cache for a batch of rows of different lengths, preallocated and written in place.

        `update` writes each row's new key/value at that row's own column and returns views up to the longest
        row; the attention mask hides each shorter row's unused columns.
        """

        def __init__(self, keys: Any, values: Any, state: _StepState) -> None:
            super().__init__()
            self.keys, self.values, self.state, self.is_initialized = keys, values, state, True
            self.device = keys.device

        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
            rows, cols, width = self.state.rows, self.state.cols, self.state.width
            self.keys[rows, :, cols, :] = key_states[:, :, 0, :].to(self.keys.dtype)
            self.values[rows, :, cols, :] = value_states[:, :, 0, :].to(self.values.dtype)
            return self.keys[:, :, : width + 1], self.values[:, :, : width + 1]

        def get_seq_length(self) -> int:
            return self.state.width

        def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
            return self.state.width + query_length, 0

    return _SlotLayer


@dataclass
class _StepState:
    """What every layer of the slot cache needs for the current step (shared by all layers)."""

    rows: Any = None  # arange(batch)
    cols: Any = None  # each row's write column = its number of cached tokens
    width: int = 0  # the longest row's cached tokens


@dataclass
class _Row:
    index: int
    n_prompt: int
    tokens: list[int] = field(default_factory=list)
    time_s: float = 0.0

    @property
    def cached(self) -> int:
        """Tokens in this row's KV cache: the prompt and every generated token but the newest."""
        return self.n_prompt + len(self.tokens) - 1


@dataclass
class _RowLayer:
    keys: Any
    values: Any


@dataclass
class _RowCache:
    """One prefilled prompt's keys and values per layer (views into its prefill group's cache)."""

    layers: list[_RowLayer]


def prefill_groups(lengths: Sequence[int], order: Sequence[int], *, limit: int,
                   max_tokens: int = PREFILL_TOKENS, slack: float = PREFILL_SLACK) -> list[list[int]]:
    """Split the admission `order` into prefill groups of consecutive prompts: at most `limit` per group, at
    most `max_tokens` padded tokens (rows x the group's longest), and no prompt padded by more than `slack` of
    the group's longest. max_tokens 0 gives groups of one."""
    groups: list[list[int]] = []
    for i in order:
        group = groups[-1] if groups else None
        if group:
            longest = max(lengths[j] for j in group)
            wide = max(longest, lengths[i])
            if (len(group) < limit and (len(group) + 1) * wide <= max_tokens
                    and min(lengths[i], *(lengths[j] for j in group)) >= (1 - slack) * wide):
                group.append(i)
                continue
        groups.append([i])
    return groups


@dataclass(frozen=True)
class DecodedRow:
    """One prompt's generated token ids (up to and including the first EOS) and its share of the wall time."""

    tokens: list[int]
    time_s: float


class _Decoder:
    def __init__(self, model: Any, encoded: Sequence[list[int]], gen: GenerationConfig, eos_ids: Sequence[int],
                 is_done_text: Callable[[list[int]], bool] | None, autocast: Any, max_cache_bytes: int) -> None:  # fmt: skip
        import torch

        from tunebench.models.load import forward_params

        self.torch, self.model, self.encoded, self.gen = torch, model, encoded, gen
        self.eos, self.is_done_text, self.autocast = set(eos_ids), is_done_text, autocast
        params = forward_params(model)
        self.cache_kw = "cache" if "cache" in params else "past_key_values"
        self.keep_kw = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        self.device = model.device
        self.capacity = max(len(e) for e in encoded) + gen.max_new_tokens
        self.state = _StepState()
        self.max_cache_bytes = max_cache_bytes
        self.cache: Any = None
        self.layers: list[Any] = []

    def _forward(self, **kwargs: Any) -> Any:
        with self.autocast():
            logits = self.model(use_cache=True, **self.keep_kw, **kwargs).logits
        return logits[:, -1].argmax(-1)

    def prefill(self, indices: Sequence[int]) -> list[tuple[_Row, Any]]:
        """Run prompts together, right-padded to the longest; returns each one's row (first token chosen) and its
        cache (`_RowCache`: per layer, keys and values of shape (1, heads, padded length, head size), of which
        the row's own `n_prompt` columns count). One prompt runs unpadded and without a mask."""
        torch = self.torch
        start = time.perf_counter()
        lengths = [len(self.encoded[i]) for i in indices]
        width = max(lengths)
        ids = torch.zeros((len(indices), width), dtype=torch.long, device=self.device)
        mask = torch.zeros((len(indices), width), dtype=torch.long, device=self.device)
        for k, i in enumerate(indices):
            ids[k, : lengths[k]] = torch.tensor(self.encoded[i], device=self.device)
            mask[k, : lengths[k]] = 1
        last = torch.tensor([n - 1 for n in lengths], device=self.device)
        kwargs: dict[str, Any] = {} if min(lengths) == width else {"attention_mask": mask}
        if self.keep_kw:  # the output head only at each row's last real position
            keep, where = torch.unique(last, return_inverse=True)
            kwargs["logits_to_keep"] = keep if len(indices) > 1 else 1
            where = where if len(indices) > 1 else torch.zeros_like(last)
        else:
            where = last
        cache = _plain_cache(self.model)
        with self.autocast():
            logits = self.model(input_ids=ids, use_cache=True, **kwargs, **{self.cache_kw: cache}).logits
        firsts = logits[torch.arange(len(indices), device=self.device), where].argmax(-1).tolist()
        share = (time.perf_counter() - start) / len(indices)
        return [(_Row(i, n, [int(first)], share),
                 _RowCache([_RowLayer(layer.keys[k : k + 1], layer.values[k : k + 1]) for layer in cache.layers]))
                for k, (i, n, first) in enumerate(zip(indices, lengths, firsts, strict=True))]

    def allocate(self, slots: int, like: Any) -> int:
        """The slot cache, shaped after one prefilled cache (heads, head size and dtype may differ per layer).

        Returns the number of slots: `slots`, fewer when their cache would exceed `max_cache_bytes`.
        """
        torch = self.torch
        per_row = self.capacity * sum(
            t[0, :, 0].numel() * t.element_size() for layer in like.layers for t in (layer.keys, layer.values)
        )
        slots = max(1, min(slots, self.max_cache_bytes // per_row))
        self.cache = _plain_cache(self.model)
        self.layers = []
        slot_layer = _slot_layer_class()
        for layer in like.layers:
            shape = (slots, layer.keys.shape[1], self.capacity, layer.keys.shape[3])
            vshape = (slots, layer.values.shape[1], self.capacity, layer.values.shape[3])
            self.layers.append(slot_layer(torch.zeros(shape, dtype=layer.keys.dtype, device=self.device),
                                          torch.zeros(vshape, dtype=layer.values.dtype, device=self.device),
                                          self.state))  # fmt: skip
        self.cache.layers = self.layers
        return slots

    def place(self, slot: int, row: _Row, cache: Any) -> None:
        n = row.n_prompt
        for mine, theirs in zip(self.layers, cache.layers, strict=True):
            mine.keys[slot, :, :n] = theirs.keys[0, :, :n]
            mine.values[slot, :, :n] = theirs.values[0, :, :n]

    def keep(self, slots: list[int]) -> None:
        index = self.torch.tensor(slots, device=self.device)
        for layer in self.layers:
            layer.keys, layer.values = layer.keys.index_select(0, index), layer.values.index_select(0, index)

    def finished(self, row: _Row) -> bool:
        if row.tokens[-1] in self.eos or len(row.tokens) >= self.gen.max_new_tokens:
            return True
        return self.is_done_text is not None and self.is_done_text(row.tokens)

    def step(self, rows: list[_Row]) -> list[int]:
        torch = self.torch
        cols = torch.tensor([r.cached for r in rows], device=self.device)
        width = int(cols.max())
        self.state.rows, self.state.cols, self.state.width = torch.arange(len(rows), device=self.device), cols, width
        mask = torch.arange(width + 1, device=self.device)[None, :] <= cols[:, None]
        inputs = torch.tensor([[r.tokens[-1]] for r in rows], device=self.device)
        out = self._forward(input_ids=inputs, attention_mask=mask.long(), position_ids=cols[:, None],
                            **{self.cache_kw: self.cache})  # fmt: skip
        return out.tolist()


def greedy_decode(
    model: Any,
    encoded: Sequence[list[int]],
    gen: GenerationConfig,
    eos_ids: Sequence[int],
    *,
    order: Sequence[int] | None = None,
    is_done_text: Callable[[list[int]], bool] | None = None,
    on_done: Callable[[int], None] | None = None,
    autocast: Callable[[], Any] | None = None,
    max_cache_bytes: int = MAX_CACHE_BYTES,
    prefill_tokens: int = PREFILL_TOKENS,
) -> list[DecodedRow]:
    """Greedy completions of tokenized prompts with `gen.batch_size` decode slots; results in input order.

    `order` is the admission order (default: input order); `is_done_text(tokens)` ends a row early (stop strings);
    `on_done(index)` is called as each prompt finishes. The slots' KV cache is preallocated for the longest prompt
    plus `max_new_tokens`; fewer slots are used where `gen.batch_size` of them would exceed `max_cache_bytes`.
    Prompts are prefilled in groups of similar length (`prefill_groups`, at most `prefill_tokens` padded tokens
    per forward pass; 0 prefills each prompt alone). Call under `torch.inference_mode()` with the model in eval
    mode.
    """
    if not encoded:
        return []
    dec = _Decoder(model, encoded, gen, eos_ids, is_done_text, autocast or contextlib.nullcontext, max_cache_bytes)
    groups = deque(prefill_groups([len(e) for e in encoded], list(order if order is not None else range(len(encoded))),
                                  limit=max(1, gen.batch_size), max_tokens=prefill_tokens))
    ready: deque[tuple[_Row, Any]] = deque()
    results: dict[int, DecodedRow] = {}

    def finish(row: _Row) -> None:
        results[row.index] = DecodedRow(row.tokens, row.time_s)
        if on_done is not None:
            on_done(row.index)

    def admit() -> tuple[_Row, Any] | None:
        """The next waiting prompt that still needs decoding after its prefill (others finish on the spot)."""
        while ready or groups:
            if not ready:
                ready.extend(dec.prefill(groups.popleft()))
            row, cache = ready.popleft()
            if not dec.finished(row):
                return row, cache
            finish(row)
        return None

    slots: list[_Row] = []
    allocated = min(gen.batch_size, len(encoded))
    while len(slots) < allocated and (admitted := admit()) is not None:
        if dec.cache is None:
            allocated = dec.allocate(allocated, admitted[1])
        dec.place(len(slots), *admitted)
        slots.append(admitted[0])
    if 0 < len(slots) < allocated:
        dec.keep(list(range(len(slots))))
    while slots:
        start = time.perf_counter()
        tokens = dec.step(slots)
        share = (time.perf_counter() - start) / sum(r.index >= 0 for r in slots)
        for i, (row, token) in enumerate(zip(slots, tokens, strict=True)):
            if row.index < 0:
                continue
            row.tokens.append(token)
            row.time_s += share
            if dec.finished(row):
                finish(row)
                admitted = admit()
                if admitted is not None:
                    dec.place(i, *admitted)
                slots[i] = admitted[0] if admitted is not None else _idle(row)
        live = [i for i, r in enumerate(slots) if r.index >= 0]
        if 4 * (len(slots) - len(live)) >= len(slots):  # compact once a quarter of the slots idle
            if live:
                dec.keep(live)
            slots = [slots[i] for i in live]
    return [results[i] for i in range(len(encoded))]


def _idle(row: _Row) -> _Row:
    """A finished row's stand-in until the batch is compacted: it rewrites one column, and its output is ignored."""
    return _Row(-1, row.n_prompt, [row.tokens[-1]])


def decoder_start_id(model: Any) -> int:
    """The token an encoder-decoder's decoder starts from (T5: pad, BART: EOS), as `generate` takes it."""
    for source in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        value = getattr(source, "decoder_start_token_id", None)
        if value is not None:
            return int(value)
    raise ValueError("the model config has no decoder_start_token_id: cannot start its decoder")


def greedy_decode_seq2seq(
    model: Any,
    encoded: Sequence[list[int]],
    gen: GenerationConfig,
    eos_ids: Sequence[int],
    *,
    order: Sequence[int] | None = None,
    is_done_text: Callable[[list[int]], bool] | None = None,
    on_done: Callable[[int], None] | None = None,
    autocast: Callable[[], Any] | None = None,
) -> list[DecodedRow]:
    """Greedy completions of an encoder-decoder model's tokenized prompts; results in input order.

    Prompts are taken in `order` (default: input order) in batches of `gen.batch_size`: the encoder runs once per
    batch (rows padded on the right, masked), then each step feeds every unfinished row its last token through an
    `EncoderDecoderCache`, and a row that emits EOS, reaches `max_new_tokens` or satisfies `is_done_text(tokens)`
    (stop strings) is dropped from the batch (`batch_select_indices` on the cache, the same rows of the encoder
    states). The tokens equal `generate`'s greedy output on the same prompts (checked in tests/test_generate.py).
    A row's time is its share of the encoder pass plus its share of each step it took part in. Call under
    `torch.inference_mode()` with the model in eval mode.
    """
    import torch
    from transformers import DynamicCache, EncoderDecoderCache

    from tunebench.models.load import forward_params

    if not encoded:
        return []
    autocast = autocast or contextlib.nullcontext
    eos, device = set(eos_ids), model.device
    cache_kw = "cache" if "cache" in forward_params(model) else "past_key_values"
    start_id = decoder_start_id(model)
    order = list(order) if order is not None else list(range(len(encoded)))
    results: dict[int, DecodedRow] = {}
    encoder = model.get_encoder()

    def done(tokens: list[int]) -> bool:
        return (tokens[-1] in eos or len(tokens) >= gen.max_new_tokens
                or (is_done_text is not None and is_done_text(tokens)))

    for first in range(0, len(order), gen.batch_size):
        rows = order[first : first + gen.batch_size]
        start = time.perf_counter()
        width = max(len(encoded[i]) for i in rows)
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for k, i in enumerate(rows):
            ids[k, : len(encoded[i])], mask[k, : len(encoded[i])] = torch.tensor(encoded[i]), 1
        ids, mask = ids.to(device), mask.to(device)
        with autocast():
            states = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        tokens: dict[int, list[int]] = {i: [] for i in rows}
        times = dict.fromkeys(rows, (time.perf_counter() - start) / len(rows))
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        current = torch.full((len(rows), 1), start_id, dtype=torch.long, device=device)
        while rows:
            start = time.perf_counter()
            with autocast():
                logits = model(encoder_outputs=(states,), attention_mask=mask, decoder_input_ids=current,
                               use_cache=True, **{cache_kw: cache}).logits
            chosen = logits[:, -1].argmax(-1).tolist()
            share = (time.perf_counter() - start) / len(rows)
            keep = []
            for k, (i, token) in enumerate(zip(rows, chosen, strict=True)):
                tokens[i].append(token)
                times[i] += share
                if done(tokens[i]):
                    results[i] = DecodedRow(tokens[i], times[i])
                    if on_done is not None:
                        on_done(i)
                else:
                    keep.append(k)
            if len(keep) < len(rows) and keep:
                index = torch.tensor(keep, device=device)
                cache.batch_select_indices(index)
                states, mask = states.index_select(0, index), mask.index_select(0, index)
            rows = [rows[k] for k in keep]
            current = torch.tensor([[tokens[i][-1]] for i in rows], dtype=torch.long, device=device)
    return [results[i] for i in range(len(encoded))]
