"""Signed sharing for any storage backend: the core keeps who owns and who reads what.

A storage backend that offers a record store (a ``records`` attribute with
``put_if_absent``, ``get`` and ``keys``, e.g. :class:`hub.record_files.FolderRecords`)
and does not sign by itself gets the vault's sharing rules for free. The
core (:class:`hub.adapters.Adapters`) then keeps, per name, the chain of
owner-signed records of :mod:`hub.grants` in that store:

- push: the first publisher signs the name's claim; every version gets a
  publish record with its readers (the owner's latest signed readers, minus
  revoked teams, plus ``share_with``) and the SHA-256 of its signed manifest
  (name, version, owner, files' SHA-256, metadata), kept beside the records;
- pull: the version is resolved from the signed state (never from the
  backend's read lists) and its bytes must match the signed manifest;
- share, revoke and delete append owner-signed records.

The backend's own read lists and owner rows are then only a mirror: a
writer of the storage who edits them, or swaps an adapter's bytes, grants
nothing and changes nothing that is served. Each home pins the newest
record it verified per name (``<home>/pins/``), as the vault does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hub.blobs import get_bounded, put_new
from hub.errors import AccessError, IntegrityError, UnknownNameError
from hub.grants import NameState, canonical
from hub.identity import Identity, PublicIdentity
from hub.name_records import NameRecords, RecordConflict
from hub.names import collision_key
from hub.types import AdapterPayload, AdapterRecord, AdapterRef

MAX_MANIFEST_BYTES = 256 << 10
_RETRIES = 50


def manifest_of(
    adapter: AdapterPayload, version: int, owner: str, metadata: dict[str, Any]
) -> dict[str, Any]:
    """The manifest the owner's publish record covers (by its SHA-256)."""
    return {
        "format": "qlora-hub-manifest/1",
        "name": adapter.name,
        "version": version,
        "publisher": owner,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "size": adapter.nbytes,
        "files": {n: hashlib.sha256(b).hexdigest() for n, b in sorted(adapter.files.items())},
        "base_fingerprint": metadata.get("base_fingerprint"),
        "metadata": metadata,
    }


