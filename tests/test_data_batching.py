"""Batching: dynamic padding, reproducible length-grouped epoch batches, token-length statistics."""

from __future__ import annotations

import pytest
import torch

from tunebench.data.batching import PaddingCollator, epoch_batches
from tunebench.data.tokenize import IGNORE_INDEX, TokenizedExample, token_length_stats

PAD = 2  # the real tokenizer pads with its EOS id: label padding must not depend on the pad id


def _ex(ids: list[int], labels: list[int]) -> TokenizedExample:
    return TokenizedExample("x", ids, labels)


def test_causal_collator_pads_to_longest_and_keeps_eos_labels():
    batch = [_ex([5, 6, 7, PAD], [IGNORE_INDEX, IGNORE_INDEX, 7, PAD]), _ex([5, 9], [IGNORE_INDEX, 9])]
    out = PaddingCollator(PAD)(batch)
    assert out["input_ids"].tolist() == [[5, 6, 7, PAD], [5, 9, PAD, PAD]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert out["labels"].tolist() == [[IGNORE_INDEX, IGNORE_INDEX, 7, PAD], [IGNORE_INDEX, 9] + [IGNORE_INDEX] * 2]
    assert all(t.dtype == torch.long for t in out.values())


def test_seq2seq_collator_pads_labels_separately():
    batch = [_ex([5, 6, 7], [8, PAD]), _ex([5], [8, 9, 10, PAD])]
    out = PaddingCollator(0, family="seq2seq")(batch)
    assert out["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert out["labels"].tolist() == [[8, PAD, IGNORE_INDEX, IGNORE_INDEX], [8, 9, 10, PAD]]


def test_pad_to_multiple_of():
    out = PaddingCollator(0, pad_to_multiple_of=8)([_ex([1, 2, 3], [1, 2, 3])])
    assert out["input_ids"].shape == (1, 8) and out["labels"][0, 3:].eq(IGNORE_INDEX).all()


def test_collated_batch_runs_through_a_model(tiny_causal_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_causal_dir)
    batch = PaddingCollator(PAD)([_ex([5, 6, 7, 8], [IGNORE_INDEX, 6, 7, 8]), _ex([5, 9], [IGNORE_INDEX, 9])])
    loss = model(**batch).loss
    assert torch.isfinite(loss)


def test_epoch_batches_are_a_function_of_seed_and_epoch():
    lengths = [(i * 37) % 101 + 1 for i in range(1000)]
    first = epoch_batches(lengths, 8, seed=3, epoch=2)
    assert epoch_batches(lengths, 8, seed=3, epoch=2) == first
    assert epoch_batches(lengths, 8, seed=3, epoch=1) != first
    assert epoch_batches(lengths, 8, seed=4, epoch=2) != first
    # every index exactly once, batch sizes as asked
    flat = [i for b in first for i in b]
    assert sorted(flat) == list(range(1000)) and len(first) == 125 and {len(b) for b in first} == {8}


def test_length_grouping_reduces_padding():
    lengths = [(i * 7919) % 500 + 1 for i in range(2000)]

    def padding(batches):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)

    grouped = epoch_batches(lengths, 16, seed=0, epoch=0)
    plain = epoch_batches(lengths, 16, seed=0, epoch=0, group_by_length=False)
    assert padding(grouped) < padding(plain) / 5
    assert sorted(i for b in plain for i in b) == list(range(2000))


def test_drop_last():
    assert [len(b) for b in epoch_batches([1] * 10, 4, 0, 0, drop_last=True)] == [4, 4]
    assert sorted(len(b) for b in epoch_batches([1] * 10, 4, 0, 0)) == [2, 4, 4]


def test_token_length_stats():
    st = token_length_stats([10, 20, 30, 40, 200], max_length=35)
    assert (st["count"], st["min"], st["median"], st["max"], st["over_max"]) == (5, 10, 30.0, 200, 2)
    assert st["p95"] == pytest.approx(168.0)
    assert token_length_stats([], 10)["count"] == 0
