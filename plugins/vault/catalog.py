"""What the vault holds, read from the owners' signed records: listing, reindex, orphans.

None of these trusts the SQLite index. Listing walks every name's records
(verified, cached per record) and each readable version's manifest (checked
against the SHA-256 its publish record signs); :func:`reindex` rewrites the
index's names, versions and grants from the same, so a deleted, rolled-back
or edited index is repaired from what the signatures prove.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from hub.errors import HubError
from hub.grants import NameState
from hub.types import AdapterRecord

if TYPE_CHECKING:
    from plugins.vault.backend import Vault


def _states(vault: Vault) -> Iterator[tuple[str, NameState | None, HubError | None]]:
    """(casefolded name, verified state or None, the error that refused it) for every name."""
    for key in vault.records.names():
        try:
            yield key, vault.records.load(key), None
        except HubError as exc:  # untrusted owner or altered records: nothing in it is readable
            yield key, None, exc


def readable(vault: Vault, team: str) -> list[AdapterRecord]:
    """Every live version ``team`` may read, by name and version."""
    out = []
    for _, state, _ in _states(vault):
        if state is None or team not in state.ever:
            continue
        for v in state.live():
            readers = state.readers(v)
            if team not in readers:
                continue
            try:
                m = vault._manifest(state, v)
            except HubError:
                continue  # withheld or altered: pull says why
            out.append(
                AdapterRecord(
                    name=state.name,
                    version=v,
                    team=state.owner,
                    created=m["created"],
                    size=sum(f["size"] for f in m["files"]),
                    base_fingerprint=m.get("base_fingerprint"),
                    shared_with=tuple(sorted(readers)),
                )
            )
    return sorted(out, key=lambda r: (r.name, r.version))


def reindex(vault: Vault, actor: str | None) -> dict[str, Any]:
    """Rebuild the index's names, versions and grants from the signed records alone.

    Returns ``{"names": n, "versions": n, "skipped": {name or name@version:
    reason}}``: a name whose owner is not trusted here or whose records do not
    verify, and a version whose manifest is missing or altered, are left out.
    The audit head is kept, and the reindex is itself an audit entry.
    """
    rows: list[tuple[NameState, dict[int, Any]]] = []
    skipped: dict[str, str] = {}
    for key, state, error in _states(vault):
        if state is None:
            skipped[key] = str(error)
            continue
        manifests = {}
        for v in state.live():
            try:
                manifests[v] = vault._manifest(state, v)
            except HubError as exc:
                skipped[f"{state.name}@{v}"] = str(exc)
        rows.append((state, manifests))
    with vault.index.write() as db:
        vault.index.rebuild(db, rows)
        vault.audit.append(db, "reindex", actor or "-", "", "", names=len(rows))
    return {
        "names": len(rows),
        "versions": sum(len(m) for _, m in rows),
        "skipped": skipped,
    }


def orphans(vault: Vault) -> list[str]:
    """Object ids with blobs but no signed publish record (left by interrupted pushes)."""
    known = set()
    for _, state, _ in _states(vault):
        if state is not None:
            known |= {g.object_id for g in state.versions.values()}
    found = {k.split("/")[1] for k in vault.blobs.keys("objects/")}
    return sorted(found - known)
