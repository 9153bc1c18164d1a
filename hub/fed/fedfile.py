"""The signed file format that contributions and aggregates travel in.

Layout (one file, written in a single streaming pass)::

    b"QLHFED1\\n"
    section 0 | section 1 | ...        each: u64 little-endian length + bytes
    header JSON                        {"meta": {...}, "signatures": {...}}
    u64 header length + b"QLHFEND\\n"   trailer

The header sits at the end so that chunks can be written as they are
encrypted and their sha256 hashes still be covered by the signature. The
signature covers the canonical JSON of ``meta`` (sorted keys, no spaces),
which lists the sha256 of every section; readers check each section against
its hash as they stream it. Sections are TenSEAL ``serialize()`` bytes or
safetensors; nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from hub.errors import IntegrityError, UnknownNameError, ValidationError

MAGIC = b"QLHFED1\n"
END = b"QLHFEND\n"
_U64 = struct.Struct("<Q")
MAX_HEADER = 64 << 20

Signer = Callable[[bytes], Mapping[str, Any]]
"""``sign(payload) -> signatures``: the signing team's signatures over ``payload``."""

Verifier = Callable[[str, bytes, Mapping[str, Any]], None]
"""``verify(team, payload, signatures)``: raise ``IntegrityError`` unless ``team`` signed it."""


def canonical(meta: Mapping[str, Any]) -> bytes:
    """The bytes a signature covers: sorted-key, compact JSON."""
    return json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()


def write_fed_file(
    path: Path, meta: Mapping[str, Any], sections: Iterable[bytes], sign: Signer | None
) -> dict[str, Any]:
    """Stream ``sections`` into ``path`` atomically and sign the header.

    Args:
        path: destination; written as a temp file, fsynced, then renamed, so
            a failure leaves nothing half-written.
        meta: metadata to bind; ``section_sha256`` is added here.
        sections: byte strings, consumed one at a time (memory stays bounded).
        sign: the writer's signer, or ``None`` for an unsigned file.

    Returns:
        The final ``meta`` (with ``section_sha256``).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    meta = dict(meta)
    hashes: list[str] = []
    try:
        with open(tmp, "wb") as fh:
            fh.write(MAGIC)
            for blob in sections:
                fh.write(_U64.pack(len(blob)))
                fh.write(blob)
                hashes.append(hashlib.sha256(blob).hexdigest())
            meta["section_sha256"] = hashes
            signatures = dict(sign(canonical(meta))) if sign else {}
            header = json.dumps({"meta": meta, "signatures": signatures}).encode()
            fh.write(header)
            fh.write(_U64.pack(len(header)))
            fh.write(END)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return meta


class FedFile:
    """A contribution or aggregate file opened for reading (header parsed, sections streamed).

    Use as a context manager; sections are read lazily with :meth:`sections`.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self._fh: BinaryIO = open(self.path, "rb")  # noqa: SIM115 (closed in close())
        except FileNotFoundError:
            raise UnknownNameError(
                f"{self.path} does not exist: it was never written or was removed"
            ) from None
        try:
            self.meta, self.signatures = self._read_header()
        except BaseException:
            self._fh.close()
            raise

    def _read_header(self) -> tuple[dict[str, Any], dict[str, Any]]:
        fh = self._fh
        size = fh.seek(0, os.SEEK_END)
        fh.seek(0)
        if size < len(MAGIC) + _U64.size + len(END) or fh.read(len(MAGIC)) != MAGIC:
            raise ValidationError(f"{self.path.name} is not a qlora-hub federated round file")
        fh.seek(size - _U64.size - len(END))
        (hlen,) = _U64.unpack(fh.read(_U64.size))
        if fh.read(len(END)) != END or hlen > min(MAX_HEADER, size):
            raise ValidationError(f"{self.path.name} is truncated or not a qlora-hub round file")
        self._body_end = size - _U64.size - len(END) - hlen
        fh.seek(self._body_end)
        try:
            header = json.loads(fh.read(hlen))
            meta, signatures = header["meta"], header.get("signatures") or {}
        except (ValueError, KeyError, TypeError):
            raise ValidationError(f"{self.path.name} has a corrupt header") from None
        if not isinstance(meta, dict) or not isinstance(signatures, dict):
            raise ValidationError(f"{self.path.name} has a corrupt header")
        return meta, signatures

    def signed_bytes(self) -> bytes:
        """The bytes the signatures cover."""
        return canonical(self.meta)

    def verify(self, team: str, verify: Verifier) -> None:
        """Check that ``team`` signed this file's header; raise ``IntegrityError`` otherwise."""
        if not self.signatures:
            raise IntegrityError(
                f"contribution {self.path.name} is unsigned: team {team!r} must run "
                "'qlora-hub fed contribute' with its signing key"
            )
        verify(team, self.signed_bytes(), self.signatures)

    def sections(self) -> Iterator[bytes]:
        """Yield each section in order, checking it against its signed sha256."""
        hashes = self.meta.get("section_sha256") or []
        fh = self._fh
        fh.seek(len(MAGIC))
        for i, want in enumerate(hashes):
            raw = fh.read(_U64.size)
            if len(raw) != _U64.size:
                raise IntegrityError(f"{self.path.name} is truncated at section {i}")
            (n,) = _U64.unpack(raw)
            if fh.tell() + n > self._body_end:
                raise IntegrityError(f"{self.path.name} is truncated at section {i}")
            blob = fh.read(n)
            if hashlib.sha256(blob).hexdigest() != want:
                raise IntegrityError(
                    f"{self.path.name}: section {i} does not match its signed hash "
                    "(the file was altered after signing)"
                )
            yield blob
        if fh.tell() != self._body_end:
            raise IntegrityError(f"{self.path.name} holds bytes its header does not list")

    def close(self) -> None:
        """Close the file."""
        self._fh.close()

    def __enter__(self) -> FedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
