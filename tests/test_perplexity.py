"""Rolling-window perplexity and KL on tiny models, against hand computations from full logits."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest

from tunebench.bench.perplexity import (
    PERPLEXITY_METRICS,
    Reference,
    document_loglikelihood,
    reference_for,
    rolling_windows,
    score_documents,
)
from tunebench.errors import ConfigError

TEXT = ("The quick brown fox jumps over the lazy dog. A second sentence follows, with some punctuation; "
        "and a third one ends here.")


def test_rolling_windows_match_lm_eval_gold() -> None:
    # lm-evaluation-harness tests/test_utils.py::test_get_rolling_token_windows_v1, then make_disjoint_window
    gold = [
        ([-100, 0, 1, 2, 3, 4, 5, 6, 7, 8], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]),
        ([9, 10, 11, 12, 13, 14, 15, 16, 17, 18], [10, 11, 12, 13, 14, 15, 16, 17, 18, 19]),
        ([19, 20, 21, 22, 23, 24, 25, 26, 27, 28], [20, 21, 22, 23, 24, 25, 26, 27, 28, 29]),
        ([23, 24, 25, 26, 27, 28, 29, 30, 31, 32], [30, 31, 32, 33]),
    ]
    disjoint = [(a[: len(a) - (len(b) - 1)], b) for a, b in gold]
    assert rolling_windows(list(range(34)), prefix_token=-100, max_length=10) == disjoint
    # context_len 2, worked by hand: windows of 4, three new tokens each after two of context
    assert rolling_windows(list(range(10)), prefix_token=-1, max_length=4, context_len=2) == [
        ([-1], [0, 1, 2, 3]), ([2, 3], [4, 5, 6]), ([5, 6], [7, 8, 9])]
    assert rolling_windows([], prefix_token=0, max_length=4) == []


def _hand_nll(model, tokens: list[int], prefix: int, max_length: int, context_len: int) -> tuple[float, list]:
    """Token by token: each scored group gets one full forward (plain logits, log_softmax) over its own input."""
    import torch

    groups = [(0, min(max_length, len(tokens)))]
    step = max_length - context_len + 1
    while groups[-1][1] < len(tokens):
        lo = groups[-1][1]
        groups.append((lo, min(len(tokens), lo + step)))
    nll, dists = 0.0, []
    with torch.no_grad():
        for lo, hi in groups:
            full = [prefix, *tokens]  # full[j] precedes tokens[j]
            start = max(0, hi - max_length)  # the input ends just before tokens[hi - 1], at most max_length long
            inp = full[start:hi]
            logp = torch.log_softmax(model(input_ids=torch.tensor([inp])).logits[0].float(), -1)
            for j in range(lo, hi):
                pos = j - start  # inp[pos] = full[j] = the token before tokens[j]
                nll -= float(logp[pos, tokens[j]])
                dists.append(logp[pos])
    return nll, dists


@pytest.mark.parametrize(("max_length", "context_len"), [(8, 1), (8, 3), (2048, 1)])
def test_perplexity_equals_hand_computation(tiny_causal_loaded, max_length: int, context_len: int) -> None:
    loaded = tiny_causal_loaded(False)
    tok = loaded.tokenizer
    tokens = tok(TEXT, add_special_tokens=False)["input_ids"]
    assert len(tokens) > 2 * max_length or max_length > len(tokens)
    want, _ = _hand_nll(loaded.model, tokens, tok.bos_token_id, max_length, context_len)
    got = document_loglikelihood(loaded.model, tok, TEXT, max_length=max_length, context_len=context_len)
    assert got["tokens"] == len(tokens) and got["nll"] == pytest.approx(want, rel=1e-5)
    (row,) = score_documents(loaded, [("d0", None, TEXT, TEXT)], max_length=max_length, context_len=context_len)
    words, nbytes = len(TEXT.split()), len(TEXT.encode())
    for name, value in [("nll", want / len(tokens)), ("token_perplexity", math.exp(want / len(tokens))),
                        ("word_perplexity", math.exp(want / words)), ("byte_perplexity", math.exp(want / nbytes)),
                        ("bits_per_byte", want / nbytes / math.log(2))]:
        assert PERPLEXITY_METRICS[name].score_rows([row]) == pytest.approx(value, rel=1e-5), name


def _second_model(tiny_causal_dir: Path, seed: int):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tiny_causal_dir)).eval()


def _direct_kl(p_model, q_model, tokens, prefix, max_length, context_len) -> float:
    _, p = _hand_nll(p_model, tokens, prefix, max_length, context_len)
    _, q = _hand_nll(q_model, tokens, prefix, max_length, context_len)
    return sum(float((a.exp() * (a - b)).sum()) for a, b in zip(p, q, strict=True))


def test_kl_with_itself_is_zero_and_of_two_models_is_direct(tiny_causal_loaded, tiny_causal_dir) -> None:
    loaded = tiny_causal_loaded(False)
    tok = loaded.tokenizer
    same = document_loglikelihood(loaded.model, tok, TEXT, max_length=8, reference=Reference(loaded.model))
    assert same["kl"] == pytest.approx(0.0, abs=1e-6)
    other = _second_model(tiny_causal_dir, seed=7)
    tokens = tok(TEXT, add_special_tokens=False)["input_ids"]
    got = document_loglikelihood(loaded.model, tok, TEXT, max_length=8, context_len=2, reference=Reference(other))
    want = _direct_kl(other, loaded.model, tokens, tok.bos_token_id, 8, 2)  # KL(p_reference ‖ p_model)
    assert want > 0.01 and got["kl"] == pytest.approx(want, rel=1e-5)


def test_kl_of_an_adapter_against_its_disabled_self(tiny_causal_loaded) -> None:
    """The base distribution comes from the same model with the adapter disabled: no second copy."""
    import torch
    from peft import LoraConfig, get_peft_model

    loaded = tiny_causal_loaded(False)
    base_copy = copy.deepcopy(loaded.model).eval()
    torch.manual_seed(3)
    peft_model = get_peft_model(loaded.model, LoraConfig(r=4, target_modules="all-linear",
                                                         init_lora_weights=False)).eval()
    loaded.model = peft_model
    ref = reference_for(loaded, None)
    assert ref is not None and ref.model is peft_model
    (row,) = score_documents(loaded, [("d0", None, TEXT, TEXT)], max_length=16)
    tokens = loaded.tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    want = _direct_kl(base_copy, peft_model, tokens, loaded.tokenizer.bos_token_id, 16, 1)
    assert want > 1e-4 and row["kl"] == pytest.approx(want, rel=1e-5)
    assert row["scores"]["kl"] == pytest.approx(want / len(tokens), rel=1e-5)


class _OwnPositions:
    """A model whose logits are those of its input's own positions (prompt tuning's virtual tokens, which come
    first in the output, dropped)."""

    def __init__(self, model) -> None:
        self.model = model

    def __call__(self, input_ids):
        from types import SimpleNamespace

        return SimpleNamespace(logits=self.model(input_ids=input_ids).logits[:, -input_ids.shape[1] :])


@pytest.mark.parametrize("kind", ["prompt_tuning", "prefix_tuning"])
def test_a_soft_prompt_counts_in_perplexity_and_kl(tiny_causal_loaded, kind: str) -> None:
    """Prompt and prefix tuning: the PEFT model's own forward adds the soft prompt or prefix, which the base's
    decoder alone would skip (it scored the base: the base's NLL and KL 0); the reference is the model with the
    adapter disabled."""
    import torch
    from peft import PrefixTuningConfig, PromptTuningConfig, TaskType, get_peft_model

    loaded = tiny_causal_loaded(False)
    base_copy = copy.deepcopy(loaded.model).eval()
    torch.manual_seed(0)
    config = {"prompt_tuning": PromptTuningConfig, "prefix_tuning": PrefixTuningConfig}[kind]
    loaded.model = get_peft_model(loaded.model, config(num_virtual_tokens=4, task_type=TaskType.CAUSAL_LM)).eval()
    (row,) = score_documents(loaded, [("d0", None, TEXT, TEXT)], max_length=16)
    assert [row] == score_documents(loaded, [("d0", None, TEXT, TEXT)], max_length=16, cache=None)
    tokens = loaded.tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    bos = loaded.tokenizer.bos_token_id
    want, _ = _hand_nll(_OwnPositions(loaded.model), tokens, bos, 16, 1)
    base, _ = _hand_nll(base_copy, tokens, bos, 16, 1)
    assert abs(want - base) > 1e-3 and row["nll"] == pytest.approx(want, rel=1e-5)
    want_kl = _direct_kl(base_copy, _OwnPositions(loaded.model), tokens, bos, 16, 1)
    assert want_kl > 1e-4 and row["kl"] == pytest.approx(want_kl, rel=1e-5)


def test_kl_refuses_different_tokenizers(tiny_causal_loaded) -> None:
    loaded, other = tiny_causal_loaded(False), tiny_causal_loaded(False)
    other.tokenizer = copy.deepcopy(other.tokenizer)
    other.tokenizer.add_tokens(["<brand-new-token>"])
    other.ref = "other-model"
    with pytest.raises(ConfigError, match="KL divergence needs one tokenizer, but 'other-model' and 'tiny'"):
        reference_for(loaded, other)


def test_kl_of_a_bottleneck_adapter_against_its_disabled_self(tiny_causal_loaded) -> None:
    """A non-PEFT adapter (bottleneck layers) is told by the methods table and disabled for the base the same way."""
    import torch

    from tunebench.config import AdapterConfig
    from tunebench.models.bottleneck import add_bottleneck_adapters

    loaded = tiny_causal_loaded(False)
    base_copy = copy.deepcopy(loaded.model).eval()
    add_bottleneck_adapters(loaded.model, AdapterConfig(reduction_factor=4))
    torch.manual_seed(5)
    with torch.no_grad():
        for name, p in loaded.model.named_parameters():
            if "_adapter." in name:
                p.normal_(0.0, 0.3)  # up starts at zero (identity): move it so the adapter changes the model
    ref = reference_for(loaded, None)
    assert ref is not None and ref.model is loaded.model
    (row,) = score_documents(loaded, [("d0", None, TEXT, TEXT)], max_length=16)
    tokens = loaded.tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    want = _direct_kl(base_copy, loaded.model, tokens, loaded.tokenizer.bos_token_id, 16, 1)
    assert want > 1e-4 and row["kl"] == pytest.approx(want, rel=1e-5)
    _, adapted = _hand_nll(loaded.model, tokens, loaded.tokenizer.bos_token_id, 16, 1)  # re-enabled after scoring
    _, base = _hand_nll(base_copy, tokens, loaded.tokenizer.bos_token_id, 16, 1)
    assert not torch.allclose(adapted[0], base[0])


def test_the_metric_registry_knows_the_perplexity_metrics() -> None:
    """Registered once (evaluate/metrics/perplexity.py), offered for documents only, lower is better; values from
    the registry object equal lm-eval's formulas on hand-made sums."""
    from tunebench.evaluate.metrics import known_names, metric_class
    from tunebench.evaluate.metrics.registry import check_metric_names

    names = ["nll", "token_perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte", "kl"]
    assert known_names("document") == names and list(PERPLEXITY_METRICS) == names
    assert not set(names) & set(known_names("text")) and not set(names) & set(known_names("choice"))
    assert all(metric_class(n).higher_is_better is False for n in names)
    assert check_metric_names(["word_perplexity", "kl"], "tasks.metrics", inputs="document") == ["word_perplexity",
                                                                                              "kl"]
    rows = [{"nll": 30.0, "kl": 1.5, "tokens": 10.0, "words": 6.0, "bytes": 40.0},
            {"nll": 12.0, "kl": 0.5, "tokens": 5.0, "words": 3.0, "bytes": 20.0}]
    want = {"nll": 42 / 15, "token_perplexity": math.exp(42 / 15), "word_perplexity": math.exp(42 / 9),
            "byte_perplexity": math.exp(42 / 60), "bits_per_byte": 42 / 60 / math.log(2), "kl": 2 / 15}
    for name, value in want.items():
        metric = metric_class(name)()
        stats = metric.stats(rows, [])
        assert stats.shape == (2, 2)
        assert float(metric.score(stats.sum(0, keepdims=True), len(rows))[0]) == pytest.approx(value, rel=1e-12)
