"""The hand-written greedy decoder must give exactly what one-at-a-time `generate` gives, in every batch state."""

from __future__ import annotations

import pytest
from gen_prompts import PROMPTS

from tunebench.config import GenerationConfig
from tunebench.evaluate import decode as decode_mod
from tunebench.evaluate.decode import greedy_decode, supports_fast_greedy
from tunebench.evaluate.generate import encode_prompts, eos_token_ids, generate_texts


@pytest.fixture(scope="module")
def causal(tokenizer_dir):
    """A tiny Llama whose larger random weights write varied text: any KV-cache or position slip changes tokens."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, initializer_range=0.1, tie_word_embeddings=False,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)  # fmt: skip
    return LlamaForCausalLM(cfg).eval(), tok


@pytest.fixture(scope="module")
def gpt2(tokenizer_dir):
    """A tiny GPT-2: learned absolute positions instead of rotary ones."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tok), n_embd=64, n_layer=2, n_head=4, n_positions=512, initializer_range=0.1,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)  # fmt: skip
    return GPT2LMHeadModel(cfg).eval(), tok


def hf_one_at_a_time(model, tok, prompts, max_new_tokens, eos):
    """New token ids of plain `generate`, one unpadded prompt per call, up to and including the first EOS."""
    import torch

    out = []
    for ids in encode_prompts(tok, prompts):
        with torch.inference_mode():
            y = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                               max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos,
                               pad_token_id=tok.pad_token_id)  # fmt: skip
        row = y[0, len(ids) :].tolist()
        cut = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
        out.append(row[:cut])
    return out


def decode(model, tok, prompts, max_new_tokens, eos, batch_size, **kwargs):
    import torch

    gen = GenerationConfig(max_new_tokens=max_new_tokens, batch_size=batch_size)
    with torch.inference_mode():
        return greedy_decode(model, encode_prompts(tok, prompts), gen, eos, **kwargs)


@pytest.mark.parametrize("batch_size", [1, 3, 32])
def test_equal_to_one_at_a_time_generate_with_refills(causal, batch_size):
    model, tok = causal
    eos = eos_token_ids(model, tok)
    expected = hf_one_at_a_time(model, tok, PROMPTS, 12, eos)
    rows = decode(model, tok, PROMPTS, 12, eos, batch_size)
    assert [r.tokens for r in rows] == expected
    assert len({tuple(t) for t in expected}) > 1  # an order mix-up could not pass unnoticed
    assert all(r.time_s > 0 for r in rows)


def test_rows_ending_at_different_steps_and_at_prefill(causal):
    """EOS ids taken from the free outputs make rows end mid-batch and one end on its first token."""
    model, tok = causal
    free = hf_one_at_a_time(model, tok, PROMPTS, 16, [])
    eos = [free[1][0], free[0][5], free[2][9]]  # prompt 1 ends at once, others after some steps
    expected = hf_one_at_a_time(model, tok, PROMPTS, 16, eos)
    lengths = {len(t) for t in expected}
    assert 1 in lengths and len(lengths) >= 3
    for batch_size in (2, 4, 7):
        rows = decode(model, tok, PROMPTS, 16, eos, batch_size, order=[6, 2, 4, 0, 5, 1, 3])
        assert [r.tokens for r in rows] == expected


def test_single_new_token_and_kv_cache_cap(causal):
    model, tok = causal
    eos = eos_token_ids(model, tok)
    assert [r.tokens for r in decode(model, tok, PROMPTS, 1, eos, 4)] == hf_one_at_a_time(model, tok, PROMPTS, 1, eos)
    # a cap below one row's cache still decodes, one slot at a time
    rows = decode(model, tok, PROMPTS, 8, eos, 32, max_cache_bytes=1)
    assert [r.tokens for r in rows] == hf_one_at_a_time(model, tok, PROMPTS, 8, eos)


def test_done_text_ends_a_row_early(causal):
    model, tok = causal
    free = decode(model, tok, PROMPTS[:3], 16, [], 3)
    stop_after = 4

    rows = decode(model, tok, PROMPTS[:3], 16, [], 3, is_done_text=lambda tokens: len(tokens) >= stop_after)
    assert [r.tokens for r in rows] == [f.tokens[:stop_after] for f in free]


