"""The stored object format: chunked AES-256-GCM payload, signed manifest, wrapped keys.

One adapter version is three kinds of blob under ``objects/<object id>/``:

``payload``
    header (41 bytes: ``QHVP``, format 1, object id, version, chunk size,
    chunk count, plaintext length) then per chunk ``nonce(12) || ciphertext
    || tag(16)``. Each chunk's associated data is the header plus the chunk
    index and a last-chunk flag, so chunks cannot be dropped, duplicated,
    reordered, truncated or moved between objects without failing.
``manifest``
    JSON ``{"manifest": {...}, "signature": base64}``; the publisher signs the
    canonical JSON of the manifest (name, version, object id, publisher,
    base fingerprint, SHA-256 of every file, metadata, created time).
``keys/<team>``
    JSON holding the data key HPKE-wrapped to that team's public key, with
    the recipient key fingerprint; HPKE ``info`` binds object id, version and
    team, so a wrapped key cannot be moved to another object or team.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
from dataclasses import dataclass
from typing import Any

from hub.errors import AccessError, IntegrityError
from hub.identity import Identity, PublicIdentity, verify, wrap

MAGIC = b"QHVP"
FORMAT = 1
_HEADER = struct.Struct(">4sB16sIIIQ")
NONCE, TAG = 12, 16
MIN_CHUNK, MAX_CHUNK = 1024, 1 << 30
"""Chunk sizes a payload header may state (``vault.chunk_size`` must be inside too)."""
MANIFEST_FORMAT = "qlora-hub-manifest/1"


def canonical(obj: Any) -> bytes:
    """Canonical JSON bytes (sorted keys, no spaces): what signatures cover."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


