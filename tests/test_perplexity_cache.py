"""The hidden-state cache of bench/perplexity.py: hits reuse the base's decoder pass, misses for any other model,
rows bit-identical to the uncached computation, bounded by bytes."""

from __future__ import annotations

import copy

import pytest

from tunebench.bench.perplexity import (
    HIDDEN_STATES,
    HiddenStateCache,
    _Scorer,
    probe_ids,
    rolling_windows,
    score_documents,
)

DOCS = [
    ("d0", None, "The quick brown fox jumps over the lazy dog. A second sentence follows, with some punctuation.",
     "The quick brown fox jumps over the lazy dog. A second sentence follows, with some punctuation."),
    ("d1", None, "Rivers carry water to the sea; the sea gives it back as rain over the hills and fields.",
     "Rivers carry water to the sea; the sea gives it back as rain over the hills and fields."),
]
MAX_LENGTH = 8  # several windows per document


@pytest.fixture(autouse=True)
def _empty_cache():
    HIDDEN_STATES.clear()
    yield
    HIDDEN_STATES.clear()


def _n_windows(loaded) -> int:
    tok = loaded.tokenizer
    return sum(len(rolling_windows(tok(text, add_special_tokens=False)["input_ids"], prefix_token=tok.bos_token_id,
                                   max_length=MAX_LENGTH)) for _, _, text, _ in DOCS)


