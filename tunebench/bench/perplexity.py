"""Language-model drift on plain text: rolling-window log-likelihood, perplexities and KL divergence.

The protocol is lm-evaluation-harness's `loglikelihood_rolling` (its wikitext task): a document's tokens (no BOS
added) are cut into windows of at most the model's context by `get_rolling_token_windows` with `context_len=1`,
made disjoint by `make_disjoint_window`, so every token is scored exactly once; the first token is conditioned on
the prefix token (BOS, else EOS). Metrics follow lm-eval's definitions (`lm_eval/api/metrics.py`):
word_perplexity = exp(sum NLL / words), byte_perplexity = exp(sum NLL / bytes), bits_per_byte = sum NLL / bytes
/ ln 2, with words = len(re.split(r"\\s+", text)) and bytes = len(text.encode("utf-8")) of the document, plus the
per-token NLL (nats/token) and token perplexity; they are metric objects of the metric registry
(`evaluate/metrics/perplexity.py`, inputs 'document'), so direction, formatting and names come from there. KL(p_base ‖ p_tuned) is the mean over scored tokens of the
divergence of the two next-token distributions (nats/token), computed in the same pass, so no distribution is
stored. Every metric is a ratio of two per-document sums, so a paired bootstrap over documents gives its
interval (`evaluate/stats.paired_bootstrap_stats`).

Hand-written because transformers has no rolling scorer and lm-eval is a heavy dependency that materialises
full-vocabulary logits for the whole window; here the output projection runs in chunks of positions.

Hidden-state cache (`HIDDEN_STATES`, a `HiddenStateCache`): the base model's decoder pass over the same windows
is the same work every time it runs in one process: the base's own NLL pass, then the reference side of each
tuned model's KL (a run; in a sweep once per method), and the parity gate's fp32 pass. So the final hidden states
(the decoder's `last_hidden_state`, before the output head) of each window are kept, on the CPU, in a
module-level LRU bounded by bytes (1 GiB by default; about 2.3 KB per token for a 576-wide float32 model), and
both the scored model's and the reference's scorer look there first. The key is (model fingerprint, window start,
window input ids). The fingerprint identifies the model by behaviour, not by name: sha256 of the final hidden
states of a fixed probe input computed as the scorer runs (its context entered, e.g. PEFT's adapter disabled),
of the input-embedding weight bytes (an embedding-only change the probe's rows do not see), of their dtypes and
shapes, the device type and the settings the short probe cannot exercise (attention implementation, RoPE
scaling, sliding window). So a base loaded alone and the same base inside a LoRA or bottleneck model with the
adapter disabled share entries when they compute bit for bit alike; anything else misses, which is only slower.
It is computed once per scorer and `score_documents` call, inside the same ambient context (autocast, device)
as the windows. Only split scorers use the cache: where the model cannot be split, its "hidden" is
full-vocabulary logits, never kept. Results are bit-identical with and without the cache (`cache=None`).
"""

from __future__ import annotations

import hashlib
import re
from array import array
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tunebench.errors import ConfigError
from tunebench.evaluate.metrics import METRICS
from tunebench.evaluate.metrics.perplexity import DocumentRatioMetric

_HEAD_CHUNK = 512  # positions projected to the vocabulary at once (512 x 49k floats = 100 MB)
DEFAULT_CACHE_BYTES = 1 << 30  # the hidden-state cache's budget: 1 GiB, ~450k tokens of a 576-wide fp32 model
_PROBE_LENGTH = 16  # tokens of the fingerprint's probe input


PERPLEXITY_METRICS: dict[str, DocumentRatioMetric] = {
    name: cls() for name, cls in METRICS.items() if issubclass(cls, DocumentRatioMetric)
}
"""The registered document metrics (evaluate/metrics/perplexity.py) by name, as metric objects."""
DEFAULT_METRICS = ("nll", "token_perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte")