@dataclass(frozen=True)
class PayloadHeader:
    """The fixed-size header of a payload blob."""

    object_id: bytes
    version: int
    chunk_size: int
    chunks: int
    length: int

    def pack(self) -> bytes:
        """Header bytes (also the start of every chunk's associated data)."""
        return _HEADER.pack(
            MAGIC, FORMAT, self.object_id, self.version, self.chunk_size, self.chunks, self.length
        )

    @classmethod
    def unpack(cls, blob: bytes) -> PayloadHeader:
        """Parse and sanity-check a header; raises IntegrityError."""
        if len(blob) < _HEADER.size:
            raise IntegrityError("payload is truncated: the header is incomplete")
        magic, fmt, oid, version, chunk_size, chunks, length = _HEADER.unpack_from(blob)
        if magic != MAGIC or fmt != FORMAT:
            raise IntegrityError("payload header is corrupt (magic or format)")
        if not MIN_CHUNK <= chunk_size <= MAX_CHUNK:
            raise IntegrityError(
                f"payload header is corrupt: chunk size {chunk_size} is outside "
                f"{MIN_CHUNK}..{MAX_CHUNK}"
            )
        if chunks != max(-(-length // chunk_size), 1):
            raise IntegrityError("payload header is corrupt: chunk count does not match length")
        return cls(oid, version, chunk_size, chunks, length)

    @property
    def blob_size(self) -> int:
        """The exact byte length of a payload blob with this header (computed, not allocated)."""
        return _HEADER.size + self.length + self.chunks * (NONCE + TAG)


def chunk_aad(header: bytes, index: int, last: bool) -> bytes:
    """Associated data of chunk ``index``: header, index and last-chunk flag."""
    return header + struct.pack(">QB", index, 1 if last else 0)


def _sizes(head: PayloadHeader) -> list[int]:
    full, rest = divmod(head.length, head.chunk_size)
    return [head.chunk_size] * full + ([rest] if rest or not full else [])


def encrypt_payload(
    plaintext: bytes | memoryview, key: bytes, object_id: bytes, version: int, chunk_size: int
) -> bytearray:
    """Encrypt ``plaintext`` in ``chunk_size`` chunks under ``key`` (fresh random nonce each).

    Writes straight into one preallocated buffer (``encrypt_into``): no copies.
    """
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    view = memoryview(plaintext)
    chunks = max(-(-len(view) // chunk_size), 1)
    head = PayloadHeader(object_id, version, chunk_size, chunks, len(view))
    header = head.pack()
    sizes = _sizes(head)
    out = bytearray(len(header) + sum(s + NONCE + TAG for s in sizes))
    out[: len(header)] = header
    dst = memoryview(out)
    aes = AESGCM(key)
    pos, src = len(header), 0
    for i, size in enumerate(sizes):
        nonce = os.urandom(NONCE)
        dst[pos : pos + NONCE] = nonce
        pos += NONCE
        aad = chunk_aad(header, i, i == chunks - 1)
        pos += aes.encrypt_into(nonce, view[src : src + size], aad, dst[pos : pos + size + TAG])
        src += size
    return out


HEADER_SIZE = _HEADER.size


def check_layout(
    blob: bytes | memoryview, object_id: bytes, version: int, size: int | None = None
) -> tuple[PayloadHeader, list[int], bytes]:
    """Parse the header and check the blob's length against it, before any decryption.

    Returns (header, chunk plaintext sizes, header bytes). The header is in
    every chunk's associated data, so a header that passes here but was
    altered still fails at the first chunk.

    ``size``: the payload's real size when ``blob`` holds only its start.

    Raises:
        IntegrityError: wrong object or version, or chunks truncated, dropped or added.
    """
    head = PayloadHeader.unpack(blob)
    if head.object_id != object_id or head.version != version:
        raise IntegrityError("payload belongs to another object or version: blobs were swapped")
    # Every length is checked against the blob's real size before anything is allocated:
    # a header claiming 2**40 one-byte chunks fails here, not in a 2**40-entry list.
    if (len(blob) if size is None else size) != head.blob_size:
        raise IntegrityError(
            "payload length does not match its header: chunks were truncated, dropped or added"
        )
    return head, _sizes(head), bytes(blob[: _HEADER.size])


def chunk_nonces(blob: bytes) -> list[bytes]:
    """The nonce of every chunk (for audits and the nonce-uniqueness test)."""
    head = PayloadHeader.unpack(blob)
    if len(blob) != head.blob_size:
        raise IntegrityError("payload length does not match its header")
    pos, out = _HEADER.size, []
    for size in _sizes(head):
        out.append(bytes(blob[pos : pos + NONCE]))
        pos += NONCE + size + TAG
    return out


def key_info(object_id: bytes, version: int, team: str) -> bytes:
    """HPKE ``info`` for a wrapped data key: binds object, version and recipient."""
    return b"qlora-hub/v1 data-key\x00" + object_id + struct.pack(">I", version) + team.encode()


def wrap_key(public: PublicIdentity, data_key: bytes, object_id: bytes, version: int) -> bytes:
    """The ``keys/<team>`` blob for ``public``."""
    wrapped = wrap(public, data_key, key_info(object_id, version, public.team))
    return canonical(
        {
            "team": public.team,
            "recipient": public.fingerprint,
            "wrapped": base64.b64encode(wrapped).decode(),
        }
    )


def unwrap_key(identity: Identity, blob: bytes, object_id: bytes, version: int) -> bytes:
    """Recover the data key from a ``keys/<team>`` blob.

    Raises:
        AccessError: the key was wrapped for a different key of this team.
        IntegrityError: the blob was altered.
    """
    try:
        body = json.loads(blob)
        wrapped = base64.b64decode(body["wrapped"], validate=True)
        recipient = body["recipient"]
    except (ValueError, KeyError, TypeError):
        raise IntegrityError("wrapped data key is corrupt: the object was altered") from None
    if recipient != identity.public.fingerprint:
        raise AccessError(
            f"this object's key was wrapped for another key of team {identity.team!r} "
            "(the team was re-created?): ask the owner to share it again"
        )
    try:
        return identity.unwrap(wrapped, key_info(object_id, version, identity.team))
    except AccessError:
        raise IntegrityError(
            "wrapped data key does not open: it was altered or moved from another object"
        ) from None


def sign_manifest(identity: Identity, manifest: dict[str, Any]) -> bytes:
    """The ``manifest`` blob: manifest plus the publisher's hybrid signature."""
    sig = identity.sign(canonical(manifest), "manifest")
    return canonical({"manifest": manifest, "signature": base64.b64encode(sig).decode()})


def read_manifest(blob: bytes) -> tuple[dict[str, Any], bytes]:
    """Parse a manifest blob into (manifest, signature) without verifying."""
    try:
        body = json.loads(blob)
        manifest = body["manifest"]
        sig = base64.b64decode(body["signature"], validate=True)
        if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
            raise ValueError("format")
    except (ValueError, KeyError, TypeError):
        raise IntegrityError("manifest is corrupt: the object was altered") from None
    return manifest, sig


def check_shape(manifest: dict[str, Any]) -> None:
    """Refuse a signed manifest whose fields readers index (``files``, ``created``) are
    malformed: a trusted team may sign anything, and a reader must fail in one line."""
    files = manifest.get("files")
    ok = isinstance(manifest.get("created"), str) and isinstance(files, list) and bool(files)
    for f in files if ok else ():
        if not (
            isinstance(f, dict)
            and isinstance(f.get("name"), str)
            and type(f.get("size")) is int
            and f["size"] >= 0
            and isinstance(f.get("sha256"), str)
            and len(f["sha256"]) == 64
        ):
            ok = False
            break
    if not ok:
        raise IntegrityError("manifest is malformed (files or created): its publisher signed junk")


def verify_manifest(public: PublicIdentity, manifest: dict[str, Any], signature: bytes) -> None:
    """Check the publisher's signature over the manifest; raises IntegrityError."""
    verify(public, canonical(manifest), signature, "manifest")


def file_entries(files: dict[str, bytes]) -> list[dict[str, Any]]:
    """Manifest ``files``: name, size and SHA-256 of each file, in payload order."""
    return [
        {"name": n, "size": len(files[n]), "sha256": hashlib.sha256(files[n]).hexdigest()}
        for n in sorted(files)
    ]
