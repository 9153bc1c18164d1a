"""Contract suite for :class:`hub.types.AdapterMethod` plugins."""

from __future__ import annotations

from hub.testing.contracts import ProtocolContract
from hub.types import AdapterMethod


class AdapterMethodContract(ProtocolContract):
    """Subclass in your tests and provide a ``adapter_method`` fixture returning the object under test."""

    protocol, kind, fixture_name = AdapterMethod, "adapter", "adapter_method"
