"""The vault's SQLite index: a cache of names, versions and grants, and the audit head.

Nothing here decides anything: who owns a name and who may read which
version come from the owners' signed records (:mod:`hub.grants`), and
``Vault.reindex`` rebuilds ``names``, ``versions`` and ``grants`` from them,
so a deleted, rolled-back or edited index can neither grant nor un-revoke.
What the index does hold authoritatively is the audit log's head, and
``names.last_version`` reserves version numbers between a push's two write
transactions. Every write is one ``BEGIN IMMEDIATE`` transaction, which
serializes writers (and appenders of signed records) across processes. No
secret ever goes in here: only names, ids, hashes and team names.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hub.names import collision_key

_SCHEMA = """
CREATE TABLE IF NOT EXISTS names (
    name_key TEXT PRIMARY KEY,       -- casefolded name: case collisions are one row
    name TEXT NOT NULL,
    owner TEXT NOT NULL,
    last_version INTEGER NOT NULL    -- highest version ever reserved; never reused
);
CREATE TABLE IF NOT EXISTS versions (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    object_id TEXT NOT NULL UNIQUE,
    publisher TEXT NOT NULL,
    created TEXT NOT NULL,
    size INTEGER NOT NULL,
    base_fingerprint TEXT,
    manifest_sha256 TEXT NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS grants (
    object_id TEXT NOT NULL,
    team TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('active', 'revoked')),
    PRIMARY KEY (object_id, team)
);
CREATE TABLE IF NOT EXISTS audit_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL,
    size INTEGER NOT NULL            -- byte length of the log up to that entry
);
"""


class Index:
    """Thin wrapper over one SQLite file (one connection per process)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db: sqlite3.Connection | None = None
        self._pid = 0
        self._lock = threading.RLock()
        with self._lock:
            self._connect().executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        # One connection per process, reopened after fork; closing it after every
        # operation would checkpoint the WAL each time (two fsyncs per call).
        if self._db is None or self._pid != os.getpid():
            db = sqlite3.connect(
                self.path, timeout=60, isolation_level=None, check_same_thread=False
            )
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            self._db, self._pid = db, os.getpid()
        return self._db

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One exclusive write transaction (commits on success, rolls back on error).

        ``BEGIN IMMEDIATE`` takes SQLite's write lock, serializing writers across
        processes; threads of one process share the connection under a lock.
        """
        with self._lock:
            db = self._connect()
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: every query inside sees one snapshot."""
        with self._lock:
            db = self._connect()
            db.execute("BEGIN")
            try:
                yield db
            finally:
                db.execute("COMMIT")

    # -- the cache, written by the backend -------------------------------------------
    def last_version(self, db: sqlite3.Connection, name: str) -> int:
        """The highest version number reserved for ``name`` (0: none)."""
        row = self.name_row(db, collision_key(name))
        return int(row["last_version"]) if row else 0

    def reserve(self, db: sqlite3.Connection, name: str, owner: str, version: int) -> None:
        """Record ``version`` as reserved for ``name`` (owned by ``owner``)."""
        db.execute(
            "INSERT INTO names VALUES (?, ?, ?, ?) ON CONFLICT(name_key) DO UPDATE SET "
            "name = excluded.name, owner = excluded.owner, last_version = excluded.last_version",
            (collision_key(name), name, owner, version),
        )

    def add_version(
        self,
        db: sqlite3.Connection,
        manifest: dict[str, Any],
        size: int,
        manifest_sha256: str,
        readers: list[str],
    ) -> None:
        """Cache one published version and its readers."""
        oid = manifest["object_id"]
        db.execute(
            "INSERT OR REPLACE INTO versions VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                manifest["name"],
                manifest["version"],
                oid,
                manifest["publisher"],
                manifest["created"],
                size,
                manifest.get("base_fingerprint"),
                manifest_sha256,
            ),
        )
        db.executemany(
            "INSERT OR REPLACE INTO grants VALUES (?, ?, 'active')", [(oid, t) for t in readers]
        )

    def set_grant(self, db: sqlite3.Connection, object_id: str, team: str, state: str) -> None:
        """Cache ``team``'s grant on one object as 'active' or 'revoked'."""
        db.execute("INSERT OR REPLACE INTO grants VALUES (?, ?, ?)", (object_id, team, state))

    def remove_version(self, db: sqlite3.Connection, object_id: str) -> None:
        """Drop a deleted version from the cache."""
        db.execute("DELETE FROM versions WHERE object_id = ?", (object_id,))
        db.execute("DELETE FROM grants WHERE object_id = ?", (object_id,))

    def rebuild(self, db: sqlite3.Connection, states: list[tuple[Any, dict[int, Any]]]) -> None:
        """Replace names, versions and grants with what ``(NameState, {version: manifest})``
        pairs prove (see ``Vault.reindex``)."""
        for table in ("names", "versions", "grants"):
            db.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed table names
        for state, manifests in states:
            self.reserve(db, state.name, state.owner, state.last_version)
            for version, manifest in manifests.items():
                grant = state.versions[version]
                size = sum(f["size"] for f in manifest["files"])
                self.add_version(db, manifest, size, grant.manifest_sha256, sorted(grant.readers))
                for team in grant.ever - grant.readers:
                    self.set_grant(db, grant.object_id, team, "revoked")

    # -- queries (inspection and tests; decisions use the signed records) -------------
    def name_row(self, db: sqlite3.Connection, name_key: str) -> sqlite3.Row | None:
        """The ``names`` row for a casefolded name."""
        return db.execute("SELECT * FROM names WHERE name_key = ?", (name_key,)).fetchone()

    def version_row(self, db: sqlite3.Connection, name: str, version: int) -> sqlite3.Row | None:
        """One committed version."""
        return db.execute(
            "SELECT * FROM versions WHERE name = ? AND version = ?", (name, version)
        ).fetchone()

    def grants(self, db: sqlite3.Connection, object_id: str) -> dict[str, str]:
        """team -> 'active' | 'revoked' for one object."""
        rows = db.execute("SELECT team, state FROM grants WHERE object_id = ?", (object_id,))
        return {r["team"]: r["state"] for r in rows}

    def versions_of(self, db: sqlite3.Connection, name: str) -> list[sqlite3.Row]:
        """Every committed version of ``name``, oldest first."""
        return db.execute(
            "SELECT * FROM versions WHERE name = ? ORDER BY version", (name,)
        ).fetchall()

    def visible(self, db: sqlite3.Connection, team: str) -> list[dict[str, Any]]:
        """Versions ``team`` holds an active grant for, with their active readers."""
        rows = db.execute(
            "SELECT v.* FROM versions v JOIN grants g ON g.object_id = v.object_id "
            "WHERE g.team = ? AND g.state = 'active' ORDER BY v.name, v.version",
            (team,),
        ).fetchall()
        out = []
        for r in rows:
            readers = sorted(t for t, s in self.grants(db, r["object_id"]).items() if s == "active")
            out.append(dict(r) | {"shared_with": tuple(readers)})
        return out
