"""Opening the configured storage backend for a data directory."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hub.adapters import Adapters
    from hub.config import Settings
    from hub.plugins import Hub


def open_backend(hub: Hub, settings: Settings, backend: str | None = None, **options: Any) -> Any:
    """Instantiate the storage backend ``backend`` (default: setting ``hub.storage``) bare.

    The backend keeps its data under ``<home>/storage/<backend name>`` and is
    built as ``cls(root, hub=hub, settings=settings, **options)``: ``settings``
    are the caller's effective settings (``--config`` included), so a backend
    reads its own table from them, never from a file of its own. Use
    :func:`open_store` for anything that pushes or pulls: the bare backend
    applies none of the core's rules.
    """
    name = backend or settings.get("hub.storage")
    cls = hub.storage[name]
    root = Path(settings.home) / "storage" / name
    return cls(root, hub=hub, settings=settings, **options)


def open_store(
    hub: Hub, settings: Settings, backend: str | None = None, **options: Any
) -> Adapters:
    """The storage backend ``backend`` behind the core's adapter lifecycle (:mod:`hub.adapters`).

    Every push and pull through the result is validated, runs the
    ``validate_adapter`` hooks and fires ``adapter_published`` or
    ``adapter_loaded`` exactly once, whatever the backend. ``team`` (an
    option) is the default acting team, else setting ``hub.team``.
    """
    from hub.adapters import Adapters
    from hub.validation import Limits

    team = options.get("team") or settings.get("hub.team") or None
    limits = Limits(
        max_bytes=settings.get("adapters.max_bytes"),
        max_abs_weight=settings.get("adapters.max_abs_weight"),
    )
    return Adapters(
        hub,
        open_backend(hub, settings, backend, **options),
        team=team,
        limits=limits,
        home=Path(settings.home),
        passphrase=options.get("passphrase"),
    )
