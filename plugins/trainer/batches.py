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


class TokenCounter:
    """Wraps a collator and counts the tokens it hands the model (for tokens/s figures).

    ``tokens`` includes padding; ``useful_tokens`` does not.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.tokens = 0
        self.useful_tokens = 0

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.inner(rows)
        self.tokens += batch["input_ids"].numel()
        mask = batch.get("attention_mask")
        self.useful_tokens += int(mask.sum()) if mask is not None else batch["input_ids"].numel()
        return batch


def make_collator(tokenizer: Any, *, packing: bool) -> TokenCounter:
    """The batch collator (wrapped in a :class:`TokenCounter`).

    ``packing``: every row of a batch is concatenated into one sequence with
    ``position_ids`` restarting at each row (transformers' ``DataCollatorWithFlattening``);
    the attention masks then keep rows apart, and no compute is spent on padding.
    Otherwise rows are right-padded (positions start at 0, as in left-padded generation).
    """
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening

    if packing:
        return TokenCounter(
            DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE)
        )
    right = copy.deepcopy(tokenizer)
    right.padding_side = "right"
    return TokenCounter(
        DataCollatorForSeq2Seq(right, padding=True, label_pad_token_id=IGNORE, return_tensors="pt")
    )