def _count_decoder_calls(model) -> list[int]:
    """A one-item list counting the decoder's forward calls from now on."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    calls = [0]
    base.get_decoder().register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def _rows(loaded, cache, **kw):
    return score_documents(loaded, DOCS, max_length=MAX_LENGTH, cache=cache, **kw)


def _peft(loaded, seed: int = 3):
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    loaded.model = get_peft_model(loaded.model, LoraConfig(r=4, target_modules="all-linear",
                                                           init_lora_weights=False)).eval()
    return loaded


def test_scoring_twice_hits_and_runs_no_decoder_forward_on_the_documents(tiny_causal_loaded) -> None:
    loaded = tiny_causal_loaded(False)
    want = _rows(loaded, None)  # uncached
    windows = _n_windows(loaded)
    assert windows > len(DOCS)
    calls = _count_decoder_calls(loaded.model)
    first = _rows(loaded, HIDDEN_STATES)
    assert calls[0] == 1 + windows  # the fingerprint's probe, then every window
    assert (HIDDEN_STATES.hits, HIDDEN_STATES.misses, len(HIDDEN_STATES)) == (0, windows, windows)
    second = _rows(loaded, HIDDEN_STATES)
    assert calls[0] == 1 + windows + 1  # only the probe: every window came from the cache
    assert (HIDDEN_STATES.hits, HIDDEN_STATES.misses) == (windows, windows)
    assert first == want and second == want  # bit-identical rows, not merely close


def test_kl_of_a_lora_model_reuses_the_base_scored_alone(tiny_causal_loaded) -> None:
    """The base's own pass fills the cache; the LoRA model's reference (adapter disabled) computes as the base
    bit for bit, so its side hits; NLL and KL equal the uncached values exactly."""
    want = _rows(_peft(tiny_causal_loaded(False)), None)
    assert all(r["kl"] > 1e-4 for r in want)
    base = tiny_causal_loaded(False)
    base_rows = _rows(base, HIDDEN_STATES)
    windows = _n_windows(base)
    assert [r["nll"] for r in base_rows] == [r["nll"] for r in _rows(base, None)]
    tuned = _peft(tiny_causal_loaded(False))
    calls = _count_decoder_calls(tuned.model)
    HIDDEN_STATES.hits = HIDDEN_STATES.misses = 0
    got = _rows(tuned, HIDDEN_STATES)
    assert HIDDEN_STATES.hits == windows and HIDDEN_STATES.misses == windows  # reference hits, tuned side misses
    assert calls[0] == 2 + windows  # two probes (tuned, adapter disabled) and the tuned windows only
    assert got == want
    assert [r["nll"] for r in got] != [r["nll"] for r in base_rows]  # the adapter does change the model


def test_kl_against_a_separate_base_model_reuses_its_pass(tiny_causal_loaded) -> None:
    """Full fine-tuning: the reference is another loaded copy of the base; its side hits."""
    import torch

    base, reference = tiny_causal_loaded(False), tiny_causal_loaded(False)
    tuned = tiny_causal_loaded(False)
    with torch.no_grad():
        tuned.model.model.layers[0].mlp.down_proj.weight.add_(0.05)
    want = _rows(tuned, None, reference=reference)
    _rows(base, HIDDEN_STATES)
    HIDDEN_STATES.hits = HIDDEN_STATES.misses = 0
    assert _rows(tuned, HIDDEN_STATES, reference=reference) == want
    assert HIDDEN_STATES.hits == HIDDEN_STATES.misses == _n_windows(base)
    assert all(r["kl"] > 1e-6 for r in want)


def test_a_perturbed_weight_misses(tiny_causal_loaded) -> None:
    import torch

    base, other = tiny_causal_loaded(False), tiny_causal_loaded(False)
    with torch.no_grad():
        other.model.model.layers[1].self_attn.o_proj.weight[0, 0] += 1e-3
    _rows(base, HIDDEN_STATES)
    want = _rows(other, None)
    HIDDEN_STATES.hits = HIDDEN_STATES.misses = 0
    assert _rows(other, HIDDEN_STATES) == want
    assert HIDDEN_STATES.hits == 0 and HIDDEN_STATES.misses == _n_windows(base)


def test_an_embedding_row_the_probe_does_not_use_still_misses(tiny_causal_loaded) -> None:
    """A changed embedding row leaves the probe's hidden states bit-identical; the embedding hash tells it."""
    import torch

    base, other = tiny_causal_loaded(False), tiny_causal_loaded(False)
    vocab = base.model.get_input_embeddings().weight.shape[0]
    token = base.tokenizer(DOCS[0][2], add_special_tokens=False)["input_ids"][3]
    assert token not in probe_ids(vocab)
    with torch.no_grad():
        other.model.get_input_embeddings().weight[token] += 0.5  # tied: the head's row moves too
    a, b = _Scorer(base.model, cache=HIDDEN_STATES), _Scorer(other.model, cache=HIDDEN_STATES)
    with torch.inference_mode():
        assert torch.equal(a._forward(probe_ids(vocab), 0), b._forward(probe_ids(vocab), 0))
        assert a.fingerprint()[0] != b.fingerprint()[0]
    base_rows = _rows(base, HIDDEN_STATES)
    want = _rows(other, None)
    HIDDEN_STATES.hits = HIDDEN_STATES.misses = 0
    got = _rows(other, HIDDEN_STATES)
    assert got == want and HIDDEN_STATES.hits == 0
    assert got[0]["nll"] != base_rows[0]["nll"]  # a hit would have been wrong


def test_a_model_that_cannot_be_split_caches_nothing(tiny_causal_loaded) -> None:
    """Without a separable head (here a logit soft-cap) the scorer's 'hidden' is full-vocabulary logits: never
    kept."""
    loaded = tiny_causal_loaded(False)
    loaded.model.config.final_logit_softcapping = 30.0
    assert not _Scorer(loaded.model, cache=HIDDEN_STATES).split
    assert _rows(loaded, HIDDEN_STATES) == _rows(loaded, None)
    assert len(HIDDEN_STATES) == 0 and HIDDEN_STATES.hits == HIDDEN_STATES.misses == 0


