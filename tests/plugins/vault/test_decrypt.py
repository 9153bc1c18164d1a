"""Pull's pipelined decryption gives exactly the reference result, or the same refusals."""

from __future__ import annotations

import hashlib
import os

import pytest

from hub.errors import IntegrityError
from plugins.vault import decrypt, objects

KEY = bytes(range(32))
OID = bytes(16)
CHUNK = 1024
# Sizes chosen so chunks straddle file boundaries, one chunk holds three files,
# and an empty file sits between two others.
FILES = {"a.json": os.urandom(100), "b.bin": os.urandom(3000), "c": b"", "d.bin": os.urandom(2500)}


def _payload(files: dict[str, bytes]) -> tuple[bytearray, list[dict]]:
    order = sorted(files)
    blob = objects.encrypt_payload(b"".join(files[n] for n in order), KEY, OID, 1, CHUNK)
    return blob, objects.file_entries(files)


def _reference_plaintext(blob: bytes) -> bytes:
    """The format read the plain way: every chunk decrypted in order, one buffer."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    _, sizes, header = objects.check_layout(blob, OID, 1)
    out, pos = b"", len(header)
    for i, size in enumerate(sizes):
        nonce, body = (
            blob[pos : pos + objects.NONCE],
            blob[pos + objects.NONCE :][: size + objects.TAG],
        )
        out += AESGCM(KEY).decrypt(nonce, body, objects.chunk_aad(header, i, i == len(sizes) - 1))
        pos += objects.NONCE + size + objects.TAG
    return out


@pytest.fixture(params=["inline", "hash thread"])
def mode(request, monkeypatch):
    """Run each test with hashing inline and on the helper thread."""
    if request.param == "hash thread":
        monkeypatch.setattr(decrypt, "HASH_THREAD_MIN_BYTES", 1)
    return request.param


def test_files_match_the_reference_decryption(mode):
    blob, entries = _payload(FILES)
    got = decrypt.decrypt_files(blob, KEY, OID, 1, entries)
    plain = _reference_plaintext(bytes(blob))
    assert got == FILES
    assert b"".join(got[e["name"]] for e in entries) == plain
    assert all(type(v) is bytes for v in got.values())


def test_empty_payload_decrypts_to_empty_files(mode):
    blob, entries = _payload({"x": b""})
    assert decrypt.decrypt_files(blob, KEY, OID, 1, entries) == {"x": b""}


def test_file_not_matching_its_signed_hash_is_refused(mode):
    blob, entries = _payload(FILES)
    entries[3]["sha256"] = hashlib.sha256(b"other").hexdigest()
    with pytest.raises(IntegrityError, match="file d.bin does not match its signed SHA-256"):
        decrypt.decrypt_files(blob, KEY, OID, 1, entries)


def test_altered_chunk_is_refused_and_the_helper_is_free_again(mode):
    blob, entries = _payload(FILES)
    good = bytes(blob)
    blob[objects._HEADER.size + 2 * (CHUNK + objects.NONCE + objects.TAG) + 40] ^= 1
    with pytest.raises(IntegrityError, match="payload chunk 2 failed authentication"):
        decrypt.decrypt_files(blob, KEY, OID, 1, entries)
    assert decrypt.decrypt_files(good, KEY, OID, 1, entries) == FILES


def test_manifest_sizes_not_matching_the_header_are_refused(mode):
    blob, entries = _payload(FILES)
    entries[0]["size"] += 1
    with pytest.raises(IntegrityError, match="payload length does not match the signed manifest"):
        decrypt.decrypt_files(blob, KEY, OID, 1, entries)


def test_manifest_without_files_is_refused(mode):
    blob, _ = _payload({"x": b""})
    with pytest.raises(IntegrityError, match="payload length does not match the signed manifest"):
        decrypt.decrypt_files(blob, KEY, OID, 1, [])


def _opened(tmp_path, blob: bytes):
    from plugins.vault.blobs import PayloadFile

    path = tmp_path / "payload"
    path.write_bytes(bytes(blob))
    return PayloadFile(os.open(path, os.O_RDONLY)), path


def test_a_payload_file_read_chunk_by_chunk_gives_the_same_files(mode, tmp_path):
    blob, entries = _payload(FILES)
    opened, _ = _opened(tmp_path, blob)
    with opened:
        assert decrypt.decrypt_files(opened, KEY, OID, 1, entries) == FILES


def test_a_payload_file_truncated_after_opening_is_one_line_refusal(mode, tmp_path):
    blob, entries = _payload(FILES)
    opened, path = _opened(tmp_path, blob)
    os.truncate(path, len(blob) - 100)  # the size was taken when it was opened
    with opened, pytest.raises(IntegrityError, match="payload is shorter than its header says"):
        decrypt.decrypt_files(opened, KEY, OID, 1, entries)


def test_a_payload_file_with_an_altered_chunk_is_refused(mode, tmp_path):
    blob, entries = _payload(FILES)
    blob[objects.HEADER_SIZE + CHUNK + objects.NONCE + objects.TAG + 7] ^= 1
    opened, _ = _opened(tmp_path, blob)
    with opened, pytest.raises(IntegrityError, match="payload chunk 1 failed authentication"):
        decrypt.decrypt_files(opened, KEY, OID, 1, entries)
