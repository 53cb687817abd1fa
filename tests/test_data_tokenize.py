"""Tokenization with the real chat tokenizer: prompt masking, EOS, BOS once, seq2seq labels, truncation."""

from __future__ import annotations

import pytest

from tunebench.data.example import Example
from tunebench.data.tokenize import IGNORE_INDEX, fit_to_length, special_tokens_added, tokenize_examples
from tunebench.models.chat import format_prompt


@pytest.fixture(scope="module")
def tok(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


def _chat(tok):
    return lambda p: format_prompt(tok, p, use_chat=True)


EXAMPLES = [
    Example("a", "Summarize the following dialogue.\n\n#Person1#: Hi.\n#Person2#: Hello there.", "They greet.", ()),
    Example("b", "Summarize: #Person1#: Lunch? #Person2#: Sure.", "They agree to have lunch together.", ()),
]


def test_causal_masks_prompt_and_ends_with_eos(tok):
    out, stats = tokenize_examples(EXAMPLES, tok, family="causal", format_prompt=_chat(tok), max_length=512)
    assert stats["kept"] == 2 and stats["truncated"] == stats["dropped"] == 0
    for ex, t in zip(EXAMPLES, out, strict=True):
        prompt_ids = tok(_chat(tok)(ex.prompt), add_special_tokens=False)["input_ids"]
        assert t.input_ids[: len(prompt_ids)] == prompt_ids and t.prompt_length == len(prompt_ids)
        assert t.labels[: len(prompt_ids)] == [IGNORE_INDEX] * len(prompt_ids)
        target = t.labels[len(prompt_ids) :]
        assert IGNORE_INDEX not in target and target == t.input_ids[len(prompt_ids) :]
        assert tok.decode(target) == ex.completion + tok.eos_token
        assert target[-1] == tok.eos_token_id
        assert len(t.input_ids) == len(t.labels) == t.length
    # the chat template spells its own start token: it must appear once at the start, not twice
    assert out[0].input_ids[0] == tok.convert_tokens_to_ids("<|im_start|>") != out[0].input_ids[1]


def test_train_on_prompt_keeps_every_label(tok):
    out, _ = tokenize_examples(EXAMPLES, tok, family="causal", format_prompt=_chat(tok), max_length=512,
                               train_on_prompt=True)
    assert all(t.labels == t.input_ids for t in out)


def test_bos_added_once_when_tokenizer_adds_specials(tokenizer_dir):
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    bos, eos = tok.bos_token_id, tok.eos_token_id
    tok._tokenizer.post_processor = TemplateProcessing(
        single=f"{tok.bos_token} $A {tok.eos_token}", special_tokens=[(tok.bos_token, bos), (tok.eos_token, eos)]
    )
    assert special_tokens_added(tok) == ([bos], [eos])
    chat, _ = tokenize_examples(EXAMPLES[:1], tok, family="causal", format_prompt=_chat(tok), max_length=512)
    assert chat[0].input_ids[0] == bos and chat[0].input_ids[1] != bos  # template already had it
    plain, _ = tokenize_examples(EXAMPLES[:1], tok, family="causal", format_prompt=lambda p: p, max_length=512)
    assert plain[0].input_ids[0] == bos and plain[0].input_ids[1] != bos  # added by us, once
    assert plain[0].input_ids.count(eos) == 1  # the post-processor's EOS is not appended after the prompt


def test_seq2seq_encoder_input_and_decoder_labels(tok):
    out, _ = tokenize_examples(EXAMPLES, tok, family="seq2seq", format_prompt=lambda p: p, max_length=512)
    for ex, t in zip(EXAMPLES, out, strict=True):
        assert t.input_ids == tok(ex.prompt)["input_ids"]
        assert t.labels == tok(ex.completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert IGNORE_INDEX not in t.labels and t.length == len(t.input_ids) + len(t.labels)


def test_truncate_cuts_prompt_from_left_and_keeps_completion(tok):
    long = Example("long", "word " * 300 + "\nSummarize that.", "A short summary.", ())
    out, stats = tokenize_examples([long, EXAMPLES[0]], tok, family="causal", format_prompt=_chat(tok),
                                   max_length=64)
    assert stats["truncated"] == 1 and stats["completion_truncated"] == 0 and stats["kept"] == 2
    assert stats["tokens"]["over_max"] == 1 and stats["tokens"]["max"] > 300
    t = out[0]
    assert len(t.input_ids) == 64
    target = [x for x in t.labels if x != IGNORE_INDEX]
    assert tok.decode(target) == long.completion + tok.eos_token
    assert tok.decode(t.input_ids[: t.prompt_length]).endswith("Summarize that.<|im_end|>\n<|im_start|>assistant\n")


def test_drop_policy_counts_and_removes(tok):
    long = Example("long", "word " * 300, "x", ())
    out, stats = tokenize_examples([long, EXAMPLES[0]], tok, family="causal", format_prompt=_chat(tok),
                                   max_length=64, truncation="drop")
    assert [t.id for t in out] == ["a"] and stats["dropped"] == 1 and stats["truncated"] == 0


def test_overlong_completion_is_cut_at_its_end_and_counted(tok):
    ex = Example("c", "Repeat.", "word " * 200, ())
    out, stats = tokenize_examples([ex], tok, family="causal", format_prompt=_chat(tok), max_length=64)
    assert stats["completion_truncated"] == 1 and stats["truncated"] == 1
    t = out[0]
    assert len(t.input_ids) == 64 and t.prompt_length == min(32, len(tok(_chat(tok)("Repeat."))["input_ids"]))
    assert t.labels[-1] != tok.eos_token_id  # its end (and EOS) were cut


def test_seq2seq_truncation_keeps_labels(tok):
    long = Example("long", "word " * 300, "A summary.", ())
    out, stats = tokenize_examples([long], tok, family="seq2seq", format_prompt=lambda p: p, max_length=40)
    assert stats["truncated"] == 1
    assert len(out[0].input_ids) + len(out[0].labels) == 40 and out[0].labels[-1] == tok.eos_token_id


def test_fit_to_length_keeps_special_head():
    prompt, completion = [1] + list(range(10, 30)), [7, 8, 9]
    p, c, cut = fit_to_length(prompt, completion, 10, keep_head=1)
    assert p == [1, 24, 25, 26, 27, 28, 29] and c == completion and not cut
    p, c, cut = fit_to_length(prompt, list(range(100, 120)), 10, keep_head=1)
    assert p == [1, 26, 27, 28, 29] and c == [100, 101, 102, 103, 104] and cut
    assert fit_to_length([1, 2], [3], 10) == ([1, 2], [3], False)