def rolling_windows(
    tokens: Sequence[int], *, prefix_token: int, max_length: int, context_len: int = 1
) -> list[tuple[list[int], list[int]]]:
    """Disjoint (context, continuation) windows covering `tokens`, each continuation scored once.

    lm-evaluation-harness `utils.get_rolling_token_windows` then `make_disjoint_window`: the first window predicts
    min(max_length, n) tokens after `prefix_token`; each later one predicts up to max_length - context_len + 1 new
    tokens with the tokens before them as context, the model input being at most max_length tokens.
    """
    if not 1 <= context_len <= max_length:
        raise ValueError(f"context_len must be in 1..max_length ({max_length}), got {context_len}")
    tokens = list(tokens)
    if not tokens:
        return []
    pred_len = max_length - context_len + 1
    first = min(max_length, len(tokens))
    windows = [([prefix_token, *tokens[: first - 1]], tokens[:first])]
    predicted = first
    while predicted < len(tokens):
        n = min(len(tokens) - predicted, pred_len)
        end = predicted + n
        windows.append((tokens[max(0, end - max_length - 1) : end - 1], tokens[end - n : end]))
        predicted += n
    # make_disjoint_window: drop from the context the part that overlaps the continuation
    return [(ctx[: len(ctx) - (len(cont) - 1)], cont) for ctx, cont in windows]


def count_words(text: str) -> int:
    """lm-eval's word count for perplexity: len(re.split(r"\\s+", text))."""
    return len(re.split(r"\s+", text))


def wikitext_detokenize(text: str) -> str:
    """Undo WikiText's word tokenization, as lm-eval's `wikitext_detokenizer` (tasks/wikitext/preprocess_wikitext)."""
    s = text.replace("s '", "s'")
    s = re.sub(r"/' [0-9]/", r"/'[0-9]/", s)
    s = s.replace(" @-@ ", "-").replace(" @,@ ", ",").replace(" @.@ ", ".")
    s = s.replace(" : ", ": ").replace(" ; ", "; ").replace(" . ", ". ").replace(" ! ", "! ").replace(" ? ", "? ")
    s = s.replace(" , ", ", ")
    s = re.sub(r"\(\s*([^\)]*?)\s*\)", r"(\1)", s)
    s = re.sub(r"\[\s*([^\]]*?)\s*\]", r"[\1]", s)
    s = re.sub(r"{\s*([^}]*?)\s*}", r"{\1}", s)
    s = re.sub(r"\"\s*([^\"]*?)\s*\"", r'"\1"', s)
    s = re.sub(r"'\s*([^']*?)\s*'", r"'\1'", s)
    s = s.replace("= = = =", "====").replace("= = =", "===").replace("= =", "==")
    s = s.replace(" " + chr(176) + " ", chr(176)).replace(" \n", "\n").replace("\n ", "\n")
    s = s.replace(" N ", " 1 ").replace(" 's", "'s")
    return s


def model_max_length(model: Any, tokenizer: Any) -> int:
    """The model's context in tokens, found as lm-eval's HFLM does (config, then tokenizer, else 2048)."""
    config = getattr(model, "config", None)
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    value = getattr(tokenizer, "model_max_length", None)
    if isinstance(value, int) and 0 < value < 10**9:
        return value
    return 2048


def prefix_token_id(tokenizer: Any) -> int:
    """The token the first scored token is conditioned on: BOS, else EOS (lm-eval's `prefix_token_id`)."""
    for tok in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if tok is not None:
            return int(tok)
    raise ConfigError("perplexity needs a BOS or EOS token to condition the first token on; the tokenizer has neither")


def same_tokenizer(a: Any, b: Any) -> bool:
    """Do two tokenizers map text to the same ids (same vocabulary and special tokens)?"""
    return a.get_vocab() == b.get_vocab() and a.bos_token_id == b.bos_token_id and a.eos_token_id == b.eos_token_id


