"""The Litestar app factory and the state one server holds (base, bank, engine, cache, keys)."""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from litestar import Litestar, MediaType, Request, Response, delete, get, post
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi import OpenAPIConfig

from server.api import APIError, chat_completions, completions, list_models, not_found
from server.auth import Caller, KeyStore, RateLimiter
from server.cache import AdapterCache, AdapterUnavailable, CacheBusy
from server.engine import Engine
from server.metrics import ServerMetrics

log = logging.getLogger("qlora_hub.server")


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

    def authenticate(self, request: Request) -> Caller:
        """The caller of ``request`` from ``Authorization: Bearer KEY``; 401 or 429 otherwise."""
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        caller = self.keys.lookup(key.strip()) if scheme.lower() == "bearer" else None
        if caller is None:
            raise APIError(401, "missing or invalid API key: send Authorization: Bearer <key>")
        wait = self.limiter.take(caller.key_id)
        if wait > 0:
            raise APIError(
                429,
                "rate limit exceeded for this API key",
                headers={"Retry-After": str(int(wait) + 1)},
            )
        request.scope["state"]["log"].update(team=caller.team, key_id=caller.key_id)
        return caller

    def admin(self, request: Request) -> Caller:
        """Like :meth:`authenticate`, and 403 unless the key is an admin key."""
        caller = self.authenticate(request)
        if not caller.admin:
            raise APIError(403, "this endpoint needs an admin API key")
        return caller


