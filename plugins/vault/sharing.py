"""Sharing, revocation and deletion: owner-signed records first, then the blobs.

Sharing wraps an existing data key for one more team and appends a signed
``share`` record; the payload and manifest are untouched. Revocation cannot
take back a key a team already unwrapped, so it appends a signed ``revoke``
record (from then on no version is served to that team, whatever the index
says), re-encrypts the content under a fresh data key for the remaining
teams as a new version, and deletes the revoked team's wrapped keys.
Deletion appends a signed ``delete`` record, then removes the objects.
Every step runs under the index's write lock, which serializes appenders.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hub.blobs import check_key
from hub.errors import UnknownNameError, ValidationError
from hub.grants import NameState
from hub.teams import trusted
from hub.types import AdapterPayload, AdapterRef
from plugins.vault import objects, publish

if TYPE_CHECKING:
    from plugins.vault.backend import Vault


def _targets(state: NameState, ref: AdapterRef) -> list[int]:
    """Versions ``ref`` covers: one, or every live version when unversioned."""
    live = state.live()
    if ref.version is None:
        if not live:
            raise UnknownNameError(f"adapter {ref.name!r} has no versions")
        return live
    if ref.version not in live:
        raise UnknownNameError(f"no adapter {ref} in this vault")
    return [ref.version]


def share(vault: Vault, ref: AdapterRef, team: str, with_team: str) -> AdapterRef:
    """Owner ``team`` lets ``with_team`` read ``ref``; returns the newest version shared."""
    pub = trusted(vault.home, with_team)
    ident = vault.identity(team, "sign")
    with vault.index.write() as db:
        state = vault._owned(ref.name, team)
        versions = _targets(state, ref)
        for v in versions:  # wrap first: the record below is what makes the key usable
            vault._manifest(state, v)
            oid = state.versions[v].object_id
            key = vault._data_key(state, v, team)
            vault.blobs.put(
                vault._key(oid, f"keys/{with_team}"),
                objects.wrap_key(pub, key, bytes.fromhex(oid), v),
            )
        state = vault.records.append(state, ident, "share", team=with_team, versions=versions)
        for v in versions:
            vault.index.set_grant(db, state.versions[v].object_id, with_team, "active")
            vault.audit.append(
                db,
                "share",
                team,
                f"{state.name}@{v}",
                state.versions[v].manifest_sha256,
                with_team=with_team,
            )
    return AdapterRef(state.name, versions[-1])


def revoke(vault: Vault, ref: AdapterRef, team: str, from_team: str) -> AdapterRef:
    """Owner ``team`` cuts ``from_team`` off ``ref.name``.

    Appends the signed revoke record and deletes ``from_team``'s wrapped keys
    on every version, then re-encrypts the latest version (or ``ref.version``)
    under a new data key for the remaining readers as a new version, which
    it returns.
    """
    if from_team == team:
        raise ValidationError("a team cannot revoke its own access: delete the adapter instead")
    ident = vault.identity(team, "sign")
    with vault.index.write() as db:
        state = vault._owned(ref.name, team)
        if from_team not in state.ever:
            raise UnknownNameError(f"team {from_team!r} was never given {state.name!r}")
        source = _targets(state, ref)[-1] if ref.version is not None else state.latest()
        if source is None:
            raise UnknownNameError(f"adapter {ref.name!r} has no versions")
        state = vault.records.append(state, ident, "revoke", team=from_team)
        for g in state.versions.values():
            vault.index.set_grant(db, g.object_id, from_team, "revoked")
            vault.blobs.delete(vault._key(g.object_id, f"keys/{from_team}"))
        vault.audit.append(db, "revoke", team, state.name, "", from_team=from_team)
    readers = state.readers(source)
    old = vault.pull(AdapterRef(state.name, source), team=team, where="revoke")
    new = publish.store(
        vault,
        AdapterPayload(old.name, old.files, None, old.manifest),
        team,
        old.manifest.get("metadata"),
        [],
        readers,
        action="revoke-reencrypt",
    )
    return new


def delete(vault: Vault, ref: AdapterRef, team: str) -> None:
    """Owner ``team`` removes one version, or every version when unversioned."""
    ident = vault.identity(team, "sign")
    with vault.index.write() as db:
        state = vault._owned(ref.name, team)
        versions = _targets(state, ref)
        state = vault.records.append(state, ident, "delete", versions=versions)
        for v in versions:
            g = state.versions[v]
            vault.index.remove_version(db, g.object_id)
            vault.audit.append(db, "delete", team, f"{state.name}@{v}", g.manifest_sha256)
    for v in versions:
        oid = state.versions[v].object_id
        for key in vault.blobs.keys(f"objects/{oid}/"):
            if _blob_key(key):  # a planted file no blob can be named is left, not a crash
                vault.blobs.delete(key)


def _blob_key(key: str) -> bool:
    try:
        check_key(key)
    except ValueError:
        return False
    return True
