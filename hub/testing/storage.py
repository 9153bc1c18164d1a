"""Contract suite for :class:`hub.types.StorageBackend` plugins."""

from __future__ import annotations

from hub.testing.contracts import ProtocolContract
from hub.types import StorageBackend


class StorageBackendContract(ProtocolContract):
    """Subclass in your tests and provide a ``storage_backend`` fixture returning the object under test."""

    protocol, kind, fixture_name = StorageBackend, "storage", "storage_backend"
