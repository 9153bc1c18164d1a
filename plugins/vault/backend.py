"""The ``vault`` storage backend: encrypted, signed, shared per team.

Open it as team ``alpha`` with ``open_store(hub, settings, team="alpha")``
(or ``Vault(root, hub=hub, team="alpha")``); private keys come from the
``key_provider`` hook, else ``<home>/teams/alpha/key.json`` with the
``passphrase`` option or ``$QLORA_HUB_PASSPHRASE``. Every method also takes
``team=`` to act as another local team.

Who owns a name and which team may read which version follow from records
signed by the name's owner (:mod:`hub.grants`, stored by
:mod:`plugins.vault.records`), never from the index: a writer of the vault
folder can delete or withhold, not grant, take over a name or undo a
revocation. A read's steps, records to plaintext, are :mod:`plugins.vault.reads`;
publishing is :mod:`plugins.vault.publish`, sharing :mod:`plugins.vault.sharing`.
Layout under the backend root (``<home>/storage/vault``)::

    index.sqlite   cache of names, versions, grants (rebuilt by reindex); audit head
    audit.log      hash-chained JSON lines
    blobs/         default blob store (``vault.blob_url`` moves it):
                   names/<name>/<seq>  signed records;  objects/<id>/...  one version
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from hub.errors import (
    AccessError,
    ConfigError,
    HubError,
    IntegrityError,
    UnknownNameError,
)
from hub.grants import NameState
from hub.identity import Identity, PublicIdentity
from hub.names import check_name, check_team_name
from hub.teams import load_identity
from hub.types import AdapterPayload, AdapterRecord, AdapterRef
from plugins.vault import catalog, objects, publish, reads, sharing
from plugins.vault.audit import AuditLog
from plugins.vault.blobs import open_blobs
from plugins.vault.index import Index
from plugins.vault.records import NameRecords
from plugins.vault.trust_cache import TrustCache

TEAM_ENV = "QLORA_HUB_TEAM"


def _setting(home: Path, settings: Any, key: str) -> Any:
    if settings is None:
        from hub.config import load_settings

        settings = load_settings(home)
    return settings.get(key)


class Vault:
    """Encrypted, signed adapter versions with per-team access (see docs/storage.md)."""

    name = "vault"
    description = (
        "Encrypted, signed adapter storage: AES-256-GCM chunks, data keys HPKE-wrapped "
        "per team (ML-KEM-768+X25519), manifests and sharing records signed Ed25519+ML-DSA-65"
    )
    capabilities = frozenset({"encrypted", "signed", "revoke_reencrypts"})

    def __init__(
        self,
        root: Path,
        *,
        hub: Any = None,
        home: Path | None = None,
        team: str | None = None,
        passphrase: Any = None,
        blob_url: str | None = None,
        chunk_size: int | None = None,
        max_adapter_bytes: int | None = None,
        settings: Any = None,
    ) -> None:
        # open_store puts the root at <home>/storage/vault; keys live in <home>/teams.
        self.home = Path(home) if home else Path(root).parent.parent
        # vault.root points several homes (teams on different machines) at one vault.
        self.root = Path(_setting(self.home, settings, "vault.root") or root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.hub = hub
        self.team = team or os.environ.get(TEAM_ENV) or None
        self._passphrase = passphrase
        self.chunk_size = int(chunk_size or _setting(self.home, settings, "vault.chunk_size"))
        self.max_adapter_bytes = int(
            max_adapter_bytes or _setting(self.home, settings, "vault.max_adapter_bytes")
        )
        if not objects.MIN_CHUNK <= self.chunk_size <= objects.MAX_CHUNK:
            raise ConfigError(
                f"vault.chunk_size must be between {objects.MIN_CHUNK} and {objects.MAX_CHUNK} bytes"
            )
        url = (
            blob_url
            or _setting(self.home, settings, "vault.blob_url")
            or (self.root / "blobs").as_uri()
        )
        self.blobs = open_blobs(url, hub=hub, settings=settings, home=self.home)
        self.index = Index(self.root / "index.sqlite")
        self.audit = AuditLog(self.root / "audit.log", self.index)
        self._identities: dict[str, Identity] = {}
        self._trust = TrustCache(self.home)  # parsed public keys of other teams
        self.records = NameRecords(self.blobs, self._public_of, self.home / "pins")
        # what reads learn (plugins.vault.reads): parsed manifests, data keys, last object read
        self._manifests: dict[tuple[str, str], dict[str, Any]] = {}  # (SHA-256, signer) -> parsed
        self._data_keys: dict[tuple[str, str, int], bytes] = {}
        self._payload_hints: dict[tuple[str, str, int | None], str] = {}  # ref -> object id

    def __repr__(self) -> str:
        return f"Vault(root={str(self.root)!r}, team={self.team!r})"

    # -- identities ------------------------------------------------------------------
    def _acting(self, team: str | None) -> str:
        team = team or self.team
        if not team:
            raise ConfigError(f"no acting team: pass --team NAME or set {TEAM_ENV}")
        return check_team_name(team)

    def identity(self, team: str, purpose: str = "decrypt") -> Identity:
        """The private keys of local team ``team`` (loaded once per vault object)."""
        if team not in self._identities:
            self._identities[team] = load_identity(
                self.home, team, hub=self.hub, passphrase=self._passphrase, purpose=purpose
            )
        return self._identities[team]

    def _public_of(self, team: str) -> PublicIdentity:
        """A team's public key: its loaded private key here, else the trust store."""
        if team in self._identities:
            return self._identities[team].public
        return self._trust.get(team)

    # -- signed state ------------------------------------------------------------------
    @staticmethod
    def _key(oid: str, part: str) -> str:
        return f"objects/{oid}/{part}"

    def state(self, name: str) -> NameState | None:
        """The verified signed state of adapter ``name`` (None: never published)."""
        return self.records.load(check_name(name))

    def _owned(self, name: str, team: str) -> NameState:
        """The state of ``name``, which ``team`` must own."""
        state = self.state(name)
        if state is None or state.name != name:
            raise UnknownNameError(f"no adapter named {name!r} in this vault")
        if state.owner != team:
            if team not in state.ever:
                raise UnknownNameError(f"no adapter named {name!r} in this vault")
            raise AccessError(
                f"adapter {name!r} belongs to team {state.owner!r}: only it can share, "
                "revoke or delete"
            )
        return state

    # -- reads (plugins.vault.reads), as sharing, the catalog and the tests call them -------
    def _manifest(self, state: NameState, version: int) -> dict[str, Any]:
        """See :func:`plugins.vault.reads.manifest`."""
        return reads.manifest(self, state, version)

    def _data_key(self, state: NameState, version: int, team: str) -> bytes:
        """See :func:`plugins.vault.reads.data_key`."""
        return reads.data_key(self, state, version, team)

    def _opened(self, ref: AdapterRef, team: str) -> tuple[NameState, int, dict[str, Any], bytes]:
        """Signed state, version, verified manifest and data key of a read of ``ref`` by
        ``team`` (:func:`plugins.vault.reads.opening`, without the early download)."""
        return reads.opening(self, ref, team, stream=False)[:4]

    def _decrypt(
        self, state: NameState, version: int, manifest: dict[str, Any], key: bytes, blob: Any = None
    ) -> dict[str, bytes]:
        """See :func:`plugins.vault.reads.decrypt`."""
        return reads.decrypt(self, state, version, manifest, key, blob)

    # -- the StorageBackend protocol -----------------------------------------------------
    def push(
        self,
        adapter: AdapterPayload,
        *,
        team: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        share_with: Iterable[str] = (),
    ) -> AdapterRef:
        """Sign, encrypt and store ``adapter`` as the next version of its name.

        Readers: the publishing team, the readers of the latest version as the
        owner's signed records state them, and ``share_with``. Validation and
        the lifecycle hooks are the core's (:mod:`hub.adapters`).
        """
        share = [check_team_name(t) for t in share_with]
        return publish.store(self, adapter, self._acting(team), metadata, share)

    def pull(
        self, ref: AdapterRef, *, team: str | None = None, where: str = "cli"
    ) -> AdapterPayload:
        """Verify the owner's records, signature, trust and every hash; decrypt in memory."""
        team = self._acting(team)
        try:
            state, version, manifest, key, blob = reads.opening(self, ref, team)
        except IntegrityError as exc:  # altered records, manifest or key: leave a trace
            self.audit.record("pull-refused", team, str(ref), "", error=str(exc), where=where)
            raise
        resolved = AdapterRef(state.name, version)
        # The entry records the data key's release to `team`; it is made durable while
        # the payload decrypts, and no byte is returned before it is committed.
        digest = state.versions[version].manifest_sha256
        entry = self.audit.record_in_background("pull", team, str(resolved), digest, where=where)
        try:
            files = reads.decrypt(self, state, version, manifest, key, blob)
        except BaseException as exc:
            entry.result()
            if isinstance(exc, HubError):  # a tampered payload leaves a trace too
                self.audit.record("pull-refused", team, str(resolved), digest, error=str(exc))
            raise
        entry.result()
        return AdapterPayload(state.name, files, version, manifest)

    def verify(self, ref: AdapterRef, *, team: str | None = None) -> dict[str, Any]:
        """Run every check a pull runs, without keeping the plaintext; returns a summary."""
        team = self._acting(team)
        state, version, manifest, key, blob = reads.opening(self, ref, team)
        files = reads.decrypt(self, state, version, manifest, key, blob)
        return {
            "ref": f"{state.name}@{version}",
            "publisher": state.owner,
            "files": len(files),
            "bytes": sum(len(b) for b in files.values()),
            "ok": True,
        }

    def show(self, ref: AdapterRef, *, team: str | None = None) -> dict[str, Any]:
        """The verified manifest of ``ref`` and who can read it (no decryption)."""
        team = self._acting(team)
        state, version = reads.resolve(self, ref, team)
        grant = state.versions[version]
        grants = {t: "active" if t in grant.readers else "revoked" for t in sorted(grant.ever)}
        return {"manifest": self._manifest(state, version), "readers": grants}

    def list(self, *, team: str | None = None) -> list[AdapterRecord]:
        """Every live version the owners' signed records let the acting team read."""
        return catalog.readable(self, self._acting(team))

    def share(self, ref: AdapterRef, *, team: str | None = None, with_team: str) -> AdapterRef:
        """Wrap the data key of ``ref`` (every version when unversioned) for ``with_team``.

        See :func:`plugins.vault.sharing.share`.
        """
        return sharing.share(self, ref, self._acting(team), check_team_name(with_team))

    def revoke(self, ref: AdapterRef, *, team: str | None = None, from_team: str) -> AdapterRef:
        """Stop ``from_team`` reading ``ref.name``; returns the re-encrypted new version.

        See :func:`plugins.vault.sharing.revoke`.
        """
        return sharing.revoke(self, ref, self._acting(team), check_team_name(from_team))

    def delete(self, ref: AdapterRef, *, team: str | None = None) -> None:
        """Remove one version, or every version when ``ref.version`` is None (owner only).

        Version numbers are never reused afterwards. See :func:`plugins.vault.sharing.delete`.
        """
        sharing.delete(self, ref, self._acting(team))

    # -- the index is a cache ------------------------------------------------------------
    def reindex(self, *, team: str | None = None) -> dict[str, Any]:
        """Rebuild the index's names, versions and grants from the signed records alone.

        See :func:`plugins.vault.catalog.reindex`.
        """
        return catalog.reindex(self, team or self.team)

    def orphans(self) -> list[str]:
        """Object ids with blobs but no signed publish record (left by interrupted pushes)."""
        return catalog.orphans(self)
