"""Where a store keeps each name's signed records (:mod:`hub.grants`), and the rollback pins.

Used by the vault, and by the core (:mod:`hub.sharing`) for any storage
backend that offers a record store. Records are blobs ``names/<casefolded name>/<seq, 8 digits>``, written once
and never rewritten. :class:`NameRecords` lists and replays them, and
appends new ones (callers hold the index's write lock, which serializes
appenders). Every home that reads a name remembers the newest record it
verified (``<home>/pins/<store id>/<name>``): if the storage later shows
fewer records, or other ones, the name is refused instead of quietly
returning to an older state (a revocation dropped, say).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hub.blobs import BlobStore, get_bounded, put_new
from hub.errors import IntegrityError
from hub.grants import MAX_RECORD_BYTES, NameState, claim_record, digest, replay, sign_record
from hub.identity import Identity, PublicIdentity
from hub.names import ADAPTER_NAME, collision_key

_SEQ = re.compile(r"[0-9]{8}", re.ASCII)


def _concat(streams: list[Any]) -> Iterator[bytes]:
    for stream in streams:
        yield from stream


class RecordConflict(IntegrityError):
    """Another process appended the same record number first (reload and retry)."""


class NameRecords:
    """The signed records of every name in one blob store."""

    def __init__(
        self, blobs: BlobStore, public_of: Callable[[str], PublicIdentity], pins: Path | None
    ) -> None:
        self.blobs = blobs
        self.public_of = public_of
        store_id = hashlib.sha256(blobs.url.encode()).hexdigest()[:16]
        self.pins = Path(pins) / store_id if pins else None
        self._verified: set[tuple[str, str]] = set()
        self._pinned: dict[str, tuple[int, str]] = {}  # pins this process read or wrote
        self._seen: dict[str, tuple[str, bytes]] = {}  # key -> (listed ETag, verified bytes)

    @staticmethod
    def prefix(name: str) -> str:
        """Blob-key folder of ``name``'s records (case-insensitive, like name collisions)."""
        return f"names/{collision_key(name)}/"

    def names(self) -> list[str]:
        """Casefolded names that have records (folders that are no valid name are ignored)."""
        found = {k.split("/")[1] for k in self.blobs.keys("names/")}
        return sorted(n for n in found if ADAPTER_NAME.fullmatch(n) and n == collision_key(n))

    def _keys(self, name: str) -> tuple[list[str], dict[str, str]]:
        """The name's record keys, checked for gaps, and the ETags a store's listing gave."""
        prefix = self.prefix(name)
        tagged = getattr(self.blobs, "tagged_keys", None)
        tags = tagged(prefix) if tagged is not None else {}
        keys = sorted(tags) if tagged is not None else self.blobs.keys(prefix)
        seqs = [k[len(prefix) :] for k in keys]
        if any(not _SEQ.fullmatch(s) for s in seqs) or seqs != [
            f"{i:08d}" for i in range(len(keys))
        ]:
            raise IntegrityError(
                f"signed records of adapter {name!r} have gaps or foreign files: the storage "
                "was altered outside qlora-hub"
            )
        return keys, tags

    def _read(self, key: str) -> bytes:
        return get_bounded(self.blobs, key, MAX_RECORD_BYTES)

    def load(self, name: str) -> NameState | None:
        """The verified state of ``name`` (None: no team ever published it)."""
        pinned = self._pin(name)
        seq = pinned[0] if pinned else -1
        # From a store that reads several objects at once, the records this home verified
        # before are requested while the listing runs (a round trip less; a process that
        # verified them itself skips them, below); the listing still decides which
        # records exist, and they are checked in order as always.
        known = [f"{self.prefix(name)}{i:08d}" for i in range(seq + 1 if seq < 4096 else 0)]
        cold = not any(k in self._seen for k in known)
        early = self._stream(known, seq) if cold else None
        streams = [early] if early is not None else []
        try:
            keys, tags = self._keys(name)
            if streams and keys[: seq + 1] != known:  # fewer than pinned: refused below
                early.close()
                streams = []
            reuse = {} if streams else self._reusable(keys, tags)
            if streams and len(keys) > len(known):  # records added since
                streams.append(self._stream(keys[len(known) :], -1))
            elif not streams:
                need = [k for i, k in enumerate(keys) if i not in reuse]
                at = need.index(keys[seq]) if seq not in reuse and 0 <= seq < len(keys) else -1
                stream = self._stream(need, at)
                streams = [stream] if stream is not None else []
            stream = _concat(streams) if streams else None
            used: list[bytes] = []
            state = self._verify(name, keys, pinned, stream, reuse, used)
        finally:
            for stream in streams:
                stream.close()
        if state is None:
            return None
        if collision_key(state.name) != collision_key(name):  # records copied from another name
            raise IntegrityError(
                f"signed records stored under adapter {name!r} are those of {state.name!r}: "
                "the storage was altered outside qlora-hub"
            )
        if pinned is None or state.seq > pinned[0]:
            self._write_pin(name, state)
        self._remember(keys, tags, used)
        return state

    def _reusable(self, keys: list[str], tags: dict[str, str]) -> dict[int, bytes]:
        """Records this process verified whose key the listing gives the same ETag as
        then: their bytes are reused instead of fetched again. Safe whatever the ETag
        says: they are bytes that passed every check before (a store that lies about an
        ETag could as well serve those bytes again), and every record is replayed."""
        out = {}
        for i, key in enumerate(keys):
            seen = self._seen.get(key)
            if seen is not None and tags.get(key) and seen[0] == tags[key]:
                out[i] = seen[1]
        return out

    def _remember(self, keys: list[str], tags: dict[str, str], used: list[bytes]) -> None:
        """Keep the bytes of records that all verified, by key and listed ETag."""
        if not tags or len(used) != len(keys):
            return
        if len(self._seen) > 4096:  # at most 4096 x 64 KiB kept (records are a few KiB)
            self._seen.clear()
        for key, blob in zip(keys, used, strict=True):
            if tags.get(key):
                self._seen[key] = (tags[key], blob)

    def _stream(self, keys: list[str], pinned: int) -> Any:
        """The records' bytes from a store that reads several at once (object storage:
        ``get_many``), the pinned record first, then the others in order; None otherwise."""
        many = getattr(self.blobs, "get_many", None)
        if many is None or not keys:
            return None
        first = [keys[pinned]] if 0 <= pinned < len(keys) else []
        return many([*first, *(k for i, k in enumerate(keys) if i != pinned)], MAX_RECORD_BYTES)

    def _verify(
        self,
        name: str,
        keys: list[str],
        pinned: tuple[int, str] | None,
        stream: Iterator[bytes] | None,
        reuse: dict[int, bytes],
        used: list[bytes],
    ) -> NameState | None:
        """Check the pin, then replay the records: ``reuse``'s bytes by position, the
        others read from ``stream`` (in order) or one by one; ``used`` gets every record's
        bytes in order."""
        checked = dict(reuse)
        if pinned is not None:
            seq, head = pinned
            if len(keys) > seq and seq not in checked:
                checked[seq] = next(stream) if stream else self._read(keys[seq])
            if seq not in checked or digest(checked[seq]) != head:
                raise IntegrityError(
                    f"signed records of adapter {name!r} were rolled back or replaced (this home "
                    f"verified record {seq} before): the storage was altered outside qlora-hub; "
                    "restore it from a backup"
                )
        if not keys:
            return None
        # The pinned prefix was verified by this home and its last record's bytes are
        # unchanged (checked above), so a fresh process re-checks only links there.
        # Records are checked one at a time as replay goes: planted ones stop it at the
        # first (a store that reads ahead has at most a few more in flight). The pinned
        # record is the one read above, never a second read a writer could swap.
        blobs = (
            checked[i] if i in checked else next(stream) if stream else self._read(k)
            for i, k in enumerate(keys)
        )
        kept = (used.append(blob) or blob for blob in blobs)
        return replay(kept, self.public_of, self._verified, pinned[0] if pinned else -1)

    def claim(self, name: str, identity: Identity) -> NameState:
        """Record 0: ``identity``'s team owns ``name`` (caller holds the write lock)."""
        blob = sign_record(identity, claim_record(name, identity.public))
        put_new(self.blobs, f"{self.prefix(name)}{0:08d}", blob)  # a lost race: the winner's
        return self._reload(name)

    def append(
        self, state: NameState, identity: Identity, action: str, **fields: object
    ) -> NameState:
        """Sign and store the next record of ``state``; returns the new state."""
        blob = sign_record(identity, state.record(action, **fields))
        # Conditional write: processes on other machines (no shared lock) never overwrite.
        if not put_new(self.blobs, f"{self.prefix(state.name)}{state.seq + 1:08d}", blob):
            raise RecordConflict(
                f"adapter {state.name!r} was changed by another process at the same time: retry"
            )
        return self._reload(state.name)

    def reserve_version(self, name: str, version: int) -> int:
        """The first number from ``version`` up that no process reserved before (a
        conditional write of ``versions/<name>/<number>``; numbers are never reused)."""
        while not put_new(self.blobs, f"versions/{collision_key(name)}/{version:08d}", b""):
            version += 1
        return version

    def _reload(self, name: str) -> NameState:
        state = self.load(name)
        assert state is not None
        return state

    # -- pins ---------------------------------------------------------------------------
    def _pin_path(self, name: str) -> Path | None:
        return self.pins / collision_key(name) if self.pins else None

    def _pin(self, name: str) -> tuple[int, str] | None:
        # Pins only move forward, so the one this process last saw is enough once read.
        if (known := self._pinned.get(collision_key(name))) is not None:
            return known
        path = self._pin_path(name)
        try:
            seq, head = path.read_text().split() if path else (None, None)
            return (int(seq), head) if seq is not None else None
        except FileNotFoundError:
            return None
        except ValueError:
            return None  # a torn pin only weakens the check; it is rewritten on the next read

    def _write_pin(self, name: str, state: NameState) -> None:
        self._pinned[collision_key(name)] = (state.seq, state.head)
        path = self._pin_path(name)
        if path is None:
            return
        # Renamed into place but not fsynced: a pin lost to a power cut only weakens the
        # rollback check, and pushes and first reads skip two fsyncs. A read-only home
        # still verifies every signature; it only forgets the pin.
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
            tmp.write_text(f"{state.seq} {state.head}\n")
            os.replace(tmp, path)
