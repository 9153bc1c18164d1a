"""Torch datasets and collators: padded batches (right padding) or packed, padding-free batches."""

from __future__ import annotations

import copy
from typing import Any

from plugins.trainer.data import IGNORE, Example


def make_dataset(examples: list[Example]) -> Any:
    """A ``torch.utils.data.Dataset`` of ``{"input_ids", "labels"}`` dicts."""
    from torch.utils.data import Dataset

    class ExampleDataset(Dataset):
        def __len__(self) -> int:
            return len(examples)

        def __getitem__(self, i: int) -> dict[str, list[int]]:
            return {"input_ids": examples[i].input_ids, "labels": examples[i].labels}

    return ExampleDataset()


class BinPacker:
    """Packs a batch's rows into as few rows of at most ``max_length`` tokens as fit.

    First-fit decreasing. Each packed row restarts ``position_ids`` at every
    example, and no attention mask is passed, so transformers builds a
    block-diagonal causal mask from the position ids: examples never see each
    other. The first label of every example is ignored (it would be predicted
    from the previous example). Bins are padded to the longest one with a pad
    segment whose labels are ignored. Attention stays bounded by ``max_length``
    squared per row, unlike flattening the whole batch into one long row.
    """

    def __init__(self, pad_id: int, max_length: int) -> None:
        self.pad_id = pad_id
        self.max_length = max_length

    def __call__(self, rows: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        bins: list[list[Any]] = []  # [tokens used, rows]
        for row in sorted(rows, key=lambda r: -len(r["input_ids"])):
            size = len(row["input_ids"])
            for b in bins:
                if b[0] + size <= self.max_length:
                    b[0] += size
                    b[1].append(row)
                    break
            else:
                bins.append([size, [row]])
        width = max(b[0] for b in bins)
        ids, labels, positions = [], [], []
        for used, members in bins:
            i: list[int] = []
            lab: list[int] = []
            pos: list[int] = []
            for row in members:
                i += row["input_ids"]
                lab += [IGNORE, *row["labels"][1:]]
                pos += list(range(len(row["input_ids"])))
            pad = width - used
            ids.append(i + [self.pad_id] * pad)
            labels.append(lab + [IGNORE] * pad)
            positions.append(pos + list(range(pad)))
        return {
            "input_ids": torch.tensor(ids),
            "labels": torch.tensor(labels),
            "position_ids": torch.tensor(positions),
            "real_tokens": sum(b[0] for b in bins),
        }


class TokenCounter:
    """Wraps a collator and counts the tokens it hands the model (for tokens/s figures).

    ``tokens`` includes padding; ``useful_tokens`` does not; ``largest_shape`` is the
    (rows, width) of the biggest batch (for the activation estimate).
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.tokens = 0
        self.useful_tokens = 0
        self.largest_shape = (0, 0)

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.inner(rows)
        shape = tuple(batch["input_ids"].shape)
        if shape[0] * shape[1] > self.largest_shape[0] * self.largest_shape[1]:
            self.largest_shape = (int(shape[0]), int(shape[1]))
        self.tokens += batch["input_ids"].numel()
        mask = batch.get("attention_mask")
        real = batch.pop("real_tokens", None)  # the packer reports it: no mask to count from
        if real is not None:
            self.useful_tokens += real
        elif mask is not None:
            self.useful_tokens += int(mask.sum())
        else:
            self.useful_tokens += batch["input_ids"].numel()
        return batch


def make_collator(tokenizer: Any, *, packing: bool, max_length: int = 256) -> TokenCounter:
    """The batch collator (wrapped in a :class:`TokenCounter`).

    ``packing``: the batch's rows are bin-packed into rows of at most
    ``max_length`` tokens (:class:`BinPacker`), ``position_ids`` restarting at
    every example so that examples never attend to each other; little compute
    is spent on padding and attention stays bounded per row.
    Otherwise rows are right-padded (positions start at 0, as in left-padded generation).
    """
    if packing:
        return TokenCounter(BinPacker(pad_id=tokenizer.pad_token_id, max_length=max_length))
    from transformers import DataCollatorForSeq2Seq

    right = copy.deepcopy(tokenizer)
    right.padding_side = "right"
    return TokenCounter(
        DataCollatorForSeq2Seq(right, padding=True, label_pad_token_id=IGNORE, return_tensors="pt")
    )
