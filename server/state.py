"""The state one server holds (engine, cache, keys, metrics) and how it is built.

The app (:mod:`server.app`) and the API handlers (:mod:`server.api`) both read it; it
imports neither of them.
"""

from __future__ import annotations

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
        if "caller" in scope["state"]:
            return scope["state"]["caller"]
        header = next(
            (v.decode("latin-1") for k, v in scope["headers"] if k.lower() == b"authorization"),
            "",
        )
        scheme, _, key = header.partition(" ")
        caller = self.keys.lookup(key.strip()) if scheme.lower() == "bearer" else None
        if caller is None:
            self.metrics.rejected.labels("unauthorized").inc()
            raise APIError(401, "missing or invalid API key: send Authorization: Bearer <key>")
        wait = self.limiter.take(caller.key_id)
        if wait > 0:
            self.metrics.rejected.labels("rate_limited").inc()
            raise APIError(
                429,
                "rate limit exceeded for this API key",
                headers={"Retry-After": str(int(wait) + 1)},
            )
        scope["state"]["caller"] = caller
        scope["state"].setdefault("log", {}).update(team=caller.team, key_id=caller.key_id)
        return caller

    def admit(self, request: Request) -> Callable[[], None]:
        """Take a place in the engine's queue before the body is read; 429 when it is full.

        Returns ``leave`` (idempotent): call it once the engine has queued the request. The
        place is given back when the HTTP exchange ends in any case.
        """
        return self.admit_scope(request.scope)

    def admit_scope(self, scope: dict) -> Callable[[], None]:
        """:meth:`admit` for an ASGI scope (once per request, like :meth:`caller_of`)."""
        if "leave" in scope["state"]:
            return scope["state"]["leave"]
        leave = self.admission.enter()
        if leave is None:
            self.metrics.rejected.labels("queue_full").inc()
            raise APIError(
                429, "the server is at capacity; retry shortly", headers={"Retry-After": "1"}
            )
        scope["state"]["leave"] = leave
        on_close(scope, leave)
        return leave

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
    )
