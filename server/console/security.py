"""The console's locks: the per-launch login token, sessions, CSRF tokens and response headers.

- The login token is printed once at start (as Jupyter does); ``/login?token=...`` or the
  login form trades it for a session cookie (HttpOnly, SameSite=Strict) and the page
  redirects, so the token leaves the address bar.
- Every session has its own CSRF token; every POST form carries it in ``csrf_token``.
- Every response carries a strict Content-Security-Policy (scripts and styles from the
  console's own vendored files only, no inline code, no framing) and ``no-store``.
- When bound to loopback, requests naming another ``Host`` are refused (DNS rebinding).
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

COOKIE = "qlora_hub_console"
SESSION_SECONDS = 12 * 3600
MAX_SESSIONS = 64
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; connect-src 'self'"
)
HEADERS = (
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
    (b"cross-origin-opener-policy", b"same-origin"),
)
LOOPBACK = ("127.0.0.1", "localhost", "[::1]")


def same(a: str | None, b: str | None) -> bool:
    """Constant-time comparison of two secrets (``False`` when either is missing)."""
    return bool(a) and bool(b) and hmac.compare_digest(str(a).encode(), str(b).encode())


@dataclass
class Session:
    """One logged-in browser: its CSRF token and the messages to show on its next page."""

    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    created: float = field(default_factory=time.monotonic)
    flash: list[str] = field(default_factory=list)


class Sessions:
    """The login token of this launch and the sessions it opened (in memory only)."""

    def __init__(self, token: str | None = None) -> None:
        self.token = token or secrets.token_urlsafe(32)
        # cookies are shared by every port of a host: a name per launch keeps two consoles apart
        self.cookie = f"{COOKIE}_{secrets.token_hex(4)}"
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def login(self, token: str | None) -> str | None:
        """A new session id when ``token`` is this launch's login token, else ``None``."""
        if not same(token, self.token):
            return None
        sid = secrets.token_urlsafe(32)
        with self._lock:
            if len(self._sessions) >= MAX_SESSIONS:  # drop the oldest
                oldest = min(self._sessions, key=lambda s: self._sessions[s].created)
                del self._sessions[oldest]
            self._sessions[sid] = Session()
        return sid

    def get(self, sid: str | None) -> Session | None:
        """The live session ``sid`` names, else ``None`` (expired sessions are forgotten)."""
        if not sid:
            return None
        with self._lock:
            for key in list(self._sessions):
                if same(key, sid):
                    session = self._sessions[key]
                    if time.monotonic() - session.created > SESSION_SECONDS:
                        del self._sessions[key]
                        return None
                    return session
        return None

    def logout(self, sid: str | None) -> None:
        """Forget session ``sid``."""
        with self._lock:
            for key in list(self._sessions):
                if same(key, sid):
                    del self._sessions[key]


def allowed_hosts(host: str, port: int) -> frozenset[str] | None:
    """``Host`` header values accepted when bound to loopback ``host``; ``None``: any."""
    if host not in ("127.0.0.1", "localhost", "::1"):
        return None
    return frozenset(f"{h}:{port}" for h in LOOPBACK)


class SecurityHeaders:
    """ASGI middleware adding :data:`HEADERS` to every HTTP response (errors and files too)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in HEADERS if k not in names]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)