class HiddenStateCache:
    """Final hidden states of scored windows, least recently used first out when the entries pass `max_bytes`.

    Keys are (model fingerprint, window start, input ids as bytes); values CPU tensors (positions start.., hidden).
    An entry counts its tensor's bytes plus its key's; one larger than `max_bytes` is not kept (0 keeps nothing).
    `hits` and `misses` count lookups since the last `clear()`.
    """

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, int, bytes], tuple[Any, int]] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: tuple[str, int, bytes]) -> Any | None:
        """The CPU tensor stored under `key` (now the most recently used), or None."""
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry[0]

    def put(self, key: tuple[str, int, bytes], hidden: Any) -> None:
        """Keep a CPU copy of `hidden` under `key`, evicting the least recently used entries to fit."""
        import torch

        size = hidden.nbytes + len(key[0]) + len(key[2])
        if size > self.max_bytes:
            return
        if key in self._entries:
            self.bytes -= self._entries.pop(key)[1]
        while self._entries and self.bytes + size > self.max_bytes:
            self.bytes -= self._entries.popitem(last=False)[1][1]
        copy = torch.empty(hidden.shape, dtype=hidden.dtype, device="cpu").copy_(hidden.detach())
        self._entries[key] = (copy, size)
        self.bytes += size

    def clear(self) -> None:
        """Drop every entry and reset the counters."""
        self._entries.clear()
        self.bytes = self.hits = self.misses = 0


HIDDEN_STATES = HiddenStateCache()
"""The process's hidden-state cache, shared by every scorer (see the module docstring); `clear()` frees it."""


def probe_ids(vocab_size: int) -> list[int]:
    """The fingerprint's probe input: `_PROBE_LENGTH` fixed ids spread over the vocabulary (a stride of 7919)."""
    return [(1 + 7919 * i) % vocab_size for i in range(_PROBE_LENGTH)]


def _tensor_digest(digest: Any, tensor: Any) -> None:
    """Feed a tensor's dtype, shape and raw bytes into a hashlib digest."""
    import torch

    digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
    digest.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy())


class _Scorer:
    """Log-probabilities at chosen positions of one model, the vocabulary projection done in chunks of positions.

    `context` (PEFT's `disable_adapter`) is entered around every call, so one model can also act as the base.
    `cache`: where final hidden states are looked up and kept (split models only; None: never).
    A PEFT prompt-learning model (prompt or prefix tuning) is not split unless its adapter is disabled: its soft
    prompt or prefix is added by the PEFT model's own forward, which the base's decoder would skip.
    """

    def __init__(self, model: Any, context: Callable[[], Any] | None = None,
                 cache: HiddenStateCache | None = None) -> None:
        from tunebench.models.methods import uses_prompt_learning

        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        decoder = base.get_decoder() if hasattr(base, "get_decoder") else None
        head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
        softcap = getattr(getattr(base, "config", None), "final_logit_softcapping", None)
        own_forward = context is None and uses_prompt_learning(model)
        self.model, self.context, self.base = model, context, base
        self.split = (decoder is not None and head is not None and softcap is None and decoder is not base
                      and not own_forward)
        self.decoder, self.head = decoder, head
        self.cache = cache if self.split else None
        self._fingerprint: tuple[str, Any] | None = None  # (digest, device of the decoder's output)

    def _ctx(self) -> Any:
        import contextlib

        return self.context() if self.context is not None else contextlib.nullcontext()

    def _forward(self, ids: list[int], start: int) -> Any:
        import torch

        x = torch.tensor([ids], device=self.model.device)
        with self._ctx():
            if self.split:
                return self.decoder(input_ids=x).last_hidden_state[0, start:]
            # counted from the end: prompt tuning's virtual tokens come first in the output
            return self.model(input_ids=x).logits[0, start - len(ids) :]

    def fingerprint(self) -> tuple[str, Any] | None:
        """(sha256 hex of the model's behaviour, device its hidden states come out on), computed on first use;
        None when the model has no input-embedding weight to hash (then nothing is cached)."""
        import torch

        if self._fingerprint is None:
            embeddings = self.base.get_input_embeddings() if hasattr(self.base, "get_input_embeddings") else None
            weight = getattr(embeddings, "weight", None)  # a method on a quantized embedding: not hashable here
            if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.device.type == "meta":
                return None
            probe = self._forward(probe_ids(int(weight.shape[0])), 0)
            config = getattr(self.base, "config", None)
            settings = [getattr(config, name, None) for name in ("_attn_implementation", "rope_scaling",
                                                                  "sliding_window")]
            digest = hashlib.sha256(f"{probe.device.type}|{settings!r}|".encode())
            _tensor_digest(digest, probe)
            _tensor_digest(digest, weight)
            self._fingerprint = (digest.hexdigest(), probe.device)
        return self._fingerprint

    def hidden(self, ids: list[int], start: int) -> Any:
        """Final hidden states (or, when the model cannot be split, logits) of positions start.. of one input,
        from the cache when this model's fingerprint scored the same input before."""
        fingerprint = self.fingerprint() if self.cache is not None else None
        if fingerprint is None:
            return self._forward(ids, start)
        key = (fingerprint[0], start, array("q", ids).tobytes())
        kept = self.cache.get(key)
        if kept is not None:
            return kept.to(fingerprint[1])
        hidden = self._forward(ids, start)
        self.cache.put(key, hidden)
        return hidden

    def logprobs(self, hidden: Any, lo: int, hi: int) -> Any:
        """Log-probabilities (hi - lo, vocab) of positions lo..hi-1 of `hidden`."""
        import torch

        with self._ctx():
            logits = self.head(hidden[lo:hi]) if self.split else hidden[lo:hi]
        return torch.log_softmax(logits.float(), dim=-1)


