"""The ``plain`` reference aggregator passes the aggregator contract and sums exactly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import plugins.plain
from hub.plugins import Hub
from hub.testing import AggregatorContract


@pytest.fixture(scope="module")
def aggregator() -> Any:
    return Hub(builtins=False, extra=[("plain", plugins.plain)]).aggregators["plain"]


class TestPlainContract(AggregatorContract):
    pass


def test_plain_chunks_are_float64_values_in_the_clear() -> None:
    from plugins.plain.codec import PlainCodec

    codec, values = PlainCodec(), np.array([0.25, -1.5, 3.0])
    assert codec.encrypt(None, values) == values.astype("<f8").tobytes()


def test_plain_sum_is_exact_float64_sum() -> None:
    from hub.fed.params import CkksParams
    from plugins.plain.codec import PlainCodec

    codec, xs = PlainCodec(), [np.random.default_rng(i).normal(size=100) for i in range(3)]
    blob = codec.add(None, [codec.encrypt(None, x) for x in xs], CkksParams())
    assert np.array_equal(codec.decrypt(None, blob, 100, CkksParams()), xs[0] + xs[1] + xs[2])


def test_plain_round_needs_no_secret_file(aggregator: Any, tmp_path: Path) -> None:
    aggregator.init_round(
        tmp_path / "round",
        round_id="p1",
        teams=["a", "b"],
        mode="ffa",
        key_dir=tmp_path / "keys",
        key_holder="k",
        sign=lambda data: {"team": "k", "signature": "c2ln"},
    )
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == ["context.sha256"]
