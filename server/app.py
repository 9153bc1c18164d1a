"""The Litestar app factory: the API's routes, health, readiness, metrics and admin routes.

The server's state lives in :mod:`server.state` (re-exported here: ``build_state``).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from litestar import Litestar, MediaType, Request, Response, delete, get, post
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi import OpenAPIConfig

from server.api import APIError, chat_completions, completions, get_model, list_models, not_found
from server.cache import AdapterUnavailable, CacheBusy, StorageUnavailable
from server.collector import Collector, IdleCollection
from server.errors import storage_unavailable
from server.state import ServerState, build_state

__all__ = ["ServerState", "build_state", "create_app"]

log = logging.getLogger("qlora_hub.server")


@get("/health", sync_to_thread=False)
def health() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@get("/ready", sync_to_thread=False)
def ready(request: Request) -> Response:
    """Readiness: the base is loaded, the engine runs and adapter storage answers.

    A storage failure (the last listing or cold load failed) makes it 503 with the reason
    until a later storage call succeeds.
    """
    srv: ServerState = request.app.state.server
    body: dict[str, Any] = {"ready": True}
    if not (srv.ready and srv.engine.alive):
        body = {"ready": False, "reason": "the engine is not running"}
    elif srv.cache.storage_problem:
        body = {"ready": False, "reason": f"adapter storage: {srv.cache.storage_problem}"}
    return Response(body, status_code=200 if body["ready"] else 503)


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
    except AdapterUnavailable as exc:
        if len(exc.args) > 1:  # refused when loaded: an admin is told why
            raise APIError(422, f"adapter {exc.args[0]} refused: {exc.args[1]}") from None
        raise not_found(name) from None
    except CacheBusy as exc:
        raise APIError(503, str(exc), headers={"Retry-After": "1"}) from None
    except StorageUnavailable as exc:
        raise storage_unavailable(str(exc)) from None
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
    if isinstance(exc, StorageUnavailable):
        exc = storage_unavailable(str(exc))
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
    from server.gate import AdmissionGate, ProtocolGate

    # the state's fields are read when the app starts and runs, not here
    collector = Collector(getattr(state, "gc_threshold", ServerState.gc_threshold))
    # nothing waiting, generating or holding a queue place: collect now, not in the next burst
    idle_collection = IdleCollection(
        lambda: not (state.engine.queue_depth or state.engine.active or state.admission.holding)
    )
    series: dict[tuple[str, int], tuple[Any, Any]] = {}  # routes x statuses: bounded

    def observe(path: str, status: int, seconds: float) -> None:
        pair = series.get((path, status))
        if pair is None:  # labels() takes a lock and builds a key: once per route and status
            metrics = state.metrics
            pair = (metrics.requests.labels(path, str(status)), metrics.latency.labels(path))
            series[(path, status)] = pair
        pair[0].inc()
        pair[1].observe(seconds)

    plugin_routes = hub.routes() if hub is not None else []
    app = Litestar(
        route_handlers=[
            list_models,
            get_model,
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
        openapi_config=OpenAPIConfig(title="qlora-hub", version="1", path="/schema"),
        request_max_body_size=max_body_bytes,
        on_startup=[lambda: state.engine.start(), collector.start, idle_collection.start],
        on_shutdown=[idle_collection.stop, lambda: state.engine.stop(), collector.stop],
        debug=False,
        # Litestar's default config puts an INFO handler on the root logger, which prints
        # every library's INFO lines (httpx's per-request ones too); the server logs its own
        logging_config=None,
    )
    app.state.server = state
    app.state.idle_collection = idle_collection
    # outside Litestar's router, so requests for unknown paths are logged and counted too
    gate = AdmissionGate(app.asgi_handler, state)
    app.asgi_handler = access = AccessLogMiddleware(gate, observe)
    # serve's HTTP protocol answers the gate's refusals before any ASGI work (server.http)
    app.state.protocol_gate = ProtocolGate(gate, access)
    return app
