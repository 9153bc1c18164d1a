"""What an engine is handed: one generation request (:class:`GenRequest`), and the errors
an engine raises. They live in :mod:`hub.engines` (engine plugins import ``hub`` only);
this module re-exports them for the server's own modules."""

from __future__ import annotations

from hub.engines import AdapterRefused, GenRequest, QueueFullError

__all__ = ["AdapterRefused", "GenRequest", "QueueFullError"]
