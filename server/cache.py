"""The adapter cache: pull on first use, verify, keep resident under a count and byte budget.

Entries are per version (``name@N``). A request pins the version it resolved
to for its whole life, so a newer version loaded meanwhile (hot-swap) only
serves requests that resolve after it; the old version leaves once unpinned.
When the budget is full, the least recently used unpinned entry is evicted;
if every resident entry is pinned, a new load waits for one to be released.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hub.engines import AdapterRefused
from hub.errors import HubError, ValidationError
from hub.names import split_owner
from hub.types import AdapterPayload, AdapterRef
from server.hf_engine import TensorsOf
from server.lora import parse_adapter

log = logging.getLogger("qlora_hub.server.cache")


class AdapterUnavailable(Exception):
    """The adapter does not exist for this caller, or was refused (HTTP 404)."""


class CacheBusy(Exception):
    """No slot freed up in time for a new adapter (HTTP 503)."""


class StorageUnavailable(Exception):
    """Storage failed while listing or loading an adapter (HTTP 503; ``/ready`` reports it)."""


@dataclass
class Entry:
    """One resident adapter version."""

    ref: AdapterRef
    slot: int
    nbytes: int
    load_ms: float
    loaded_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.monotonic)
    hits: int = 0
    pins: int = 0
    retired: bool = False

    def info(self) -> dict[str, Any]:
        """What ``GET /v1/adapters`` shows."""
        return {
            "name": self.ref.name,
            "version": self.ref.version,
            "bytes": self.nbytes,
            "hits": self.hits,
            "load_ms": round(self.load_ms, 2),
            "loaded_at": self.loaded_at,
            "in_use": self.pins,
        }


class AdapterCache:
    """Resident adapters of the server, loaded from a storage backend as the server identity.

    Args:
        hub: the plugin host (``validate_adapter`` and ``adapter_loaded`` hooks).
        store: a :class:`hub.types.StorageBackend` instance.
        identity: the server's team name in storage.
        engine: the :class:`hub.engines.Engine` resident adapters are added to.
        base_fingerprint: refuse adapters recorded against another base.
        max_resident, max_bytes: the budget.
        list_ttl_s: how long a storage listing is reused before asking storage again.
        on_event: optional ``on_event(kind)`` for metrics: ``load``, ``evict``, ``refused``.
    """

    def __init__(
        self,
        hub: Any,
        store: Any,
        identity: str,
        engine: Any,
        *,
        base_fingerprint: str | None = None,
        max_resident: int = 8,
        max_bytes: int = 1 << 30,
        list_ttl_s: float = 2.0,
        wait_s: float = 60.0,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self.hub, self.store, self.identity, self.engine = hub, store, identity, engine
        self.base_fingerprint = base_fingerprint
        self.max_resident, self.max_bytes = max_resident, max_bytes
        self.list_ttl_s, self.wait_s = list_ttl_s, wait_s
        self.on_event = on_event or (lambda kind: None)
        self.entries: dict[AdapterRef, Entry] = {}
        self._loading: dict[AdapterRef, threading.Event] = {}
        self._listings: dict[str, tuple[float, dict[str, dict[int, Any]]]] = {}
        self._cond = threading.Condition()
        self.storage_problem: str | None = None  # the last storage failure, until one succeeds

    def _storage(self, action: str, call: Callable[[], Any]) -> Any:
        """Run a storage call; an error that is not a refusal becomes :class:`StorageUnavailable`."""
        try:
            out = call()
        except (HubError, KeyError, ValueError):
            raise
        except Exception as exc:
            self.storage_problem = f"{action} failed: {type(exc).__name__}: {exc}"
            log.error("adapter storage unavailable: %s", self.storage_problem)
            raise StorageUnavailable(self.storage_problem) from None
        self.storage_problem = None
        return out

    # ---- access and resolution ------------------------------------------------------------

    def listing(self, team: str, refresh: bool = False) -> dict[str, dict[int, Any]]:
        """``name -> version -> AdapterRecord`` that ``team`` may read (cached ``list_ttl_s``)."""
        now = time.monotonic()
        hit = self._listings.get(team)
        if hit and not refresh and now - hit[0] < self.list_ttl_s:
            return hit[1]
        out: dict[str, dict[int, Any]] = {}
        for rec in self._storage("listing", lambda: self.store.list(team=team)):
            out.setdefault(rec.name, {})[rec.version] = rec
        self._listings[team] = (now, out)
        return out

    def visible(self, team: str) -> dict[str, dict[int, Any]]:
        """Adapters ``team`` may use through this server: readable by it and by the server."""
        mine, served = self.listing(team), self.listing(self.identity)
        out = {}
        for name, versions in mine.items():
            both = {v: rec for v, rec in versions.items() if v in served.get(name, {})}
            if both:
                out[name] = both
        return out

    def resolve(self, model: str, team: str | None, refresh: bool = False) -> AdapterRef:
        """The exact version ``model`` (``name``, ``name@N``, ``name@latest``) means for ``team``.

        ``team=None`` is an admin: any adapter the server may read. Raises
        :class:`AdapterUnavailable` when the caller may not see it (never says which).
        An owner-qualified ``owner/name[@N]`` only matches versions whose (signed) owner is
        ``owner``, and the ref returned keeps the owner, so the load checks it again and
        the entry is never shared with an unqualified request's.
        """
        try:
            ref = AdapterRef.parse(model)
            owner, name = split_owner(ref.name)
        except ValidationError:
            raise AdapterUnavailable(model) from None
        if refresh:
            self.listing(self.identity, refresh=True)
            if team is not None:
                self.listing(team, refresh=True)
        asked = time.monotonic()
        listing = self.listing(self.identity) if team is None else self.visible(team)
        versions = {
            v: rec
            for v, rec in listing.get(name, {}).items()
            if owner is None or getattr(rec, "team", None) == owner
        }
        version = ref.version if ref.version is not None else max(versions, default=None)
        if version is None or version not in versions:
            # maybe published or shared since the listing was cached (not if it was just read:
            # a second listing would double a miss's cost, which over S3 is many round trips)
            listed = [self._listings.get(t, (0.0,))[0] for t in {self.identity, team} if t]
            if not refresh and min(listed) < asked:
                return self.resolve(model, team, refresh=True)
            raise AdapterUnavailable(model)
        return AdapterRef(ref.name, version)

    # ---- residency ------------------------------------------------------------------------

    def acquire(self, ref: AdapterRef) -> Entry:
        """Pin ``ref`` (loading it first if needed); pair with :meth:`release`. Blocking."""
        while True:
            with self._cond:
                entry = self.entries.get(ref)
                if entry is not None and not entry.retired:
                    entry.pins += 1
                    entry.hits += 1
                    entry.last_used = time.monotonic()
                    self.on_event("hit")
                    return entry
                loading = self._loading.get(ref)
                if loading is None:
                    loading = self._loading[ref] = threading.Event()
                    owner = True
                else:
                    owner = False
            if not owner:
                loading.wait(self.wait_s)
                failed = getattr(loading, "failed", None)
                if isinstance(failed, StorageUnavailable):
                    raise StorageUnavailable(str(failed))
                if failed is not None:
                    raise AdapterUnavailable(str(ref))
                continue  # loaded (or already evicted again under a tight budget): retry
            self.on_event("miss")
            try:
                self._load(ref)
            except BaseException as exc:
                loading.failed = exc
                raise
            finally:
                with self._cond:
                    self._loading.pop(ref, None)
                loading.set()

    def release(self, entry: Entry) -> None:
        """Unpin; a retired entry (unloaded or replaced) leaves when its last pin goes."""
        with self._cond:
            entry.pins -= 1
            entry.last_used = time.monotonic()
            if entry.retired and entry.pins == 0:
                self._drop(entry)
            self._cond.notify_all()

    def _load(self, ref: AdapterRef) -> None:
        started = time.perf_counter()
        try:
            # the backend verifies (hashes; signatures and trust in the vault), decrypts in
            # memory and fires the adapter_loaded hook with where="server"
            payload = self._storage(
                f"loading adapter {ref}",
                lambda: self.store.pull(ref, team=self.identity, where="server"),
            )
            self._verify(payload, ref)
            config, tensors = self._checked_tensors(payload)
        except (HubError, KeyError, ValueError) as exc:
            raise self._refuse(ref, str(exc)) from None
        nbytes = payload.nbytes
        with self._cond:
            self._make_room(nbytes)
            try:
                slot = self.engine.add_adapter(str(ref), config, tensors)
            except AdapterRefused as exc:
                raise self._refuse(ref, f"{ref}: {exc}") from None
            load_ms = (time.perf_counter() - started) * 1000
            self.entries[ref] = Entry(ref=ref, slot=slot, nbytes=nbytes, load_ms=load_ms)
            self._cond.notify_all()
        self.on_event("load")
        log.info(
            "adapter %s loaded in %.1f ms (%d bytes)",
            ref,
            load_ms,
            nbytes,
            extra={"adapter": str(ref), "load_ms": round(load_ms, 1)},
        )

    def _refuse(self, ref: AdapterRef, reason: str) -> AdapterUnavailable:
        """Log and count a refusal; the error to raise (``args[1]``: why, for admins)."""
        extra = {"adapter": str(ref), "reason": reason}
        log.warning("adapter %s refused: %s", ref, reason, extra=extra)
        self.on_event("refused")
        return AdapterUnavailable(str(ref), reason)

    def _checked_tensors(self, payload: AdapterPayload) -> tuple[dict[str, Any], dict[str, Any]]:
        """The adapter's config and tensors, decoded once and checked against the engine's
        layer shapes (or, for an engine that checks shapes itself, against their own)."""
        try:
            config, tensors = payload.config(), payload.tensors()
        except (KeyError, ValueError) as exc:
            raise ValidationError(f"adapter {payload.ref}: unreadable files ({exc})") from None
        shapes = self.engine.adapter_shapes()
        parse_adapter(TensorsOf(payload.ref, config, tensors), shapes or implied_shapes(tensors))
        return config, tensors

    def _verify(self, payload: AdapterPayload, ref: AdapterRef) -> None:
        """Name, file hashes in the manifest (when present), and base."""
        ref = AdapterRef(split_owner(ref.name)[1], ref.version)  # the owner: checked by the pull
        if payload.name != ref.name:
            raise ValidationError(f"storage returned {payload.name!r} for {ref}")
        hashes = payload.manifest.get("files") if isinstance(payload.manifest, dict) else None
        if isinstance(hashes, dict):
            for fname, want in hashes.items():
                want = want.get("sha256") if isinstance(want, dict) else want
                data = payload.files.get(fname)
                if data is None or hashlib.sha256(data).hexdigest() != want:
                    raise ValidationError(f"{ref}: {fname} does not match its manifest hash")
        extra = set(payload.files) - {AdapterPayload.CONFIG, AdapterPayload.WEIGHTS}
        if extra:
            raise ValidationError(f"{ref}: unexpected files {sorted(extra)}")
        record = self.listing(self.identity).get(ref.name, {}).get(ref.version)
        recorded = getattr(record, "base_fingerprint", None)
        if self.base_fingerprint and recorded and recorded != self.base_fingerprint:
            raise ValidationError(
                f"{ref}: trained on another base ({recorded[:12]}); this server serves "
                f"{self.base_fingerprint[:12]}: retrain or re-import it with --base for this base"
            )
        # validate_adapter policy already ran once in the core's pull (hub.adapters)

    def _make_room(self, nbytes: int) -> None:
        """Evict LRU unpinned entries until one more of ``nbytes`` fits; waits while all are pinned."""
        deadline = time.monotonic() + self.wait_s
        while True:
            live = [e for e in self.entries.values() if not e.retired]
            used = sum(e.nbytes for e in self.entries.values())
            if len(live) < self.max_resident and used + nbytes <= self.max_bytes:
                return
            idle = [e for e in self.entries.values() if e.pins == 0]
            if idle:
                victim = min(idle, key=lambda e: (not e.retired, e.last_used))
                self._drop(victim)
                self.on_event("evict")
                log.info(
                    "adapter %s evicted: %s",
                    victim.ref,
                    "replaced or unloaded" if victim.retired else "least recently used",
                    extra={"adapter": str(victim.ref)},
                )
                continue
            if not live and used + nbytes > self.max_bytes:
                raise CacheBusy(f"an adapter of {nbytes} bytes exceeds the byte budget")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CacheBusy("every resident adapter is in use")
            self._cond.wait(remaining)

    def _drop(self, entry: Entry) -> None:
        self.entries.pop(entry.ref, None)
        self.engine.remove_adapter(entry.slot)

    # ---- admin ------------------------------------------------------------------------------

    def load(self, name: str) -> Entry:
        """Admin: resolve ``name`` freshly (newest version) and make it resident; retire older ones."""
        self._listings.clear()  # callers see the new version at once, not after list_ttl_s
        ref = self.resolve(name, None, refresh=True)
        entry = self.acquire(ref)
        self.release(entry)
        with self._cond:
            for other in list(self.entries.values()):
                if other.ref.name == ref.name and other.ref != ref:
                    self._retire(other)
        return entry

    def unload(self, name: str) -> list[AdapterRef]:
        """Admin: retire every resident version of ``name``; running requests finish first."""
        with self._cond:
            refs = [e.ref for e in self.entries.values() if e.ref.name == name and not e.retired]
            for ref in refs:
                self._retire(self.entries[ref])
        return refs

    def _retire(self, entry: Entry) -> None:
        entry.retired = True
        if entry.pins == 0:
            self._drop(entry)

    def set_budget(self, max_resident: int | None = None, max_bytes: int | None = None) -> None:
        """Change the budget now; idle entries over it are evicted at once, pinned ones later."""
        with self._cond:
            if max_resident is not None:
                self.max_resident = max_resident
            if max_bytes is not None:
                self.max_bytes = max_bytes
            while True:
                live = [e for e in self.entries.values() if not e.retired]
                over = len(live) > self.max_resident or self.resident_bytes > self.max_bytes
                idle = [e for e in live if e.pins == 0]
                if not over or not idle:
                    return
                self._drop(min(idle, key=lambda e: e.last_used))
                self.on_event("evict")

    def info(self) -> list[dict[str, Any]]:
        """Resident adapters, most recently used first."""
        with self._cond:
            live = [e for e in self.entries.values() if not e.retired]
            return [e.info() for e in sorted(live, key=lambda e: -e.last_used)]

    @property
    def resident_bytes(self) -> int:
        """Bytes of resident adapter payloads."""
        return sum(e.nbytes for e in self.entries.values())


def implied_shapes(tensors: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """``module -> (in, out)`` as an adapter's own 2-D ``lora_A``/``lora_B`` tensors imply
    them (for engines that check the base match themselves)."""
    halves: dict[str, dict[str, Any]] = {}
    for key, tensor in tensors.items():
        module, _, kind = key.removeprefix("base_model.model.").rpartition(".lora_")
        if kind in ("A.weight", "B.weight") and getattr(tensor, "ndim", 0) == 2:
            halves.setdefault(module, {})[kind[0]] = tensor
    return {
        m: (int(ab["A"].shape[1]), int(ab["B"].shape[0]))
        for m, ab in halves.items()
        if "A" in ab and "B" in ab
    }