@dataclass(frozen=True)
class Reference:
    """The base distribution for KL: another model (same tokenizer), or the scored model under a context."""

    model: Any
    context: Callable[[], Any] | None = None


def document_loglikelihood(
    model: Any, tokenizer: Any, text: str, *, max_length: int, context_len: int = 1,
    reference: Reference | None = None, cache: HiddenStateCache | None = HIDDEN_STATES,
) -> dict[str, float]:
    """Sum of NLL (nats), token and window counts and, with `reference`, sum of KL(p_reference ‖ p_model) over the
    scored tokens of one document. cache: final hidden states reused across calls (None: none). Raises ValueError
    for a max_length below context_len."""
    scorer = _Scorer(model, cache=cache)
    ref = _Scorer(reference.model, reference.context, cache=cache) if reference is not None else None
    return _document_sums(scorer, ref, tokenizer, text, max_length=max_length, context_len=context_len)


def _document_sums(scorer: _Scorer, ref: _Scorer | None, tokenizer: Any, text: str, *, max_length: int,
                   context_len: int) -> dict[str, float]:
    """`document_loglikelihood` with its scorers made by the caller (one fingerprint for many documents)."""
    import contextlib

    import torch

    from tunebench.bench.loglik import inference

    model = scorer.model
    tokens = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    windows = rolling_windows(tokens, prefix_token=prefix_token_id(tokenizer), max_length=max_length,
                              context_len=context_len)
    other = ref is not None and ref.model is not model
    nll, kl = 0.0, 0.0
    with inference(model), (inference(ref.model) if other else contextlib.nullcontext()):
        for context, continuation in windows:
            inp = (context + continuation)[-(max_length + 1) :][:-1]
            start = len(inp) - len(continuation)
            targets = torch.tensor(continuation, device=model.device)
            hidden = scorer.hidden(inp, start)
            ref_hidden = ref.hidden(inp, start) if ref is not None else None
            for lo in range(0, len(continuation), _HEAD_CHUNK):
                hi = min(len(continuation), lo + _HEAD_CHUNK)
                lp = scorer.logprobs(hidden, lo, hi)
                nll -= float(lp.gather(-1, targets[lo:hi].unsqueeze(-1)).sum())
                if ref is not None:
                    rp = ref.logprobs(ref_hidden, lo, hi).to(lp.device)
                    kl += float((rp.exp() * (rp - lp)).sum())
    out = {"tokens": float(len(tokens)), "nll": nll, "windows": float(len(windows))}
    if ref is not None:
        out["kl"] = kl
    return out


