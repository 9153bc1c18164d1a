"""Review attacks on the signed sharing state that the first round of tests did not try.

The attacker is team beta: trusted by alpha, able to write anything in the
shared vault folder, but not the owner of alpha's names. Each test shows what
beta did and what alpha must see instead.
"""

from __future__ import annotations

import hashlib
import os
import shutil

import pytest

from hub.errors import HubError, IntegrityError
from hub.grants import claim_record, sign_record
from hub.testing.storage import sample_adapter
from hub.types import AdapterRef
from plugins.vault import objects
from plugins.vault.backend import Vault


def _beta_claims(v, folder, name):
    """beta writes a claim record it signed itself, naming ``name``, under ``folder``."""
    beta = v["beta"].identity("beta", "sign")
    record = claim_record(name, beta.public)
    v["beta"].blobs.put(f"names/{folder}/00000000", sign_record(beta, record))


def test_records_copied_under_another_name_are_not_listed_twice(world):
    """beta copies alpha's records of `upper` into `names/zzz/`: the copy is no name."""
    root, _, v = world
    v["alpha"].push(sample_adapter("upper", 1))
    src = root / "blobs" / "names" / "upper"
    shutil.copytree(src, src.with_name("zzz"))
    assert [(r.name, r.version) for r in v["alpha"].list()] == [("upper", 1)]
    assert v["alpha"].reindex()["names"] == 1


@pytest.mark.parametrize("bad_name", [5, "../x", "Upper"])
def test_a_claim_whose_name_is_not_its_folder_breaks_no_listing_or_reindex(world, bad_name):
    """beta (trusted) signs a claim naming something else than the folder it sits in:
    a number, a path, or a case look-alike of alpha's `upper`."""
    root, _, v = world
    v["alpha"].push(sample_adapter("upper", 1))
    _beta_claims(v, "zzz", bad_name)
    assert [(r.name, r.team) for r in v["alpha"].list()] == [("upper", "alpha")]
    report = v["alpha"].reindex()
    assert report["names"] == 1
    assert "zzz" in report["skipped"]
    assert "\n" not in report["skipped"]["zzz"]


def test_cached_manifest_is_still_bound_to_the_name_and_owner(world):
    """beta owns `evil` and signs a publish record pointing at alpha's upper@1 object.

    A fresh reader refuses it (alpha's manifest does not verify under beta's key);
    a long-lived reader that already verified upper@1 (a server) must refuse it too,
    not serve alpha's weights under beta's name."""
    root, _, v = world
    v["alpha"].push(sample_adapter("upper", 1))
    grant = v["alpha"].state("upper").versions[1]
    beta = v["beta"].identity("beta", "sign")
    state = v["beta"].records.claim("evil", beta)
    v["beta"].records.append(
        state,
        beta,
        "publish",
        version=1,
        object_id=grant.object_id,
        manifest_sha256=grant.manifest_sha256,
        readers=["alpha", "beta"],
    )
    server = v["alpha"]
    assert server.pull(AdapterRef("upper")).version == 1  # caches upper's manifest
    with pytest.raises(IntegrityError):
        server.pull(AdapterRef("evil", 1))