def test_gpt2_learned_positions(gpt2):
    model, tok = gpt2
    eos = eos_token_ids(model, tok)
    assert supports_fast_greedy(model, "causal", GenerationConfig())
    expected = hf_one_at_a_time(model, tok, PROMPTS, 10, eos)
    assert [r.tokens for r in decode(model, tok, PROMPTS, 10, eos, 3)] == expected


def test_peft_wrapped_model(causal):
    import copy

    import torch
    from peft import LoraConfig, get_peft_model

    model, tok = causal
    torch.manual_seed(1)
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    peft_model.eval()
    eos = eos_token_ids(model, tok)
    assert supports_fast_greedy(peft_model, "causal", GenerationConfig())
    expected = hf_one_at_a_time(peft_model, tok, PROMPTS, 10, eos)
    assert expected != hf_one_at_a_time(model, tok, PROMPTS, 10, eos)  # the adapter changes outputs
    assert [r.tokens for r in decode(peft_model, tok, PROMPTS, 10, eos, 3)] == expected


def test_generate_falls_back_where_the_decoder_does_not_apply(causal):
    """Beam search, sampling, seq2seq and checkpoint logits processors go through `generate`."""
    import copy

    model, tok = causal
    assert supports_fast_greedy(model, "causal", GenerationConfig())
    assert not supports_fast_greedy(model, "causal", GenerationConfig(num_beams=2))
    assert not supports_fast_greedy(model, "causal", GenerationConfig(do_sample=True))
    assert not supports_fast_greedy(model, "seq2seq", GenerationConfig())
    penalized = copy.deepcopy(model)
    penalized.generation_config.repetition_penalty = 1.5
    assert not supports_fast_greedy(penalized, "causal", GenerationConfig())
    # the fallback honours the checkpoint's penalty, as `generate` does; the fast path would not
    gen = GenerationConfig(max_new_tokens=12, batch_size=3)
    with_penalty = [r.text for r in generate_texts(penalized, tok, PROMPTS, family="causal", gen=gen)]
    without = [r.text for r in generate_texts(model, tok, PROMPTS, family="causal", gen=gen)]
    assert with_penalty != without


SIMILAR = [f"Summarize: #Person1#: the {w} is late by {n} days and nobody called us. #Person2#: {r}"
           for w, n, r in [("parcel", 3, "I will ask."), ("delivery van", 12, "Odd."), ("train", 1, "Really? Why?"),
                           ("invoice from the supplier", 40, "Fine."), ("bus", 7, "Let me check the timetable."),
                           ("letter", 2, "Hm.")]]


def test_prefill_groups_respect_the_padding_slack_and_token_budget():
    lengths = [100, 95, 91, 89, 50, 48, 10]
    assert decode_mod.prefill_groups(lengths, range(7), limit=8) == [[0, 1, 2], [3], [4, 5], [6]]
    assert decode_mod.prefill_groups(lengths, range(7), limit=2) == [[0, 1], [2, 3], [4, 5], [6]]
    assert decode_mod.prefill_groups(lengths, range(7), limit=8, max_tokens=200) == [[0, 1], [2, 3], [4, 5], [6]]
    assert decode_mod.prefill_groups(lengths, range(7), limit=8, max_tokens=0) == [[i] for i in range(7)]


def test_batched_prefill_gives_the_tokens_of_per_prompt_prefill(causal):
    """Rows of different lengths prefilled together (right-padded, masked) decode exactly as alone, in fp32."""
    model, tok = causal
    eos = eos_token_ids(model, tok)
    lengths = [len(ids) for ids in encode_prompts(tok, SIMILAR)]
    order = sorted(range(len(SIMILAR)), key=lambda i: -lengths[i])
    groups = decode_mod.prefill_groups(lengths, order, limit=32)
    assert max(len(g) for g in groups) >= 3 and len({lengths[i] for g in groups for i in g if len(g) > 1}) > 1
    alone = decode(model, tok, SIMILAR, 12, eos, 4, order=order, prefill_tokens=0)
    together = decode(model, tok, SIMILAR, 12, eos, 4, order=order)
    assert [r.tokens for r in together] == [r.tokens for r in alone] == hf_one_at_a_time(model, tok, SIMILAR, 12, eos)
    assert len({tuple(r.tokens) for r in alone}) > 1
