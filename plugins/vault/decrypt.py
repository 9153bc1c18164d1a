"""Pull's hot path: decrypt every chunk straight into per-file buffers, hashing as it goes.

:func:`decrypt_files` decrypts every chunk in order and checks each file's
SHA-256, with three choices that only change speed (measured in
docs/benchmarks.md, ``## Vault``; a test checks the result against a plain
chunk-by-chunk decryption):

* Each file gets its own output buffer, a fresh ``bytes`` held by an
  ``io.BytesIO``: ``getbuffer()`` gives a writable view without copying
  (the BytesIO holds the only reference) and ``getvalue()`` hands that same
  object back, so there is no final copy of the plaintext. The fresh bytes
  come from ``calloc``, so its pages are first touched by the decryption.
* Chunks are decrypted (``AESGCM.decrypt_into``) directly into those
  buffers; only a chunk that straddles two files goes through a one-chunk
  scratch buffer.
* For large payloads the SHA-256 of each file runs on a second thread, one
  chunk behind the decryption. Both ``decrypt_into`` and ``hashlib`` release
  the GIL, so on two cores hashing (about 1.7 GB/s here) overlaps with AES
  and with the page faults of the output buffers.

Every chunk is still authenticated with its associated data, and no byte is
returned unless every chunk opened and every file matched its signed SHA-256.
"""

from __future__ import annotations

import hashlib
import io
import queue
import sys
from concurrent.futures import Future
from typing import Any

from hub.errors import IntegrityError
from plugins.vault.objects import HEADER_SIZE, NONCE, TAG, check_layout, chunk_aad
from plugins.vault.workers import in_background

HASH_THREAD_MIN_BYTES = 4 << 20
"""Payloads at least this large hash on a second thread (below it a thread costs more than it saves)."""
HUGE_PAGE = 2 << 20
MADV_HUGEPAGE = 14  # Linux


def _advise_huge_pages(view: memoryview) -> None:
    """Ask Linux to back the untouched pages of a large fresh output buffer with 2 MiB
    pages (``madvise(MADV_HUGEPAGE)``; transparent huge pages in ``madvise`` mode, the
    common default). The first write to each 4 KiB page is a page fault, which costs
    microseconds in a virtual machine: 160 MiB of plaintext took 130 ms of faults here,
    about 40 ms with huge pages. Only advice: ignored where unsupported."""
    if not sys.platform.startswith("linux") or len(view) < 2 * HUGE_PAGE:
        return
    try:
        import ctypes

        cell = ctypes.c_char.from_buffer(view)
        addr = ctypes.addressof(cell)
        del cell  # releases its hold on the buffer (getvalue() must not copy)
        start = -(-addr // HUGE_PAGE) * HUGE_PAGE
        end = (addr + len(view)) // HUGE_PAGE * HUGE_PAGE
        libc = ctypes.CDLL(None)
        libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), MADV_HUGEPAGE)
    except (OSError, AttributeError, TypeError, ValueError):
        return


class _Hasher:
    """SHA-256 of each file, fed (file index, view) pieces in order, inline or on a helper thread."""

    def __init__(self, count: int, threaded: bool) -> None:
        self.hashes = [hashlib.sha256() for _ in range(count)]
        self._queue: queue.SimpleQueue[tuple[int, memoryview] | None] | None = None
        self._done: Future[None] | None = None
        if threaded:
            self._queue = queue.SimpleQueue()
            self._done = in_background(self._run, self._queue)

    def _run(self, pieces: queue.SimpleQueue[tuple[int, memoryview] | None]) -> None:
        error: BaseException | None = None
        while (item := pieces.get()) is not None:
            index, piece = item
            try:
                if error is None:
                    self.hashes[index].update(piece)
            except BaseException as exc:  # keep draining so every view is released
                error = exc
            finally:
                piece.release()
        if error is not None:
            raise error

    def feed(self, index: int, piece: memoryview) -> None:
        """Hash ``piece`` as the next bytes of file ``index``."""
        if self._queue is None:
            self.hashes[index].update(piece)
            piece.release()
        else:
            self._queue.put((index, piece))

    def finish(self) -> list[str]:
        """Wait for every queued piece; the hex digests in file order."""
        if self._done is not None:
            assert self._queue is not None
            self._queue.put(None)
            self._done.result()
        return [h.hexdigest() for h in self.hashes]


