"""How the ``s3`` store reads: an object's body streamed through a bounded ring as it
arrives (:class:`StreamedObject`, a payload), and several small objects fetched at
once, handed back in order (:class:`Reads`, a name's signed records)."""

from __future__ import annotations

import contextlib
import http.client
import itertools
import mmap
import os
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from hub.errors import IntegrityError


class Reads:
    """An iterator over reads done ``ahead`` at a time on a pool (see ``get_many``)."""

    def __init__(self, pool: ThreadPoolExecutor, read: Any, keys: list[str], ahead: int) -> None:
        self._pool, self._read, self._pending = pool, read, iter(keys)
        self._window: deque[Future[bytes]] = deque(
            pool.submit(read, key) for key in itertools.islice(self._pending, ahead)
        )

    def __iter__(self) -> Reads:
        return self

    def __next__(self) -> bytes:
        if not self._window:
            raise StopIteration
        future = self._window.popleft()
        for key in itertools.islice(self._pending, 1):
            self._window.append(self._pool.submit(self._read, key))
        return future.result()

    def close(self) -> None:
        """Cancel the reads not started yet (a refused record stops the caller early)."""
        for future in self._window:
            future.cancel()
        self._window.clear()
        self._pending = iter(())


class StreamedObject:
    """An object's body arriving on a background thread, read front to back with
    :meth:`read_at` as it comes (what :func:`plugins.vault.decrypt.decrypt_files` reads
    chunk by chunk), so a pull decrypts and hashes while the rest is still downloading.

    The bytes land in a ring of ``slots`` blocks of ``block`` bytes, reused as the
    reader moves on: memory stays bounded by the ring whatever the object's size, and
    its pages are touched once, not once per byte of the object (a page fault costs
    microseconds on this kind of virtual machine). A block is allocated only when the
    bytes before it have arrived, so a length the server claims is never allocated up
    front. Where the HTTP layer allows it, the socket reads straight into the ring (no
    copy). A view returned by :meth:`read_at` stays valid until the next call (or
    :meth:`close`); reads move forward only. A body shorter than its ``Content-Length``,
    a dropped connection or a failed transport checksum is an error on the read that
    needs the missing bytes.

    Once closed and its download over, its blocks go back to a small process-wide
    spare list (:data:`SPARE_BYTES`) that the next download takes them from: their
    pages stay mapped, where fresh blocks cost a page fault per page written (a 16 MiB
    body took 25-30 ms to arrive into fresh blocks, 15 ms into spare ones, as fast as
    boto3's own read). A download only ever hands out bytes it received itself.
    """

    block = 8 << 20
    slots = 4
    """Ring of ``slots`` x ``block`` bytes: how far the download may run ahead of the reader."""
    piece = 1 << 20
    """Bytes asked of the connection at a time (readers wake up after each)."""

    def __init__(self, key: str, body: Any, size: int, fail: Any, block: int = 0) -> None:
        self.key, self.size = key, size
        self.block = block or self.block
        self._ring: list[Any] = []
        self._have = 0
        self._released = 0  # bytes before this offset are no longer read: their slots are free
        self._error: Exception | None = None
        self._done = self._stop = False
        self._shutdown = getattr(getattr(body, "_raw_stream", None), "shutdown", None)
        self._cond = threading.Condition()
        self._thread = threading.Thread(
            target=self._download, args=(body, fail), name="s3-body", daemon=True
        )
        self._thread.start()

    def __len__(self) -> int:
        return self.size

    @staticmethod
    def _reader(body: Any) -> Any:
        """``readinto(view) -> n`` for ``body``: the socket straight into ``view`` when the
        body is botocore's over http.client, else a read and a copy."""
        fp = getattr(getattr(body, "_raw_stream", None), "_fp", None)
        if isinstance(fp, http.client.HTTPResponse):
            return fp.readinto  # raw bytes: botocore asks urllib3 for no decoding

        def copy(view: memoryview) -> int:
            data = body.read(len(view))
            view[: len(data)] = data
            return len(data)

        return copy

    def _slot(self, at: int) -> memoryview:
        """The free part of the ring block that receives offset ``at`` (waits until the
        reader has released that block's previous contents); empty when stopped."""
        index, off = divmod(at, self.block)
        with self._cond:
            while not self._stop and self._released < (index - self.slots + 1) * self.block:
                self._cond.wait()
            if self._stop:
                return memoryview(b"")
        slot = index % self.slots
        if slot == len(self._ring):  # bytes up to this block arrived: take a block now
            self._ring.append(_SPARE.take(self.block))
        end = min(len(self._ring[slot]), self.size - index * self.block)
        return memoryview(self._ring[slot])[off:end]

    def _download(self, body: Any, fail: Any) -> None:
        have = 0
        try:
            readinto = self._reader(body)
            while have < self.size:
                view = self._slot(have)
                if not view:
                    break
                got = readinto(view[: self.piece])
                if not got:
                    break
                have += got
                with self._cond:
                    self._have = have
                    self._cond.notify_all()
        except Exception as exc:  # a connection dropped, a checksum failed
            error = fail(exc) if not self._stop else exc
            with self._cond:
                self._error = error
        finally:
            with self._cond:  # before the body closes: close() shuts no released socket
                self._done = True
                self._cond.notify_all()
                self._recycle()
            body.close()

    def _wait(self, end: int) -> None:
        """Until byte ``end - 1`` arrived; the store's error, or IntegrityError when the body
        stopped short of it."""
        with self._cond:
            while self._have < end and not self._done:
                self._cond.wait()
            if self._have < end:
                raise self._error or IntegrityError(
                    f"blob {self.key} came back shorter than its {self.size:,} bytes: try again"
                )

    def _release(self, pos: int) -> None:
        with self._cond:
            self._released = pos
            self._cond.notify_all()

    def read_at(self, pos: int, n: int) -> memoryview:
        """``n`` bytes at ``pos`` (at or after the previous read's), waiting until they
        have arrived; valid until the next call."""
        if pos < self._released or n < 0:
            raise ValueError(f"read_at({pos}, {n}): a streamed object is read front to back")
        if self._stop:
            raise ValueError(f"read_at({pos}, {n}): the streamed object {self.key} is closed")
        if pos + n > self.size:
            raise IntegrityError(
                f"blob {self.key} came back shorter than its {self.size:,} bytes: try again"
            )
        self._release(pos)
        first, off = divmod(pos, self.block)
        if off + n <= self.block:
            self._wait(pos + n)
            return memoryview(self._ring[first % self.slots])[off : off + n]
        # Across blocks (rare: a chunk that straddles two, or a read over a block's size):
        # copied out piece by piece as it arrives, releasing each block once copied, so
        # the copy grows with the bytes received, never from a claimed length.
        out, at = bytearray(), pos
        while at < pos + n:
            index, off = divmod(at, self.block)
            stop = min(pos + n, (index + 1) * self.block)
            self._wait(at + 1)
            with self._cond:
                stop = min(stop, self._have)
            out += memoryview(self._ring[index % self.slots])[off : off + stop - at]
            at = stop
            self._release(at)
        return memoryview(out)

    def close(self) -> None:
        """Stop downloading (what has not arrived is dropped), also when the download is
        blocked on the socket (shut down for reading: it wakes at once, not after
        ``s3.read_timeout_s``); its blocks become spare once the download is over.
        Idempotent."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
            if not self._done and self._shutdown is not None:
                # urllib3 2.3+; the download thread closes the body only after _done is set
                # under this lock, so this socket is still this response's
                with contextlib.suppress(Exception):
                    self._shutdown()
            self._recycle()

    def _recycle(self) -> None:
        """Hand the ring to the spare list once closed and downloaded (``_cond`` held)."""
        if self._stop and self._done and self._ring:
            ring, self._ring = self._ring, []
            _SPARE.give(ring, self.block)


class _Spare:
    """Ring blocks of finished downloads, by size, up to ``limit`` bytes in all."""

    def __init__(self, limit: int) -> None:
        self.limit, self.held = limit, 0
        self._free: dict[int, list[Any]] = {}
        self._lock = threading.Lock()

    def take(self, size: int) -> Any:
        with self._lock:
            blocks = self._free.get(size)
            if blocks:
                self.held -= size
                return blocks.pop()
        return _anonymous(size)

    def give(self, blocks: list[Any], size: int) -> None:
        with self._lock:
            for block in blocks:
                if self.held + size > self.limit:
                    return
                self._free.setdefault(size, []).append(block)
                self.held += size


SPARE_BYTES = StreamedObject.slots * StreamedObject.block
"""Ring blocks a process keeps mapped between downloads: one ring (32 MiB)."""
_SPARE = _Spare(SPARE_BYTES)


def _after_fork_in_child() -> None:
    # a thread of the parent may have held the lock as it forked
    global _SPARE
    _SPARE = _Spare(SPARE_BYTES)


os.register_at_fork(after_in_child=_after_fork_in_child)


def _anonymous(n: int) -> Any:
    """``n`` zero bytes of fresh anonymous memory, backed by 2 MiB pages where Linux's
    transparent huge pages allow (each 4 KiB page fault costs microseconds in a VM)."""
    buf = mmap.mmap(-1, n)
    if n >= 4 << 20 and hasattr(mmap, "MADV_HUGEPAGE"):
        with contextlib.suppress(OSError):
            buf.madvise(mmap.MADV_HUGEPAGE)
    return buf


class _Bytes:
    """A body already read, as a stream."""

    def __init__(self, data: bytes) -> None:
        self._data, self._pos = data, 0

    def read(self, n: int) -> bytes:
        out = self._data[self._pos : self._pos + n]
        self._pos += len(out)
        return out

    def close(self) -> None:
        pass
