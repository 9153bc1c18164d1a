"""The ``vault`` storage backend: encrypted, signed, shared per team.

Open it as team ``alpha`` with ``open_store(hub, settings, team="alpha")``
(or ``Vault(root, hub=hub, team="alpha")``); private keys come from the
``key_provider`` hook, else ``<home>/teams/alpha/key.json`` with the
``passphrase`` option or ``$QLORA_HUB_PASSPHRASE``. Every method also takes
``team=`` to act as another local team.

Layout under the backend root (``<home>/storage/vault``)::

    index.sqlite   names, versions, grants, audit head (no secrets)
    audit.log      hash-chained JSON lines
    blobs/         default blob store (``vault.blob_url`` moves it)
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
from hub.identity import Identity, PublicIdentity, check_team_name
from hub.teams import load_identity
from hub.types import AdapterPayload, AdapterRecord, AdapterRef
from plugins.vault import objects, sharing
from plugins.vault.audit import AuditLog
from plugins.vault.blobs import open_blobs
from plugins.vault.decrypt import decrypt_files
from plugins.vault.index import Index
from plugins.vault.names import check_name, collision_key
from plugins.vault.trust_cache import TrustCache
from plugins.vault.validation import check_adapter, run_policy_hooks

TEAM_ENV = "QLORA_HUB_TEAM"
MAX_METADATA_BYTES = 64 << 10


def _setting(home: Path, key: str) -> Any:
    from hub.config import load_settings

    return load_settings(home).get(key)


class Vault:
    """Encrypted, signed adapter versions with per-team access (see docs/storage.md)."""

    name = "vault"
    description = (
        "Encrypted, signed adapter storage: AES-256-GCM chunks, data keys HPKE-wrapped "
        "per team (ML-KEM-768+X25519), manifests signed Ed25519+ML-DSA-65"
    )

    def __init__(
        self,
        root: Path,
        *,
        hub: Any = None,
        home: Path | None = None,
        team: str | None = None,
        passphrase: str | bytes | None = None,
        blob_url: str | None = None,
        chunk_size: int | None = None,
        max_adapter_bytes: int | None = None,
    ) -> None:
        # open_store puts the root at <home>/storage/vault; keys live in <home>/teams.
        self.home = Path(home) if home else Path(root).parent.parent
        # vault.root points several homes (teams on different machines) at one vault.
        self.root = Path(_setting(self.home, "vault.root") or root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.hub = hub
        self.team = team or os.environ.get(TEAM_ENV) or None
        self._passphrase = passphrase
        self.chunk_size = int(chunk_size or _setting(self.home, "vault.chunk_size"))
        self.max_adapter_bytes = int(
            max_adapter_bytes or _setting(self.home, "vault.max_adapter_bytes")
        )
        if self.chunk_size < 1024:
            raise ConfigError("vault.chunk_size must be at least 1024 bytes")
        url = blob_url or _setting(self.home, "vault.blob_url") or (self.root / "blobs").as_uri()
        self.blobs = open_blobs(url)
        self.index = Index(self.root / "index.sqlite")
        self.audit = AuditLog(self.root / "audit.log", self.index)
        self._identities: dict[str, Identity] = {}
        self._trust = TrustCache(self.home)  # parsed public keys of other teams

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

    def _public(self, team: str, acting: Identity) -> PublicIdentity:
        return acting.public if team == acting.team else self._trust.get(team)

    # -- helpers ------------------------------------------------------------------------
    @staticmethod
    def _key(oid: str, part: str) -> str:
        return f"objects/{oid}/{part}"

    def _resolve(self, db: Any, ref: AdapterRef, team: str) -> Any:
        """The version row ``team`` may read for ``ref``, or the right error."""
        name = check_name(ref.name)
        hidden = UnknownNameError(
            f"no adapter {ref} visible to team {team!r}: check `adapters list`"
        )
        if ref.version is None:
            row = db.execute(
                "SELECT v.* FROM versions v JOIN grants g ON g.object_id = v.object_id "
                "WHERE v.name = ? AND g.team = ? ORDER BY v.version DESC LIMIT 1",
                (name, team),
            ).fetchone()
        else:
            row = self.index.version_row(db, name, ref.version)
        if row is None:
            raise hidden
        state = self.index.grants(db, row["object_id"]).get(team)
        if state is None:
            raise hidden  # not shared: same answer as absent, so names do not leak
        if state == "revoked":
            raise AccessError(
                f"team {team}'s access to {name}@{row['version']} was revoked by its owner"
            )
        return row

    def _owned(self, db: Any, name: str, team: str) -> Any:
        row = self.index.name_row(db, collision_key(check_name(name)))
        if row is None or row["name"] != name:
            raise UnknownNameError(f"no adapter named {name!r} in this vault")
        if row["owner"] != team:
            raise AccessError(
                f"adapter {name!r} belongs to team {row['owner']!r}: only it can share, "
                "revoke or delete"
            )
        return row

    def _open(self, row: Any, team: str) -> tuple[dict[str, Any], bytes]:
        """Verify the manifest of ``row`` and unwrap its data key for ``team``."""
        oid = row["object_id"]
        mblob = self.blobs.get(self._key(oid, "manifest"))
        manifest, sig = objects.read_manifest(mblob)
        publisher = manifest.get("publisher")
        if publisher != row["publisher"]:
            raise IntegrityError("manifest publisher does not match the index: object was swapped")
        # The acting team holds its own private key, so it needs no trust entry for itself.
        own = publisher == team
        public = self.identity(team).public if own else self._trust.get(publisher)
        try:
            objects.verify_manifest(public, manifest, sig)
        except IntegrityError:
            if manifest.get("publisher_fingerprint") != public.fingerprint:
                raise AccessError(
                    f"{row['name']}@{row['version']} was signed by another key of team "
                    f"{publisher!r} than your trust store holds (re-keyed?): re-trust its public file"
                ) from None
            raise
        if (
            manifest.get("name") != row["name"]
            or manifest.get("version") != row["version"]
            or manifest.get("object_id") != oid
            or hashlib.sha256(mblob).hexdigest() != row["manifest_sha256"]
        ):
            raise IntegrityError(
                f"manifest of {row['name']}@{row['version']} belongs to another object"
            )
        key = objects.unwrap_key(
            self.identity(team),
            self.blobs.get(self._key(oid, f"keys/{team}")),
            bytes.fromhex(oid),
            row["version"],
        )
        return manifest, key

    def _decrypt(self, row: Any, manifest: dict[str, Any], key: bytes) -> dict[str, bytes]:
        oid = row["object_id"]
        key_ = self._key(oid, "payload")
        # Stores that can map a blob avoid reading it into a second buffer.
        blob = self.blobs.view(key_) if hasattr(self.blobs, "view") else self.blobs.get(key_)
        return decrypt_files(blob, key, bytes.fromhex(oid), row["version"], manifest["files"])

    # -- the StorageBackend protocol -----------------------------------------------------
    def push(
        self,
        adapter: AdapterPayload,
        *,
        team: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        share_with: Iterable[str] = (),
    ) -> AdapterRef:
        """Validate, sign, encrypt and store ``adapter`` as the next version of its name.

        Readers: the publishing team, every team with access to the previous
        latest version, and ``share_with``.
        """
        return self._store(adapter, self._acting(team), metadata, share_with, None)

    def _store(
        self,
        adapter: AdapterPayload,
        team: str,
        metadata: Mapping[str, Any] | None,
        share_with: Iterable[str],
        readers: set[str] | None,
        action: str = "push",
    ) -> AdapterRef:
        name = check_name(adapter.name)
        check_adapter(adapter, max_bytes=self.max_adapter_bytes)
        run_policy_hooks(self.hub, adapter)
        meta = dict(metadata or {})
        try:
            if len(objects.canonical(meta)) > MAX_METADATA_BYTES:
                raise ValueError("too large")
        except (TypeError, ValueError) as exc:
            raise ValidationError(f"metadata must be JSON under 64 KiB ({exc})") from None
        ident = self.identity(team, "sign")
        with self.index.write() as db:  # reserve the version number (never reused)
            row = self.index.name_row(db, collision_key(name))
            if row is None:
                db.execute(
                    "INSERT INTO names VALUES (?, ?, ?, 1)", (collision_key(name), name, team)
                )
                version, inherited = 1, set()
            else:
                if row["name"] != name:
                    raise ValidationError(
                        f"adapter name {name!r} collides with existing {row['name']!r} "
                        "(names differ only by case): use the existing name or another"
                    )
                if row["owner"] != team:
                    raise AccessError(f"adapter {name!r} belongs to team {row['owner']!r}")
                version = row["last_version"] + 1
                db.execute(
                    "UPDATE names SET last_version = ? WHERE name_key = ?",
                    (version, collision_key(name)),
                )
                latest = self.index.versions_of(db, name)
                grants = self.index.grants(db, latest[-1]["object_id"]) if latest else {}
                inherited = {t for t, s in grants.items() if s == "active"}
        recipients = {team, *(inherited if readers is None else readers), *share_with}
        publics = {t: self._public(t, ident) for t in sorted(recipients)}

        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        oid = os.urandom(16)
        data_key = AESGCM.generate_key(bit_length=256)
        order = sorted(adapter.files)
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
        plain = b"".join(adapter.files[n] for n in order)
        self.blobs.put(
            self._key(oid.hex(), "payload"),
            objects.encrypt_payload(plain, data_key, oid, version, self.chunk_size),
        )
        for t, pub in publics.items():
            self.blobs.put(
                self._key(oid.hex(), f"keys/{t}"), objects.wrap_key(pub, data_key, oid, version)
            )
        mblob = objects.sign_manifest(ident, manifest)
        self.blobs.put(self._key(oid.hex(), "manifest"), mblob)
        digest = hashlib.sha256(mblob).hexdigest()
        # Visibility point: the object exists once this transaction commits.
        with self.index.write() as db:
            db.execute(
                "INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    name,
                    version,
                    oid.hex(),
                    team,
                    manifest["created"],
                    len(plain),
                    manifest["base_fingerprint"],
                    digest,
                ),
            )
            db.executemany(
                "INSERT INTO grants VALUES (?, ?, 'active')", [(oid.hex(), t) for t in publics]
            )
            self.audit.append(
                db, action, team, f"{name}@{version}", digest, readers=sorted(publics)
            )
        ref = AdapterRef(name, version)
        if self.hub is not None:
            self.hub.pm.hook.adapter_published(ref=ref, team=team, manifest=manifest)
        return ref

    def pull(
        self, ref: AdapterRef, *, team: str | None = None, where: str = "cli"
    ) -> AdapterPayload:
        """Verify signature, trust and every hash, decrypt in memory, and return the adapter."""
        team = self._acting(team)
        with self.index.read() as db:
            row = self._resolve(db, ref, team)
        manifest, key = self._open(row, team)
        resolved = AdapterRef(row["name"], row["version"])
        # The entry records the data key's release to `team`; it is made durable while
        # the payload decrypts, and no byte is returned before it is committed.
        digest = row["manifest_sha256"]
        entry = self.audit.record_in_background("pull", team, str(resolved), digest, where=where)
        try:
            files = self._decrypt(row, manifest, key)
        except BaseException as exc:
            entry.result()
            if isinstance(exc, HubError):  # a tampered payload leaves a trace too
                self.audit.record("pull-refused", team, str(resolved), digest, error=str(exc))
            raise
        entry.result()
        if self.hub is not None:
            self.hub.pm.hook.adapter_loaded(ref=resolved, team=team, where=where)
        return AdapterPayload(row["name"], files, row["version"], manifest)

    def verify(self, ref: AdapterRef, *, team: str | None = None) -> dict[str, Any]:
        """Run every check a pull runs, without keeping the plaintext; returns a summary."""
        team = self._acting(team)
        with self.index.read() as db:
            row = self._resolve(db, ref, team)
        manifest, key = self._open(row, team)
        files = self._decrypt(row, manifest, key)
        return {
            "ref": f"{row['name']}@{row['version']}",
            "publisher": row["publisher"],
            "files": len(files),
            "bytes": sum(len(b) for b in files.values()),
            "ok": True,
        }

    def show(self, ref: AdapterRef, *, team: str | None = None) -> dict[str, Any]:
        """The verified manifest of ``ref`` and who can read it (no decryption)."""
        team = self._acting(team)
        with self.index.read() as db:
            row = self._resolve(db, ref, team)
            grants = self.index.grants(db, row["object_id"])
        manifest, _ = self._open(row, team)
        return {"manifest": manifest, "readers": grants}

    def list(self, *, team: str | None = None) -> list[AdapterRecord]:
        """Every version the acting team holds an active grant for."""
        team = self._acting(team)
        with self.index.read() as db:
            rows = self.index.visible(db, team)
        return [
            AdapterRecord(
                name=r["name"],
                version=r["version"],
                team=r["publisher"],
                created=r["created"],
                size=r["size"],
                base_fingerprint=r["base_fingerprint"],
                shared_with=r["shared_with"],
            )
            for r in rows
        ]

    def share(self, ref: AdapterRef, *, team: str | None = None, with_team: str) -> AdapterRef:
        """Wrap the data key of ``ref`` (every version when unversioned) for ``with_team``.

        The payload and manifest are untouched; later pushes include ``with_team``.
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

        Version numbers are never reused afterwards.
        """
        team = self._acting(team)
        with self.index.write() as db:
            self._owned(db, ref.name, team)
            rows = self.index.versions_of(db, ref.name)
            if ref.version is not None:
                rows = [r for r in rows if r["version"] == ref.version]
            if not rows:
                raise UnknownNameError(f"no adapter {ref} in this vault")
            for r in rows:
                db.execute("DELETE FROM versions WHERE object_id = ?", (r["object_id"],))
                db.execute("DELETE FROM grants WHERE object_id = ?", (r["object_id"],))
                self.audit.append(
                    db, "delete", team, f"{r['name']}@{r['version']}", r["manifest_sha256"]
                )
        for r in rows:
            for key in self.blobs.keys(f"objects/{r['object_id']}/"):
                self.blobs.delete(key)

    def orphans(self) -> list[str]:
        """Object ids with blobs but no index row (left by interrupted pushes)."""
        with self.index.read() as db:
            known = {r[0] for r in db.execute("SELECT object_id FROM versions")}
        found = {k.split("/")[1] for k in self.blobs.keys("objects/")}
        return sorted(found - known)
