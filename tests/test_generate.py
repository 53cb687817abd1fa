"""Batched generation must equal one-at-a-time decoding, keep input order, honour stop strings and EOS."""

from __future__ import annotations

import pytest
from gen_prompts import PROMPTS

from tunebench.config import GenerationConfig
from tunebench.evaluate.generate import (
    count_new_tokens,
    cut_at_stop,
    encode_prompts,
    eos_token_ids,
    generate_texts,
    length_sorted_batches,
)


@pytest.fixture(scope="module")
def causal(tiny_causal_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_causal_dir), AutoTokenizer.from_pretrained(
        tiny_causal_dir
    )


@pytest.fixture(scope="module")
def t5(tiny_t5_dir):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    return AutoModelForSeq2SeqLM.from_pretrained(tiny_t5_dir), AutoTokenizer.from_pretrained(tiny_t5_dir)


def _one_at_a_time(model, tok, prompts, max_new_tokens):
    """The plain Hugging Face loop: one unpadded prompt per `generate` call."""
    import torch

    eos = eos_token_ids(model, tok)
    texts = []
    for ids in encode_prompts(tok, prompts):
        with torch.inference_mode():
            out = model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=tok.pad_token_id,
            )
        start = len(ids) if not model.config.is_encoder_decoder else 1
        texts.append(tok.decode(out[0, start:], skip_special_tokens=True).strip())
    return texts


def test_left_padded_batches_equal_one_at_a_time_and_keep_order(causal):
    model, tok = causal
    gen = GenerationConfig(max_new_tokens=10, batch_size=3)
    batched = generate_texts(model, tok, PROMPTS, family="causal", gen=gen)
    expected = _one_at_a_time(model, tok, PROMPTS, 10)
    assert [r.text for r in batched] == expected
    assert [r.n_prompt_tokens for r in batched] == [len(ids) for ids in encode_prompts(tok, PROMPTS)]
    assert all(1 <= r.n_new_tokens <= 10 and r.time_s > 0 for r in batched)
    # the outputs differ between prompts, so an order mix-up could not pass unnoticed
    assert len(set(expected)) > 1