class SignedSharing:
    """Owner-signed names and read lists kept by the core in a backend's record store.

    Args:
        store: the backend's record store.
        home: where ``teams/`` (keys), ``trust/`` and ``pins/`` live.
        hub: the plugin host (its ``key_provider`` hook is asked for keys).
        passphrase: for protected key files (string or zero-argument callable).
    """

    def __init__(self, store: Any, home: Path, *, hub: Any = None, passphrase: Any = None) -> None:
        self.store, self.home, self.hub, self._passphrase = store, Path(home), hub, passphrase
        self._identities: dict[str, Identity] = {}
        self.records = NameRecords(store, self._public_of, self.home / "pins")

    def identity(self, team: str) -> Identity:
        """``team``'s private keys (it must hold them to publish, share, revoke or delete)."""
        from hub.teams import load_identity

        if team not in self._identities:
            self._identities[team] = load_identity(
                self.home, team, hub=self.hub, passphrase=self._passphrase, purpose="sign"
            )
        return self._identities[team]

    def _public_of(self, team: str) -> PublicIdentity:
        from hub.teams import trusted

        if team in self._identities:
            return self._identities[team].public
        return trusted(self.home, team)

    # -- reading the signed state ----------------------------------------------------------
    def state(self, name: str) -> NameState | None:
        """The verified state of ``name`` (None: never published)."""
        return self.records.load(name)

    def owned(self, name: str, team: str) -> NameState:
        """The state of ``name``, which ``team`` must own (else Unknown/AccessError)."""
        state = self.state(name)
        if state is None or (state.owner != team and team not in state.ever):
            raise UnknownNameError(
                f"no adapter named {name!r} visible to team {team!r}: check `adapters list`"
            )
        if state.owner != team:
            raise AccessError(
                f"adapter {name!r} belongs to team {state.owner!r} (its signed name record): "
                "only it can share, revoke or delete"
            )
        return state

    def resolve(self, ref: AdapterRef, team: str) -> tuple[NameState, int]:
        """(state, version) that ``team`` may read for ``ref`` (latest readable if unversioned)."""
        state = self.state(ref.name)
        hidden = UnknownNameError(
            f"no adapter {ref} visible to team {team!r}: check `adapters list`"
        )
        if state is None:
            raise hidden
        version = state.latest(team) if ref.version is None else ref.version
        grant = state.versions.get(version) if version is not None else None
        if version is None or grant is None or grant.deleted or team not in grant.readers:
            was_reader = team in (grant.ever if grant else state.ever)
            if was_reader and team in state.revoked:
                raise AccessError(
                    f"team {team}'s access to {ref} was revoked by its owner {state.owner!r}"
                )
            raise hidden
        return state, version

    def manifest(self, state: NameState, version: int) -> dict[str, Any]:
        """The manifest of ``version``, checked against the SHA-256 its owner signed."""
        blob = get_bounded(self.store, self._manifest_key(state.name, version), MAX_MANIFEST_BYTES)
        grant = state.versions[version]
        if hashlib.sha256(blob).hexdigest() != grant.manifest_sha256:
            raise IntegrityError(
                f"the manifest of {state.name}@{version} does not match its owner's signed "
                "record: the storage was altered outside qlora-hub"
            )
        import json

        return json.loads(blob)

    def check_payload(self, payload: AdapterPayload, state: NameState) -> AdapterPayload:
        """``payload`` with its signed manifest, if its bytes are exactly what the owner signed."""
        assert payload.version is not None
        manifest = self.manifest(state, payload.version)
        files = {n: hashlib.sha256(b).hexdigest() for n, b in sorted(payload.files.items())}
        if files != manifest.get("files") or manifest.get("publisher") != state.owner:
            raise IntegrityError(
                f"{payload.name}@{payload.version} does not match what its owner "
                f"{state.owner!r} signed: the storage was altered outside qlora-hub"
            )
        readers = sorted(state.readers(payload.version))
        return AdapterPayload(
            payload.name, payload.files, payload.version, {**manifest, "readers": readers}
        )

    def readable(self, team: str) -> list[AdapterRecord]:
        """Every live version the signed records let ``team`` read (manifests checked)."""
        out = []
        for key in self.records.names():
            try:
                state = self.state(key)
            except (IntegrityError, AccessError, UnknownNameError):
                continue  # an untrusted owner or altered records: nothing in it is listed
            if state is None or team not in state.ever:
                continue
            for v in state.live():
                if team not in state.readers(v):
                    continue
                try:
                    m = self.manifest(state, v)
                except (IntegrityError, ValueError):
                    continue  # withheld or altered: pull says why
                out.append(
                    AdapterRecord(
                        state.name,
                        v,
                        state.owner,
                        str(m.get("created")),
                        int(m.get("size", 0)),
                        m.get("base_fingerprint"),
                        tuple(sorted(state.readers(v))),
                    )  # fmt: skip
                )
        return sorted(out, key=lambda r: (r.name, r.version))

    # -- writing -----------------------------------------------------------------------------
    def claim(self, name: str, team: str) -> NameState:
        """The state of ``name`` for a push by ``team``: claimed now if new; owner checked."""
        identity = self.identity(team)  # no keys, no push: before any byte is stored
        state = self.state(name) or self.records.claim(name, identity)
        if state.owner != team:
            raise AccessError(
                f"adapter {name!r} belongs to team {state.owner!r} (its signed name record): "
                "push under another name"
            )
        return state

    def publish(
        self, state: NameState, adapter: AdapterPayload, version: int, metadata: dict[str, Any],
        readers: Iterable[str],
    ) -> None:  # fmt: skip
        """Store the signed manifest of a stored version and append its publish record."""
        if version in state.versions or version < 1:
            raise IntegrityError(
                f"storage backend returned {adapter.name}@{version}, a number already used: "
                "it must never reuse version numbers"
            )
        blob = canonical(manifest_of(adapter, version, state.owner, metadata))
        sha = hashlib.sha256(blob).hexdigest()
        key = self._manifest_key(state.name, version)
        if not put_new(self.store, key, blob):
            raise IntegrityError(f"{key} exists already: the storage was altered")
        self._append(
            state, "publish", version=version, object_id=sha[:32], manifest_sha256=sha,
            readers=sorted(set(readers) | {state.owner}),
        )  # fmt: skip

    def share(self, state: NameState, versions: list[int], with_team: str) -> None:
        """Append ``with_team`` as a reader of ``versions``."""
        self._append(state, "share", team=with_team, versions=versions)

    def revoke(self, state: NameState, from_team: str) -> None:
        """Append a revoke of ``from_team`` (every version, and later pushes)."""
        self._append(state, "revoke", team=from_team)

    def delete(self, state: NameState, versions: list[int]) -> None:
        """Append a delete of ``versions``."""
        self._append(state, "delete", versions=versions)

    def _append(self, state: NameState, action: str, **fields: Any) -> None:
        identity = self.identity(state.owner)
        revoked = set(state.revoked)
        for _ in range(_RETRIES):  # another process appended first: reload, sign again
            try:
                self.records.append(state, identity, action, **fields)
                return
            except RecordConflict:
                state = self.state(state.name) or state
                if action == "publish":  # a revoke that came in between holds for this push
                    fields["readers"] = sorted(set(fields["readers"]) - (state.revoked - revoked))
                if action == "publish" and fields["version"] in state.versions:
                    raise IntegrityError(
                        f"version {fields['version']} of {state.name!r} was published by "
                        "another process too: the storage backend reused a number"
                    ) from None
        raise RecordConflict(f"adapter {state.name!r} is being changed by others: retry")

    @staticmethod
    def _manifest_key(name: str, version: int) -> str:
        return f"manifests/{collision_key(name)}/{version:08d}"