def reference_for(loaded: Any, reference: Any | None) -> Reference | None:
    """What KL compares against: a given reference LoadedModel (same tokenizer required, else ConfigError), else
    the loaded model with its attached adapter disabled (PEFT or bottleneck: the methods table's `attached` and
    `disabled`), else None (no KL)."""
    if reference is not None:
        if not same_tokenizer(loaded.tokenizer, reference.tokenizer):
            raise ConfigError(
                f"KL divergence needs one tokenizer, but '{reference.ref}' and '{loaded.ref}' tokenize differently; "
                "drop the reference model or pick one with the same tokenizer"
            )
        return Reference(reference.model)
    from tunebench.models.methods import attached_method

    method = attached_method(loaded.model)
    if method is not None and method.disabled is not None:
        disabled = method.disabled
        return Reference(loaded.model, lambda: disabled(loaded.model))
    return None


def score_documents(
    loaded: Any, documents: Sequence[tuple[str, str | None, str, str]], *, max_length: int | None = None, context_len: int = 1,
    reference: Any | None = None, progress: bool = False, kl: bool = True,
    cache: HiddenStateCache | None = HIDDEN_STATES,
) -> list[dict[str, Any]]:
    """Per-document rows (id, subtask, tokens, words, bytes, nll, [kl]) for (id, subtask, text, counted) documents:
    `text` is scored, words and bytes are counted in `counted` (lm-eval's wikitext: the text before detokenizing).

    max_length: window size in tokens (None: the model's context). reference: see `reference_for`; kl=False
    measures no KL at all (the parity gate compares NLL only). cache: final hidden states reused across calls
    and between the scored model and the reference (None: none; the rows are the same either way).
    """
    max_length = max_length or model_max_length(loaded.model, loaded.tokenizer)
    reference = reference_for(loaded, reference) if kl else None
    scorer = _Scorer(loaded.model, cache=cache)
    ref = _Scorer(reference.model, reference.context, cache=cache) if reference is not None else None
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(documents), desc="perplexity", unit="doc")
    rows = []
    for doc_id, subtask, text, counted in documents:
        sums = _document_sums(scorer, ref, loaded.tokenizer, text, max_length=max_length, context_len=context_len)
        rows.append({"id": doc_id, "subtask": subtask, "words": float(count_words(counted)),
                     "bytes": float(len(counted.encode("utf-8"))), **sums})
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    for row in rows:
        row["scores"] = {"nll": row["nll"] / max(row["tokens"], 1.0),
                         **({"kl": row["kl"] / max(row["tokens"], 1.0)} if "kl" in row else {})}
    return rows


def corpus_metrics(samples: Sequence[dict[str, Any]], names: Sequence[str], *, n_resamples: int = 1000,
                   seed: int = 0) -> dict[str, dict[str, Any]]:
    """Each metric's corpus value with a 95% bootstrap interval over documents (stderr: None, as lm-eval)."""
    from tunebench.evaluate.stats import bootstrap_ci

    out: dict[str, dict[str, Any]] = {}
    for name in names:
        metric = PERPLEXITY_METRICS[name]
        if any(metric.numerator not in s for s in samples):
            continue
        stats = metric.stats(samples)
        ci = bootstrap_ci(stats, metric.score_sums, n_resamples=n_resamples, seed=seed) if len(samples) > 1 else None
        out[name] = {"value": metric.score_rows(samples), "stderr": None, "ci95": ci}
    return out
