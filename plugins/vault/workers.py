"""The vault's helper threads: one small pool per process, started once.

A pull hands its audit entry, for large payloads its SHA-256 work, and over
object storage an early payload request to these threads. Starting a fresh ``threading.Thread`` per pull cost up to
several milliseconds on a busy machine (``Thread.start`` waits until the new
thread is scheduled); pool threads are already running. After ``fork`` the
child gets a new pool (the parent's threads do not exist there).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

MAX_WORKERS = 6
"""Three per pull (audit entry, hashing, an early payload request over object storage),
for two concurrent pulls before any waits."""

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pid = 0


def _after_fork_in_child() -> None:
    # The parent's threads (and a lock one of them may hold) do not exist here.
    global _lock, _pool
    _lock, _pool = threading.Lock(), None


os.register_at_fork(after_in_child=_after_fork_in_child)


def in_background(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future[Any]:
    """Run ``fn(*args, **kwargs)`` on a vault helper thread; ``result()`` re-raises its error."""
    global _pool, _pid
    with _lock:
        if _pool is None or _pid != os.getpid():
            _pool = ThreadPoolExecutor(MAX_WORKERS, thread_name_prefix="vault")
            _pid = os.getpid()
        pool = _pool
    return pool.submit(fn, *args, **kwargs)
