"""The blob layer: opaque named byte strings behind a URL.

The vault stores only ciphertext, signed manifests and wrapped keys here, so
a blob store needs no trust. ``file://`` is built in; a plugin can add a
scheme (object storage, say) with :func:`register_blob_scheme` from its
module body. Keys look like ``objects/<object id>/payload``.
"""

from __future__ import annotations

import mmap
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable
from urllib.parse import unquote, urlparse

from hub.atomic import atomic_write, fsync_dir
from hub.errors import ConfigError, IntegrityError

_KEY_RE = re.compile(r"^[a-z0-9_-]+(/[a-z0-9_.-]+)*$")


@runtime_checkable
class BlobStore(Protocol):
    """Where the vault keeps its opaque objects. Writes must be atomic per key."""

    url: str

    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` atomically (all or nothing, durable on return)."""

    def get(self, key: str) -> bytes:
        """The bytes under ``key``; raises IntegrityError if it is missing."""

    def exists(self, key: str) -> bool:
        """Whether ``key`` holds a blob."""

    def delete(self, key: str) -> None:
        """Remove ``key`` (no error if absent)."""

    def keys(self, prefix: str) -> list[str]:
        """Every key starting with ``prefix`` (a folder-like prefix ending in ``/``)."""


def check_key(key: str) -> str:
    """Refuse keys that could escape the store (``..``, absolute, odd characters)."""
    if not _KEY_RE.match(key) or ".." in key:
        raise ValueError(f"invalid blob key {key!r}")
    return key


class FileBlobStore:
    """``file://`` blobs: one file per key, written with temp file + fsync + rename."""

    def __init__(self, url: str) -> None:
        parsed = urlparse(url)
        self.url = url
        self.root = Path(unquote(parsed.path))
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, data: bytes) -> None:
        """Atomic durable write (see :func:`hub.atomic.atomic_write`).

        Folders created on the way are fsynced into their parents too, so the
        blob survives a power cut once the index says it exists.
        """
        path = self._path(key)
        created = []
        parent = path.parent
        while not parent.exists():
            created.append(parent)
            parent = parent.parent
        for folder in reversed(created):
            folder.mkdir(exist_ok=True)
        atomic_write(path, data, mode=0o600)
        for folder in created:
            fsync_dir(folder.parent)

    def get(self, key: str) -> bytes:
        """Read the whole blob."""
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise IntegrityError(
                f"blob {key} is missing from {self.url}: the vault was altered outside qlora-hub"
            ) from None

    def view(self, key: str) -> memoryview:
        """A read-only memory map of the blob (no copy; used for large payloads)."""
        try:
            with open(self._path(key), "rb") as fh:
                if os.fstat(fh.fileno()).st_size == 0:
                    return memoryview(b"")
                return memoryview(mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ))
        except FileNotFoundError:
            raise IntegrityError(
                f"blob {key} is missing from {self.url}: the vault was altered outside qlora-hub"
            ) from None

    def exists(self, key: str) -> bool:
        """Whether the blob file exists."""
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        """Unlink the blob and drop now-empty folders."""
        path = self._path(key)
        path.unlink(missing_ok=True)
        for parent in path.parents:
            if parent == self.root:
                break
            try:
                parent.rmdir()
            except OSError:
                break

    def keys(self, prefix: str) -> list[str]:
        """Keys under ``prefix``; temp files from interrupted writes are skipped."""
        base = self.root / prefix if prefix else self.root
        if not base.exists():
            return []
        out = []
        for dirpath, _, files in os.walk(base):
            for f in files:
                if not f.endswith(".tmp"):
                    out.append(str(Path(dirpath, f).relative_to(self.root)))
        return sorted(out)


BLOB_SCHEMES: dict[str, Callable[[str], BlobStore]] = {"file": FileBlobStore}
"""URL scheme -> factory taking the URL."""


def register_blob_scheme(scheme: str, factory: Callable[[str], BlobStore]) -> None:
    """Let ``vault.blob_url`` use ``scheme://...``; ``factory(url)`` returns a :class:`BlobStore`."""
    if scheme in BLOB_SCHEMES:
        raise ConfigError(f"blob scheme {scheme!r} is already registered")
    BLOB_SCHEMES[scheme] = factory


def open_blobs(url: str) -> BlobStore:
    """Open the blob store at ``url``."""
    scheme = urlparse(url).scheme
    if scheme not in BLOB_SCHEMES:
        raise ConfigError(
            f"vault.blob_url {url!r}: no blob store for scheme {scheme!r}; known: "
            f"{', '.join(BLOB_SCHEMES)}"
        )
    return BLOB_SCHEMES[scheme](url)
