"""The ``local`` storage backend: plain files, for development.

Nothing is encrypted or signed (it declares no ``capabilities``): it keeps
the same names, versions and per-team read lists as the vault so code can be
developed against it, and checks SHA-256 of every file on pull to catch
accidental corruption. Validation, policy and lifecycle hooks are the core's
(:mod:`hub.adapters`); this module only stores. Layout::

    <root>/<name>/<version>/adapter_config.json, adapter_model.safetensors, record.json
    <root>/<name>/name.json   owner and highest version ever used (never reused)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from filelock import FileLock

from hub.atomic import atomic_write
from hub.errors import AccessError, ConfigError, IntegrityError, UnknownNameError, ValidationError
from hub.names import check_name, check_team_name, collision_key
from hub.types import AdapterPayload, AdapterRecord, AdapterRef


class LocalStore:
    """Plain-file adapter versions with per-team read lists (no encryption)."""

    name = "local"
    description = "Plain files for development: versions and team read lists, no encryption"
    capabilities: frozenset[str] = frozenset()

    def __init__(
        self,
        root: Path,
        *,
        hub: Any = None,
        team: str | None = None,
        passphrase: Any = None,
        home: Path | None = None,
        settings: Any = None,
        **_ignored: Any,
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.hub = hub
        self.team = team or os.environ.get("QLORA_HUB_TEAM") or None
        self._lock = FileLock(str(self.root / ".lock"))

    def _acting(self, team: str | None) -> str:
        team = team or self.team
        if not team:
            raise ConfigError("no acting team: pass --team NAME or set QLORA_HUB_TEAM")
        return check_team_name(team)

    def _name_info(self, name: str) -> dict[str, Any] | None:
        p = self.root / name / "name.json"
        return json.loads(p.read_bytes()) if p.is_file() else None

    def _record(self, name: str, version: int) -> dict[str, Any] | None:
        p = self.root / name / str(version) / "record.json"
        return json.loads(p.read_bytes()) if p.is_file() else None

    def _versions(self, name: str) -> list[int]:
        d = self.root / name
        return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []

    def _owned(self, name: str, team: str) -> dict[str, Any]:
        info = self._name_info(check_name(name))
        if info is None:
            raise UnknownNameError(f"no adapter named {name!r} in this store")
        if info["owner"] != team:
            raise AccessError(f"adapter {name!r} belongs to team {info['owner']!r}")
        return info

    def _resolve(self, ref: AdapterRef, team: str) -> dict[str, Any]:
        name = check_name(ref.name)
        hidden = UnknownNameError(
            f"no adapter {ref} visible to team {team!r}: check `adapters list`"
        )
        if ref.version is None:
            seen = [v for v in self._versions(name) if team in self._record(name, v)["readers"]]
            if not seen:
                raise hidden
            version = seen[-1]
        else:
            version = ref.version
        rec = self._record(name, version)
        if rec is None or team not in rec["readers"]:
            raise hidden
        if rec["readers"][team] == "revoked":
            raise AccessError(f"team {team}'s access to {name}@{version} was revoked by its owner")
        return rec

    def push(
        self,
        adapter: AdapterPayload,
        *,
        team: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        share_with: Iterable[str] = (),
    ) -> AdapterRef:
        """Store ``adapter`` as the next version (readers as in the vault)."""
        team = self._acting(team)
        name = check_name(adapter.name)
        with self._lock:
            for other in self.root.iterdir():
                if other.name != name and collision_key(other.name) == collision_key(name):
                    raise ValidationError(
                        f"adapter name {name!r} collides with existing {other.name!r} "
                        "(names differ only by case): use the existing name or another"
                    )
            info = self._name_info(name) or {"owner": team, "last_version": 0}
            if info["owner"] != team:
                raise AccessError(f"adapter {name!r} belongs to team {info['owner']!r}")
            versions = self._versions(name)
            readers = {team: "active"}
            if versions:
                prev = self._record(name, versions[-1])["readers"]
                readers |= {t: "active" for t, s in prev.items() if s == "active"}
            readers |= {check_team_name(t): "active" for t in share_with}
            version = info["last_version"] + 1
            record = {
                "name": name,
                "version": version,
                "publisher": team,
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "size": adapter.nbytes,
                "base_fingerprint": (metadata or {}).get("base_fingerprint"),
                "metadata": dict(metadata or {}),
                "files": {n: hashlib.sha256(b).hexdigest() for n, b in adapter.files.items()},
                "readers": readers,
            }
            final = self.root / name / str(version)
            tmp = self.root / name / f".{version}.{os.getpid()}.tmp"
            tmp.mkdir(parents=True)
            for fname, data in adapter.files.items():
                atomic_write(tmp / fname, data)
            atomic_write(tmp / "record.json", json.dumps(record, indent=1).encode())
            os.replace(tmp, final)
            atomic_write(
                self.root / name / "name.json",
                json.dumps(info | {"last_version": version}).encode(),
            )
        return AdapterRef(name, version)

    def pull(
        self, ref: AdapterRef, *, team: str | None = None, where: str = "cli"
    ) -> AdapterPayload:
        """Read a version and check every file's SHA-256."""
        team = self._acting(team)
        rec = self._resolve(ref, team)
        d = self.root / rec["name"] / str(rec["version"])
        files = {}
        for fname, digest in rec["files"].items():
            if fname not in (AdapterPayload.CONFIG, AdapterPayload.WEIGHTS):  # never a path
                raise IntegrityError(f"{d / 'record.json'} lists an unexpected file {fname!r}")
            data = (d / fname).read_bytes()
            if hashlib.sha256(data).hexdigest() != digest:
                raise IntegrityError(f"{d / fname} does not match its recorded SHA-256")
            files[fname] = data
        return AdapterPayload(rec["name"], files, rec["version"], rec)

    def list(self, *, team: str | None = None) -> list[AdapterRecord]:
        """Versions ``team`` may read."""
        team = self._acting(team)
        out = []
        for d in sorted(p for p in self.root.iterdir() if p.is_dir()):
            for v in self._versions(d.name):
                rec = self._record(d.name, v)
                if rec["readers"].get(team) == "active":
                    active = tuple(sorted(t for t, s in rec["readers"].items() if s == "active"))
                    out.append(
                        AdapterRecord(
                            name=rec["name"],
                            version=v,
                            team=rec["publisher"],
                            created=rec["created"],
                            size=rec["size"],
                            base_fingerprint=rec["base_fingerprint"],
                            shared_with=active,
                        )
                    )
        return out

    def _set_reader(self, ref: AdapterRef, team: str, other: str, state: str) -> list[int]:
        self._owned(ref.name, team)
        check_team_name(other)
        with self._lock:
            versions = self._versions(ref.name) if ref.version is None else [ref.version]
            if not versions or self._record(ref.name, versions[-1]) is None:
                raise UnknownNameError(f"no adapter {ref} in this store")
            for v in versions:
                rec = self._record(ref.name, v)
                if state == "active" or other in rec["readers"]:
                    rec["readers"][other] = state
                path = self.root / ref.name / str(v) / "record.json"
                atomic_write(path, json.dumps(rec, indent=1).encode())
        return versions

    def share(self, ref: AdapterRef, *, team: str | None = None, with_team: str) -> AdapterRef:
        """Add ``with_team`` to the read list of ``ref`` (every version when unversioned)."""
        versions = self._set_reader(ref, self._acting(team), with_team, "active")
        return AdapterRef(ref.name, versions[-1])

    def revoke(self, ref: AdapterRef, *, team: str | None = None, from_team: str) -> AdapterRef:
        """Mark ``from_team`` revoked on every version of ``ref.name`` (no re-encryption here)."""
        team = self._acting(team)
        if from_team == team:
            raise ValidationError("a team cannot revoke its own access: delete the adapter instead")
        versions = self._set_reader(AdapterRef(ref.name), team, from_team, "revoked")
        return AdapterRef(ref.name, versions[-1])

    def delete(self, ref: AdapterRef, *, team: str | None = None) -> None:
        """Remove a version or every version; version numbers are never reused."""
        self._owned(ref.name, self._acting(team))
        with self._lock:
            versions = self._versions(ref.name)
            if ref.version is not None:
                versions = [v for v in versions if v == ref.version]
            if not versions:
                raise UnknownNameError(f"no adapter {ref} in this store")
            for v in versions:
                d = self.root / ref.name / str(v)
                trash = d.with_name(f".{v}.deleted.{os.getpid()}")
                os.replace(d, trash)  # atomic disappearance, then cleanup
                shutil.rmtree(trash)
