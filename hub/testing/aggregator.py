"""Contract suite for :class:`hub.types.Aggregator` plugins."""

from __future__ import annotations

from hub.testing.contracts import ProtocolContract
from hub.types import Aggregator


class AggregatorContract(ProtocolContract):
    """Subclass in your tests and provide a ``aggregator`` fixture returning the object under test."""

    protocol, kind, fixture_name = Aggregator, "aggregator", "aggregator"
