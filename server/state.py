"""The state one server holds (engine, cache, keys, metrics) and how it is built.

The app (:mod:`server.app`) and the API handlers (:mod:`server.api`) both read it; it
imports neither of them.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from litestar import Request

from hub.engines import Engine, open_engine
from server.accesslog import on_close
from server.auth import Admission, Caller, KeyStore, RateLimiter
from server.cache import AdapterCache
from server.errors import APIError
from server.metrics import ServerMetrics


@dataclass(frozen=True)
class Refusal:
    """A request refused before any work: its status, message, extra headers, and the
    ``reason`` label it is counted under in ``qlora_hub_rejected_requests``."""

    status: int
    message: str
    reason: str
    headers: tuple[tuple[str, str], ...] = ()

    def error(self) -> APIError:
        """The refusal as the exception the handlers raise."""
        return APIError(self.status, self.message, headers=dict(self.headers) or None)


UNAUTHORIZED = Refusal(
    401, "missing or invalid API key: send Authorization: Bearer <key>", "unauthorized"
)
QUEUE_FULL = Refusal(
    429, "the server is at capacity; retry shortly", "queue_full", (("Retry-After", "1"),)
)


@functools.lru_cache(maxsize=64)
def rate_limited(retry_after_s: int) -> Refusal:
    """The 429 for a key past its rate limit, ``retry_after_s`` seconds before its next token."""
    return Refusal(
        429,
        "rate limit exceeded for this API key",
        "rate_limited",
        (("Retry-After", str(retry_after_s)),),
    )


@dataclass
class ServerState:
    """Everything the handlers use. Build with :func:`build_state`."""

    engine: Engine
    cache: AdapterCache
    keys: KeyStore
    limiter: RateLimiter
    metrics: ServerMetrics
    tokenizer: Any
    context: int
    max_tokens_cap: int
    request_timeout_s: float
    base_fingerprint: str
    started: int = field(default_factory=lambda: int(time.time()))
    ready: bool = True
    unknown_fields: str = "reject"  # "ignore": request fields that are no OpenAI field pass
    gc_threshold: int = 700  # the collector's first threshold while the app runs (Python's)
    admission: Admission = field(init=False)

    def __post_init__(self) -> None:
        self.admission = Admission(lambda: self.engine.max_queue, lambda: self.engine.queue_depth)

    def authenticate(self, request: Request) -> Caller:
        """The caller of ``request`` from ``Authorization: Bearer KEY``; 401 or 429 otherwise."""
        return self.caller_of(request.scope)

    def caller_of(self, scope: dict) -> Caller:
        """The caller from the scope's ``Authorization: Bearer KEY``; 401 or 429 otherwise.

        Checked once per request (the rate limit spends one token): later calls for the
        same scope return the same caller.
        """
        refused = self.check_caller(scope)
        if refused is not None:
            raise refused.error()
        return scope["state"]["caller"]

    def check_caller(self, scope: dict) -> Refusal | None:
        """:meth:`caller_of` without raising: the refusal (401, or 429 for the key's rate
        limit), or ``None`` with the caller in ``scope["state"]["caller"]``. The admission
        gate answers a burst of refusals through this, so it builds no exception."""
        state = scope["state"]
        if "caller" in state:
            return None
        header = b""
        for name, value in scope["headers"]:
            if name.lower() == b"authorization":
                header = value
                break
        scheme, _, key = header.decode("latin-1").partition(" ")
        caller = self.keys.lookup(key.strip()) if scheme.lower() == "bearer" else None
        if caller is None:
            self.metrics.refused(UNAUTHORIZED.reason)
            return UNAUTHORIZED
        wait = self.limiter.take(caller.key_id)
        if wait > 0:
            self.metrics.refused("rate_limited")
            return rate_limited(int(wait) + 1)
        state["caller"] = caller
        state.setdefault("log", {}).update(team=caller.team, key_id=caller.key_id)
        return None

    def admit(self, request: Request) -> Callable[[], None]:
        """Take a place in the engine's queue before the body is read; 429 when it is full.

        Returns ``leave`` (idempotent): call it once the engine has queued the request. The
        place is given back when the HTTP exchange ends in any case.
        """
        return self.admit_scope(request.scope)

    def admit_scope(self, scope: dict) -> Callable[[], None]:
        """:meth:`admit` for an ASGI scope (once per request, like :meth:`caller_of`)."""
        refused = self.check_admission(scope)
        if refused is not None:
            raise refused.error()
        return scope["state"]["leave"]

    def check_admission(self, scope: dict) -> Refusal | None:
        """:meth:`admit_scope` without raising: :data:`QUEUE_FULL`, or ``None`` with the
        place's ``leave`` in ``scope["state"]["leave"]`` (also run when the exchange ends)."""
        state = scope["state"]
        if "leave" in state:
            return None
        leave = self.admission.enter()
        if leave is None:
            self.metrics.refused(QUEUE_FULL.reason)
            return QUEUE_FULL
        state["leave"] = leave
        on_close(scope, leave)
        return None

    def admin(self, request: Request) -> Caller:
        """Like :meth:`authenticate`, and 403 unless the key is an admin key."""
        caller = self.authenticate(request)
        if not caller.admin:
            raise APIError(403, "this endpoint needs an admin API key")
        return caller


def build_state(
    hub: Any, settings: Any, base: Any, store: Any, *, identity: str | None = None
) -> ServerState:
    """Wire an engine for the base, a storage backend and the ``[serve]`` settings into a server.

    Args:
        hub: the plugin host (its ``register_engines`` provide the engine).
        settings: :class:`hub.config.Settings` (``serve.*`` keys, ``serve.engine`` picks the
            engine, ``home`` for API keys).
        base: the base to serve: a checkpoint or Hugging Face directory, a
            :class:`hub.models.LoadedBase` already loaded (its linear layers get wrapped by
            the ``hf`` engine), or an :class:`hub.engines.Engine` already built (not started).
        store: a storage backend instance the server reads adapters from.
        identity: the server's team in storage (default ``serve.identity``).
    """
    s = settings.get
    metrics = ServerMetrics(max_label_values=s("serve.metrics_max_label_values"))
    engine = base if isinstance(base, Engine) else open_engine(hub, settings, base)
    engine.on_step = metrics.batch_rows.observe
    engine.on_finish = metrics.observe_finish
    cache = AdapterCache(
        hub,
        store,
        identity or s("serve.identity"),
        engine,
        base_fingerprint=engine.base_fingerprint,
        max_resident=s("serve.max_resident"),
        max_bytes=s("serve.max_resident_bytes"),
        list_ttl_s=s("serve.list_ttl_s"),
        on_event=lambda kind: metrics.adapter_events.labels(kind).inc(),
    )
    metrics.bind(
        lambda: engine.queue_depth,
        lambda: engine.active,
        lambda: len(cache.info()),
        lambda: cache.resident_bytes,
    )
    return ServerState(
        engine=engine,
        cache=cache,
        keys=KeyStore(Path(settings.home)),
        limiter=RateLimiter(s("serve.rate_limit_per_minute")),
        metrics=metrics,
        tokenizer=engine.tokenizer,
        context=engine.context,
        max_tokens_cap=s("serve.max_tokens_cap"),
        request_timeout_s=s("serve.request_timeout_s"),
        base_fingerprint=engine.base_fingerprint,
        unknown_fields=s("serve.unknown_fields"),
        gc_threshold=s("serve.gc_threshold"),
    )
