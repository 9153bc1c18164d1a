"""Merge-mode maths on plain tensors: ffa and dense exact, fedavg inexact, SVD energy."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from hub.errors import ValidationError
from hub.fed.modes import (
    decode_merged,
    encode_update,
    exact_sum,
    lora_scale,
    relative_gap,
)

W = (0.5, 0.3, 0.2)


def merge(mode: str, adapters: list, rank: int | None = None) -> tuple[dict, dict, dict]:
    """Encode each adapter, sum the vectors in float64, decode: the maths without encryption."""
    total, layout, frozen = None, None, None
    for adapter, w in zip(adapters, W, strict=True):
        layout, vec, frozen = encode_update(mode, adapter.tensors(), adapter.config(), w)
        total = vec if total is None else total + vec
    return decode_merged(mode, layout, total, frozen, adapters[0].config(), rank=rank)


def updates(adapters: list) -> list:
    return [(a.tensors(), a.config(), w) for a, w in zip(adapters, W, strict=True)]


def test_lora_scale_is_alpha_over_r_or_sqrt_r_with_rslora() -> None:
    assert lora_scale({"r": 16, "lora_alpha": 32}) == 2.0
    assert lora_scale({"r": 16, "lora_alpha": 32, "use_rslora": True}) == 8.0


def test_ffa_merge_is_exact_weighted_sum_of_updates(adapter_factory: Any) -> None:
    ads = [adapter_factory(str(s), s) for s in (1, 2, 3)]
    tensors, config, _ = merge("ffa", ads)
    assert relative_gap(tensors, config, exact_sum(updates(ads))) < 1e-6


def test_fedavg_merge_is_inexact_when_a_differs(adapter_factory: Any) -> None:
    ads = [adapter_factory(str(s), s, a_seed=None) for s in (1, 2, 3)]
    tensors, config, _ = merge("fedavg", ads)
    assert relative_gap(tensors, config, exact_sum(updates(ads))) > 0.3


def test_dense_merge_keeps_all_energy_when_rank_covers_sum(adapter_factory: Any) -> None:
    ads = [adapter_factory(str(s), s, a_seed=None) for s in (1, 2, 3)]
    tensors, config, report = merge("dense", ads, rank=12)
    assert report["energy_kept"] == pytest.approx(1.0, abs=1e-9)
    assert relative_gap(tensors, config, exact_sum(updates(ads))) < 1e-6


def test_dense_merge_to_team_rank_reports_energy_below_one(adapter_factory: Any) -> None:
    ads = [adapter_factory(str(s), s, a_seed=None) for s in (1, 2, 3)]
    _, config, report = merge("dense", ads)
    assert config["r"] == 4
    assert 0.3 < report["energy_kept"] < 0.99


def test_dense_vector_is_weighted_scaled_ba(adapter_factory: Any) -> None:
    ad = adapter_factory("x", 1)
    layout, vec, _ = encode_update("dense", ad.tensors(), ad.config(), 0.5)
    t = ad.tensors()
    m = layout[0]["name"].removesuffix(".delta")
    want = (
        0.5
        * lora_scale(ad.config())
        * (t[m + ".lora_B.weight"].double() @ t[m + ".lora_A.weight"].double())
    )
    assert np.allclose(vec[: want.numel()], want.reshape(-1).numpy(), atol=1e-15)


def test_ffa_sends_a_in_the_clear_and_only_b_encrypted(adapter_factory: Any) -> None:
    ad = adapter_factory("x", 1)
    layout, vec, frozen = encode_update("ffa", ad.tensors(), ad.config(), 1.0)
    assert all(e["name"].endswith(".lora_B.weight") for e in layout)
    assert all(n.endswith(".lora_A.weight") for n in frozen) and len(frozen) == len(layout)
    assert vec.size == sum(torch.Size(e["shape"]).numel() for e in layout)


def test_refuses_tensors_that_are_not_lora_pairs(adapter_factory: Any) -> None:
    ad = adapter_factory("x", 1)
    tensors = dict(ad.tensors(), **{"model.lm_head.weight": torch.zeros(2, 2)})
    with pytest.raises(ValidationError, match="'model.lm_head.weight' is not a LoRA A or B"):
        encode_update("ffa", tensors, ad.config(), 1.0)
