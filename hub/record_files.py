"""A record store in a plain folder, for storage backends that have no blob store.

:class:`hub.sharing.SignedSharing` keeps each name's owner-signed records
(:mod:`hub.grants`) in a store with ``put_if_absent``, ``get`` and ``keys``
(the :class:`hub.blobs.BlobStore` methods it uses). A backend that keeps
its bytes in a folder offers one as its ``records`` attribute::

    @property
    def records(self):
        return FolderRecords(self.root / ".records")

The folder is as untrusted as the rest of the storage: every access walks
from its root one folder at a time with ``O_NOFOLLOW``, so a symbolic link
planted below it is refused, never followed; blobs are created once (a
temporary file linked into place, so no reader sees half a record, and two
writers never both win) and sizes are checked before reading.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from hub.blobs import check_key
from hub.errors import IntegrityError

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
_MAX_DEPTH = 8


def write_temp(folder: int, leaf: str, data: bytes, mode: int) -> str:
    """Write ``data`` to a new temp file next to ``leaf`` in the open folder ``folder``
    (``O_EXCL | O_NOFOLLOW``, fsynced); returns its name, for the caller to link or rename
    into place and then remove. A failed write removes the temp file before raising."""
    tmp = f".{leaf}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode, dir_fd=folder)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(out, view) :]
        os.fsync(out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=folder)
        raise
    finally:
        os.close(out)
    return tmp


def write_once(folder: int, leaf: str, data: bytes, mode: int) -> bool:
    """Create ``leaf`` in the open folder ``folder`` holding ``data``, unless it exists;
    True if this call created it.

    The bytes go to a new temp file (:func:`write_temp`), and the file is hard-linked
    into place (``link`` never follows a link and fails when the name exists, so no
    reader sees half a file and two writers never both win); the folder is fsynced
    after. The temp file is always removed.
    """
    tmp = write_temp(folder, leaf, data, mode)
    try:
        try:
            os.link(tmp, leaf, src_dir_fd=folder, dst_dir_fd=folder, follow_symlinks=False)
        except FileExistsError:
            return False
        os.fsync(folder)
        return True
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=folder)


class FolderRecords:
    """Write-once blobs under ``root`` (keys like ``names/upper/00000003``)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.url = self.root.resolve().as_uri()

    def __repr__(self) -> str:
        return f"FolderRecords({str(self.root)!r})"

    def _folder(self, parts: list[str], create: bool) -> int | None:
        """A descriptor of the folder ``parts`` below the root (None: absent, not created)."""
        fd = os.open(self.root, _DIR)
        try:
            for part in parts:
                if create:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o755, dir_fd=fd)
                try:
                    nxt = os.open(part, _DIR, dir_fd=fd)
                except FileNotFoundError:
                    return None
                except OSError:  # ELOOP (a link) or ENOTDIR (a file): planted, refused
                    raise IntegrityError(
                        f"record store {self.root}: {'/'.join(parts)} is not a plain folder "
                        "(a symbolic link?): the storage was altered outside qlora-hub"
                    ) from None
                os.close(fd)
                fd = nxt
            return fd
        except BaseException:
            os.close(fd)
            raise

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Create ``key`` with ``data`` unless it exists; True if this call created it."""
        *parts, leaf = check_key(key).split("/")
        fd = self._folder(parts, create=True)
        assert fd is not None
        try:
            return write_once(fd, leaf, data, 0o644)
        finally:
            os.close(fd)

    def get(self, key: str, limit: int | None = None) -> bytes:
        """The bytes under ``key``; IntegrityError when missing, not a regular file, or too big."""
        *parts, leaf = check_key(key).split("/")
        fd = self._folder(parts, create=False)
        try:
            if fd is None:
                raise FileNotFoundError(key)
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
            with os.fdopen(os.open(leaf, flags, dir_fd=fd), "rb") as fh:
                st = os.fstat(fh.fileno())
                if not stat.S_ISREG(st.st_mode) or (limit is not None and st.st_size > limit):
                    raise IntegrityError(
                        f"record {key} is not a regular file within its bound: the storage "
                        "was altered outside qlora-hub"
                    )
                return fh.read(st.st_size if limit is None else limit + 1)
        except OSError:
            raise IntegrityError(
                f"record {key} is missing or not a regular file: the storage was altered"
            ) from None
        finally:
            if fd is not None:
                os.close(fd)

    def exists(self, key: str) -> bool:
        """Whether ``key`` holds a blob."""
        try:
            self.get(key, limit=1 << 20)
        except IntegrityError:
            return False
        return True

    def keys(self, prefix: str) -> list[str]:
        """Every key under the folder ``prefix`` (ending in ``/``), sorted; dot files skipped.

        Entries that are no regular file (a planted link or FIFO) are listed as well:
        reading one is refused, so the name is refused rather than quietly shortened."""
        parts = [p for p in prefix.split("/") if p]
        fd = self._folder([check_key(p) for p in parts], create=False)
        if fd is None:
            return []
        out: list[str] = []
        try:
            self._walk(fd, prefix, out, 0)
        finally:
            os.close(fd)
        return sorted(out)

    def _walk(self, fd: int, prefix: str, out: list[str], depth: int) -> None:
        if depth > _MAX_DEPTH:
            raise IntegrityError(f"record store {self.root} is nested too deep: it was altered")
        for entry in os.scandir(fd):
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=False):
                sub = os.open(entry.name, _DIR, dir_fd=fd)
                try:
                    self._walk(sub, f"{prefix}{entry.name}/", out, depth + 1)
                finally:
                    os.close(sub)
            else:  # a link or FIFO is listed too, so that reading it refuses it loudly
                out.append(prefix + entry.name)
