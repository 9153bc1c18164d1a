"""The HTTP server around the app: uvicorn with a connection cap and time limits from settings.

uvicorn closes idle keep-alive connections and caps concurrent connections, but waits
forever for a request's headers, so a client that trickles them in a byte at a time
(slow loris) holds a socket open for good. The protocols here close a connection whose
request headers are not complete ``header_timeout_s`` after it opened or after its
previous response ended, and refuse (400) a request head longer than ``max_header_bytes``.

Two HTTP parsers: httptools (C, llhttp) with the uvloop event loop when both are
installed, the default: under a burst of 1,000 requests each costs the server less than
half the CPU time h11 (pure Python) does, and a burst of 429s is made of nothing else
(docs/benchmarks.md); h11 otherwise, or when asked for.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import sys
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from hub.errors import ConfigError

log = logging.getLogger("qlora_hub.server.http")

# request targets the protocol's admission gate checks (exactly; anything else, a query
# string or percent-encoding included, goes through the app's own gate)
_GATED = frozenset({b"/v1/completions", b"/v1/chat/completions"})


class _HeaderTimeout:
    """A deadline for each request's headers (mixed into a uvicorn HTTP protocol)."""

    header_timeout_s = 10.0
    max_header_bytes = 16384
    _header_timer: asyncio.TimerHandle | None = None
    _head_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the clock for the first request's headers."""
        super().connection_made(transport)  # type: ignore[misc]
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._head_bytes = 0
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._expired)  # type: ignore[attr-defined]

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expired(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():  # type: ignore[attr-defined]
            log.info(
                "closing a connection whose request headers took over %.0f s", self.header_timeout_s
            )
            self.transport.close()  # type: ignore[attr-defined]

    def on_response_complete(self) -> None:
        """The next request on this connection gets its own deadline."""
        super().on_response_complete()  # type: ignore[misc]
        if not self.transport.is_closing():  # type: ignore[attr-defined]
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop the clock with the connection."""
        self._disarm()
        super().connection_lost(exc)  # type: ignore[misc]


class HeaderTimeoutH11(_HeaderTimeout, H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's headers (h11 bounds their
    size itself: ``h11_max_incomplete_event_size``)."""

    def handle_events(self) -> None:
        """Stop the clock once a request's headers are complete (a new cycle starts)."""
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:
            self._disarm()


def _httptools_protocol() -> type | None:
    """:class:`HeaderTimeoutHttpTools`, or ``None`` when httptools is not installed."""
    if importlib.util.find_spec("httptools") is None:
        return None
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from server.gate import plain_head

    class HeaderTimeoutHttpTools(_HeaderTimeout, HttpToolsProtocol):
        """uvicorn's httptools protocol with a deadline for each request's headers, a bound
        on their size (llhttp has none), and the admission gate (``gate``, a
        :class:`server.gate.ProtocolGate`)."""

        gate: Any = None
        _refused = False
        _fresh = False  # nothing received yet on this connection
        # the gate's state (caller, queue place) for a request admitted from its first
        # bytes, until the parser's request cycle takes it over
        _admitted: dict | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            """Note that the connection's first bytes are still to come."""
            super().connection_made(transport)
            self._fresh = True

        def data_received(self, data: bytes) -> None:
            """Feed the parser; 400 once a head still unfinished passes ``max_header_bytes``.
            A connection's first bytes may be answered before the parser sees them
            (:meth:`_answered_early`)."""
            if self._fresh:
                self._fresh = False
                if self._answered_early(data):
                    return
            waiting = self._header_timer is not None
            if waiting:
                self._head_bytes += len(data)
            super().data_received(data)
            still_waiting = waiting and self._header_timer is not None
            if still_waiting and self._head_bytes > self.max_header_bytes:
                if not self.transport.is_closing():
                    self.send_400_response("Request head too large.")
                self._disarm()

        def on_headers_complete(self) -> None:
            """Stop the clock: the request's headers are complete. A generation request the
            admission gate refuses (401/429) is answered here, from the parser's callback,
            and the connection closed: no request cycle, no ASGI task."""
            self._disarm()
            if self._refused:  # pipelined after a refusal on this connection: dropped
                return
            if self._admitted is not None:  # decided from the first bytes: the cycle takes
                self.scope["state"].update(self._admitted)  # its caller and queue place
                self._admitted = None
            elif self._gated():
                self.scope["method"] = self.parser.get_method().decode("ascii")
                self.scope["path"] = self.url.decode("ascii")
                answer = self.gate.answer(self.scope, self.server_state.default_headers)
                if answer is not None:
                    self._refuse(answer)
                    return
            super().on_headers_complete()

        def _gated(self) -> bool:
            """Whether the protocol's gate decides this request: only a request uvicorn
            starts at once does. A request pipelined behind one still being answered, an upgrade, or one
            past ``limit_concurrency`` (uvicorn's 503) is left to the app's own gate, which
            runs if and when the request does: a queue place taken here would never be
            given back (no ASGI task, no ``on_close``), and a refusal written here would
            overtake the previous response on the socket."""
            if self.gate is None or self.url not in _GATED or self.root_path:
                return False
            if self.cycle is not None and not self.cycle.response_complete:
                return False
            if self.parser.should_upgrade():
                return False
            return self._below_cap()

        def _below_cap(self) -> bool:
            cap = self.limit_concurrency
            return cap is None or (len(self.connections) < cap and len(self.tasks) < cap)

        def _answered_early(self, data: bytes) -> bool:
            """Take the gate's decision on a connection's first bytes, before the parser.

            When they hold a whole plain head of a generation request
            (:func:`server.gate.plain_head`), a refusal is written and the connection closed
            here: none of the parser's per-header callbacks run, which under a burst of
            refusals is about a third of the server's Python time per request. An admitted
            request's caller and queue place wait in ``_admitted`` for its request cycle
            (:meth:`on_headers_complete`), and the place is given back if the connection
            ends first. Returns whether the request was answered.
            """
            if self.gate is None or self.root_path or not self._below_cap():
                return False
            head = plain_head(data, self.max_header_bytes)
            if head is None:
                return False
            path, headers = head
            scope = {"type": "http", "method": "POST", "path": path, "headers": headers}
            answer = self.gate.answer(scope, self.server_state.default_headers)
            if answer is None:
                self._admitted = scope["state"]
                return False
            self._disarm()
            self._refuse(answer)
            return True

        def _refuse(self, answer: bytes) -> None:
            """Write the gate's refusal and close; whatever else the client sent is dropped."""
            self._refused = True
            self.transport.write(answer)
            self.transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            """A queue place taken from the first bytes goes back if no request cycle took it.
            A safeguard: the parser reads a plain head whole in the same call, and it is one
            llhttp accepts (tests/server/test_early_gate_review.py)."""
            admitted, self._admitted = self._admitted, None
            if admitted is not None and "leave" in admitted:
                admitted["leave"]()
            super().connection_lost(exc)

        def on_body(self, body: bytes) -> None:
            """A refused request's body is not read."""
            if not self._refused:
                super().on_body(body)

        def on_message_complete(self) -> None:
            """Nothing to complete for a refused request."""
            if not self._refused:
                super().on_message_complete()

    return HeaderTimeoutHttpTools


def http_protocol(parser: str | None = None) -> tuple[type, str]:
    """The protocol class and event loop for ``parser`` (``"httptools"``, ``"h11"``, or
    ``None``: httptools with uvloop when installed, else h11 on asyncio)."""
    if parser in (None, "httptools"):
        protocol = _httptools_protocol()
        if protocol is not None:
            return protocol, "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
        if parser == "httptools":
            raise RuntimeError("httptools is not installed: pip install httptools")
    return HeaderTimeoutH11, "asyncio"


def tune_interpreter(settings: Any) -> None:
    """Set this process's GIL switch interval to ``serve.switch_interval_ms``.

    The event loop thread gives up the interpreter lock at every socket call; while the
    engine's thread or a tokenizing worker is runnable, getting it back takes up to one
    interval. Python's default (5 ms) keeps the most throughput on an idle machine; 0.5
    ms made a burst's 429s come back sooner on a loaded machine but cost about a fifth
    of the serving throughput on an idle one (docs/benchmarks.md).
    """
    sys.setswitchinterval(switch_interval_s(settings))


def switch_interval_s(settings: Any) -> float:
    """``serve.switch_interval_ms`` in seconds; a :class:`ConfigError` unless above 0 and at
    most 1,000 ms (``serve`` checks it before loading the base)."""
    ms = settings.get("serve.switch_interval_ms")
    if not 0 < ms <= 1000:
        raise ConfigError(
            f"serve.switch_interval_ms is {ms}: set it above 0 and at most 1000"
            " (Python's default is 5.0)"
        )
    return ms / 1000


def uvicorn_config(app: Any, settings: Any, parser: str | None = None, **overrides: Any) -> Any:
    """A ``uvicorn.Config`` for ``app`` with the ``serve.*`` limits.

    ``serve.limit_concurrency`` caps open connections and running requests (beyond it
    uvicorn answers 503), ``serve.header_timeout_s`` bounds how long a request's headers
    may take, ``serve.keep_alive_timeout_s`` closes idle connections,
    ``serve.max_header_bytes`` bounds a request head, and ``serve.graceful_shutdown_s``
    bounds how long a shutdown waits for running requests. ``parser``: see
    :func:`http_protocol`. Also sets this process's GIL switch interval
    (:func:`tune_interpreter`, ``serve.switch_interval_ms``). When ``app`` is the server's
    app (:func:`server.app.create_app`), the httptools protocol answers its admission
    gate's refusals itself (:class:`server.gate.ProtocolGate`).
    """
    import uvicorn

    tune_interpreter(settings)
    s = settings.get
    base, loop = http_protocol(parser)
    limits = {
        "header_timeout_s": float(s("serve.header_timeout_s")),
        "max_header_bytes": int(s("serve.max_header_bytes")),
    }
    if hasattr(base, "gate"):  # httptools: the server app's admission gate (server.gate)
        limits["gate"] = getattr(getattr(app, "state", None), "protocol_gate", None)
    options: dict[str, Any] = {
        "host": s("serve.host"),
        "port": s("serve.port"),
        "http": type("Serve" + base.__name__, (base,), limits),
        "loop": loop,
        "limit_concurrency": s("serve.limit_concurrency") or None,
        "timeout_keep_alive": max(1, round(s("serve.keep_alive_timeout_s"))),
        "h11_max_incomplete_event_size": s("serve.max_header_bytes"),
        "timeout_graceful_shutdown": max(1, round(s("serve.graceful_shutdown_s"))),
        "log_level": "warning",
        "access_log": False,
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)
