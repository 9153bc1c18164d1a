"""The blob layer: opaque named byte strings behind a URL.

The vault stores only ciphertext, signed manifests and wrapped keys here, so
a blob store needs no trust. The protocol and the scheme registry are the
core's (:mod:`hub.blobs`; plugins add schemes with the ``register_blob_stores``
hook); ``file://`` is built in here. Keys look like ``objects/<object id>/payload``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path
from urllib.parse import unquote, urlparse

from hub.blobs import (  # noqa: F401  (re-exported: the vault's modules import them from here)
    BLOB_SCHEMES,
    BlobStore,
    check_key,
    get_bounded,
    open_blobs,
    register_blob_scheme,
)
from hub.errors import IntegrityError
from hub.record_files import write_once, write_temp

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
MAX_DEPTH = 16
"""Folders a key may have (``objects/<id>/keys/<team>`` has three); deeper trees are refused."""


class PayloadFile:
    """An open blob read piece by piece with ``pread`` into one reused buffer.

    Pull decrypts each chunk straight from that small buffer, which stays in
    the CPU cache: neither a memory map (a writer who truncates a mapped file
    kills the reader with SIGBUS) nor a copy of the whole payload into a
    fresh buffer of its size (page faults and a second pass over memory). A
    file that shrinks while it is read is an IntegrityError, never a crash.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.size = os.fstat(fd).st_size
        self._buf = bytearray()

    def __len__(self) -> int:
        return self.size

    def __enter__(self) -> PayloadFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def read_at(self, pos: int, n: int) -> memoryview:
        """``n`` bytes at ``pos``, in the reused buffer (valid until the next call)."""
        if len(self._buf) < n:
            self._buf = bytearray(n)
        view = memoryview(self._buf)[:n]
        got = 0
        while got < n:
            k = os.preadv(self.fd, [view[got:]], pos + got)
            if k <= 0:
                raise IntegrityError(
                    "payload is shorter than its header says (truncated while it was read?): "
                    "the vault was altered outside qlora-hub"
                )
            got += k
        return view


