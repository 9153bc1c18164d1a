"""Structured access logs: one JSON line per request with its request id; no prompts, no keys."""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import re
import secrets
import time
from typing import Any

log = logging.getLogger("qlora_hub.server.access")
UNKNOWN_PATH = "(unknown)"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# Request ids only tie log lines together (a caller may choose its own), but every client
# sees one, refusals included: ids from a generator whose outputs reveal its state (random's
# Mersenne Twister: 156 ids of 128 bits) would tell any client how many requests others made
# between two of its own, and the id the next one gets. A keyed BLAKE2b of a counter costs
# the same and makes no system call per request (os.urandom releases the interpreter lock,
# and the serving loop then waits for the engine's thread to hand it back); a forked child
# draws its own key.
_id_key = secrets.token_bytes(32)
_id_count = itertools.count()


def _new_id_key() -> None:
    global _id_key
    _id_key = secrets.token_bytes(32)


os.register_at_fork(after_in_child=_new_id_key)


def request_id_from(headers: list[tuple[bytes, bytes]]) -> str:
    """The caller's ``X-Request-ID`` when well formed, else a fresh one."""
    for name, value in headers:
        if name.lower() == b"x-request-id":
            text = value.decode("latin-1")
            if _REQUEST_ID.match(text):
                return text
    number = next(_id_count).to_bytes(8, "little")
    return hashlib.blake2b(number, key=_id_key, digest_size=16).hexdigest()


def on_close(scope: dict, callback: Any) -> None:
    """Run ``callback()`` when the HTTP exchange of ``scope`` ends, however it ends.

    Handlers use it for what must never be left behind (a queue place, a request the
    engine still runs for a client that went away): the middleware calls every callback
    after the response, also when the handler raised or the client disconnected.
    """
    scope["state"].setdefault("on_close", []).append(callback)


class AccessLogMiddleware:
    """ASGI middleware: assigns the request id, echoes it as ``X-Request-ID``, logs the outcome.

    Handlers add safe fields (team, model, token counts) to ``scope["state"]["log"]``.
    """

    def __init__(self, app: Any, observe: Any = None) -> None:
        self.app = app
        self.observe = observe

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id_from(scope.get("headers", []))
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        # kept when serve's protocol already admitted the request (server.gate.ProtocolGate):
        # the caller it found (team, key id) belongs in this line too
        state.setdefault("log", {})
        started = time.perf_counter()
        status = {"code": 500}

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            for callback in state.get("on_close", []):
                try:
                    callback()
                except Exception:
                    log.exception("cleanup after request %s failed", rid)
            self.finish(scope, status["code"], time.perf_counter() - started)

    def finish(self, scope: dict, status: int, seconds: float) -> None:
        """Log the exchange of ``scope`` (request id, route, status, time) and count it.

        The route is the handler's path template; before routing (the admission gate's
        answers) it is the path the gate matched (``state["route"]``); unknown paths
        share one label (no unbounded metric series from scanners).
        """
        state = scope["state"]
        route = scope.get("route_handler")
        path_template = getattr(route, "paths", None)
        path = sorted(path_template)[0] if path_template else state.get("route", UNKNOWN_PATH)
        if log.isEnabledFor(logging.INFO):  # a burst of refusals with the log off builds nothing
            record = {
                "event": "access",
                "request_id": state["request_id"],
                "method": scope["method"],
                "path": path,
                "status": status,
                "ms": round(seconds * 1000, 1),
                **state.get("log", {}),
            }
            if path == UNKNOWN_PATH:
                record["unknown_path"] = scope["path"][:200]
            log.info(json.dumps(record))
        if self.observe:
            self.observe(path, status, seconds)
