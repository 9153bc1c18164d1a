"""The audit log records every action, chained by hash; edits and deletions are detected."""

from __future__ import annotations

import json

import pytest

from hub.errors import IntegrityError
from hub.testing.storage import sample_adapter
from hub.types import AdapterRef


@pytest.fixture
def logged(vault):
    ref = vault.push(sample_adapter("upper"))
    vault.share(ref, with_team="beta")
    vault.pull(ref, team="beta")
    vault.revoke(AdapterRef("upper"), from_team="beta")
    vault.delete(AdapterRef("upper", 1))
    return vault


def _lines(vault):
    return vault.audit.path.read_bytes().splitlines(keepends=True)


def test_every_action_is_recorded_with_actor_and_hash(logged):
    entries = logged.audit.entries()
    got = [(e["action"], e["actor"], e["ref"]) for e in entries]
    assert got == [
        ("push", "alpha", "upper@1"),
        ("share", "alpha", "upper@1"),
        ("pull", "beta", "upper@1"),
        ("revoke", "alpha", "upper"),  # the signed revoke record comes first
        ("pull", "alpha", "upper@1"),  # revoke reads the source version
        ("revoke-reencrypt", "alpha", "upper@2"),
        ("delete", "alpha", "upper@1"),
    ]
    assert all(len(e["object_sha256"]) in (0, 64) for e in entries)


def test_intact_log_verifies(logged):
    assert logged.audit.verify() == 7


def test_edited_entry_is_detected(logged):
    lines = _lines(logged)
    entry = json.loads(lines[2])
    entry["actor"] = "gamma"
    lines[2] = json.dumps(entry, sort_keys=True).encode() + b"\n"
    logged.audit.path.write_bytes(b"".join(lines))
    with pytest.raises(IntegrityError, match="entry 3 was edited"):
        logged.audit.verify()


def test_deleted_middle_entry_is_detected(logged):
    lines = _lines(logged)
    logged.audit.path.write_bytes(b"".join(lines[:3] + lines[4:]))
    with pytest.raises(IntegrityError, match="broken at entry 4"):
        logged.audit.verify()


def test_deleted_last_entry_is_detected(logged):
    logged.audit.path.write_bytes(b"".join(_lines(logged)[:-1]))
    with pytest.raises(IntegrityError, match="index recorded entry 7"):
        logged.audit.verify()


def test_rehashed_forgery_is_detected_by_the_index_head(logged):
    from plugins.vault.audit import entry_hash

    lines = _lines(logged)
    entries = [json.loads(x) for x in lines]
    entries[6]["actor"] = "gamma"
    entries[6]["hash"] = entry_hash(entries[6])
    logged.audit.path.write_bytes(
        b"".join(json.dumps(e, sort_keys=True).encode() + b"\n" for e in entries)
    )
    with pytest.raises(IntegrityError, match="rewritten"):
        logged.audit.verify()


def test_pull_of_a_tampered_payload_is_recorded_as_refused(vault):
    ref = vault.push(sample_adapter("upper"))
    with vault.index.read() as db:
        oid = vault.index.version_row(db, "upper", 1)["object_id"]
    key = f"objects/{oid}/payload"
    blob = bytearray(vault.blobs.get(key))
    blob[-1] ^= 1
    vault.blobs.put(key, bytes(blob))
    with pytest.raises(IntegrityError):
        vault.pull(ref)
    entries = vault.audit.entries()
    assert [(e["action"], e["ref"]) for e in entries] == [
        ("push", "upper@1"),
        ("pull", "upper@1"),  # the data key was released ...
        ("pull-refused", "upper@1"),  # ... but no byte was returned
    ]
    assert entries[2]["error"].startswith("payload chunk ")
    assert vault.audit.verify() == 3
