"""API keys (stored hashed) that map callers to teams, and a per-key rate limit.

A key is 256 random bits, shown once when created. Only its SHA-256 is
stored (a slow password hash buys nothing for a random 256-bit secret), in
``<home>/server/api-keys.json``, written atomically. Admin keys may call the
admin endpoints; every key acts as its team.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import stat
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from hub.errors import ValidationError

KEY_PREFIX = "qh-"
KEY_FILE_CHECK_S = 0.01
"""How long one look at the key file's metadata holds: a request that starts this long
after the file changed sees the change. A burst of requests then costs a ``stat`` every
10 ms, not one each: in the serving loop one cost about 20 µs with the interpreter lock
released, a third of the server's time per refused request (docs/benchmarks.md)."""
_TEAM_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")


@dataclass(frozen=True)
class Caller:
    """Who is calling: the key's id (never the key), its team, and whether it is an admin."""

    key_id: str
    team: str
    admin: bool


def keys_path(home: Path) -> Path:
    """Where API key hashes live under a data directory."""
    return Path(home) / "server" / "api-keys.json"


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyStore:
    """The API-key table of one data directory."""

    def __init__(self, home: Path, *, check_s: float = KEY_FILE_CHECK_S) -> None:
        self.path = keys_path(home)
        self.check_s = check_s  # how long one look at the file's metadata holds
        self._by_hash: dict[str, Caller] = {}
        self._version: tuple[int, ...] | None = None
        self._fresh_until = 0.0  # time.monotonic() until which the last look holds
        self._lock = threading.Lock()

    def _records(self) -> list[dict]:
        if not self.path.is_file():
            return []
        return json.loads(self.path.read_text())["keys"]

    def create(self, team: str, *, admin: bool = False) -> tuple[str, str]:
        """Create a key for ``team``; returns ``(key_id, key)``. The key is not stored."""
        if not team or not set(team) <= _TEAM_CHARS or len(team) > 64:
            raise ValidationError(
                f"team name {team!r} is invalid: use 1-64 letters, digits, '-', '_' or '.'"
            )
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        key_id = secrets.token_hex(4)
        records = self._records()
        records.append(
            {
                "id": key_id,
                "sha256": _digest(key),
                "team": team,
                "admin": admin,
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
            }
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".api-keys.")
        with os.fdopen(fd, "w") as f:
            json.dump({"keys": records}, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)
        return key_id, key

    def lookup(self, key: str | None) -> Caller | None:
        """The caller a presented key belongs to, or ``None``. Re-reads the file when it
        changes (its inode, size, mtime or ctime), looking at most every ``check_s``
        (:data:`KEY_FILE_CHECK_S`)."""
        if not key:
            return None
        if time.monotonic() >= self._fresh_until:
            self._refresh()
        # a dictionary lookup of the key's SHA-256: timing can tell at most whether some
        # stored digest shares a hash bucket with it, nothing about any key
        return self._by_hash.get(_digest(key))

    def _refresh(self) -> None:
        """Re-read the file if it changed since the last look."""
        with self._lock:
            # the interval counts from before the look: a rewrite that lands while the file
            # is stat'ed, read or parsed is seen by the next look, due check_s after ``began``
            began = time.monotonic()
            if began < self._fresh_until:  # another thread looked while this one waited
                return
            try:
                info = os.stat(self.path)
            except FileNotFoundError:
                version = None
            else:  # not the mtime alone: a rewrite in the same clock tick (or cp -p) keeps it
                version = (
                    (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
                    if stat.S_ISREG(info.st_mode)
                    else None
                )
            if version != self._version:
                self._by_hash = {
                    r["sha256"]: Caller(r["id"], r["team"], bool(r.get("admin")))
                    for r in self._records()
                }
                self._version = version
            # set only once the file parsed: an unreadable one is tried again (and refused
            # again, a logged 500) on every request until it is fixed
            self._fresh_until = began + self.check_s


class RateLimiter:
    """Token bucket per key: ``per_minute`` requests a minute, bursts up to ``per_minute``."""

    def __init__(self, per_minute: int) -> None:
        self.rate = per_minute / 60.0
        self.capacity = float(per_minute)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key_id: str) -> float:
        """Spend one token; returns 0 when allowed, else seconds until the next token."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        with self._lock:
            tokens, at = self._buckets.get(key_id, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - at) * self.rate)
            if tokens < 1.0:
                self._buckets[key_id] = (tokens, now)
                return (1.0 - tokens) / self.rate
            self._buckets[key_id] = (tokens - 1.0, now)
            return 0.0


class Admission:
    """Places in the engine's queue, taken before a request's body is read.

    A generation request takes a place right after its key is checked, so a full server
    answers 429 before reading, parsing or tokenizing anything; it gives the place back
    once the engine has queued it (or when it fails first). Waiting requests are those in
    the engine's queue plus those holding a place here; together they stay within
    ``limit()`` (the engine's ``max_queue``, read live).
    """

    def __init__(self, limit: Callable[[], int], queued: Callable[[], int]) -> None:
        self.limit, self.queued = limit, queued
        self.holding = 0
        self._lock = threading.Lock()

    def enter(self) -> Callable[[], None] | None:
        """Take a place; returns the idempotent ``leave`` callable, or ``None`` when full."""
        with self._lock:
            if self.holding + self.queued() >= self.limit():
                return None
            self.holding += 1
        left = []

        def leave() -> None:
            with self._lock:
                if not left:
                    left.append(True)
                    self.holding -= 1

        return leave
