"""The tamper target: every change to one stored object is refused or harmless.

One small object (two 1 KiB chunks), shared by alpha with beta, is changed
in every way a writer of the vault could: one bit flipped at every byte
position of every stored file of it (payload, manifest, both wrapped keys,
the name's two signed records), truncation, files swapped with another
object's or between names, and edits of the index. After each change, a read
as alpha and as beta must either raise a qlora-hub error or return exactly
the adapter alpha published ("harmless": the signatures vouch for it); gamma,
never given access, must never get anything. Blobs live in memory here so
the sweep (about 25,000 reads) takes seconds.
"""

from __future__ import annotations

import sqlite3

import pytest

from hub import teams
from hub.errors import HubError
from hub.testing.storage import sample_adapter
from hub.types import AdapterRef
from plugins.vault import blobs
from plugins.vault.backend import Vault

UPPER = AdapterRef("upper")


class MemoryBlobs:
    """A BlobStore in a dict: no fsync, so thousands of rewrites take milliseconds."""

    stores: dict[str, dict[str, bytes]] = {}

    def __init__(self, url):
        self.url = url
        self.data = self.stores.setdefault(url, {})

    def put(self, key, data):
        self.data[blobs.check_key(key)] = bytes(data)

    def get(self, key):
        from hub.errors import IntegrityError

        if key not in self.data:
            raise IntegrityError(f"blob {key} is missing")
        return self.data[key]

    def exists(self, key):
        return key in self.data

    def delete(self, key):
        self.data.pop(key, None)

    def keys(self, prefix):
        return sorted(k for k in self.data if k.startswith(prefix))


@pytest.fixture
def swept(monkeypatch, tmp_path):
    """alpha's upper@1 (shared with beta) and lower@1, in an in-memory blob store.

    The teams use the classical suite (Ed25519, X25519): the same formats with
    64-byte signatures instead of 3,373, so every byte of the object can be
    swept in seconds. The hybrid halves are covered in test_tamper.py.
    """
    home = tmp_path / "home"
    for team in ("alpha", "beta", "gamma"):
        teams.create_team(home, team, passphrase=None, suite="classical")
    monkeypatch.setitem(blobs.BLOB_SCHEMES, "mem", MemoryBlobs)
    url = f"mem://{tmp_path.name}"
    vault = Vault(home / "storage" / "vault", team="alpha", chunk_size=1024, blob_url=url)
    small = sample_adapter("upper", r=1, hidden=64, layers=1)
    vault.push(small, share_with=["beta"])
    vault.push(sample_adapter("lower", 5, r=1, hidden=64, layers=1), share_with=["beta"])
    yield vault, small.files
    MemoryBlobs.stores.pop(url, None)


def _read(vault, team, ref=UPPER):
    """Everything a pull does except its audit entry (the sweep makes thousands)."""
    state, version, manifest, key = vault._opened(ref, team)
    return vault._decrypt(state, version, manifest, key)


def _outcome(vault, original, teams=("alpha", "beta")):
    """'refused' or 'harmless' for each team; anything else fails the test."""
    out = []
    for team in teams:
        try:
            files = _read(vault, team)
        except HubError as exc:
            assert "\n" not in str(exc)
            out.append("refused")
            continue
        assert files == original, f"{team} got bytes the signatures do not vouch for"
        out.append("harmless")
    return out


def _files_of(vault, name):
    state = vault.state(name)
    oid = state.versions[1].object_id
    parts = ("payload", "manifest", "keys/alpha", "keys/beta")
    keys = [f"objects/{oid}/{p}" for p in parts]
    return keys + vault.blobs.keys(f"names/{name}/")


