"""The ``ckks`` aggregator passes the aggregator contract (on small 128-bit-secure parameters)."""

from __future__ import annotations

from typing import Any

import pytest

import plugins.ckks
from hub.plugins import Hub
from hub.testing import AggregatorContract


@pytest.fixture(scope="module")
def aggregator() -> Any:
    return Hub(builtins=False, extra=[("ckks", plugins.ckks)]).aggregators["ckks"]


class TestCkksContract(AggregatorContract):
    @pytest.fixture
    def aggregator_params(self, logic_params: dict) -> dict:
        return logic_params