def test_equality_check_would_catch_wrong_padding(causal):
    """Right padding a decoder-only batch changes this model's greedy output: the test above can fail."""
    import torch

    from tunebench.evaluate.generate import pad_batch

    model, tok = causal
    inputs = pad_batch(encode_prompts(tok, PROMPTS), tok.pad_token_id, "right", "cpu")
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=10, do_sample=False, pad_token_id=tok.pad_token_id)
    wrong = [tok.decode(o[inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip() for o in out]
    assert wrong != _one_at_a_time(model, tok, PROMPTS, 10)


def test_chat_templated_prompts_get_no_second_bos(causal):
    _, tok = causal
    templated = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    ids = encode_prompts(tok, [templated])[0]
    assert ids == tok(templated, add_special_tokens=False)["input_ids"]


def test_length_sorting_groups_similar_lengths_longest_first():
    batches = length_sorted_batches([3, 9, 1, 9, 5], 2)
    assert batches == [[1, 3], [4, 0], [2]]


def test_stop_string_cuts_text_and_ends_generation_early(causal):
    model, tok = causal
    # seeded sampling makes the random tiny model write varied text; stopping changes no draw before the stop
    gen = GenerationConfig(max_new_tokens=16, batch_size=2, do_sample=True)
    free = generate_texts(model, tok, PROMPTS[:2], family="causal", gen=gen)
    text = free[0].text
    stop = next(
        text[i : i + 3]
        for i in range(len(text) // 3, len(text) - 3)
        if text[i : i + 3].strip() and text.find(text[i : i + 3]) == i
    )
    stopped = generate_texts(
        model, tok, PROMPTS[:2], family="causal", gen=gen.model_copy(update={"stop": [stop]})
    )
    assert stopped[0].text == text[: text.find(stop)].strip()
    assert stopped[0].n_new_tokens < free[0].n_new_tokens
    if stop not in free[1].text:
        assert stopped[1].text == free[1].text


def test_seq2seq_generation_matches_single_calls(t5):
    model, tok = t5
    gen = GenerationConfig(max_new_tokens=8, batch_size=2)
    batched = generate_texts(model, tok, PROMPTS, family="seq2seq", gen=gen)
    assert [r.text for r in batched] == _one_at_a_time(model, tok, PROMPTS, 8)
    assert all(1 <= r.n_new_tokens <= 8 for r in batched)


def test_beam_search_runs(causal):
    model, tok = causal
    gen = GenerationConfig(max_new_tokens=6, batch_size=2, num_beams=3)
    results = generate_texts(model, tok, PROMPTS[:3], family="causal", gen=gen)
    assert len(results) == 3 and all(r.n_new_tokens >= 1 for r in results)


def test_sampling_is_seeded_and_leaves_caller_rng_alone(causal):
    import torch

    model, tok = causal
    gen = GenerationConfig(max_new_tokens=8, batch_size=2, do_sample=True, temperature=1.5)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = generate_texts(model, tok, PROMPTS, family="causal", gen=gen, seed=7)
    after = torch.rand(1)
    assert torch.equal(before, after)
    b = generate_texts(model, tok, PROMPTS, family="causal", gen=gen, seed=7)
    c = generate_texts(model, tok, PROMPTS, family="causal", gen=gen, seed=8)
    assert [r.text for r in a] == [r.text for r in b]
    assert [r.text for r in a] != [r.text for r in c]


def test_training_mode_is_restored(causal):
    model, tok = causal
    model.train()
    try:
        generate_texts(model, tok, PROMPTS[:1], family="causal", gen=GenerationConfig(max_new_tokens=2))
        assert model.training
    finally:
        model.eval()


def test_chat_end_of_turn_tokens_count_as_eos(causal):
    model, tok = causal
    ids = eos_token_ids(model, tok)
    assert tok.convert_tokens_to_ids("<|im_end|>") in ids
    assert tok.convert_tokens_to_ids("<|endoftext|>") in ids


def test_count_new_tokens_stops_at_first_eos_or_trailing_padding():
    assert count_new_tokens([5, 6, 2, 2, 2], eos_ids=[2], pad_id=2) == 3
    assert count_new_tokens([5, 6, 7, 0, 0], eos_ids=[2], pad_id=0) == 3
    assert count_new_tokens([5, 6, 7], eos_ids=[2], pad_id=0) == 3


def test_cut_at_stop_uses_the_earliest_stop_string():
    assert cut_at_stop(" a b\n\nc ###", ["###", "\n\n"]) == "a b"
    assert cut_at_stop("no stop here ", ["###"]) == "no stop here"
    assert cut_at_stop("x", []) == "x"


def test_empty_prompt_list_returns_nothing(causal):
    model, tok = causal
    assert generate_texts(model, tok, [], family="causal", gen=GenerationConfig()) == []


@pytest.fixture(scope="module")
def bart(tokenizer_dir):
    import torch
    from transformers import AutoTokenizer, BartConfig, BartForConditionalGeneration

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    tok.chat_template = None
    torch.manual_seed(0)
    model = BartForConditionalGeneration(BartConfig(
        vocab_size=len(tok), max_position_embeddings=256, d_model=32, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        decoder_start_token_id=tok.eos_token_id, forced_eos_token_id=None, init_std=0.2)).eval()  # varied outputs
    model.generation_config.forced_eos_token_id = None
    return model, tok


@pytest.mark.parametrize("name", ["t5", "bart"])
def test_seq2seq_greedy_decoder_equals_generate_with_rows_ending_at_different_steps(name, request):
    """Reference: `generate` on each prompt alone. An extra end token taken from the outputs makes rows finish
    at different steps, so dropping finished rows from the batch is exercised."""
    import torch

    from tunebench.evaluate.decode import greedy_decode_seq2seq, supports_fast_greedy

    model, tok = request.getfixturevalue(name)
    gen = GenerationConfig(max_new_tokens=10, batch_size=3)
    assert supports_fast_greedy(model, "seq2seq", gen)
    encoded = encode_prompts(tok, PROMPTS)

    def reference(eos):
        outs = []
        for ids in encoded:
            with torch.inference_mode():
                out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                     max_new_tokens=10, do_sample=False, eos_token_id=eos,
                                     pad_token_id=tok.pad_token_id)
            row = out[0, 1:].tolist()
            outs.append(row[: count_new_tokens(row, eos, tok.pad_token_id)])
        return outs

    free = reference(eos_token_ids(model, tok))

    def stop_lengths(token):
        return {row.index(token) + 1 if token in row else len(row) for row in free}

    # a token of the outputs that, as an extra end token, makes rows stop at different steps
    extra = next(t for row in free for t in row if len(stop_lengths(t)) > 1)
    eos = [*eos_token_ids(model, tok), extra]
    expected = reference(eos)
    assert len({len(t) for t in expected}) > 1
    with torch.inference_mode():
        got = greedy_decode_seq2seq(model, encoded, gen, eos, order=sorted(range(len(encoded)),
                                                                             key=lambda i: -len(encoded[i])))
    assert [r.tokens for r in got] == expected
    texts = generate_texts(model, tok, PROMPTS, family="seq2seq", gen=gen)
    assert [r.text for r in texts] == [tok.decode(t, skip_special_tokens=True).strip() for t in free]