def test_every_byte_flip_truncation_and_swap_is_refused_or_harmless(swept):
    vault, original = swept
    store = vault.blobs.data
    upper, lower = _files_of(vault, "upper"), _files_of(vault, "lower")
    assert len(upper) == 6  # payload, manifest, two wrapped keys, claim and publish records
    counts = {"refused": 0, "harmless": 0}
    changes, reads = 0, [0]

    def check(key, data):
        nonlocal changes
        saved, store[key], changes = store[key], data, changes + 1
        # Payload and manifest are read alike by every team once its key is unwrapped, and
        # a wrapped key only by its team: one read covers those; records are read by both.
        who = {"alpha": ("alpha",), "beta": ("beta",)}.get(key.rsplit("/", 1)[-1])
        if key.endswith(("payload", "manifest")):
            who = ("alpha",)
        try:
            for result in _outcome(vault, original, who or ("alpha", "beta")):
                counts[result] += 1
                reads[0] += 1
        finally:
            store[key] = saved

    flips = 0
    for key in upper:
        blob = store[key]
        for pos in range(len(blob)):  # every byte; the bit varies with the position
            changed = bytearray(blob)
            changed[pos] ^= 1 << (pos % 8)
            check(key, bytes(changed))
            flips += 1
        for cut in [*range(0, len(blob), 97), len(blob) - 1]:
            check(key, blob[:cut])
    for mine, theirs in zip(upper, lower, strict=True):  # each file from the other object
        check(mine, store[theirs])
    check(upper[0], store[upper[1]])  # payload and manifest exchanged
    check(upper[2], store[upper[3]])  # alpha's wrapped key replaced by beta's
    check(upper[4], store[upper[5]])  # records out of order
    store["names/Not A Name/00000000"] = store[upper[4]]  # a folder no name can have
    store["names/upper2/00000000"] = store[upper[4]]  # upper's claim under another name
    assert [r.name for r in vault.list(team="beta")] == ["lower", "upper"]
    assert _outcome(vault, original) == ["harmless", "harmless"]  # every change was undone
    assert flips == sum(len(store[k]) for k in upper) > 3000
    assert counts["refused"] + counts["harmless"] == reads[0] > changes  # 100%: nothing else
    print(f"sweep: {changes} changes, {reads[0]} reads: {counts}")


INDEX_EDITS = [
    "UPDATE names SET owner = 'beta'",
    "UPDATE names SET owner = 'gamma'",
    "UPDATE names SET last_version = 0",
    "DELETE FROM names",
    "UPDATE versions SET publisher = 'gamma'",
    "UPDATE versions SET version = version + 1",
    "UPDATE versions SET manifest_sha256 = '" + "0" * 64 + "'",
    "DELETE FROM versions WHERE name = 'upper'; UPDATE versions SET name = 'upper'",
    "UPDATE versions SET name = 'upper', version = 2 WHERE name = 'lower'",
    "DELETE FROM versions",
    "INSERT INTO grants SELECT object_id, 'gamma', 'active' FROM versions",
    "UPDATE grants SET state = 'revoked'",
    "UPDATE grants SET team = 'gamma' WHERE team = 'beta'",
    "DELETE FROM grants",
    "UPDATE audit_head SET seq = 1, size = 0",
]


def test_every_index_edit_is_refused_or_harmless(swept):
    vault, original = swept
    path = vault.root / "index.sqlite"
    pristine = sqlite3.connect(":memory:")
    with sqlite3.connect(path) as live:
        live.backup(pristine)
    for edit in INDEX_EDITS:
        db = sqlite3.connect(path)
        pristine.backup(db)  # each edit starts from the index as the pushes left it
        db.executescript(edit)
        db.close()
        assert _outcome(vault, original) == ["harmless", "harmless"], edit  # it decides nothing
        assert vault.pull(UPPER, team="beta").files == original, edit
        with pytest.raises(HubError):
            vault.pull(UPPER, team="gamma")
        assert [r.name for r in vault.list(team="gamma")] == [], edit
        assert {(r.name, r.version, r.team) for r in vault.list(team="beta")} == {
            ("lower", 1, "alpha"),
            ("upper", 1, "alpha"),
        }, edit