def test_the_byte_budget_evicts_least_recently_used_first() -> None:
    import torch

    def key(i: int) -> tuple[str, int, bytes]:
        return ("f", 0, bytes([i]))

    entry = 4 * 4 + 1 + 1  # 4 float32 + fingerprint + ids bytes
    cache = HiddenStateCache(max_bytes=2 * entry)
    for i in range(2):
        cache.put(key(i), torch.full((4,), float(i)))
    assert cache.get(key(0)) is not None  # 0 is now the most recently used
    cache.put(key(2), torch.full((4,), 2.0))
    assert len(cache) == 2 and cache.bytes == 2 * entry
    assert cache.get(key(1)) is None and torch.equal(cache.get(key(0)), torch.zeros(4))
    assert torch.equal(cache.get(key(2)), torch.full((4,), 2.0))
    cache.put(key(3), torch.zeros(100))  # larger than the whole budget: not kept, nothing evicted
    assert len(cache) == 2 and cache.get(key(3)) is None
    stored = torch.arange(4.0)
    cache.put(key(4), stored)
    stored += 1  # the cache holds a copy
    assert torch.equal(cache.get(key(4)), torch.arange(4.0))
    cache.clear()
    assert (len(cache), cache.bytes, cache.hits, cache.misses) == (0, 0, 0, 0)


def test_a_tiny_budget_keeps_scoring_exact(tiny_causal_loaded) -> None:
    loaded = tiny_causal_loaded(False)
    want = _rows(loaded, None)
    one = HiddenStateCache(max_bytes=10**9)
    _rows(loaded, one)
    largest = max(size for _, size in one._entries.values())
    small = HiddenStateCache(max_bytes=largest + largest // 2)  # room for one window at a time
    assert _rows(loaded, small) == want and _rows(loaded, small) == want
    assert small.bytes <= small.max_bytes and len(small) < _n_windows(loaded)
    assert small.misses > _n_windows(loaded)  # windows evicted before the second pass asked for them again


def test_the_cache_is_keyed_by_behaviour_not_by_object(tiny_causal_loaded) -> None:
    """A deep copy of a model (another object, same function) shares its entries."""
    loaded = tiny_causal_loaded(False)
    _rows(loaded, HIDDEN_STATES)
    twin = copy.copy(loaded)
    twin.model = copy.deepcopy(loaded.model)
    HIDDEN_STATES.hits = HIDDEN_STATES.misses = 0
    _rows(twin, HIDDEN_STATES)
    assert HIDDEN_STATES.misses == 0 and HIDDEN_STATES.hits == _n_windows(loaded)


@pytest.mark.parametrize("method", ["lora", "adapter"])
def test_a_reloaded_adapter_shares_the_base_entries(tiny_causal_loaded, tiny_causal_dir, tmp_path, method) -> None:
    """As `tunebench run` and `sweep` load them (load_model of the base alone; of base + saved adapter, unmerged):
    the base's pass fills the cache and the tuned model's reference (adapter disabled) hits, LoRA (PEFT) and
    bottleneck adapter alike."""
    import torch

    from tunebench.config import AdapterConfig, ModelConfig
    from tunebench.models.load import load_model

    trained = tiny_causal_loaded(False).model
    torch.manual_seed(4)
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        trained = get_peft_model(trained, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
        trained.save_pretrained(tmp_path / "out")
    else:
        from tunebench.models.bottleneck import add_bottleneck_adapters, save_bottleneck

        add_bottleneck_adapters(trained, AdapterConfig(reduction_factor=4))
        with torch.no_grad():
            for name, p in trained.named_parameters():
                if "_adapter." in name:
                    p.normal_(0.0, 0.3)
        save_bottleneck(trained, tmp_path / "out")
    cfg = ModelConfig(ref=str(tiny_causal_dir), device="cpu")
    base = load_model(cfg)
    tuned = load_model(cfg, adapter=tmp_path / "out", merge=False)
    want = _rows(tuned, None)
    assert all(r["kl"] > 1e-4 for r in want)
    _rows(base, HIDDEN_STATES)
    HIDDEN_STATES.hits = HIDDEN_STATES.misses = 0
    assert _rows(tuned, HIDDEN_STATES) == want
    assert HIDDEN_STATES.hits == HIDDEN_STATES.misses == _n_windows(base)
