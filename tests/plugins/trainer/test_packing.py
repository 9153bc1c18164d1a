"""Packing: rows share a sequence without seeing each other, so the loss equals the padded loss."""

from __future__ import annotations

from pathlib import Path

import torch

from plugins.trainer.batches import BinPacker, make_collator
from plugins.trainer.data import IGNORE

ROWS = [
    {"input_ids": [10, 11, 12, 13, 14], "labels": [IGNORE, IGNORE, 12, 13, 14]},
    {"input_ids": [20, 21, 22], "labels": [IGNORE, 21, 22]},
    {"input_ids": [30, 31, 32, 33], "labels": [IGNORE, IGNORE, 32, 33]},
]


def test_rows_are_bin_packed_with_restarting_positions() -> None:
    batch = BinPacker(pad_id=0, max_length=8)(ROWS)
    assert batch["input_ids"].tolist() == [
        [10, 11, 12, 13, 14, 20, 21, 22],
        [30, 31, 32, 33, 0, 0, 0, 0],
    ]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 1, 2], [0, 1, 2, 3, 0, 1, 2, 3]]
    assert batch["labels"].tolist()[1] == [IGNORE, IGNORE, 32, 33, IGNORE, IGNORE, IGNORE, IGNORE]
    assert batch["real_tokens"] == 12


def test_packed_loss_equals_padded_loss(embedded_base: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(embedded_base, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(embedded_base)
    padded = make_collator(tok, packing=False)(ROWS)
    packed = make_collator(tok, packing=True, max_length=8)(ROWS)
    assert packed["input_ids"].shape == (2, 8)  # bin-packed rows, not one flattened row
    with torch.no_grad():
        # no KV cache, as in training: with a cache transformers ignores the packing
        a = model(**padded, use_cache=False).loss
        b = model(**packed, use_cache=False).loss
    assert torch.allclose(a, b, atol=1e-5)


def test_token_counter_counts_padding_apart() -> None:
    counter = make_collator.__globals__["TokenCounter"](BinPacker(pad_id=0, max_length=8))
    counter(ROWS)
    assert (counter.tokens, counter.useful_tokens) == (16, 12)
