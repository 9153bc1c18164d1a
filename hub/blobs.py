"""The blob layer: opaque named byte strings behind a URL (``file://``, ``s3://``, ...).

A storage backend (the vault) keeps only ciphertext, signed manifests, signed
records and wrapped keys in a blob store, so a blob store needs no trust:
whatever it returns is verified by the caller. Plugins add URL schemes with
the ``register_blob_stores`` hook; :func:`open_blobs` picks the store for a
URL. Keys look like ``objects/<object id>/payload``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlparse

from hub.errors import ConfigError, IntegrityError, PluginError

# the first segment may hold dots (``round.json``) but not start with one (temp files do)
_KEY_RE = re.compile(r"[a-z0-9_-][a-z0-9_.-]*(/[a-z0-9_.-]+)*", re.ASCII)
_SCHEME_RE = re.compile(r"[a-z][a-z0-9+.-]{0,31}", re.ASCII)


@runtime_checkable
class BlobStore(Protocol):
    """Where a backend keeps its opaque objects. Writes are atomic per key."""

    url: str

    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` atomically (all or nothing, durable on return)."""

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Store ``data`` under ``key`` only if no blob is there, atomically across
        processes and machines; True if this call created it, False if it existed."""

    def get(self, key: str, limit: int | None = None) -> bytes:
        """The bytes under ``key``; IntegrityError if it is missing or over ``limit`` bytes
        (checked before the bytes are read where the store can tell)."""

    def exists(self, key: str) -> bool:
        """Whether ``key`` holds a blob."""

    def delete(self, key: str) -> None:
        """Remove ``key`` (no error if absent)."""

    def keys(self, prefix: str) -> list[str]:
        """Every key starting with ``prefix`` (a folder-like prefix ending in ``/``), sorted."""

    # Optional, for large payloads: ``view(key)`` -> bytes-like, or an object with
    # ``len()`` and ``read_at(pos, n)`` that may still be downloading (s3), and
    # ``reader(key)`` -> such an object as a context manager (file://).


BlobFactory = Callable[[str, Any], BlobStore]
"""``factory(url, settings)`` -> :class:`BlobStore`; ``settings`` is a :class:`hub.config.Settings`."""


def check_key(key: str) -> str:
    """Refuse keys that could escape the store (``..``, absolute, odd characters)."""
    if not isinstance(key, str) or not _KEY_RE.fullmatch(key) or ".." in key:
        raise ValueError(f"invalid blob key {key!r}")
    return key


def get_bounded(store: BlobStore, key: str, limit: int) -> bytes:
    """``store.get(key)``, refused when over ``limit`` bytes."""
    try:
        blob = store.get(key, limit=limit)
    except TypeError:  # a store written before ``limit`` (reads, then checks)
        blob = store.get(key)
    if len(blob) > limit:
        raise IntegrityError(f"blob {key} is over its {limit:,} byte bound: the vault was altered")
    return blob


BLOB_SCHEMES: dict[str, Callable[[str], BlobStore]] = {}
"""Process-wide schemes (``factory(url)``), from :func:`register_blob_scheme`."""


def register_blob_scheme(scheme: str, factory: Callable[[str], BlobStore]) -> None:
    """Process-wide registration of ``scheme`` (prefer the ``register_blob_stores`` hook)."""
    if scheme in BLOB_SCHEMES:
        raise ConfigError(f"blob scheme {scheme!r} is already registered")
    BLOB_SCHEMES[scheme] = factory


def blob_schemes(hub: Any) -> dict[str, tuple[str, BlobFactory]]:
    """Scheme -> (plugin, factory) from every plugin's ``register_blob_stores`` (cached per hub)."""
    cached = getattr(hub, "_blob_schemes", None)
    if cached is not None:
        return cached
    found: dict[str, tuple[str, BlobFactory]] = {}

    def register_for(plugin: str) -> Callable[[str, BlobFactory], None]:
        def register(scheme: str, factory: BlobFactory) -> None:
            if not isinstance(scheme, str) or not _SCHEME_RE.fullmatch(scheme):
                raise PluginError(
                    f"plugin {plugin!r} registered blob scheme {scheme!r}: use a lower-case "
                    "URL scheme such as 's3'"
                )
            if not callable(factory):
                raise PluginError(f"plugin {plugin!r} registered a non-callable for {scheme!r}")
            if scheme in found:
                raise PluginError(
                    f"blob scheme {scheme!r} is registered by plugins {found[scheme][0]!r} "
                    f"and {plugin!r}: disable one"
                )
            found[scheme] = (plugin, factory)

        return register

    hub._call_each("register_blob_stores", register_for, order=list)
    hub._blob_schemes = found
    return found


def open_blobs(
    url: str, hub: Any = None, settings: Any = None, home: Path | None = None
) -> BlobStore:
    """Open the blob store at ``url``.

    Process-wide schemes (:func:`register_blob_scheme`; the vault's ``file://``)
    come first, then the ``register_blob_stores`` hook of ``hub`` (a default
    :class:`hub.plugins.Hub` when None).
    ``settings`` (re-read with ``hub``'s plugin tables when it lacks them)
    reach the factory, so a store reads its own table (``s3.endpoint_url``).
    """
    scheme = urlparse(url).scheme
    if scheme in BLOB_SCHEMES:  # the vault's own file://, and process-wide schemes
        return BLOB_SCHEMES[scheme](url)
    if hub is None:
        from hub.plugins import Hub

        hub = Hub()
    schemes = blob_schemes(hub)
    if scheme not in schemes:
        known = sorted({*schemes, *BLOB_SCHEMES})
        raise ConfigError(
            f"vault.blob_url {url!r}: no blob store for scheme {scheme!r}; known: "
            f"{', '.join(known)} (a plugin adds one with register_blob_stores)"
        )
    return schemes[scheme][1](url, _with_plugin_tables(settings, hub, home))


def _with_plugin_tables(settings: Any, hub: Any, home: Path | None) -> Any:
    """``settings`` that know ``hub``'s plugin tables (loaded again when they do not)."""
    from hub.config import load_settings, plugin_schema

    if settings is not None and not set(plugin_schema(hub)) - set(settings.values):
        return settings
    if settings is None:
        return load_settings(home, hub=hub)
    return load_settings(settings.home, settings.config_file, hub=hub)


def put_new(store: BlobStore, key: str, data: bytes) -> bool:
    """``store.put_if_absent(key, data)``; for a store without it, exists-then-put (atomic
    only under the caller's own lock: such a store serves one host)."""
    put_if_absent = getattr(store, "put_if_absent", None)
    if put_if_absent is not None:
        return bool(put_if_absent(key, data))
    if store.exists(key):
        return False
    store.put(key, data)
    return True
