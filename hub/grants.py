"""Signed sharing state: who owns an adapter name, and which teams may read which version.

Storage is untrusted: whoever can write it could edit an index row to grant
a team access, take over a name, or undo a revocation. So the state of a name
is a chain of records, each signed by the name's owner (Ed25519 + ML-DSA-65
through :mod:`hub.identity`, context ``name-record``)::

    seq 0   claim    name, owner, owner_fingerprint    (the first publisher owns the name)
    seq n   publish  version, object_id, manifest_sha256, readers
            share    team, versions
            revoke   team                              (every version, and later pushes)
            delete   versions

Every record names the adapter and its ``seq`` and carries ``prev``, the
SHA-256 of the previous record's bytes, so records cannot be edited, moved
between names, reordered or forged; a writer of the storage can only remove
records from the end (withhold) or all of them (delete), and
:func:`replay` refuses anything else. A backend stores the records as
blobs, hands their bytes to :func:`replay` in ``seq`` order, and asks the
resulting :class:`NameState`; indexes are caches rebuilt from it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from hub.errors import AccessError, IntegrityError
from hub.identity import Identity, PublicIdentity, verify
from hub.names import ADAPTER_NAME, TEAM_NAME

RECORD_FORMAT = "qlora-hub-record/1"
CONTEXT = "name-record"
MAX_RECORD_BYTES = 64 << 10
"""A record blob larger than this is refused before it is parsed."""
_HEX = re.compile(r"[0-9a-f]+", re.ASCII)


def canonical(obj: Any) -> bytes:
    """Canonical JSON bytes (sorted keys, no spaces, ASCII): what a signature covers."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def digest(blob: bytes) -> str:
    """SHA-256 hex of a record blob (what the next record's ``prev`` holds)."""
    return hashlib.sha256(blob).hexdigest()


def sign_record(identity: Identity, record: dict[str, Any]) -> bytes:
    """The stored bytes of ``record``: the record plus ``identity``'s hybrid signature."""
    sig = identity.sign(canonical(record), CONTEXT)
    return canonical({"record": record, "signature": base64.b64encode(sig).decode()})


def parse_record(blob: bytes) -> tuple[dict[str, Any], bytes]:
    """(record, signature) from stored bytes, unverified; raises IntegrityError."""
    try:
        if len(blob) > MAX_RECORD_BYTES:
            raise ValueError("too large")
        body = json.loads(blob)
        record, sig = body["record"], base64.b64decode(body["signature"], validate=True)
        if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
            raise ValueError("format")
    except (ValueError, KeyError, TypeError):
        raise IntegrityError("a signed name record is corrupt: the storage was altered") from None
    return record, sig


def claim_record(name: str, owner: PublicIdentity) -> dict[str, Any]:
    """Record 0 of ``name``: ``owner`` (its current key) is the first publisher."""
    return {
        "format": RECORD_FORMAT,
        "name": name,
        "seq": 0,
        "prev": "",
        "owner": owner.team,
        "owner_fingerprint": owner.fingerprint,
        "action": "claim",
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
    }


@dataclass
class VersionGrant:
    """One published version as the signed records describe it."""

    object_id: str
    manifest_sha256: str
    readers: set[str]
    deleted: bool = False
    ever: set[str] = field(default_factory=set)
    """Teams that could read this version at some point."""


@dataclass
class NameState:
    """The verified state of one adapter name (see :func:`replay`)."""

    name: str
    owner: str
    owner_fingerprint: str
    seq: int = 0
    head: str = ""
    versions: dict[int, VersionGrant] = field(default_factory=dict)
    last_version: int = 0
    ever: set[str] = field(default_factory=set)
    """Teams that were readers of some version at some point (revoked ones included)."""
    revoked: set[str] = field(default_factory=set)
    """Teams revoked and not shared with again since."""

    def live(self) -> list[int]:
        """Versions not deleted, oldest first."""
        return sorted(v for v, g in self.versions.items() if not g.deleted)

    def readers(self, version: int) -> set[str]:
        """Teams that may read ``version`` now (empty when unknown or deleted)."""
        grant = self.versions.get(version)
        return set() if grant is None or grant.deleted else set(grant.readers)

    def latest(self, team: str | None = None) -> int | None:
        """The newest live version (that ``team`` may read, when given)."""
        ok = [v for v in self.live() if team is None or team in self.versions[v].readers]
        return ok[-1] if ok else None

    def next_readers(self, share_with: Sequence[str] = ()) -> set[str]:
        """Readers of the next push: the owner, the latest version's readers, ``share_with``."""
        latest = self.latest()
        inherited = self.readers(latest) if latest is not None else set()
        return {self.owner, *inherited, *share_with}

    def record(self, action: str, **fields: Any) -> dict[str, Any]:
        """The unsigned record that would come next in this chain."""
        return {
            "format": RECORD_FORMAT,
            "name": self.name,
            "seq": self.seq + 1,
            "prev": self.head,
            "owner": self.owner,
            "action": action,
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            **fields,
        }


def _bad(name: str, seq: int, why: str) -> IntegrityError:
    return IntegrityError(
        f"signed records of adapter {name!r} are inconsistent at record {seq} ({why}): "
        "the storage was altered outside qlora-hub"
    )


def _team(value: Any) -> bool:
    return isinstance(value, str) and TEAM_NAME.fullmatch(value) is not None


def _versions(value: Any, state: NameState) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(type(v) is int and v in state.versions for v in value)
    )


def _apply(state: NameState, rec: dict[str, Any]) -> str | None:
    """Apply one verified record to ``state``; the reason it is invalid, else None."""
    action = rec.get("action")
    if action == "publish":
        version, oid, sha, readers = (
            rec.get(k) for k in ("version", "object_id", "manifest_sha256", "readers")
        )
        # Concurrent pushes may finish out of order, but a number is never used twice.
        if type(version) is not int or version < 1 or version in state.versions:
            return "version number reused"
        if not (isinstance(oid, str) and len(oid) == 32 and _HEX.fullmatch(oid)):
            return "bad object id"
        if not (isinstance(sha, str) and len(sha) == 64 and _HEX.fullmatch(sha)):
            return "bad manifest hash"
        if not (isinstance(readers, list) and all(_team(t) for t in readers)):
            return "bad readers"
        if state.owner not in readers:
            return "the owner must read its own versions"
        state.versions[version] = VersionGrant(oid, sha, set(readers), ever=set(readers))
        state.last_version = max(state.last_version, version)
        state.ever |= set(readers)
        state.revoked -= set(readers)
    elif action == "share":
        if not _team(rec.get("team")) or not _versions(rec.get("versions"), state):
            return "bad share"
        for v in rec["versions"]:
            state.versions[v].readers.add(rec["team"])
            state.versions[v].ever.add(rec["team"])
        state.ever.add(rec["team"])
        state.revoked.discard(rec["team"])
    elif action == "revoke":
        if not _team(rec.get("team")) or rec["team"] == state.owner:
            return "bad revoke"
        for grant in state.versions.values():
            grant.readers.discard(rec["team"])
        state.revoked.add(rec["team"])
    elif action == "delete":
        if not _versions(rec.get("versions"), state):
            return "bad delete"
        for v in rec["versions"]:
            state.versions[v].deleted = True
    else:
        return f"unknown action {action!r}"
    return None


def replay(
    blobs: Iterable[bytes],
    public_of: Callable[[str], PublicIdentity],
    verified: set[tuple[str, str]] | None = None,
    trusted_upto: int = -1,
) -> NameState:
    """Verify a name's records (stored bytes, ``seq`` order; read lazily) and return its state.

    ``public_of(team)`` gives the owner's trusted public key; ``verified``
    (optional, kept by the caller) remembers (fingerprint, blob SHA-256) pairs
    whose signatures already checked out, so a repeated replay only hashes.
    ``trusted_upto``: the caller verified records ``0..trusted_upto`` before
    and has checked that record ``trusted_upto`` still has the bytes it
    verified (a SHA-256 it kept); since every record links to the previous
    one by SHA-256, that prefix is unchanged, so only its links are checked.

    Raises:
        IntegrityError: a record is corrupt, unsigned, out of order, from
            another name or inconsistent.
        AccessError: the owner is not trusted, or the records were signed by
            another key of the owner than the one trusted.
    """
    state: NameState | None = None
    public: PublicIdentity | None = None
    prev = fingerprint = ""
    for seq, blob in enumerate(blobs):
        rec, sig = parse_record(blob)
        name = state.name if state else rec.get("name")
        if rec.get("seq") != seq or rec.get("prev") != prev or rec.get("name") != name:
            raise _bad(str(name), seq, "sequence, link or name")
        if state is None:
            if rec.get("action") != "claim" or not _team(rec.get("owner")):
                raise _bad(str(name), seq, "the first record must claim the name")
            if not isinstance(name, str) or not ADAPTER_NAME.fullmatch(name) or ".." in name:
                raise _bad(str(name)[:80], seq, "not a valid adapter name")
            public = public_of(rec["owner"])
            fingerprint = public.fingerprint  # computed once: it hashes the public JSON
            if fingerprint != rec.get("owner_fingerprint"):
                raise AccessError(
                    f"adapter {name!r} was signed by another key of team {rec['owner']!r} than "
                    "your trust store holds (re-keyed?): re-trust its public file"
                )
            state = NameState(name, rec["owner"], fingerprint)
        elif rec.get("owner") != state.owner:
            raise _bad(state.name, seq, "owner changed")
        assert public is not None
        sha = digest(blob)
        if seq > trusted_upto and (verified is None or (fingerprint, sha) not in verified):
            verify(public, canonical(rec), sig, CONTEXT)
            if verified is not None:
                verified.add((fingerprint, sha))
        if seq and (why := _apply(state, rec)):
            raise _bad(state.name, seq, why)
        state.seq, state.head, prev = seq, sha, sha
    if state is None:
        raise IntegrityError("an adapter name has no signed records")
    return state
