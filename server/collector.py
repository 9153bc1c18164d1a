"""Young garbage collections taken while the server has no generation work.

With young collections spaced out (``serve.gc_threshold``, :class:`server.app.Collector`),
one that does come due walks tens of thousands of objects: about 20 ms with the
interpreter lock held, a pause the event loop shares with every request. The scenario
where that hurts most is a burst of requests at an idle server, which pays for what
earlier traffic left behind (docs/benchmarks.md). So while nothing is queued, generating
or holding a queue place, the young and middle generations are collected on the event
loop once a second when at least ``least`` objects wait: the next burst starts from an
empty young generation.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable

IDLE_CHECK_S = 1.0
LEAST_OBJECTS = 1000


class IdleCollection:
    """Collect generations 0 and 1 every ``every_s`` seconds while ``idle()`` holds.

    :meth:`start` runs on the event loop (a Litestar start-up hook) and :meth:`stop` at
    shutdown. A process whose collector is disabled (``gc.disable()``) is left alone.
    """

    def __init__(
        self,
        idle: Callable[[], bool],
        *,
        every_s: float = IDLE_CHECK_S,
        least: int = LEAST_OBJECTS,
    ) -> None:
        self.idle, self.every_s, self.least = idle, every_s, least
        self.collections = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Begin checking, on the running event loop."""
        self._loop = asyncio.get_running_loop()
        self._timer = self._loop.call_later(self.every_s, self._tick)

    def _tick(self) -> None:
        if gc.isenabled() and gc.get_count()[0] >= self.least and self.idle():
            gc.collect(1)
            self.collections += 1
        if self._loop is not None:
            self._timer = self._loop.call_later(self.every_s, self._tick)

    def stop(self) -> None:
        """Stop checking."""
        self._loop = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
