"""Example third-party storage backend, walked through in docs/writing-plugins.md.

``dirstore`` keeps each adapter version as a plain directory. It only
stores: the core (``hub.adapters``) checks names, validates adapters, runs
``validate_adapter`` on store and load, fires ``adapter_published`` and
``adapter_loaded`` once, and resolves the acting team before calling it.
Because it offers a record store (``records``), the core also keeps who owns
each name and who may read which version as owner-signed records there
(:mod:`hub.sharing`): the read lists and owner below are only a mirror, and
a writer of the folder who edits them grants nothing. It imports nothing
from ``plugins.*``, and passes ``hub.testing.StorageBackendContract``. Layout::

    <root>/.lock                         one writer at a time (flock)
    <root>/<name>/name.json              owner and the highest version ever used
    <root>/<name>/<version>/record.json  publisher, metadata, sha256 per file, readers
    <root>/<name>/<version>/<files>      the adapter's files as pushed
    <root>/.records/...                  the core's signed records and manifests
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hub import hookimpl
from hub.atomic import atomic_write
from hub.errors import AccessError, IntegrityError, UnknownNameError, ValidationError
from hub.names import check_name, collision_key
from hub.record_files import FolderRecords
from hub.types import AdapterPayload, AdapterRecord, AdapterRef

FILES = (AdapterPayload.CONFIG, AdapterPayload.WEIGHTS)


class DirStore:
    """Adapter versions as plain directories, with per-version read lists."""

    name = "dirstore"
    description = "Example backend: adapter versions as plain directories (not encrypted)"
    capabilities: frozenset[str] = frozenset()  # claims nothing: not signed, not encrypted

    def __init__(
        self, root: Path, *, settings: Any = None, home: Path | None = None, **_options: Any
    ) -> None:
        # options the core passes (hub, team, passphrase) are not needed here
        configured = settings.get("dirstore.root") if settings is not None else ""
        self.root = Path(configured or root)
        self.root.mkdir(parents=True, exist_ok=True)
        # where team keys live (the core signs with them): <home>/storage/dirstore by default
        self.home = Path(home) if home else Path(root).parent.parent

    @property
    def records(self) -> FolderRecords:
        """Where the core keeps the signed sharing records (see :mod:`hub.sharing`)."""
        return FolderRecords(self.root / ".records")

    # -- records on disk ------------------------------------------------------------------
    @contextmanager
    def _locked(self) -> Iterator[None]:
        """One writer at a time, across threads and processes (a fresh fd per holder)."""
        with open(self.root / ".lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _read_json(self, path: Path) -> dict[str, Any] | None:
        return json.loads(path.read_bytes()) if path.is_file() else None

    def _record(self, name: str, version: int) -> dict[str, Any] | None:
        return self._read_json(self.root / name / str(version) / "record.json")

    def _versions(self, name: str) -> list[int]:
        d = self.root / name
        return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []

    def _write_record(self, rec: dict[str, Any]) -> None:
        path = self.root / rec["name"] / str(rec["version"]) / "record.json"
        atomic_write(path, json.dumps(rec, indent=1).encode())

    def _owner_of(self, name: str, team: str) -> None:
        info = self._read_json(self.root / check_name(name) / "name.json")
        if info is None:
            raise UnknownNameError(f"no adapter named {name!r} in this store")
        if info["owner"] != team:
            raise AccessError(f"adapter {name!r} belongs to team {info['owner']!r}")

    # -- the StorageBackend protocol ------------------------------------------------------
    def push(
        self,
        adapter: AdapterPayload,
        *,
        team: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        share_with: Iterable[str] = (),
    ) -> AdapterRef:
        """Store the next version; readers are the publisher, the latest version's
        active readers (never a revoked one) and ``share_with``."""
        name = check_name(adapter.name)
        with self._locked():
            for other in self.root.iterdir():
                if other.name != name and collision_key(other.name) == collision_key(name):
                    raise ValidationError(
                        f"adapter name {name!r} collides with existing {other.name!r} "
                        "(names differ only by case): use the existing name or another"
                    )
            info = self._read_json(self.root / name / "name.json") or {"owner": team}
            if info["owner"] != team:
                raise AccessError(f"adapter {name!r} belongs to team {info['owner']!r}")
            versions = self._versions(name)
            readers = {team: "active"}
            if versions:
                prev = self._record(name, versions[-1])["readers"]
                readers |= {t: "active" for t, s in prev.items() if s == "active"}
            readers |= {t: "active" for t in share_with}
            version = info.get("last_version", 0) + 1
            tmp = self.root / name / f".{version}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            for fname in FILES:
                atomic_write(tmp / fname, adapter.files[fname])
            meta = dict(metadata or {})
            record = {
                "name": name,
                "version": version,
                "publisher": team,
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "size": adapter.nbytes,
                "base_fingerprint": meta.get("base_fingerprint"),
                "metadata": meta,
                "files": {f: hashlib.sha256(adapter.files[f]).hexdigest() for f in FILES},
                "readers": readers,
            }
            atomic_write(tmp / "record.json", json.dumps(record, indent=1).encode())
            os.replace(tmp, self.root / name / str(version))
            info = {"owner": team, "last_version": version}
            atomic_write(self.root / name / "name.json", json.dumps(info).encode())
        return AdapterRef(name, version)

    def pull(
        self, ref: AdapterRef, *, team: str | None = None, where: str = "cli"
    ) -> AdapterPayload:
        """The version ``team`` may read (latest readable when unversioned), hashes checked."""
        name = check_name(ref.name)
        hidden = UnknownNameError(f"no adapter {ref} visible to team {team!r}")
        if ref.version is None:
            readable = [v for v in self._versions(name) if team in self._record(name, v)["readers"]]
            if not readable:
                raise hidden
            version = readable[-1]
        else:
            version = ref.version
        rec = self._record(name, version)
        if rec is None or team not in rec["readers"]:
            raise hidden
        if rec["readers"][team] != "active":
            raise AccessError(f"team {team}'s access to {name}@{version} was revoked")
        files = {}
        for fname in FILES:
            data = (self.root / name / str(version) / fname).read_bytes()
            if hashlib.sha256(data).hexdigest() != rec["files"][fname]:
                raise IntegrityError(f"{name}@{version}: {fname} does not match its sha256")
            files[fname] = data
        return AdapterPayload(name, files, version, rec)

    def list(self, *, team: str | None = None) -> list[AdapterRecord]:
        """Every version ``team`` holds an active grant for."""
        out = []
        for d in sorted(p for p in self.root.iterdir() if p.is_dir()):
            for v in self._versions(d.name):
                rec = self._record(d.name, v)
                if rec["readers"].get(team) == "active":
                    active = tuple(sorted(t for t, s in rec["readers"].items() if s == "active"))
                    out.append(
                        AdapterRecord(
                            rec["name"],
                            v,
                            rec["publisher"],
                            rec["created"],
                            rec["size"],
                            rec["base_fingerprint"],
                            active,
                        )  # fmt: skip
                    )
        return out

    def share(self, ref: AdapterRef, *, team: str | None = None, with_team: str) -> AdapterRef:
        """Add ``with_team`` to one version's read list, or every version's when unversioned."""
        self._owner_of(ref.name, team)
        with self._locked():
            versions = self._versions(ref.name) if ref.version is None else [ref.version]
            recs = [self._record(ref.name, v) for v in versions]
            if not recs or None in recs:
                raise UnknownNameError(f"no adapter {ref} in this store")
            for rec in recs:
                rec["readers"][with_team] = "active"
                self._write_record(rec)
        return AdapterRef(ref.name, versions[-1])

    def revoke(self, ref: AdapterRef, *, team: str | None = None, from_team: str) -> AdapterRef:
        """Mark ``from_team`` revoked on every version (later pushes never re-add it)."""
        self._owner_of(ref.name, team)
        with self._locked():
            versions = self._versions(ref.name)
            if not versions:
                raise UnknownNameError(f"no adapter {ref} in this store")
            for v in versions:
                rec = self._record(ref.name, v)
                if from_team in rec["readers"]:
                    rec["readers"][from_team] = "revoked"
                    self._write_record(rec)
        return AdapterRef(ref.name, versions[-1])

    def delete(self, ref: AdapterRef, *, team: str | None = None) -> None:
        """Remove one version or all; version numbers are never reused (name.json keeps them)."""
        self._owner_of(ref.name, team)
        with self._locked():
            versions = self._versions(ref.name)
            if ref.version is not None:
                versions = [v for v in versions if v == ref.version]
            if not versions:
                raise UnknownNameError(f"no adapter {ref} in this store")
            for v in versions:
                shutil.rmtree(self.root / ref.name / str(v))


@hookimpl
def register_storage(register):
    register(DirStore)


@hookimpl
def register_settings(register):
    register("dirstore", {"root": ("", str)})  # "" means <home>/storage/dirstore
