"""The hash-chained audit log: one JSON line per push, share, revoke, pull, delete.

Each entry carries the SHA-256 of the previous entry, and the index keeps the
latest (sequence, hash, byte length), so editing or deleting any entry - the
last one included - breaks verification. An entry is appended inside the
same index transaction as the action it records: the SQLite write lock
serializes appenders across processes, and a crash before the commit leaves
at most a tail beyond the recorded head, which the next append cuts off (that
action never happened). It makes tampering evident; it does not stop someone
who can rewrite both the log and the index (see docs/security.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from concurrent.futures import Future
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hub.errors import IntegrityError
from plugins.vault.index import Index
from plugins.vault.objects import canonical
from plugins.vault.workers import in_background

GENESIS = "0" * 64


def entry_hash(entry: dict[str, Any]) -> str:
    """SHA-256 of an entry's canonical JSON without its own ``hash`` field."""
    return hashlib.sha256(canonical({k: v for k, v in entry.items() if k != "hash"})).hexdigest()


class AuditLog:
    """Append-only JSON-lines file beside the index."""

    def __init__(self, path: Path, index: Index) -> None:
        self.path = Path(path)
        self.index = index

    def append(
        self,
        db: sqlite3.Connection,
        action: str,
        actor: str,
        ref: str,
        object_sha256: str,
        **extra: Any,
    ) -> None:
        """Append one entry inside the caller's open write transaction ``db``.

        ``extra`` is recorded verbatim, so it must hold no secrets.
        """
        head = db.execute("SELECT seq, hash, size FROM audit_head WHERE id = 1").fetchone()
        seq, prev, size = (head["seq"] + 1, head["hash"], head["size"]) if head else (1, GENESIS, 0)
        entry = {
            "seq": seq,
            "time": datetime.now(UTC).isoformat(timespec="microseconds"),
            "actor": actor,
            "action": action,
            "ref": ref,
            "object_sha256": object_sha256,
            "prev": prev,
            **extra,
        }
        entry["hash"] = entry_hash(entry)
        line = json.dumps(entry, sort_keys=True).encode() + b"\n"
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size > size:
                os.ftruncate(fd, size)  # tail of an action whose transaction never committed
            os.lseek(fd, size, os.SEEK_SET)
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        db.execute(
            "INSERT INTO audit_head (id, seq, hash, size) VALUES (1, ?, ?, ?) ON CONFLICT(id) "
            "DO UPDATE SET seq = excluded.seq, hash = excluded.hash, size = excluded.size",
            (seq, entry["hash"], size + len(line)),
        )

    def record(self, action: str, actor: str, ref: str, object_sha256: str, **extra: Any) -> None:
        """Append one entry in its own write transaction (durable on return)."""
        with self.index.write() as db:
            self.append(db, action, actor, ref, object_sha256, **extra)

    def record_in_background(
        self, action: str, actor: str, ref: str, object_sha256: str, **extra: Any
    ) -> Future[None]:
        """Start :meth:`record` on a helper thread; ``result()`` waits and re-raises.

        A pull uses this to make its entry durable (two fsyncs) while it decrypts.
        """
        return in_background(self.record, action, actor, ref, object_sha256, **extra)

    def entries(self) -> list[dict[str, Any]]:
        """Every committed entry, parsed (no verification)."""
        with self.index.read() as db:
            head = db.execute("SELECT size FROM audit_head WHERE id = 1").fetchone()
        if not self.path.is_file() or head is None:
            return []
        data = self.path.read_bytes()
        return [json.loads(line) for line in data[: head["size"]].splitlines() if line.strip()]

    def verify(self) -> int:
        """Check the whole chain against the recorded head; return the number of entries.

        Raises:
            IntegrityError: naming the first entry that was edited, removed or reordered.
        """
        with self.index.read() as db:
            head = db.execute("SELECT seq, hash, size FROM audit_head WHERE id = 1").fetchone()
        if head is None:
            return 0
        data = self.path.read_bytes() if self.path.is_file() else b""
        prev, seq = GENESIS, 0
        for line in data.splitlines():
            if not line.strip():
                continue
            seq += 1
            try:
                entry = json.loads(line)
            except ValueError:
                raise IntegrityError(f"audit log entry {seq} is not JSON: it was edited") from None
            if entry.get("seq") != seq or entry.get("prev") != prev:
                raise IntegrityError(
                    f"audit log broken at entry {seq}: an entry before it was removed or reordered"
                )
            if entry_hash(entry) != entry.get("hash"):
                raise IntegrityError(f"audit log entry {seq} was edited: its hash does not match")
            prev = entry["hash"]
            if seq == head["seq"]:
                break
        if seq < head["seq"] or prev != head["hash"]:
            raise IntegrityError(
                f"audit log ends at entry {seq} but the index recorded entry {head['seq']}: "
                "entries were deleted or rewritten"
            )
        return seq
