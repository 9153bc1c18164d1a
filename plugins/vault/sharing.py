"""Sharing and revocation: who holds a wrapped data key for which version.

Sharing wraps an existing data key for one more team and leaves the payload
and manifest untouched. Revocation cannot take back a key a team already
unwrapped, so it re-encrypts the content under a fresh data key for the
remaining teams as a new version, then marks the revoked team's grants and
deletes its wrapped keys on every version.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hub.errors import UnknownNameError, ValidationError
from hub.teams import trusted
from hub.types import AdapterPayload, AdapterRef
from plugins.vault import objects

if TYPE_CHECKING:
    from plugins.vault.backend import Vault


def _targets(vault: Vault, db: Any, ref: AdapterRef, team: str) -> list[Any]:
    """Versions ``ref`` covers: one, or every version ``team`` reads when unversioned."""
    if ref.version is None:
        rows = [
            r
            for r in vault.index.versions_of(db, ref.name)
            if vault.index.grants(db, r["object_id"]).get(team) == "active"
        ]
        if not rows:
            raise UnknownNameError(f"adapter {ref.name!r} has no versions")
        return rows
    return [vault._resolve(db, ref, team)]


def share(vault: Vault, ref: AdapterRef, team: str, with_team: str) -> AdapterRef:
    """Owner ``team`` lets ``with_team`` read ``ref``; returns the newest version shared."""
    with vault.index.read() as db:
        vault._owned(db, ref.name, team)
        rows = _targets(vault, db, ref, team)
    pub = trusted(vault.home, with_team)
    for row in rows:
        _, key = vault._open(row, team)
        oid = row["object_id"]
        vault.blobs.put(
            vault._key(oid, f"keys/{with_team}"),
            objects.wrap_key(pub, key, bytes.fromhex(oid), row["version"]),
        )
        with vault.index.write() as db:
            db.execute(
                "INSERT INTO grants VALUES (?, ?, 'active') ON CONFLICT(object_id, team) "
                "DO UPDATE SET state = 'active'",
                (oid, with_team),
            )
            vault.audit.append(
                db,
                "share",
                team,
                f"{row['name']}@{row['version']}",
                row["manifest_sha256"],
                with_team=with_team,
            )
    return AdapterRef(rows[-1]["name"], rows[-1]["version"])


def revoke(vault: Vault, ref: AdapterRef, team: str, from_team: str) -> AdapterRef:
    """Owner ``team`` cuts ``from_team`` off ``ref.name``.

    Re-encrypts the latest version (or ``ref.version``) under a new data key for
    the remaining readers as a new version, then revokes ``from_team``'s grants
    and deletes its wrapped keys on every version. Returns the new version.
    """
    if from_team == team:
        raise ValidationError("a team cannot revoke its own access: delete the adapter instead")
    with vault.index.read() as db:
        vault._owned(db, ref.name, team)
        row = vault._resolve(db, ref, team)
        every = vault.index.versions_of(db, row["name"])
        if not any(vault.index.grants(db, r["object_id"]).get(from_team) for r in every):
            raise UnknownNameError(f"team {from_team!r} was never given {row['name']!r}")
        readers = {
            t
            for t, s in vault.index.grants(db, row["object_id"]).items()
            if s == "active" and t != from_team
        }
    source = vault.pull(AdapterRef(row["name"], row["version"]), team=team, where="revoke")
    new = vault._store(
        AdapterPayload(source.name, source.files, None, source.manifest),
        team,
        source.manifest.get("metadata"),
        (),
        readers,
        action="revoke-reencrypt",
    )
    with vault.index.write() as db:
        oids = [r["object_id"] for r in vault.index.versions_of(db, row["name"])]
        for oid in oids:
            db.execute(
                "UPDATE grants SET state = 'revoked' WHERE object_id = ? AND team = ?",
                (oid, from_team),
            )
        vault.audit.append(db, "revoke", team, str(new), "", from_team=from_team)
    for oid in oids:
        vault.blobs.delete(vault._key(oid, f"keys/{from_team}"))
    return new