def _beta_publishes_raw(v, name, manifest_edit):
    """beta bypasses qlora-hub: its own object with a manifest it shaped, readers alpha."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    beta = v["beta"].identity("beta", "sign")
    payload = sample_adapter(name, 7)
    oid, key = os.urandom(16), AESGCM.generate_key(bit_length=256)
    plain = b"".join(payload.files[n] for n in sorted(payload.files))
    v["beta"].blobs.put(
        f"objects/{oid.hex()}/payload", objects.encrypt_payload(plain, key, oid, 1, 4096)
    )
    for t in ("alpha", "beta"):
        pub = v["beta"]._public_of(t)
        v["beta"].blobs.put(f"objects/{oid.hex()}/keys/{t}", objects.wrap_key(pub, key, oid, 1))
    manifest = {
        "format": objects.MANIFEST_FORMAT,
        "name": name,
        "version": 1,
        "object_id": oid.hex(),
        "publisher": "beta",
        "publisher_fingerprint": beta.public.fingerprint,
        "base_fingerprint": None,
        "files": objects.file_entries(payload.files),
        "metadata": {},
        "created": "2026-01-01T00:00:00+00:00",
        "payload": {"cipher": "AES-256-GCM", "chunk_size": 4096},
        "readers": ["alpha", "beta"],
    }
    manifest_edit(manifest)
    mblob = objects.sign_manifest(beta, manifest)
    v["beta"].blobs.put(f"objects/{oid.hex()}/manifest", mblob)
    state = v["beta"].records.claim(name, beta)
    v["beta"].records.append(
        state,
        beta,
        "publish",
        version=1,
        object_id=oid.hex(),
        manifest_sha256=hashlib.sha256(mblob).hexdigest(),
        readers=["alpha", "beta"],
    )


_BAD_MANIFESTS = {
    "no created": lambda m: m.pop("created"),
    "files not a list": lambda m: m.update(files=5),
    "file entry not a dict": lambda m: m.update(files=[5]),
    "file size missing": lambda m: [f.pop("size") for f in m["files"]],
    "file name not a string": lambda m: m["files"][0].update(name=["x"]),
}


@pytest.mark.parametrize("edit", sorted(_BAD_MANIFESTS))
def test_a_trusted_teams_malformed_manifest_is_a_one_line_refusal(world, edit):
    """beta signs a manifest of the wrong shape and lists alpha as a reader: alpha's
    listing skips it and its pull is a one-line HubError, never a KeyError."""
    root, _, v = world
    v["alpha"].push(sample_adapter("upper", 1))
    _beta_publishes_raw(v, "junk", _BAD_MANIFESTS[edit])
    assert [(r.name, r.version) for r in v["alpha"].list()] == [("upper", 1)]
    with pytest.raises(HubError) as info:
        v["alpha"].pull(AdapterRef("junk"))
    assert "\n" not in str(info.value)
    assert v["alpha"].reindex()["names"] == 2


def test_a_deeply_nested_folder_in_the_store_is_a_one_line_refusal(world):
    """beta nests 1,200 folders under `names/`: listing refuses it in one line
    (it was a RecursionError, or too many open files, from the store's walk)."""
    root, _, v = world
    v["alpha"].push(sample_adapter("upper", 1))
    top = root / "blobs" / "names"
    chain = [top.joinpath(*["d"] * k) for k in range(1, 1201)]  # 2,400 characters at most
    for folder in chain:
        folder.mkdir()
    try:
        with pytest.raises(HubError) as info:
            v["alpha"].list()
        assert "\n" not in str(info.value)
    finally:  # pytest's recursive clean-up would hit the recursion limit on this tree
        for folder in reversed(chain):
            os.rmdir(folder)


def test_many_planted_records_are_refused_before_they_are_all_read(world):
    """beta hard-links one 64 KiB junk file as records 1..1000 of alpha's name (no disk
    cost): a read stops at the first bad record instead of loading 64 MB first."""
    import tracemalloc

    from hub.grants import MAX_RECORD_BYTES

    root, _, v = world
    ref = v["alpha"].push(sample_adapter("upper", 1))
    folder = root / "blobs" / "names" / "upper"
    for key in sorted(folder.iterdir())[1:]:
        key.unlink()  # keep alpha's claim, replace the rest
    junk = root / "junk"
    junk.write_bytes(b"x" * MAX_RECORD_BYTES)
    for seq in range(1, 1001):
        os.link(junk, folder / f"{seq:08d}")
    fresh = Vault(root, home=root.parent / "beta", team="beta")  # a home with no pin
    tracemalloc.start()
    try:
        with pytest.raises(IntegrityError, match="corrupt"):
            fresh.state("upper")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"{peak:,} bytes allocated"
    assert ref.version == 1


def _sql(root, statement, *args):
    import sqlite3

    db = sqlite3.connect(root / "index.sqlite")
    with db:
        db.execute(statement, args)
    db.close()


def test_a_huge_last_version_in_the_index_does_not_break_the_owners_pushes(world):
    """beta sets the index's last_version to 2**32 - 1: alpha's next push still gets the
    next number the signed records allow (the index is a cache, not an input)."""
    root, _, v = world
    v["alpha"].push(sample_adapter("upper", 1))
    _sql(root, "UPDATE names SET last_version = 4294967295")
    assert v["alpha"].push(sample_adapter("upper", 2)).version == 2
    assert v["alpha"].pull(AdapterRef("upper")).files == sample_adapter("upper", 2).files


def test_a_foreign_file_in_an_object_folder_does_not_break_delete(world):
    """beta drops `README` (no valid blob key) into alpha's object folder: alpha's delete
    still removes the version and every blob of it, in one piece."""
    root, _, v = world
    ref = v["alpha"].push(sample_adapter("upper", 1))
    oid = v["alpha"].state("upper").versions[1].object_id
    (root / "blobs" / "objects" / oid / "README").write_text("hi")
    v["alpha"].delete(ref)
    assert v["alpha"].state("upper").live() == []
    assert v["alpha"].blobs.keys(f"objects/{oid}/") == []


class _SwapsOnReread:
    """The vault folder as beta changes it while alpha reads: every read of ``key`` after
    the first returns ``forged`` (the window between the pin check and the replay)."""

    def __init__(self, inner, key, forged):
        self.inner, self.key, self.forged, self.reads = inner, key, forged, 0
        self.url = inner.url

    def keys(self, prefix):
        return self.inner.keys(prefix)

    def get(self, key, limit=None):
        if key == self.key:
            self.reads += 1
            if self.reads > 1:
                return self.forged
        return self.inner.get(key, limit=limit)


def test_the_pinned_record_cannot_be_swapped_between_pin_check_and_replay(world):
    """A home skips the signature of records it pinned; beta swaps the pinned record for
    one granting itself access right after the pin check: the checked bytes are used."""
    from hub.grants import digest

    root, homes, v = world
    v["alpha"].push(sample_adapter("upper", 1))
    grant = v["alpha"].state("upper").versions[1]
    claim = v["alpha"].blobs.get("names/upper/00000000")
    record = {
        "format": "qlora-hub-record/1",
        "name": "upper",
        "seq": 1,
        "prev": digest(claim),
        "owner": "alpha",
        "action": "publish",
        "time": "2026-01-01T00:00:00+00:00",
        "version": 1,
        "object_id": grant.object_id,
        "manifest_sha256": grant.manifest_sha256,
        "readers": ["alpha", "beta"],
    }
    forged = sign_record(v["beta"].identity("beta", "sign"), record)
    fresh = Vault(root, home=homes["alpha"], team="alpha")  # a new process: pin from disk
    fresh.records.blobs = _SwapsOnReread(fresh.blobs, "names/upper/00000001", forged)
    assert fresh.state("upper").readers(1) == {"alpha"}


_TRUNCATE_WHILE_MAPPED = """
import os, sys
from pathlib import Path
from hub.types import AdapterRef
from plugins.vault.backend import Vault

root, home = Path(sys.argv[1]), Path(sys.argv[2])
vault = Vault(root, home=home, team="alpha")
inner_reader = vault.blobs.reader

def reader(key):  # beta truncates the payload in place right after alpha opened it
    opened = inner_reader(key)
    os.truncate(vault.blobs.root / key, 100)
    return opened

vault.blobs.reader = reader
try:
    files = vault.pull(AdapterRef("upper")).files
    print("ok", sum(len(b) for b in files.values()))
except Exception as exc:
    print(type(exc).__name__, exc)
"""


def test_a_payload_truncated_during_a_pull_is_harmless_not_a_crash(world):
    """The payload is read chunk by chunk, not mapped: truncating it in place mid-pull
    (SIGBUS on a mapped file) leaves the reader alive with a one-line refusal."""
    import subprocess
    import sys

    root, homes, v = world
    v["alpha"].push(sample_adapter("upper", 1, hidden=1024))
    child = subprocess.run(
        [sys.executable, "-c", _TRUNCATE_WHILE_MAPPED, str(root), str(homes["alpha"])],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 0, f"killed by signal {-child.returncode}: {child.stderr[-300:]}"
    assert child.stdout.startswith("IntegrityError payload is shorter than its header says")


class _ListsPlantedKey:
    """A blob store that lists every key it holds, valid or not, as S3 does: beta put an
    object named `objects/<id>/README` in the bucket."""

    def __init__(self, inner, planted):
        self.inner, self.planted, self.url = inner, planted, inner.url

    def __getattr__(self, attr):
        return getattr(self.inner, attr)

    def keys(self, prefix):
        extra = [self.planted] if self.planted.startswith(prefix) else []
        return sorted(self.inner.keys(prefix) + extra)


def test_a_listed_key_no_blob_can_have_does_not_break_delete_on_any_store(world):
    root, _, v = world
    ref = v["alpha"].push(sample_adapter("upper", 1))
    oid = v["alpha"].state("upper").versions[1].object_id
    v["alpha"].blobs = _ListsPlantedKey(v["alpha"].blobs, f"objects/{oid}/README")
    v["alpha"].delete(ref)
    assert v["alpha"].state("upper").live() == []
    assert v["alpha"].blobs.inner.keys(f"objects/{oid}/") == []