def decrypt_files(
    blob: bytes | memoryview | Any,
    key: bytes,
    object_id: bytes,
    version: int,
    entries: list[dict[str, Any]],
) -> dict[str, bytes]:
    """Authenticate and decrypt a payload into its files, checking each file's SHA-256.

    ``entries`` is the signed manifest's ``files`` list (name, size, sha256,
    in payload order). ``blob`` is the payload's bytes, or an open
    :class:`plugins.vault.blobs.PayloadFile` read one chunk at a time.

    Raises:
        IntegrityError: a header, chunk, length or file hash does not match.
    """
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    reader = blob if hasattr(blob, "read_at") else None
    if reader is not None:
        start = bytes(reader.read_at(0, min(HEADER_SIZE, len(reader))))
        head, sizes, header = check_layout(start, object_id, version, size=len(reader))
    else:
        head, sizes, header = check_layout(blob, object_id, version)
    lengths = [e.get("size") for e in entries]
    bad = not lengths or any(type(n) is not int or n < 0 for n in lengths)
    if bad or sum(lengths) != head.length:
        raise IntegrityError("decrypted payload length does not match the signed manifest")
    # The BytesIO holds the only reference to each fresh bytes, so getbuffer() does not copy.
    files = [io.BytesIO(bytes(n)) for n in lengths]
    views = [f.getbuffer() for f in files]
    for view in views:
        _advise_huge_pages(view)
    bounds, pos = [], 0
    for n in lengths:
        bounds.append((pos, pos + n))
        pos += n
    hasher = _Hasher(len(entries), threaded=head.length >= HASH_THREAD_MIN_BYTES)
    src = memoryview(blob) if reader is None else None
    aes = AESGCM(key)
    scratch: memoryview | None = None
    first, at, pos = 0, 0, len(header)  # first file not yet complete; plaintext offset; blob offset
    try:
        for i, size in enumerate(sizes):
            while first < len(lengths) - 1 and bounds[first][1] <= at:
                first += 1
            if src is not None:
                nonce = src[pos : pos + NONCE]
                body = src[pos + NONCE : pos + NONCE + size + TAG]
            else:  # the sizes were checked against the file's size: at most one chunk here
                piece = reader.read_at(pos, NONCE + size + TAG)
                nonce, body = piece[:NONCE], piece[NONCE:]
            aad = chunk_aad(header, i, i == len(sizes) - 1)
            start, stop = bounds[first]
            inside = at + size <= stop
            if inside:
                dst = views[first][at - start : at - start + size]
            else:  # the chunk straddles files: decrypt to scratch, then copy the pieces
                if scratch is None:  # sizes were checked against the blob's real length
                    scratch = memoryview(bytearray(max(sizes)))
                dst = scratch[:size]
            try:
                aes.decrypt_into(nonce, body, aad, dst)
            except InvalidTag:
                raise IntegrityError(
                    f"payload chunk {i} failed authentication: the object was altered or "
                    "its chunks reordered"
                ) from None
            if inside:
                hasher.feed(first, dst)
            else:
                for f in range(first, len(lengths)):
                    lo, hi = max(bounds[f][0], at), min(bounds[f][1], at + size)
                    if lo >= hi:
                        if bounds[f][0] >= at + size:
                            break
                        continue
                    piece = views[f][lo - bounds[f][0] : hi - bounds[f][0]]
                    piece[:] = dst[lo - at : hi - at]
                    hasher.feed(f, piece)
                dst.release()
            pos += NONCE + size + TAG
            at += size
    finally:
        digests = hasher.finish()
        for v in views:
            v.release()
    for entry, digest in zip(entries, digests, strict=True):
        if digest != entry["sha256"]:
            raise IntegrityError(f"file {entry['name']} does not match its signed SHA-256")
    return {e["name"]: f.getvalue() for e, f in zip(entries, files, strict=True)}
