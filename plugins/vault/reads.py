"""Reading one version: from the owner's signed records to plaintext, every step checked.

A read of ``name@version`` by a team goes :func:`resolve` (the version the owner's
signed records let the team read, or the error that leaks no name), :func:`manifest`
(the manifest checked against the owner's signed publish record), :func:`data_key`
(the data key unwrapped with the team's private key), then :func:`decrypt` (the
payload decrypted and every hash checked, in memory). :func:`opening` runs the first
three for a pull and, over object storage, starts the payload's download meanwhile.

The vault object keeps what these learn (parsed manifests by SHA-256, unwrapped data
keys, which object a ref read last); sharing and the catalog reach them through its
``_manifest`` and ``_data_key`` (:class:`plugins.vault.backend.Vault`).
"""

from __future__ import annotations

import hashlib
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from hub.errors import AccessError, IntegrityError, UnknownNameError
from hub.grants import NameState
from hub.names import check_name
from hub.types import AdapterRef
from plugins.vault import objects
from plugins.vault.blobs import get_bounded
from plugins.vault.decrypt import decrypt_files
from plugins.vault.workers import in_background

if TYPE_CHECKING:
    from plugins.vault.backend import Vault

MAX_MANIFEST_BYTES = 16 << 20
MAX_KEY_BYTES = 64 << 10


def resolve(vault: Vault, ref: AdapterRef, team: str) -> tuple[NameState, int]:
    """The signed state of ``ref.name`` and the version ``team`` may read, or the right error."""
    name = check_name(ref.name)
    hidden = UnknownNameError(f"no adapter {ref} visible to team {team!r}: check `adapters list`")
    state = vault.state(name)
    if state is None or state.name != name or team not in state.ever:
        raise hidden  # never shared: same answer as absent, so names do not leak
    version = ref.version if ref.version is not None else state.latest(team)
    if version is None:
        version = state.latest()
        if version is None:
            raise hidden
    if version not in state.live():
        raise hidden
    if team not in state.readers(version):
        if team not in state.revoked:
            raise hidden
        raise AccessError(f"team {team}'s access to {name}@{version} was revoked by its owner")
    return state, version


def manifest(vault: Vault, state: NameState, version: int) -> dict[str, Any]:
    """The manifest of ``version``, checked against the owner's signed publish record."""
    grant = state.versions[version]
    # Bytes with the SHA-256 the owner's record signs verified before under the owner's
    # key: kept by that hash, they need no second read (a warm pull saves a round trip
    # to object storage). The binding to this name, version and owner is still checked
    # below (another name may point here).
    sha = grant.manifest_sha256
    found = vault._manifests.get((sha, state.owner_fingerprint))
    if found is None:
        key = vault._key(grant.object_id, "manifest")
        mblob = get_bounded(vault.blobs, key, MAX_MANIFEST_BYTES)
        sha = hashlib.sha256(mblob).hexdigest()
        found, sig = objects.read_manifest(mblob)
        objects.verify_manifest(vault._public_of(state.owner), found, sig)
        objects.check_shape(found)
    if (
        sha != grant.manifest_sha256
        or found.get("name") != state.name
        or found.get("version") != version
        or found.get("object_id") != grant.object_id
        or found.get("publisher") != state.owner
    ):
        raise IntegrityError(
            f"manifest of {state.name}@{version} belongs to another object: it does not "
            "match the owner's signed record"
        )
    vault._manifests[(sha, state.owner_fingerprint)] = found
    return found