class FileBlobStore:
    """``file://`` blobs: one file per key, written with temp file + fsync + rename.

    Every access walks from the root one folder at a time with ``O_NOFOLLOW``
    (``openat``), so a symbolic link anywhere below the root is refused, not
    followed: someone who can write the folder cannot make a read, a write or
    a delete land outside it.
    """

    def __init__(self, url: str) -> None:
        parsed = urlparse(url)
        self.url = url
        self.root = Path(unquote(parsed.path))
        self.root.mkdir(parents=True, exist_ok=True)

    def _refused(self, key: str) -> IntegrityError:
        return IntegrityError(
            f"blob {key} in {self.url} passes through a symbolic link or a non-regular file: "
            "the vault was altered outside qlora-hub; remove it"
        )

    def _open_dir(self, parts: list[str], key: str, create: bool = False) -> int | None:
        """A descriptor of the folder ``root/parts...``, never through a link (None: absent)."""
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for part in parts:
                if create:
                    try:
                        os.mkdir(part, 0o700, dir_fd=fd)
                        os.fsync(fd)  # the new folder survives a power cut with the blob
                    except FileExistsError:
                        pass
                try:
                    sub = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    os.close(fd)
                    return None
                except (NotADirectoryError, OSError) as exc:
                    if isinstance(exc, NotADirectoryError) or exc.errno == errno.ELOOP:
                        raise self._refused(key) from None
                    raise
                os.close(fd)
                fd = sub
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _open_file(self, key: str) -> int:
        """A read descriptor of the regular file under ``key`` (never through a link)."""
        *parts, name = check_key(key).split("/")
        folder = self._open_dir(parts, key)
        if folder is None:
            raise self._missing(key)
        try:
            # O_NONBLOCK: a FIFO planted in the store must not hang a reader (it is refused below)
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=folder)
        except FileNotFoundError:
            raise self._missing(key) from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise self._refused(key) from None
            raise
        finally:
            os.close(folder)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise self._refused(key)
        return fd

    def _missing(self, key: str) -> IntegrityError:
        return IntegrityError(
            f"blob {key} is missing from {self.url}: the vault was altered outside qlora-hub"
        )

    def put(self, key: str, data: bytes) -> None:
        """Atomic durable write: temp file, fsync, rename, fsync the folder.

        Folders created on the way are fsynced into their parents too, so the
        blob survives a power cut once the index says it exists.
        """
        *parts, name = check_key(key).split("/")
        folder = self._open_dir(parts, key, create=True)
        assert folder is not None
        try:
            tmp = write_temp(folder, name, data, 0o600)
            try:
                os.rename(tmp, name, src_dir_fd=folder, dst_dir_fd=folder)
                os.fsync(folder)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=folder)
                raise
        finally:
            os.close(folder)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Like :meth:`put`, but only if ``key`` holds nothing: the durable temp file is
        hard-linked into place (``link`` fails when the name exists). True if created."""
        *parts, name = check_key(key).split("/")
        folder = self._open_dir(parts, key, create=True)
        assert folder is not None
        try:
            return write_once(folder, name, data, 0o600)
        finally:
            os.close(folder)

    def get(self, key: str, limit: int | None = None) -> bytes:
        """Read the whole blob (a regular file, not through a link).

        ``limit``: refuse a blob larger than this many bytes before reading it.
        """
        with os.fdopen(self._open_file(key), "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if limit is not None and size > limit:
                raise IntegrityError(
                    f"blob {key} is {size:,} bytes, over its {limit:,} byte bound: the vault "
                    "was altered outside qlora-hub"
                )
            return fh.read(size if limit is not None else -1)

    def view(self, key: str) -> memoryview:
        """The blob read into one buffer of its size (used for large payloads).

        Not a memory map: a writer of the store who truncates a mapped file kills the
        reading process with SIGBUS (a server would go down for every team). A file
        that shrinks while it is read gives a short buffer, which decryption refuses.
        """
        with os.fdopen(self._open_file(key), "rb", buffering=0) as fh:
            size = os.fstat(fh.fileno()).st_size
            buf = memoryview(bytearray(size))
            got = 0
            while got < size:
                n = fh.readinto(buf[got:])
                if not n:
                    break
                got += n
            return buf[:got]

    def reader(self, key: str) -> PayloadFile:
        """The blob opened for reading piece by piece (how pull reads large payloads)."""
        return PayloadFile(self._open_file(key))

    def exists(self, key: str) -> bool:
        """Whether the blob is a regular file (a link is refused)."""
        try:
            os.close(self._open_file(key))
        except IntegrityError as exc:
            if "missing" in str(exc):
                return False
            raise
        return True

    def delete(self, key: str) -> None:
        """Unlink the blob inside the root and drop now-empty folders (never through a link)."""
        *parts, name = check_key(key).split("/")
        folder = self._open_dir(parts, key)
        if folder is None:
            return
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=folder)  # unlink removes a link itself, never its target
        finally:
            os.close(folder)
        for depth in range(len(parts), 0, -1):  # drop empty folders, deepest first
            parent = self._open_dir(parts[: depth - 1], key)
            if parent is None:
                return
            try:
                os.rmdir(parts[depth - 1], dir_fd=parent)
            except OSError:
                return
            finally:
                os.close(parent)

    def keys(self, prefix: str) -> list[str]:
        """Keys under ``prefix``; temp files are skipped; a link anywhere is refused."""
        parts = [p for p in prefix.split("/") if p]
        if parts:
            check_key("/".join(parts))
        folder = self._open_dir(parts, prefix)
        if folder is None:
            return []
        out: list[str] = []
        try:
            self._walk(folder, parts, out)
        finally:
            os.close(folder)
        return sorted(out)

    def _walk(self, folder: int, parts: list[str], out: list[str]) -> None:
        if len(parts) > MAX_DEPTH:  # keys are a few folders deep; a planted tree is refused
            raise IntegrityError(
                f"blob folder {'/'.join(parts[:3])}/... in {self.url} is nested over {MAX_DEPTH} "
                "deep: the vault was altered outside qlora-hub; remove it"
            )
        with os.scandir(folder) as entries:
            for entry in entries:
                key = "/".join([*parts, entry.name])
                if entry.is_symlink():
                    raise self._refused(key)
                try:  # no blob can have this key (a planted README, a temp file): not listed
                    check_key(key)
                except ValueError:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    sub = os.open(entry.name, _DIR_FLAGS, dir_fd=folder)
                    try:
                        self._walk(sub, [*parts, entry.name], out)
                    finally:
                        os.close(sub)
                elif entry.is_file(follow_symlinks=False) and not entry.name.endswith(".tmp"):
                    out.append(key)


BLOB_SCHEMES["file"] = FileBlobStore  # the built-in scheme (process-wide)
