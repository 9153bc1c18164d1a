"""The audit log page: entries filtered by actor, action, adapter name and time, and whether
the hash chain verifies.

The log belongs to the storage backend (the vault's ``audit`` attribute, with its public
``entries()`` and ``verify()``); a backend without one has no audit page.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from litestar import Request, Response, get

from hub.errors import HubError
from server.console.app import console, page

MAX_ROWS = 500


def _when(text: str | None) -> datetime | None:
    """A filter bound: an ISO date or date-time (naive means UTC); ``None`` when empty."""
    if not text:
        return None
    from datetime import UTC

    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def matches(entry: dict[str, Any], filters: dict[str, str]) -> bool:
    """Whether ``entry`` passes every non-empty filter (actor, action, name, since, until)."""
    if filters.get("actor") and entry.get("actor") != filters["actor"]:
        return False
    if filters.get("action") and entry.get("action") != filters["action"]:
        return False
    name = filters.get("name")
    if name and str(entry.get("ref", "")).partition("@")[0] != name:
        return False
    try:
        when = datetime.fromisoformat(str(entry.get("time")))
    except ValueError:
        return not (filters.get("since") or filters.get("until"))
    since, until = _when(filters.get("since")), _when(filters.get("until"))
    return not ((since and when < since) or (until and when > until))


def _chain(audit: Any) -> tuple[bool, str]:
    try:
        n = audit.verify()
    except HubError as exc:
        return False, f"chain BROKEN: {exc}"
    return True, f"chain intact: {n} {'entry' if n == 1 else 'entries'} verified"


@get("/audit", sync_to_thread=True)
def audit(request: Request) -> Response:
    """The audit log, newest first, with the chain's verification status."""
    st = console(request)
    log = getattr(st.store.backend, "audit", None)
    keys = ("actor", "action", "name", "since", "until")
    filters = {k: str(request.query_params.get(k) or "").strip() for k in keys}
    if log is None:
        return page(
            request,
            "audit.html",
            entries=[],
            filters=filters,
            actions=[],
            actors=[],
            chain=(False, f"storage backend {st.store.name!r} keeps no audit log"),
        )
    entries = st.act(log.entries)
    chain = st.act(_chain, log)
    shown = [e for e in reversed(entries) if matches(e, filters)][:MAX_ROWS]
    return page(
        request,
        "audit.html",
        entries=shown,
        total=len(entries),
        filters=filters,
        actions=sorted({str(e.get("action")) for e in entries}),
        actors=sorted({str(e.get("actor")) for e in entries}),
        chain=chain,
    )


HANDLERS = (audit,)
