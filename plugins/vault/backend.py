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
from concurrent.futures import Future
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
from plugins.vault import catalog, objects, publish, sharing
from plugins.vault.audit import AuditLog
from plugins.vault.blobs import get_bounded, open_blobs
from plugins.vault.decrypt import decrypt_files
from plugins.vault.index import Index
from plugins.vault.records import NameRecords
from plugins.vault.trust_cache import TrustCache
from plugins.vault.workers import in_background

TEAM_ENV = "QLORA_HUB_TEAM"
MAX_MANIFEST_BYTES = 16 << 20
MAX_KEY_BYTES = 64 << 10


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
        # Bytes with the SHA-256 the owner's record signs verified before under the owner's
        # key: kept by that hash, they need no second read (a warm pull saves a round trip
        # to object storage). The binding to this name, version and owner is still checked
        # below (another name may point here).
        sha = grant.manifest_sha256
        manifest = self._manifests.get((sha, state.owner_fingerprint))
        if manifest is None:
            key = self._key(grant.object_id, "manifest")
            mblob = get_bounded(self.blobs, key, MAX_MANIFEST_BYTES)
            sha = hashlib.sha256(mblob).hexdigest()
            manifest, sig = objects.read_manifest(mblob)
            objects.verify_manifest(self._public_of(state.owner), manifest, sig)
            objects.check_shape(manifest)
        if (
            sha != grant.manifest_sha256
            or manifest.get("name") != state.name
            or manifest.get("version") != version
            or manifest.get("object_id") != grant.object_id
            or manifest.get("publisher") != state.owner
        ):
            raise IntegrityError(
                f"manifest of {state.name}@{version} belongs to another object: it does not "
                "match the owner's signed record"
            )
        self._manifests[(sha, state.owner_fingerprint)] = manifest
        return manifest

    def _data_key(self, state: NameState, version: int, team: str) -> bytes:
        """The data key of ``version`` unwrapped by ``team``, kept per (team, object,
        version): an object's key never changes (revoking re-encrypts into a new object)
        and who may read is decided by the signed records before this is asked, so a
        server's repeated pulls skip both the KEM and the read of the wrapped key."""
        oid = state.versions[version].object_id
        cache_key = (team, oid, version)
        key = self._data_keys.get(cache_key)
        if key is None:
            blob = get_bounded(self.blobs, self._key(oid, f"keys/{team}"), MAX_KEY_BYTES)
            key = objects.unwrap_key(self.identity(team), blob, bytes.fromhex(oid), version)
            if len(self._data_keys) >= 1024:
                self._data_keys.clear()
            self._data_keys[cache_key] = key
        return key

    def _opened(self, ref: AdapterRef, team: str) -> tuple[NameState, int, dict[str, Any], bytes]:
        """What a read of ``ref`` by ``team`` needs before decrypting: signed state, the
        version, its verified manifest and the data key unwrapped for ``team``."""
        return self._opening(ref, team, stream=False)[:4]

    def _opening(
        self, ref: AdapterRef, team: str, stream: bool = True
    ) -> tuple[NameState, int, dict[str, Any], bytes, Any]:
        """:meth:`_opened` and, from object storage, the payload already downloading
        (None: it is read when decrypting)."""
        stream = stream and hasattr(self.blobs, "view") and not hasattr(self.blobs, "reader")
        hint = (team, ref.name, ref.version)
        early = self._prefetch(self._payload_hints.get(hint)) if stream else None
        blob = None
        try:
            state, version = self._resolve(ref, team)
            oid = state.versions[version].object_id
            if stream:
                # The payload downloads while the manifest and key are read and checked;
                # none of its bytes is used before both verified.
                blob = self._prefetched(early, oid)
                early = None
                if blob is None:
                    blob = self.blobs.view(self._key(oid, "payload"))
                if len(self._payload_hints) >= 1024:
                    self._payload_hints.clear()
                self._payload_hints[hint] = oid
            manifest = self._manifest(state, version)
            return state, version, manifest, self._data_key(state, version, team), blob
        except BaseException:
            getattr(blob, "close", lambda: None)()
            if early is not None:
                self._prefetched(early, "")
            raise

    def _prefetch(self, oid: str | None) -> tuple[str, Future[Any]] | None:
        """Start downloading object ``oid``'s payload on a helper thread (a guess: the
        object the last pull of the same ref read), while this pull reads and verifies
        the name's signed records. Only ciphertext arrives early: it is used only if the
        verified records resolve to that same object, and then only after its manifest
        and key verified, as any payload."""
        if oid is None:
            return None
        return oid, in_background(self.blobs.view, self._key(oid, "payload"))

    @staticmethod
    def _prefetched(early: tuple[str, Future[Any]] | None, oid: str) -> Any:
        """The early download if it is object ``oid``'s and started; else it is stopped
        (now or when its request returns) and None is returned."""
        if early is None:
            return None
        guess, future = early
        if guess == oid:
            try:
                return future.result()
            except Exception:  # gone or unreachable: the pull asks again and reports that
                return None
        future.add_done_callback(lambda f: f.exception() or f.result().close())
        return None

    def _decrypt(
        self,
        state: NameState,
        version: int,
        manifest: dict[str, Any],
        key: bytes,
        blob: Any = None,
    ) -> dict[str, bytes]:
        oid = state.versions[version].object_id
        if blob is not None:  # already downloading (object storage)
            try:
                return decrypt_files(blob, key, bytes.fromhex(oid), version, manifest["files"])
            finally:  # a refused payload stops its download (it waits for the reader)
                blob.close()
        key_ = self._key(oid, "payload")
        # A store that can read a blob piece by piece (file://) saves a copy of the whole
        # payload: each chunk is read into one small reused buffer, then decrypted.
        if hasattr(self.blobs, "reader"):
            with self.blobs.reader(key_) as blob:
                return decrypt_files(blob, key, bytes.fromhex(oid), version, manifest["files"])
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
        return publish.store(self, adapter, self._acting(team), metadata, share)

    def pull(
        self, ref: AdapterRef, *, team: str | None = None, where: str = "cli"
    ) -> AdapterPayload:
        """Verify the owner's records, signature, trust and every hash; decrypt in memory."""
        team = self._acting(team)
        try:
            state, version, manifest, key, blob = self._opening(ref, team)
        except IntegrityError as exc:  # altered records, manifest or key: leave a trace
            self.audit.record("pull-refused", team, str(ref), "", error=str(exc), where=where)
            raise
        resolved = AdapterRef(state.name, version)
        # The entry records the data key's release to `team`; it is made durable while
        # the payload decrypts, and no byte is returned before it is committed.
        digest = state.versions[version].manifest_sha256
        entry = self.audit.record_in_background("pull", team, str(resolved), digest, where=where)
        try:
            files = self._decrypt(state, version, manifest, key, blob)
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
        state, version, manifest, key, blob = self._opening(ref, team)
        files = self._decrypt(state, version, manifest, key, blob)
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
