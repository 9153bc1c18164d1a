"""The garbage collector while the server runs: what it may walk, and when.

:class:`Collector` freezes the heap built at start-up and spaces young collections out
(``serve.gc_threshold``). One that does come due then walks tens of thousands of
objects: about 20 ms with the interpreter lock held, a pause the event loop shares with
every request. The scenario where that hurts most is a burst of requests at an idle
server, which pays for what earlier traffic left behind (docs/benchmarks.md). So
:class:`IdleCollection`, while nothing is queued, generating or holding a queue place,
collects the young and middle generations on the event loop once a second when at least
``least`` objects wait: the next burst starts from an empty young generation.
"""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import Callable

from hub.errors import ConfigError

_C_INT_MAX = 2**31 - 1
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


class Collector:
    """The garbage collector's settings while the app runs: set at start-up, given back at
    shutdown (so a process that goes on, tests or benches, collects as before).

    - What start-up built (the base, tokenizer and libraries: about 510,000 objects on the
      embedded base) is frozen out of the collector's reach. A full collection walks every
      tracked object with the interpreter lock held: 250 ms on the embedded base, a pause
      the event loop and every request would share.
    - A young collection runs once ``threshold`` more container objects were made than
      freed (``serve.gc_threshold``; Python's 700). A request in flight holds a few hundred
      of them (scope, task, parsed body, sampling state), so at 700 a burst of 1,000
      requests ran about 80 young and 7 middle collections on the loop: 20-35 ms with the
      lock held, in the window its 429s wait in. At 50,000 none ran there; one such
      collection costs about 2 ms when every young object survives (docs/benchmarks.md).
      Objects freed by their reference count never wait for it.

    The collector is the process's: apps running side by side in one process (tests,
    benches) share it through ``shared``. The threshold is the one of the latest started
    still running, and Python's comes back with the last stop. Every stop unfreezes, also
    while another app runs (its heap is frozen again by the next start): a stopped app
    sits in reference cycles, and frozen they would keep its state, engine and base for
    good. A collector stopped without having started (Litestar runs the shutdown hooks
    also when a start-up hook failed) changes nothing.
    """

    class Shared:
        """The collectors started and not yet stopped, and the thresholds before the first."""

        def __init__(self) -> None:
            self.lock = threading.Lock()
            self.running: list[Collector] = []
            self.saved: tuple[int, ...] = ()

    process = Shared()  # this process's, unless a test passes its own

    def __init__(self, threshold: int, shared: Collector.Shared | None = None) -> None:
        if threshold < 1:
            raise ConfigError(
                f"serve.gc_threshold is {threshold}: set it to 1 or more (Python's default is 700)"
            )
        if threshold > _C_INT_MAX:  # gc.set_threshold takes a C int: OverflowError at start-up
            raise ConfigError(
                f"serve.gc_threshold is {threshold}: set it to {_C_INT_MAX} or less"
                " (Python's default is 700)"
            )
        self.threshold = threshold
        self.shared = shared or Collector.process

    def start(self) -> None:
        """Freeze the heap built so far and set the young threshold."""
        shared = self.shared
        with shared.lock:
            gc.collect()
            gc.freeze()
            if not shared.running:
                shared.saved = gc.get_threshold()
            if self not in shared.running:
                shared.running.append(self)
            gc.set_threshold(self.threshold, *shared.saved[1:])

    def stop(self) -> None:
        """Unfreeze, and give the thresholds back unless another app still runs."""
        shared = self.shared
        with shared.lock:
            if self not in shared.running:  # never started, or stopped already
                return
            shared.running.remove(self)
            gc.unfreeze()
            if shared.running:  # another app still serves: its threshold stays
                gc.set_threshold(shared.running[-1].threshold, *shared.saved[1:])
            else:
                gc.set_threshold(*shared.saved)
