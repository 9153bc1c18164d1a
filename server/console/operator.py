"""The server's read-only operator page, ``GET /ui`` (admin API key).

Resident adapters and the cache budget, the queue, batch sizes, request rates and latencies
over the last minutes. Every number comes from the server's own state and from the same
Prometheus registry ``/metrics`` renders; rates are differences between snapshots taken when
the page is viewed (the first view shows averages since the server started).

Browsers send the admin key with HTTP Basic authentication (any user name, the key as
password: the browser asks for it), scripts with ``Authorization: Bearer KEY``.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections import deque
from pathlib import Path
from typing import Any

from litestar import MediaType, Request, Response, get

from server.console.security import HEADERS

WINDOW_S = 300.0
HERE = Path(__file__).parent
_history: dict[int, deque[tuple[float, dict[str, float]]]] = {}


def _env() -> Any:
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    return Environment(
        loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True)
    )


def _headers(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in HEADERS} | (extra or {})


def _caller(srv: Any, request: Request) -> Any:
    """The admin caller of ``request`` (Bearer or Basic), else ``None``."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "basic":
        try:
            key = base64.b64decode(value.strip(), validate=True).decode().partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            return None
        caller = srv.keys.lookup(key)
    elif scheme.lower() == "bearer":
        caller = srv.keys.lookup(value.strip())
    else:
        return None
    if caller is None:
        srv.metrics.refused("unauthorized")
    return caller


def samples(registry: Any) -> dict[str, float]:
    """Every sample of ``registry`` as ``name{label="v",...}`` -> value (as /metrics shows)."""
    out = {}
    for metric in registry.collect():
        for s in metric.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = float(s.value)
    return out


def quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """The ``q`` quantile of a cumulative histogram ``[(le, count), ...]`` (bucket upper bound)."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    target = q * buckets[-1][1]
    for le, count in buckets:
        if count >= target:
            return le
    return buckets[-1][0]


def _buckets(now: dict[str, float], then: dict[str, float], name: str, route: str | None) -> list:
    out = []
    for key, value in now.items():
        if not key.startswith(name + "_bucket{"):
            continue
        if route is not None and f'route="{route}"' not in key:
            continue
        le = key.split('le="', 1)[1].split('"', 1)[0]
        out.append((float("inf") if le == "+Inf" else float(le), value - then.get(key, 0.0)))
    return sorted(out)


def summary(srv: Any, now: dict[str, float], then: dict[str, float], seconds: float) -> dict:
    """Rates and latencies between two snapshots ``seconds`` apart."""

    def delta(key: str) -> float:
        return now.get(key, 0.0) - then.get(key, 0.0)

    routes: dict[str, dict[str, float]] = {}
    for key in now:
        if key.startswith("qlora_hub_requests_total{"):
            route = key.split('route="', 1)[1].split('"', 1)[0]
            status = key.split('status="', 1)[1].split('"', 1)[0]
            row = routes.setdefault(route, {"requests": 0.0, "errors": 0.0})
            row["requests"] += delta(key)
            row["errors"] += delta(key) if not status.startswith("2") else 0.0
    rows = []
    for route, row in sorted(routes.items()):
        count = delta(f'qlora_hub_request_seconds_count{{route="{route}"}}')
        total = delta(f'qlora_hub_request_seconds_sum{{route="{route}"}}')
        b = _buckets(now, then, "qlora_hub_request_seconds", route)
        rows.append(
            {
                "route": route,
                "per_min": 60 * row["requests"] / seconds,
                "errors": int(row["errors"]),
                "mean_ms": 1000 * total / count if count else None,
                "p95_ms": (1000 * q) if (q := quantile(b, 0.95)) is not None else None,
            }
        )
    batch = _buckets(now, then, "qlora_hub_batch_rows", None)
    passes = delta("qlora_hub_batch_rows_count")
    return {
        "seconds": seconds,
        "routes": rows,
        "tokens_per_s": delta('qlora_hub_tokens_total{kind="out"}') / seconds,
        "ttft_p50_ms": _ms(
            quantile(_buckets(now, then, "qlora_hub_time_to_first_token_seconds", None), 0.5)
        ),
        "ttft_p95_ms": _ms(
            quantile(_buckets(now, then, "qlora_hub_time_to_first_token_seconds", None), 0.95)
        ),
        "batch_mean": delta("qlora_hub_batch_rows_sum") / passes if passes else None,
        "batch_p95": quantile(batch, 0.95),
        "passes": int(passes),
        "rejected": {  # reasons refused within the window (the series exist from start-up)
            k.split('reason="', 1)[1].split('"', 1)[0]: int(delta(k))
            for k in now
            if k.startswith("qlora_hub_rejected_requests_total{") and delta(k) > 0
        },
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else 1000 * seconds


def snapshot_window(srv: Any) -> dict[str, Any]:
    """This view's numbers: a new snapshot against the oldest one within :data:`WINDOW_S`."""
    now_t, now = time.time(), samples(srv.metrics.registry)
    history = _history.setdefault(id(srv), deque(maxlen=256))
    while history and now_t - history[0][0] > WINDOW_S:
        history.popleft()
    then_t, then = history[0] if history else (float(srv.started), {})
    history.append((now_t, now))
    return summary(srv, now, then, max(now_t - then_t, 1e-3))


@get("/ui", sync_to_thread=False, include_in_schema=False)
def operator_page(request: Request) -> Response:
    """The operator page (admin key; read-only)."""
    srv = request.app.state.server
    caller = _caller(srv, request)
    if caller is None or not caller.admin:
        status = 401 if caller is None else 403
        body = "this page needs an admin API key (any user name, the key as password)"
        return Response(
            body,
            status_code=status,
            media_type=MediaType.TEXT,
            headers=_headers({"WWW-Authenticate": 'Basic realm="qlora-hub operator"'}),
        )
    context = {
        "adapters": srv.cache.info(),
        "resident_bytes": srv.cache.resident_bytes,
        "max_resident": srv.cache.max_resident,
        "max_bytes": srv.cache.max_bytes,
        "queue_depth": srv.engine.queue_depth,
        "max_queue": srv.engine.max_queue,
        "base": srv.base_fingerprint,
        "uptime_s": int(time.time() - srv.started),
        "window": snapshot_window(srv),
    }
    html = _env().get_template("operator.html").render(**context)
    return Response(html, media_type=MediaType.HTML, headers=_headers())


@get("/ui/console.css", sync_to_thread=False, include_in_schema=False)
def operator_css() -> Response:
    """The operator page's stylesheet (the console's)."""
    css = (HERE / "static" / "console.css").read_bytes()
    return Response(css, media_type="text/css", headers=_headers())


ROUTES = (operator_page, operator_css)
