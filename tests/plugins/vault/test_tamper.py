"""Tampering with any region of a stored object is a clear error and never returns data."""

from __future__ import annotations

import base64
import json
import struct

import pytest

from hub.errors import HubError, IntegrityError
from hub.testing.storage import sample_adapter
from hub.types import AdapterRef
from plugins.vault import objects

HEADER = objects._HEADER.size
STEP = 1024 + objects.NONCE + objects.TAG  # one full chunk in the payload blob


@pytest.fixture
def stored(vault):
    """upper@1 shared with beta: a payload of several 1 KiB chunks and two wrapped keys."""
    ref = vault.push(sample_adapter("upper"), share_with=["beta"])
    with vault.index.read() as db:
        oid = vault.index.version_row(db, "upper", 1)["object_id"]
    return ref, oid


def _rewrite(vault, oid, part, change):
    key = f"objects/{oid}/{part}"
    vault.blobs.put(key, change(bytearray(vault.blobs.get(key))))


def _flip(pos):
    def change(blob):
        blob[pos] ^= 0x01
        return bytes(blob)

    return change


def _chunk_count(vault, oid):
    return objects.PayloadHeader.unpack(vault.blobs.get(f"objects/{oid}/payload")).chunks


def _assert_refused(vault, ref, team="alpha", error=IntegrityError):
    with pytest.raises(error) as info:
        vault.pull(ref, team=team)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("pos", range(0, HEADER, 3))
def test_header_bit_flip_is_refused(vault, stored, pos):
    ref, oid = stored
    _rewrite(vault, oid, "payload", _flip(pos))
    _assert_refused(vault, ref)


@pytest.mark.parametrize("where", ["nonce", "ciphertext", "tag"])
def test_bit_flip_in_every_chunk_is_refused(vault, stored, where):
    ref, oid = stored
    n = _chunk_count(vault, oid)
    assert n >= 5
    original = vault.blobs.get(f"objects/{oid}/payload")
    for i in range(n):
        start = HEADER + i * STEP
        end = len(original) if i == n - 1 else start + STEP
        pos = {"nonce": start + 5, "ciphertext": start + objects.NONCE + 7, "tag": end - 3}[where]
        vault.blobs.put(f"objects/{oid}/payload", original)
        _rewrite(vault, oid, "payload", _flip(pos))
        with pytest.raises(IntegrityError, match=f"chunk {i} failed authentication"):
            vault.pull(ref)


