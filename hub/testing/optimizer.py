"""Contract suite for :class:`hub.types.OptimizerFactory` plugins."""

from __future__ import annotations

from hub.testing.contracts import ProtocolContract
from hub.types import OptimizerFactory


class OptimizerFactoryContract(ProtocolContract):
    """Subclass in your tests and provide a ``optimizer_factory`` fixture returning the object under test."""

    protocol, kind, fixture_name = OptimizerFactory, "optimizer", "optimizer_factory"
