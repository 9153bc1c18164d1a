"""The HTTP server around the app: uvicorn with a connection cap and time limits from settings.

uvicorn closes idle keep-alive connections and caps concurrent connections, but waits
forever for a request's headers, so a client that trickles them in a byte at a time
(slow loris) holds a socket open for good. :class:`HeaderTimeoutH11` closes a connection
whose request headers are not complete ``header_timeout_s`` after it opened or after
its previous response ended.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("qlora_hub.server.http")


class HeaderTimeoutH11(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's headers."""

    header_timeout_s = 10.0
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the clock for the first request's headers."""
        super().connection_made(transport)
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._expired)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expired(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            log.info(
                "closing a connection whose request headers took over %.0f s", self.header_timeout_s
            )
            self.transport.close()

    def handle_events(self) -> None:
        """Stop the clock once a request's headers are complete (a new cycle starts)."""
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:
            self._disarm()

    def on_response_complete(self) -> None:
        """The next request on this connection gets its own deadline."""
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop the clock with the connection."""
        self._disarm()
        super().connection_lost(exc)


def uvicorn_config(app: Any, settings: Any, **overrides: Any) -> Any:
    """A ``uvicorn.Config`` for ``app`` with the ``serve.*`` limits.

    ``serve.limit_concurrency`` caps open connections and running requests (beyond it
    uvicorn answers 503), ``serve.header_timeout_s`` bounds how long a request's headers
    may take, ``serve.keep_alive_timeout_s`` closes idle connections,
    ``serve.max_header_bytes`` bounds a request head, and ``serve.graceful_shutdown_s``
    bounds how long a shutdown waits for running requests.
    """
    import uvicorn

    s = settings.get
    protocol = type(
        "ServeH11", (HeaderTimeoutH11,), {"header_timeout_s": float(s("serve.header_timeout_s"))}
    )
    options: dict[str, Any] = {
        "host": s("serve.host"),
        "port": s("serve.port"),
        "http": protocol,
        "limit_concurrency": s("serve.limit_concurrency") or None,
        "timeout_keep_alive": max(1, round(s("serve.keep_alive_timeout_s"))),
        "h11_max_incomplete_event_size": s("serve.max_header_bytes"),
        "timeout_graceful_shutdown": max(1, round(s("serve.graceful_shutdown_s"))),
        "log_level": "warning",
        "access_log": False,
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)