@pytest.mark.parametrize("team", ["alpha", "beta"])
def test_bit_flip_in_each_wrapped_key_is_refused(vault, stored, team):
    ref, oid = stored

    def change(blob):
        body = json.loads(blob)
        wrapped = bytearray(base64.b64decode(body["wrapped"]))
        wrapped[len(wrapped) // 2] ^= 0x01
        body["wrapped"] = base64.b64encode(wrapped).decode()
        return objects.canonical(body)

    _rewrite(vault, oid, f"keys/{team}", change)
    _assert_refused(vault, ref, team=team)


def test_raw_byte_flip_in_wrapped_key_blob_is_refused(vault, stored):
    ref, oid = stored
    _rewrite(vault, oid, "keys/alpha", _flip(3))
    _assert_refused(vault, ref, error=HubError)


@pytest.mark.parametrize("field", ["name", "version", "publisher", "sha256", "metadata"])
def test_edited_manifest_field_is_refused(vault, stored, field):
    ref, oid = stored

    def change(blob):
        body = json.loads(blob)
        m = body["manifest"]
        if field == "version":
            m["version"] = 2
        elif field == "sha256":
            m["files"][1]["sha256"] = "0" * 64
        elif field == "metadata":
            m["metadata"] = {"evil": True}
        else:
            m[field] = m[field] + "x"
        return objects.canonical(body)

    _rewrite(vault, oid, "manifest", change)
    _assert_refused(vault, ref, error=HubError)


def test_raw_byte_flip_in_manifest_is_refused(vault, stored):
    ref, oid = stored
    blob = vault.blobs.get(f"objects/{oid}/manifest")
    _rewrite(vault, oid, "manifest", _flip(blob.index(b'"name"') + 3))
    _assert_refused(vault, ref)


@pytest.mark.parametrize("half", ["ed25519", "mldsa65"])
def test_bit_flip_in_each_signature_half_is_refused(vault, stored, half):
    ref, oid = stored

    def change(blob):
        body = json.loads(blob)
        sig = bytearray(base64.b64decode(body["signature"]))
        sig[10 if half == "ed25519" else 64 + 100] ^= 0x01
        body["signature"] = base64.b64encode(sig).decode()
        return objects.canonical(body)

    _rewrite(vault, oid, "manifest", change)
    with pytest.raises(IntegrityError, match="signature by team 'alpha' does not verify"):
        vault.pull(ref)


def test_truncated_payload_is_refused(vault, stored):
    ref, oid = stored
    _rewrite(vault, oid, "payload", lambda b: bytes(b[:-1]))
    with pytest.raises(IntegrityError, match="truncated, dropped or added"):
        vault.pull(ref)


def test_dropped_chunk_is_refused(vault, stored):
    ref, oid = stored
    _rewrite(vault, oid, "payload", lambda b: bytes(b[: HEADER + STEP] + b[HEADER + 2 * STEP :]))
    _assert_refused(vault, ref)


def test_dropped_last_chunk_with_rewritten_header_is_refused(vault, stored):
    ref, oid = stored
    n = _chunk_count(vault, oid)

    def change(blob):
        head = objects.PayloadHeader.unpack(blob)
        fake = objects.PayloadHeader(head.object_id, head.version, 1024, n - 1, (n - 1) * 1024)
        return fake.pack() + bytes(blob[HEADER : HEADER + (n - 1) * STEP])

    _rewrite(vault, oid, "payload", change)
    # The consistent fake header would fail chunk 0's associated data; the length
    # check against the signed manifest refuses it first, before any decryption.
    with pytest.raises(IntegrityError, match="payload length does not match the signed manifest"):
        vault.pull(ref)


def test_duplicated_chunk_is_refused(vault, stored):
    ref, oid = stored

    def change(blob):
        first = blob[HEADER : HEADER + STEP]
        return bytes(blob[:HEADER] + first + first + blob[HEADER + 2 * STEP :])

    _rewrite(vault, oid, "payload", change)
    with pytest.raises(IntegrityError, match="chunk 1 failed"):
        vault.pull(ref)


def test_reordered_chunks_are_refused(vault, stored):
    ref, oid = stored

    def change(blob):
        a, b = blob[HEADER : HEADER + STEP], blob[HEADER + STEP : HEADER + 2 * STEP]
        return bytes(blob[:HEADER] + b + a + blob[HEADER + 2 * STEP :])

    _rewrite(vault, oid, "payload", change)
    with pytest.raises(IntegrityError, match="chunk 0 failed"):
        vault.pull(ref)


def test_chunk_swapped_in_from_another_object_is_refused(vault, stored):
    ref, oid = stored
    vault.push(sample_adapter("lower", 5))
    with vault.index.read() as db:
        other = vault.index.version_row(db, "lower", 1)["object_id"]
    foreign = vault.blobs.get(f"objects/{other}/payload")
    _rewrite(
        vault,
        oid,
        "payload",
        lambda b: bytes(b[:HEADER] + foreign[HEADER : HEADER + STEP] + b[HEADER + STEP :]),
    )
    with pytest.raises(IntegrityError, match="chunk 0 failed"):
        vault.pull(ref)


def test_whole_payload_swapped_between_objects_is_refused(vault, stored):
    ref, oid = stored
    vault.push(sample_adapter("lower", 5))
    with vault.index.read() as db:
        other = vault.index.version_row(db, "lower", 1)["object_id"]
    vault.blobs.put(f"objects/{oid}/payload", vault.blobs.get(f"objects/{other}/payload"))
    with pytest.raises(IntegrityError, match="another object"):
        vault.pull(ref)


def test_manifest_swapped_between_versions_is_refused(vault, stored):
    ref, oid = stored
    vault.push(sample_adapter("upper", 2))
    with vault.index.read() as db:
        other = vault.index.version_row(db, "upper", 2)["object_id"]
    vault.blobs.put(f"objects/{oid}/manifest", vault.blobs.get(f"objects/{other}/manifest"))
    with pytest.raises(IntegrityError, match="belongs to another object"):
        vault.pull(ref)


def test_wrapped_key_moved_from_another_version_is_refused(vault, stored):
    ref, oid = stored
    vault.push(sample_adapter("upper", 2))
    with vault.index.read() as db:
        other = vault.index.version_row(db, "upper", 2)["object_id"]
    vault.blobs.put(f"objects/{oid}/keys/alpha", vault.blobs.get(f"objects/{other}/keys/alpha"))
    with pytest.raises(IntegrityError, match="moved from another object"):
        vault.pull(ref)


def test_deleted_payload_blob_is_refused(vault, stored):
    ref, oid = stored
    vault.blobs.delete(f"objects/{oid}/payload")
    with pytest.raises(IntegrityError, match="missing"):
        vault.pull(ref)


def test_untampered_object_still_pulls(vault, stored):
    ref, _ = stored
    assert vault.pull(ref).files == sample_adapter("upper").files
    assert vault.pull(AdapterRef("upper"), team="beta").files == sample_adapter("upper").files


def test_header_records_chunk_layout(vault, stored):
    _, oid = stored
    blob = vault.blobs.get(f"objects/{oid}/payload")
    magic, fmt, _, version, chunk_size, chunks, length = struct.unpack_from(">4sB16sIIIQ", blob)
    assert (magic, fmt, version, chunk_size) == (b"QHVP", 1, 1, 1024)
    assert chunks == -(-length // 1024)