def build_state(
    hub: Any, settings: Any, base: Any, store: Any, *, identity: str | None = None
) -> ServerState:
    """Wire a loaded base, a storage backend and the ``[serve]`` settings into a server.

    Args:
        hub: the plugin host.
        settings: :class:`hub.config.Settings` (``serve.*`` keys, ``home`` for API keys).
        base: a :class:`hub.models.LoadedBase` (loaded once; its linear layers get wrapped).
        store: a storage backend instance the server reads adapters from.
        identity: the server's team in storage (default ``serve.identity``).
    """
    import torch

    from server.lora import LoRABank

    s = settings.get
    metrics = ServerMetrics()
    bank = LoRABank(base.model, torch.float32)  # LoRA math in fp32, like PEFT
    tok = base.tokenizer
    eos = {tok.eos_token_id}
    end = tok.convert_tokens_to_ids("<|end|>")
    if isinstance(end, int) and end != tok.unk_token_id:
        eos.add(end)  # chat turns end with <|end|>
    engine = Engine(
        base.model,
        tok,
        bank,
        max_batch=s("serve.max_batch"),
        max_queue=s("serve.max_queue"),
        eos_ids=eos,
        on_step=metrics.batch_rows.observe,
        on_finish=metrics.observe_finish,
    )
    cache = AdapterCache(
        hub,
        store,
        identity or s("serve.identity"),
        bank,
        base_fingerprint=base.fingerprint,
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
    context = int(getattr(base.model.config, "max_position_embeddings", 2048))
    return ServerState(
        engine=engine,
        cache=cache,
        keys=KeyStore(Path(settings.home)),
        limiter=RateLimiter(s("serve.rate_limit_per_minute")),
        metrics=metrics,
        tokenizer=tok,
        context=context,
        max_tokens_cap=s("serve.max_tokens_cap"),
        request_timeout_s=s("serve.request_timeout_s"),
        base_fingerprint=base.fingerprint,
    )


@get("/health", sync_to_thread=False)
def health() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@get("/ready", sync_to_thread=False)
def ready(request: Request) -> Response:
    """Readiness: the base is loaded and the engine runs."""
    srv: ServerState = request.app.state.server
    ok = srv.ready and srv.engine._thread is not None and srv.engine._thread.is_alive()
    return Response({"ready": ok}, status_code=200 if ok else 503)


@get("/metrics", sync_to_thread=False, media_type=MediaType.TEXT)
def metrics(request: Request) -> Response:
    """Prometheus text format."""
    srv: ServerState = request.app.state.server
    return Response(srv.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


@get("/v1/adapters")
async def adapters_list(request: Request) -> dict[str, Any]:
    """Admin: resident adapters with sizes, hits and load times."""
    srv: ServerState = request.app.state.server
    srv.admin(request)
    return {
        "data": srv.cache.info(),
        "resident_bytes": srv.cache.resident_bytes,
        "max_resident": srv.cache.max_resident,
        "max_resident_bytes": srv.cache.max_bytes,
    }


@post("/v1/adapters/{name:str}/load", status_code=200)
async def adapters_load(request: Request, name: str) -> dict[str, Any]:
    """Admin: load the newest version of ``name`` now (hot-swap: new requests get it)."""
    import anyio

    srv: ServerState = request.app.state.server
    srv.admin(request)
    try:
        entry = await anyio.to_thread.run_sync(srv.cache.load, name)
    except AdapterUnavailable:
        raise not_found(name) from None
    except CacheBusy as exc:
        raise APIError(503, str(exc), headers={"Retry-After": "1"}) from None
    return entry.info()


@delete("/v1/adapters/{name:str}", status_code=200)
async def adapters_unload(request: Request, name: str) -> dict[str, Any]:
    """Admin: unload every resident version of ``name`` (running requests finish first)."""
    srv: ServerState = request.app.state.server
    srv.admin(request)
    refs = srv.cache.unload(name)
    if not refs:
        raise not_found(name)
    return {"unloaded": [str(r) for r in refs]}


_FIELD_IN_MESSAGE = re.compile(r"(?:field `|at `\$\.)([A-Za-z0-9_.\[\]]+)`")


def _field_of(detail: dict[str, Any]) -> str | None:
    """The request field a validation detail is about (msgspec names it in the message)."""
    key = detail.get("key")
    if key and key != "data":
        return key
    found = _FIELD_IN_MESSAGE.search(str(detail.get("message", "")))
    return found.group(1) if found else None


def _openai_error(request: Request, exc: Exception) -> Response:
    """Every error in OpenAI's shape; validation errors name the offending field."""
    if isinstance(exc, ValidationException):
        status, param = 400, None
        extra = exc.extra if isinstance(exc.extra, list) else []
        details = [e for e in extra if isinstance(e, dict)]
        if details:
            param = _field_of(details[0])
            message = "; ".join(f"{_field_of(d) or 'body'}: {d.get('message')}" for d in details)
        else:
            message = f"request body is not valid JSON: {exc.detail}"
        kind = "invalid_request_error"
    elif isinstance(exc, HTTPException):
        status, message, param = exc.status_code, exc.detail, getattr(exc, "param", None)
        kind = "invalid_request_error" if status < 500 else "server_error"
    else:
        log.exception(
            "unhandled error", extra={"request_id": request.scope["state"].get("request_id")}
        )
        status, message, param, kind = 500, "internal server error", None, "server_error"
    headers = getattr(exc, "headers", None) or {}
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return Response(body, status_code=status, headers=headers)


def create_app(state: ServerState, hub: Any = None, *, max_body_bytes: int = 1 << 20) -> Litestar:
    """The Litestar app serving ``state``; ``hub``'s ``register_routes`` handlers are mounted too.

    The engine thread starts with the app and stops with it.
    """
    from server.accesslog import AccessLogMiddleware

    def observe(path: str, status: int, seconds: float) -> None:
        state.metrics.requests.labels(path, str(status)).inc()
        state.metrics.latency.labels(path).observe(seconds)

    plugin_routes = hub.routes() if hub is not None else []
    app = Litestar(
        route_handlers=[
            list_models,
            completions,
            chat_completions,
            adapters_list,
            adapters_load,
            adapters_unload,
            health,
            ready,
            metrics,
            *plugin_routes,
        ],
        exception_handlers={Exception: _openai_error},
        middleware=[lambda app: AccessLogMiddleware(app, observe)],
        openapi_config=OpenAPIConfig(title="qlora-hub", version="1", path="/schema"),
        request_max_body_size=max_body_bytes,
        on_startup=[lambda: state.engine.start()],
        on_shutdown=[lambda: state.engine.stop()],
        debug=False,
    )
    app.state.server = state
    return app
