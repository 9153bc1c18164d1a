"""Opening the configured storage backend for a data directory."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hub.config import Settings
    from hub.plugins import Hub


def open_store(hub: Hub, settings: Settings, backend: str | None = None, **options: Any) -> Any:
    """Instantiate the storage backend ``backend`` (default: setting ``hub.storage``).

    Each backend keeps its data under ``<home>/storage/<backend name>`` and
    receives the hub so it can call lifecycle hooks (``validate_adapter``,
    ``adapter_published``, ``adapter_loaded``, ``key_provider``).
    """
    name = backend or settings.get("hub.storage")
    cls = hub.storage[name]
    root = Path(settings.home) / "storage" / name
    return cls(root, hub=hub, **options)
