"""The admission gate: cheap rejections before Litestar parses anything.

For the generation endpoints it checks the API key, the key's rate limit and the
engine's queue straight on the ASGI scope, and answers 401 or 429 itself, without
routing, reading the body or building a Litestar response. What it decided is kept in
the scope, so the handlers' own :meth:`ServerState.authenticate` and
:meth:`ServerState.admit` calls return the same caller and queue place.

Under ``serve``'s HTTP protocol (:mod:`server.http`) the same decision is taken earlier
still, by :class:`ProtocolGate`, as soon as a request's headers are parsed: a refusal is
written to the socket from the parser's callback, with no ASGI task, scope walk or
middleware call. Earlier yet, a connection's first bytes holding a whole, plain request
head for a generation path (:func:`plain_head`) are decided before the parser sees them,
so a burst of refusals costs no parser callback either (docs/benchmarks.md). The answers
are the same bytes the ASGI path writes, logged and counted the same way.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import time
from http import HTTPStatus
from typing import Any

from server.accesslog import request_id_from
from server.state import Refusal

GENERATION_PATHS = frozenset({"/v1/completions", "/v1/chat/completions"})
# the gate's own failure (say an unreadable key file), answered as the app answers any error
FAILED = Refusal(500, "internal server error", "error")
log = logging.getLogger("qlora_hub.server")

_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"  # RFC 9110 field names
# a generation request's head with nothing the parser could read differently: HTTP/1.1,
# the exact path (no query, no percent-encoding), CRLF line ends, field names that are
# tokens right before their colon, values of visible ASCII, spaces and tabs (no obs-fold,
# no obs-text). No part can match a CR, so a match is linear in the head's length.
_PLAIN_HEAD = re.compile(
    rb"POST (/v1/completions|/v1/chat/completions) HTTP/1\.1\r\n"
    rb"((?:" + _TOKEN + rb":[\t\x20-\x7e]*\r\n)*)\r\n"
)
_FIELD = re.compile(rb"(" + _TOKEN + rb"):([\t\x20-\x7e]*)\r\n")
_LENGTH = re.compile(rb"[0-9]{1,18}[\t ]*")  # a Content-Length llhttp reads as a number


class AdmissionGate:
    """ASGI middleware in front of the app (inside the access log, which records its answers)."""

    def __init__(self, app: Any, state: Any) -> None:
        self.app, self.state = app, state

    def refusal(self, scope: dict) -> Refusal | None:
        """The 401/429 for a generation request ``scope`` whose key, rate or queue place is
        refused; ``None`` when it may go on (its caller and queue place are then in
        ``scope["state"]``) or when it is not a generation request."""
        if scope["method"] != "POST" or scope["path"] not in GENERATION_PATHS:
            return None
        scope["state"]["route"] = scope["path"]
        return self.state.check_caller(scope) or self.state.check_admission(scope)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            try:
                refused = self.refusal(scope)
            except Exception:
                log.exception(
                    "admission gate failed", extra={"request_id": scope["state"].get("request_id")}
                )
                refused = FAILED
            if refused is not None:
                status, headers, body = error_response(refused)
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": body, "more_body": False})
                return
            if "leave" in scope["state"]:
                # an admitted generation request lets the loop read the sockets once more
                # before its handler's work: refusals that arrived with it go out first
                await asyncio.sleep(0)
        await self.app(scope, receive, send)


def error_response(refused: Refusal) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Status, headers and body of the gate's answer ``refused``, in OpenAI's error shape as
    the app's exception handler writes it."""
    status, headers, body, _ = _rendered(refused)
    return status, list(headers), body


@functools.lru_cache(maxsize=128)
def _rendered(refused: Refusal) -> tuple[int, tuple[tuple[bytes, bytes], ...], bytes, bytes]:
    """Status, headers, body, and the status line and headers as HTTP/1.1 bytes (the gate's
    answers are a handful of fixed messages: each is rendered once)."""
    status, message = refused.status, refused.message
    body = json.dumps(
        {
            "error": {
                "message": message,
                "type": "invalid_request_error" if status < 500 else "server_error",
                "param": None,
                "code": status,
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
    headers += [(k.lower().encode(), v.encode()) for k, v in refused.headers]
    head = f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n".encode()
    head += b"".join(name + b": " + value + b"\r\n" for name, value in headers)
    return status, tuple(headers), body, head


def plain_head(data: bytes, limit: int) -> tuple[str, list[tuple[bytes, bytes]]] | None:
    """The path and headers (names lower-cased, values without the whitespace before them,
    as the parser gives them: llhttp keeps what follows a value) of the generation request
    whose head begins ``data``.

    ``None`` unless the head is whole within ``limit`` bytes and plain (:data:`_PLAIN_HEAD`),
    asks no protocol upgrade and frames its body as the parser surely accepts (no
    ``Transfer-Encoding``, at most one ``Content-Length`` of up to 18 digits; llhttp answers
    400 to a duplicate, empty, signed or overflowing one, and to most transfer codings):
    anything else is left to the parser, which reads it exactly as before, so a head read
    here is one the parser would read the same way, never one it would refuse as malformed.
    """
    if not data.startswith(b"POST /v1/"):  # any other request: no scan for the head's end
        return None
    end = data.find(b"\r\n\r\n", 0, limit + 4)
    if end < 0:
        return None
    match = _PLAIN_HEAD.match(data, 0, end + 4)
    if match is None:
        return None
    headers = [(name.lower(), value.lstrip(b" \t")) for name, value in _FIELD.findall(match[2])]
    lengths = 0
    for name, value in headers:
        if name == b"content-length":
            lengths += 1
            if lengths > 1 or not _LENGTH.fullmatch(value):
                return None
        elif name in (b"upgrade", b"transfer-encoding"):
            return None
    return match[1].decode("ascii"), headers


class ProtocolGate:
    """The gate's decision taken by the HTTP protocol once a request's headers are parsed.

    :meth:`answer` returns the whole HTTP/1.1 refusal (status line, the server's default
    headers, the request id, the body) for the protocol to write and close, after logging
    and counting it through the access log; ``None`` lets the request on to the app.
    """

    def __init__(self, gate: AdmissionGate, access: Any) -> None:
        self.gate, self.access = gate, access

    def answer(self, scope: dict, default_headers: list[tuple[bytes, bytes]]) -> bytes | None:
        """The refusal for ``scope`` as bytes to write, or ``None`` (see the class)."""
        started = time.perf_counter()
        scope.setdefault("state", {})
        try:
            refused = self.gate.refusal(scope)
        except Exception:  # an unreadable key file: raised from the parser it would be a 400
            return None  # the app's own gate meets it again, where it is a logged 500
        if refused is None:
            return None
        rid = request_id_from(scope["headers"])
        scope["state"]["request_id"] = rid
        status, _, body, head = _rendered(refused)
        lines = [head]
        for name, value in default_headers:  # uvicorn's server and date
            lines += [name, b": ", value, b"\r\n"]
        lines += [b"x-request-id: ", rid.encode(), b"\r\n\r\n", body]
        self.access.finish(scope, status, time.perf_counter() - started)
        return b"".join(lines)
