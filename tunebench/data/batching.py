"""Batches: dynamic padding, a length-grouped seeded batch sampler, and token-length statistics.

Written by hand (transformers' DataCollatorForSeq2Seq and LengthGroupedSampler come close) because a resumed
run must replay exactly the batch order of the interrupted one: here the order is a pure function of
(seed, epoch), and the sampler can skip the batches already seen.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    import torch

    from tunebench.data.tokenize import TokenizedExample

IGNORE_INDEX = -100


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


class LengthGroupedBatchSampler:
    """A torch batch sampler over `epoch_batches`; set_epoch(epoch, skip=k) resumes after k batches."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, *, group_by_length: bool = True,
                 mega_batch_factor: int = 50, drop_last: bool = False) -> None:
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.group_by_length = group_by_length
        self.mega_batch_factor = mega_batch_factor
        self.drop_last = drop_last
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Choose the epoch whose order to replay, and how many of its batches were already consumed."""
        self.epoch = epoch
        self.skip = skip

    def batches(self) -> list[list[int]]:
        return epoch_batches(self.lengths, self.batch_size, self.seed, self.epoch,
                             group_by_length=self.group_by_length, mega_batch_factor=self.mega_batch_factor,
                             drop_last=self.drop_last)

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.batches()[self.skip :]

    def __len__(self) -> int:
        full, rest = divmod(len(self.lengths), self.batch_size)
        return max(0, full + (0 if self.drop_last or rest == 0 else 1) - self.skip)

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "epoch": self.epoch, "skip": self.skip}


def token_length_stats(lengths: Sequence[int], max_length: int | None = None) -> dict[str, Any]:
    """min / median / p95 / max / mean token lengths, and how many exceed max_length."""
    if len(lengths) == 0:
        return {"count": 0, "min": None, "median": None, "p95": None, "max": None, "mean": None, "over_max": 0,
                "max_length": max_length}
    arr = np.asarray(lengths, dtype=np.int64)
    return {
        "count": int(arr.size),
        "min": int(arr.min()),
        "median": float(np.median(arr)),
        "p95": float(np.percentile(arr, 95)),
        "max": int(arr.max()),
        "mean": round(float(arr.mean()), 2),
        "over_max": int((arr > max_length).sum()) if max_length is not None else 0,
        "max_length": max_length,
    }
