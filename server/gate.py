"""The admission gate: cheap rejections before Litestar parses anything.

For the generation endpoints it checks the API key, the key's rate limit and the
engine's queue straight on the ASGI scope, and answers 401 or 429 itself, without
routing, reading the body or building a Litestar response. What it decided is kept in
the scope, so the handlers' own :meth:`ServerState.authenticate` and
:meth:`ServerState.admit` calls return the same caller and queue place.
"""

from __future__ import annotations

import json
from typing import Any

from server.errors import APIError

GENERATION_PATHS = frozenset({"/v1/completions", "/v1/chat/completions"})


class AdmissionGate:
    """ASGI middleware in front of the app (inside the access log, which records its answers)."""

    def __init__(self, app: Any, state: Any) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"] in GENERATION_PATHS
        ):
            try:
                self.state.caller_of(scope)
                self.state.admit_scope(scope)
            except APIError as exc:
                await _answer(send, exc)
                return
        await self.app(scope, receive, send)


async def _answer(send: Any, exc: APIError) -> None:
    """The error in OpenAI's shape, as the app's exception handler writes it."""
    body = json.dumps(
        {
            "error": {
                "message": exc.detail,
                "type": "invalid_request_error",
                "param": None,
                "code": exc.status_code,
            }
        },
        separators=(",", ":"),
    ).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        # the request's body is never read: close rather than receive it for nothing
        (b"connection", b"close"),
    ]
    headers += [(k.lower().encode(), str(v).encode()) for k, v in (exc.headers or {}).items()]
    await send({"type": "http.response.start", "status": exc.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
