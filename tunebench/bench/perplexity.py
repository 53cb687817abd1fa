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
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tunebench.errors import ConfigError
from tunebench.evaluate.metrics import METRICS
from tunebench.evaluate.metrics.perplexity import DocumentRatioMetric

_HEAD_CHUNK = 512  # positions projected to the vocabulary at once (512 x 49k floats = 100 MB)


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


class _Scorer:
    """Log-probabilities at chosen positions of one model, the vocabulary projection done in chunks of positions.

    `context` (PEFT's `disable_adapter`) is entered around every call, so one model can also act as the base.
    """

    def __init__(self, model: Any, context: Callable[[], Any] | None = None) -> None:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        decoder = base.get_decoder() if hasattr(base, "get_decoder") else None
        head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
        softcap = getattr(getattr(base, "config", None), "final_logit_softcapping", None)
        self.model, self.context = model, context
        self.split = decoder is not None and head is not None and softcap is None and decoder is not base
        self.decoder, self.head = decoder, head

    def _ctx(self) -> Any:
        import contextlib

        return self.context() if self.context is not None else contextlib.nullcontext()

    def hidden(self, ids: list[int], start: int) -> Any:
        """Final hidden states (or, when the model cannot be split, logits) of positions start.. of one input."""
        import torch

        x = torch.tensor([ids], device=self.model.device)
        with self._ctx():
            if self.split:
                return self.decoder(input_ids=x).last_hidden_state[0, start:]
            return self.model(input_ids=x).logits[0, start:]

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
    reference: Reference | None = None,
) -> dict[str, float]:
    """Sum of NLL (nats), token and window counts and, with `reference`, sum of KL(p_reference ‖ p_model) over the
    scored tokens of one document. Raises ValueError for a max_length below context_len."""
    import contextlib

    import torch

    from tunebench.bench.loglik import inference

    tokens = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    windows = rolling_windows(tokens, prefix_token=prefix_token_id(tokenizer), max_length=max_length,
                              context_len=context_len)
    scorer = _Scorer(model)
    ref = _Scorer(reference.model, reference.context) if reference is not None else None
    other = reference is not None and reference.model is not model
    nll, kl = 0.0, 0.0
    with inference(model), (inference(reference.model) if other else contextlib.nullcontext()):
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
    if reference is not None:
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
) -> list[dict[str, Any]]:
    """Per-document rows (id, subtask, tokens, words, bytes, nll, [kl]) for (id, subtask, text, counted) documents:
    `text` is scored, words and bytes are counted in `counted` (lm-eval's wikitext: the text before detokenizing).

    max_length: window size in tokens (None: the model's context). reference: see `reference_for`; kl=False
    measures no KL at all (the parity gate compares NLL only).
    """
    max_length = max_length or model_max_length(loaded.model, loaded.tokenizer)
    ref = reference_for(loaded, reference) if kl else None
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(documents), desc="perplexity", unit="doc")
    rows = []
    for doc_id, subtask, text, counted in documents:
        sums = document_loglikelihood(loaded.model, loaded.tokenizer, text, max_length=max_length,
                                      context_len=context_len, reference=ref)
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
