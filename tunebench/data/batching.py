"""Batches: dynamic padding and length-grouped seeded epoch batches, over tokenize.py's examples.

Written by hand (transformers' DataCollatorForSeq2Seq and LengthGroupedSampler come close) because a resumed
run must replay exactly the batch order of the interrupted one: here the order is a pure function of
(seed, epoch), and the trainer skips the batches already seen.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from tunebench.data.tokenize import IGNORE_INDEX, TokenizedExample

if TYPE_CHECKING:
    import torch


class PaddingCollator:
    """Pad a list of TokenizedExample to the longest in the batch (right side), labels with -100.

    Labels are padded by position, never by replacing pad ids, because many tokenizers use EOS as pad and the
    EOS at the end of a completion must stay a training target.
    """

    def __init__(self, pad_token_id: int, family: Literal["causal", "seq2seq"] = "causal",
                 pad_to_multiple_of: int | None = None) -> None:
        self.pad_token_id = pad_token_id
        self.family = family
        self.pad_to_multiple_of = pad_to_multiple_of

    def _width(self, n: int) -> int:
        m = self.pad_to_multiple_of
        return n if not m else -(-n // m) * m

    def __call__(self, batch: Sequence[TokenizedExample]) -> dict[str, torch.Tensor]:
        import torch

        if not batch:
            raise ValueError("cannot collate an empty batch")
        width = self._width(max(len(ex.input_ids) for ex in batch))
        input_ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        label_width = width if self.family == "causal" else self._width(max(len(ex.labels) for ex in batch))
        labels = torch.full((len(batch), label_width), IGNORE_INDEX, dtype=torch.long)
        for row, ex in enumerate(batch):
            n = len(ex.input_ids)
            input_ids[row, :n] = torch.tensor(ex.input_ids, dtype=torch.long)
            attention_mask[row, :n] = 1
            labels[row, : len(ex.labels)] = torch.tensor(ex.labels, dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def pad_token_id(tokenizer: Any) -> int:
    """The tokenizer's pad id, else its EOS id (padding is masked out, so any id works)."""
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


def epoch_batches(
    lengths: Sequence[int],
    batch_size: int,
    seed: int,
    epoch: int,
    *,
    group_by_length: bool = True,
    mega_batch_factor: int = 50,
    drop_last: bool = False,
) -> list[list[int]]:
    """The batches (lists of example indices) of one epoch: a pure function of its arguments.

    Grouped: shuffle, cut into mega-batches of mega_batch_factor * batch_size, sort each by length (longest
    first) and cut into batches, then shuffle the batch order. Similar lengths share a batch, so little
    compute goes to padding, yet every epoch sees a different order.
    """
    if batch_size <= 0:
        raise ValueError("batch_size must be positive")
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths)).tolist()
    if group_by_length:
        mega = batch_size * mega_batch_factor
        order = [
            i for start in range(0, len(order), mega)
            for i in sorted(order[start : start + mega], key=lambda j: -lengths[j])
        ]
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches.pop()
    if group_by_length:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches
