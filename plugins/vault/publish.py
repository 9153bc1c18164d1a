"""Publishing one version: the vault's write path, from plaintext to the signed publish record.

Two write transactions: the first reserves the version number (and claims a
new name with a signed record 0); the payload is then encrypted and the
data key wrapped for each reader outside the lock; the second, under the
lock again, re-reads the owner's signed state (a share or revoke may have
landed meanwhile), signs the manifest and appends the owner-signed publish
record, which is the point where the version exists. The index rows and the
audit entry are written in the same transaction, as a cache.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from hub.errors import AccessError, IntegrityError, ValidationError
from hub.grants import NameState
from hub.identity import Identity
from hub.names import check_name
from hub.types import AdapterPayload, AdapterRef
from plugins.vault import objects
from plugins.vault.records import RecordConflict

if TYPE_CHECKING:
    from plugins.vault.backend import Vault

MAX_METADATA_BYTES = 64 << 10
_APPEND_TRIES = 20


def store(
    vault: Vault,
    adapter: AdapterPayload,
    team: str,
    metadata: Mapping[str, Any] | None,
    share_with: list[str],
    readers: set[str] | None = None,
    action: str = "push",
) -> AdapterRef:
    """Encrypt, wrap, sign and publish ``adapter`` as the next version of its name.

    ``readers`` (revoke's re-encryption) replaces the readers computed from
    the owner's signed state: the latest version's, the owner and ``share_with``.
    """
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    name, meta = _checked(vault, adapter, metadata)
    ident = vault.identity(team, "sign")
    with vault.index.write() as db:  # reserve the version number (never reused)
        state = _claimed(vault, name, ident)
        # Not the index's last_version: a vault writer could set it to 2**32 and break
        # every push; the reservation blobs below skip numbers taken by pushes in flight.
        version = state.last_version + 1
        version = vault.records.reserve_version(name, version)  # atomic across machines too
        vault.index.reserve(db, name, team, version)
        base = readers if readers is not None else state.next_readers()
        wanted = base | {team, *share_with}
    for t in wanted:  # an untrusted reader fails before anything is written
        vault._public_of(t)
    oid, data_key = os.urandom(16), AESGCM.generate_key(bit_length=256)
    plain = b"".join(adapter.files[n] for n in sorted(adapter.files))
    vault.blobs.put(
        vault._key(oid.hex(), "payload"),
        objects.encrypt_payload(plain, data_key, oid, version, vault.chunk_size),
    )
    wrapped = _wrap_for(vault, wanted, data_key, oid, version)
    manifest = {
        "format": objects.MANIFEST_FORMAT,
        "name": name,
        "version": version,
        "object_id": oid.hex(),
        "publisher": team,
        "publisher_fingerprint": ident.public.fingerprint,
        "base_fingerprint": meta.get("base_fingerprint")
        or adapter.manifest.get("base_fingerprint"),
        "files": objects.file_entries(adapter.files),
        "metadata": meta,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "payload": {"cipher": "AES-256-GCM", "chunk_size": vault.chunk_size},
    }
    # Visibility point: the owner-signed publish record, written under the write lock
    # after every blob of the object is durable; the index rows are its cache.
    for attempt in range(_APPEND_TRIES):  # another machine may append a record meanwhile
        try:
            with vault.index.write() as db:
                state = _claimed(vault, name, ident)
                if version in state.versions:
                    raise IntegrityError(f"version {name}@{version} was published meanwhile: retry")
                if readers is None:  # a share or revoke may have landed since the reservation
                    final = state.next_readers() | {team, *share_with}
                    wrapped = _wrap_for(vault, final - wrapped, data_key, oid, version) | (
                        wrapped & final
                    )
                    for gone in wanted - final:
                        vault.blobs.delete(vault._key(oid.hex(), f"keys/{gone}"))
                manifest["readers"] = sorted(wrapped)
                digest = _sign_and_record(vault, state, ident, manifest)
                vault.index.add_version(db, manifest, len(plain), digest, sorted(wrapped))
                vault.audit.append(
                    db, action, team, f"{name}@{version}", digest, readers=sorted(wrapped)
                )
            break
        except RecordConflict:
            if attempt == _APPEND_TRIES - 1:
                raise
    return AdapterRef(name, version)


def _checked(
    vault: Vault, adapter: AdapterPayload, metadata: Mapping[str, Any] | None
) -> tuple[str, dict[str, Any]]:
    """The adapter's name and metadata, within the vault's own bounds."""
    name = check_name(adapter.name)
    if adapter.nbytes > vault.max_adapter_bytes:
        raise ValidationError(
            f"adapter is {adapter.nbytes} bytes, over vault.max_adapter_bytes="
            f"{vault.max_adapter_bytes}"
        )
    meta = dict(metadata or {})
    try:
        if len(objects.canonical(meta)) > MAX_METADATA_BYTES:
            raise ValueError("too large")
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"metadata must be JSON under 64 KiB ({exc})") from None
    return name, meta


def _sign_and_record(
    vault: Vault, state: NameState, ident: Identity, manifest: dict[str, Any]
) -> str:
    """Store the signed manifest, then the owner's publish record naming its SHA-256."""
    mblob = objects.sign_manifest(ident, manifest)
    vault.blobs.put(vault._key(manifest["object_id"], "manifest"), mblob)
    digest = hashlib.sha256(mblob).hexdigest()
    vault.records.append(
        state,
        ident,
        "publish",
        version=manifest["version"],
        object_id=manifest["object_id"],
        manifest_sha256=digest,
        readers=manifest["readers"],
    )
    return digest


def _claimed(vault: Vault, name: str, ident: Identity) -> NameState:
    """The state of ``name`` for a push by ``ident``'s team, claiming a new name."""
    state = vault.records.load(name)
    if state is None:  # another machine may win the claim: checked below like any owner
        state = vault.records.claim(name, ident)
    if state.name != name:
        raise ValidationError(
            f"adapter name {name!r} collides with existing {state.name!r} "
            "(names differ only by case): use the existing name or another"
        )
    if state.owner != ident.team:
        raise AccessError(f"adapter {name!r} belongs to team {state.owner!r}")
    return state


def _wrap_for(vault: Vault, teams: set[str], data_key: bytes, oid: bytes, version: int) -> set[str]:
    """Store the data key wrapped for each of ``teams`` (trusted keys only)."""
    for t in sorted(teams):
        vault.blobs.put(
            vault._key(oid.hex(), f"keys/{t}"),
            objects.wrap_key(vault._public_of(t), data_key, oid, version),
        )
    return set(teams)
