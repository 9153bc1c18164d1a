"""Contract suite for :class:`hub.types.Quantizer` plugins."""

from __future__ import annotations

from hub.testing.contracts import ProtocolContract
from hub.types import Quantizer


class QuantizerContract(ProtocolContract):
    """Subclass in your tests and provide a ``quantizer`` fixture returning the object under test."""

    protocol, kind, fixture_name = Quantizer, "quantizer", "quantizer"
