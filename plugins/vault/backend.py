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
revocation. Layout under the backend root (``<home>/storage/vault``)::

    index.sqlite   cache of names, versions, grants (rebuilt by reindex); audit head
    audit.log      hash-chained JSON lines
    blobs/         default blob store (``vault.blob_url`` moves it):
                   names/<name>/<seq>  signed records;  objects/<id>/...  one version
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hub.errors import (
    AccessError,
    ConfigError,
    HubError,
    IntegrityError,
    UnknownNameError,
    ValidationError,
)
from hub.grants import NameState
from hub.identity import Identity, PublicIdentity
from hub.names import check_name, check_team_name
from hub.teams import load_identity
from hub.types import AdapterPayload, AdapterRecord, AdapterRef
from plugins.vault import objects, sharing
from plugins.vault.audit import AuditLog
from plugins.vault.blobs import open_blobs
from plugins.vault.decrypt import decrypt_files
from plugins.vault.index import Index
from plugins.vault.records import NameRecords
from plugins.vault.trust_cache import TrustCache

TEAM_ENV = "QLORA_HUB_TEAM"
MAX_METADATA_BYTES = 64 << 10
MAX_MANIFEST_BYTES = 16 << 20


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
        self.blobs = open_blobs(url)
        self.index = Index(self.root / "index.sqlite")
        self.audit = AuditLog(self.root / "audit.log", self.index)
        self._identities: dict[str, Identity] = {}
        self._trust = TrustCache(self.home)  # parsed public keys of other teams
        self.records = NameRecords(self.blobs, self._public_of, self.home / "pins")
        self._manifests: dict[str, dict[str, Any]] = {}  # manifest SHA-256 -> parsed manifest
        self._data_keys: dict[tuple[str, str, int, bytes], bytes] = {}

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

    def _resolve(self, ref: AdapterRef, team: str) -> tuple[NameState, int]:
        """The signed state of ``ref.name`` and the version ``team`` may read, or the right error."""
        name = check_name(ref.name)
        hidden = UnknownNameError(
            f"no adapter {ref} visible to team {team!r}: check `adapters list`"
        )
        state = self.state(name)
        if state is None or state.name != name or team not in state.ever:
            raise hidden  # never shared: same answer as absent, so names do not leak
        version = ref.version if ref.version is not None else state.latest(team)
        if version is None:
            version = state.latest()
            if version is None:
                raise hidden
        if version not in state.live():
            raise hidden
        if team not in state.readers(version):
            if team not in state.revoked:
                raise hidden
            raise AccessError(f"team {team}'s access to {name}@{version} was revoked by its owner")
        return state, version

    def _manifest(self, state: NameState, version: int) -> dict[str, Any]:
        """The manifest of ``version``, checked against the owner's signed publish record."""
        grant = state.versions[version]
        mblob = self.blobs.get(self._key(grant.object_id, "manifest"))
        if hashlib.sha256(mblob).hexdigest() != grant.manifest_sha256:
            raise IntegrityError(
                f"manifest of {state.name}@{version} belongs to another object: it does not "
                "match the owner's signed record"
            )
        cached = self._manifests.get(grant.manifest_sha256)
        if cached is not None:
            return cached
        manifest, sig = objects.read_manifest(mblob)
        objects.verify_manifest(self._public_of(state.owner), manifest, sig)
        if (
            manifest.get("name") != state.name
            or manifest.get("version") != version
            or manifest.get("object_id") != grant.object_id
            or manifest.get("publisher") != state.owner
        ):
            raise IntegrityError(f"manifest of {state.name}@{version} belongs to another object")
        self._manifests[grant.manifest_sha256] = manifest
        return manifest

    def _data_key(self, state: NameState, version: int, team: str) -> bytes:
        """The data key of ``version`` unwrapped by ``team`` (kept per wrapped-key blob, so
        a server's repeated pulls skip the KEM; a changed blob is unwrapped afresh)."""
        oid = state.versions[version].object_id
        blob = self.blobs.get(self._key(oid, f"keys/{team}"))
        cache_key = (team, oid, version, hashlib.sha256(blob).digest())
        key = self._data_keys.get(cache_key)
        if key is None:
            key = objects.unwrap_key(self.identity(team), blob, bytes.fromhex(oid), version)
            if len(self._data_keys) >= 1024:
                self._data_keys.clear()
            self._data_keys[cache_key] = key
        return key

    def _opened(self, ref: AdapterRef, team: str) -> tuple[NameState, int, dict[str, Any], bytes]:
        """What a read of ``ref`` by ``team`` needs before decrypting: signed state, the
        version, its verified manifest and the data key unwrapped for ``team``."""
        state, version = self._resolve(ref, team)
        manifest = self._manifest(state, version)
        return state, version, manifest, self._data_key(state, version, team)

    def _decrypt(
        self, state: NameState, version: int, manifest: dict[str, Any], key: bytes
    ) -> dict[str, bytes]:
        oid = state.versions[version].object_id
        key_ = self._key(oid, "payload")
        # Stores that can map a blob avoid reading it into a second buffer.
        blob = self.blobs.view(key_) if hasattr(self.blobs, "view") else self.blobs.get(key_)
        return decrypt_files(blob, key, bytes.fromhex(oid), version, manifest["files"])

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
        return self._store(adapter, self._acting(team), metadata, share, None)

    def _store(
        self,
        adapter: AdapterPayload,
        team: str,
        metadata: Mapping[str, Any] | None,
        share_with: list[str],
        readers: set[str] | None,
        action: str = "push",
    ) -> AdapterRef:
        name = check_name(adapter.name)
        if adapter.nbytes > self.max_adapter_bytes:
            raise ValidationError(
                f"adapter is {adapter.nbytes} bytes, over vault.max_adapter_bytes="
                f"{self.max_adapter_bytes}"
            )
        meta = dict(metadata or {})
        try:
            if len(objects.canonical(meta)) > MAX_METADATA_BYTES:
                raise ValueError("too large")
        except (TypeError, ValueError) as exc:
            raise ValidationError(f"metadata must be JSON under 64 KiB ({exc})") from None
        ident = self.identity(team, "sign")
        with self.index.write() as db:  # reserve the version number (never reused)
            state = self._claimed(name, ident)
            version = max(state.last_version, self.index.last_version(db, name)) + 1
            self.index.reserve(db, name, team, version)
            wanted = (readers if readers is not None else state.next_readers()) | {
                team,
                *share_with,
            }
        for t in wanted:  # an untrusted reader fails before anything is written
            self._public_of(t)
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        oid = os.urandom(16)
        data_key = AESGCM.generate_key(bit_length=256)
        plain = b"".join(adapter.files[n] for n in sorted(adapter.files))
        self.blobs.put(
            self._key(oid.hex(), "payload"),
            objects.encrypt_payload(plain, data_key, oid, version, self.chunk_size),
        )
        wrapped = self._wrap_for(wanted, data_key, oid, version)
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
            "payload": {"cipher": "AES-256-GCM", "chunk_size": self.chunk_size},
        }
        # Visibility point: the owner-signed publish record, written under the write lock
        # after every blob of the object is durable; the index rows are its cache.
        with self.index.write() as db:
            state = self._claimed(name, ident)
            if version in state.versions:
                raise IntegrityError(f"version {name}@{version} was published meanwhile: retry")
            if readers is None:  # a share or revoke may have landed since the reservation
                final = state.next_readers() | {team, *share_with}
                wrapped = self._wrap_for(final - wrapped, data_key, oid, version) | (
                    wrapped & final
                )
                for gone in wanted - final:
                    self.blobs.delete(self._key(oid.hex(), f"keys/{gone}"))
            manifest["readers"] = sorted(wrapped)
            mblob = objects.sign_manifest(ident, manifest)
            self.blobs.put(self._key(oid.hex(), "manifest"), mblob)
            digest = hashlib.sha256(mblob).hexdigest()
            self.records.append(
                state, ident, "publish", version=version, object_id=oid.hex(),
                manifest_sha256=digest, readers=sorted(wrapped),
            )  # fmt: skip
            self.index.add_version(db, manifest, len(plain), digest, sorted(wrapped))
            self.audit.append(
                db, action, team, f"{name}@{version}", digest, readers=sorted(wrapped)
            )
        return AdapterRef(name, version)

    def _claimed(self, name: str, ident: Identity) -> NameState:
        """The state of ``name`` for a push by ``ident``'s team, claiming a new name."""
        state = self.records.load(name)
        if state is None:
            return self.records.claim(name, ident)
        if state.name != name:
            raise ValidationError(
                f"adapter name {name!r} collides with existing {state.name!r} "
                "(names differ only by case): use the existing name or another"
            )
        if state.owner != ident.team:
            raise AccessError(f"adapter {name!r} belongs to team {state.owner!r}")
        return state

    def _wrap_for(self, teams: set[str], data_key: bytes, oid: bytes, version: int) -> set[str]:
        """Store the data key wrapped for each of ``teams`` (trusted keys only)."""
        for t in sorted(teams):
            self.blobs.put(
                self._key(oid.hex(), f"keys/{t}"),
                objects.wrap_key(self._public_of(t), data_key, oid, version),
            )
        return set(teams)

    def pull(
        self, ref: AdapterRef, *, team: str | None = None, where: str = "cli"
    ) -> AdapterPayload:
        """Verify the owner's records, signature, trust and every hash; decrypt in memory."""
        team = self._acting(team)
        state, version, manifest, key = self._opened(ref, team)
        resolved = AdapterRef(state.name, version)
        # The entry records the data key's release to `team`; it is made durable while
        # the payload decrypts, and no byte is returned before it is committed.
        digest = state.versions[version].manifest_sha256
        entry = self.audit.record_in_background("pull", team, str(resolved), digest, where=where)
        try:
            files = self._decrypt(state, version, manifest, key)
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
        state, version, manifest, key = self._opened(ref, team)
        files = self._decrypt(state, version, manifest, key)
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
        state, version = self._resolve(ref, team)
        grant = state.versions[version]
        grants = {t: "active" if t in grant.readers else "revoked" for t in sorted(grant.ever)}
        return {"manifest": self._manifest(state, version), "readers": grants}

    def list(self, *, team: str | None = None) -> list[AdapterRecord]:
        """Every live version the owners' signed records let the acting team read."""
        team = self._acting(team)
        out = []
        for key in self.records.names():
            try:
                state = self.records.load(key)
            except HubError:
                continue  # untrusted owner or altered records: nothing in it is readable
            if state is None or team not in state.ever:
                continue
            for v in state.live():
                readers = state.readers(v)
                if team not in readers:
                    continue
                try:
                    m = self._manifest(state, v)
                except HubError:
                    continue
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

        Returns ``{"names": n, "versions": n, "skipped": {name: reason}}``; a
        name whose owner is not trusted here, or whose records do not verify,
        is skipped (left out of the index). The audit head is kept.
        """
        rows, skipped = [], {}
        for key in self.records.names():
            try:
                state = self.records.load(key)
                assert state is not None
                manifests = {v: self._manifest(state, v) for v in state.live()}
            except HubError as exc:
                skipped[key] = str(exc)
                continue
            rows.append((state, manifests))
        with self.index.write() as db:
            self.index.rebuild(db, rows)
            self.audit.append(db, "reindex", team or self.team or "-", "", "", names=len(rows))
        return {
            "names": len(rows),
            "versions": sum(len(m) for _, m in rows),
            "skipped": skipped,
        }

    def orphans(self) -> list[str]:
        """Object ids with blobs but no signed publish record (left by interrupted pushes)."""
        known = set()
        for key in self.records.names():
            try:
                state = self.records.load(key)
            except HubError:
                continue
            if state is not None:
                known |= {g.object_id for g in state.versions.values()}
        found = {k.split("/")[1] for k in self.blobs.keys("objects/")}
        return sorted(found - known)