def data_key(vault: Vault, state: NameState, version: int, team: str) -> bytes:
    """The data key of ``version`` unwrapped by ``team``, kept per (team, object,
    version): an object's key never changes (revoking re-encrypts into a new object)
    and who may read is decided by the signed records before this is asked, so a
    server's repeated pulls skip both the KEM and the read of the wrapped key."""
    oid = state.versions[version].object_id
    cache_key = (team, oid, version)
    key = vault._data_keys.get(cache_key)
    if key is None:
        blob = get_bounded(vault.blobs, vault._key(oid, f"keys/{team}"), MAX_KEY_BYTES)
        key = objects.unwrap_key(vault.identity(team), blob, bytes.fromhex(oid), version)
        if len(vault._data_keys) >= 1024:
            vault._data_keys.clear()
        vault._data_keys[cache_key] = key
    return key


def opening(
    vault: Vault, ref: AdapterRef, team: str, stream: bool = True
) -> tuple[NameState, int, dict[str, Any], bytes, Any]:
    """What a read of ``ref`` by ``team`` needs before decrypting: signed state, the
    version, its verified manifest, the data key unwrapped for ``team`` and, from object
    storage, the payload already downloading (None: it is read when decrypting)."""
    stream = stream and hasattr(vault.blobs, "view") and not hasattr(vault.blobs, "reader")
    hint = (team, ref.name, ref.version)
    early = _prefetch(vault, vault._payload_hints.get(hint)) if stream else None
    blob = None
    try:
        state, version = resolve(vault, ref, team)
        oid = state.versions[version].object_id
        if stream:
            # The payload downloads while the manifest and key are read and checked;
            # none of its bytes is used before both verified.
            blob = _prefetched(early, oid)
            early = None
            if blob is None:
                blob = vault.blobs.view(vault._key(oid, "payload"))
            if len(vault._payload_hints) >= 1024:
                vault._payload_hints.clear()
            vault._payload_hints[hint] = oid
        found = manifest(vault, state, version)
        return state, version, found, data_key(vault, state, version, team), blob
    except BaseException:
        getattr(blob, "close", lambda: None)()
        if early is not None:
            _prefetched(early, "")
        raise


def _prefetch(vault: Vault, oid: str | None) -> tuple[str, Future[Any]] | None:
    """Start downloading object ``oid``'s payload on a helper thread (a guess: the
    object the last pull of the same ref read), while this pull reads and verifies
    the name's signed records. Only ciphertext arrives early: it is used only if the
    verified records resolve to that same object, and then only after its manifest
    and key verified, as any payload."""
    if oid is None:
        return None
    return oid, in_background(vault.blobs.view, vault._key(oid, "payload"))


def _prefetched(early: tuple[str, Future[Any]] | None, oid: str) -> Any:
    """The early download if it is object ``oid``'s and started; else it is stopped
    (now or when its request returns) and None is returned."""
    if early is None:
        return None
    guess, future = early
    if guess == oid:
        try:
            return future.result()
        except Exception:  # gone or unreachable: the pull asks again and reports that
            return None
    future.add_done_callback(lambda f: f.exception() or f.result().close())
    return None


def decrypt(
    vault: Vault,
    state: NameState,
    version: int,
    manifest: dict[str, Any],
    key: bytes,
    blob: Any = None,
) -> dict[str, bytes]:
    """The files of ``version``, decrypted with ``key`` and checked against ``manifest``
    (from ``blob`` when it is already downloading)."""
    oid = state.versions[version].object_id
    if blob is not None:  # already downloading (object storage)
        try:
            return decrypt_files(blob, key, bytes.fromhex(oid), version, manifest["files"])
        finally:  # a refused payload stops its download (it waits for the reader)
            blob.close()
    key_ = vault._key(oid, "payload")
    # A store that can read a blob piece by piece (file://) saves a copy of the whole
    # payload: each chunk is read into one small reused buffer, then decrypted.
    if hasattr(vault.blobs, "reader"):
        with vault.blobs.reader(key_) as blob:
            return decrypt_files(blob, key, bytes.fromhex(oid), version, manifest["files"])
    blob = vault.blobs.view(key_) if hasattr(vault.blobs, "view") else vault.blobs.get(key_)
    return decrypt_files(blob, key, bytes.fromhex(oid), version, manifest["files"])
