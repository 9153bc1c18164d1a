"""/health, /ready, /metrics, request ids in access logs (no secrets or prompts), plugin routes."""

from __future__ import annotations

import httpx


def test_health_is_ok(live_server) -> None:
    assert httpx.get(live_server.url + "/health").json() == {"status": "ok"}


def test_ready_once_the_base_is_loaded(live_server) -> None:
    resp = httpx.get(live_server.url + "/ready")
    assert (resp.status_code, resp.json()) == (200, {"ready": True})


def test_metrics_exposes_prometheus_series(live_server) -> None:
    httpx.post(
        live_server.url + "/v1/completions",
        json={"model": "base", "prompt": "a", "max_tokens": 2},
        headers=live_server.headers("alpha"),
        timeout=60,
    )
    resp = httpx.get(live_server.url + "/metrics")
    assert resp.headers["content-type"].startswith("text/plain")
    for series in (
        "qlora_hub_requests_total",
        "qlora_hub_request_seconds_bucket",
        "qlora_hub_tokens_total",
        "qlora_hub_queue_depth",
        "qlora_hub_batch_rows_bucket",
        "qlora_hub_adapters_resident",
        "qlora_hub_time_to_first_token_seconds_bucket",
    ):
        assert series in resp.text
    assert 'qlora_hub_tokens_total{kind="completion"}' in resp.text


def test_access_log_has_request_id_and_no_prompt_or_key(live_server, access_log, caplog) -> None:
    resp = httpx.post(
        live_server.url + "/v1/completions",
        json={"model": "base", "prompt": "secret-prompt-text", "max_tokens": 2, "temperature": 0},
        headers={**live_server.headers("alpha"), "X-Request-ID": "req-42"},
        timeout=60,
    )
    assert resp.headers["x-request-id"] == "req-42"
    mine = access_log("req-42")
    assert (
        mine[0]["status"] == 200
        and mine[0]["team"] == "alpha"
        and mine[0]["completion_tokens"] == 2
    )
    text = caplog.text
    assert "secret-prompt-text" not in text and live_server.keys["alpha"] not in text


def test_register_routes_handlers_are_mounted(serve_home, embedded_base) -> None:
    from litestar import get
    from litestar.testing import TestClient

    from hub import hookimpl
    from hub.plugins import Hub
    from server.app import build_state, create_app
    from server.model import load_served_base

    @get("/plugin/hello", sync_to_thread=False)
    def hello() -> dict[str, str]:
        return {"hello": "from a plugin"}

    class RoutesPlugin:
        @hookimpl
        def register_routes(self, register):
            register(hello)

    hub = Hub(extra=[("routes-plugin", RoutesPlugin())])
    state = build_state(
        hub, serve_home["settings"], load_served_base(hub, embedded_base), serve_home["store"]
    )
    with TestClient(create_app(state, hub)) as client:
        assert client.get("/plugin/hello").json() == {"hello": "from a plugin"}


def test_ready_is_503_until_the_engine_runs_and_again_after_it_stops(
    serve_home, embedded_base
) -> None:
    """``qlora-hub serve`` binds its port only after the base is loaded; /ready then follows
    the engine: 503 before the app's startup ran, 200 while it runs, 503 once shut down."""
    from litestar.testing import TestClient

    from hub.plugins import Hub
    from server.app import build_state, create_app
    from server.model import load_served_base

    hub = Hub()
    state = build_state(
        hub, serve_home["settings"], load_served_base(hub, embedded_base), serve_home["store"]
    )
    app = create_app(state, hub)
    outside = TestClient(app)  # used outside `with`: the startup hooks have not run
    before = outside.get("/ready")
    with TestClient(app) as running:
        during = running.get("/ready")
    after = outside.get("/ready")
    stopped = {"ready": False, "reason": "the engine is not running"}
    assert (before.status_code, before.json()) == (503, stopped)
    assert (during.status_code, during.json()) == (200, {"ready": True})
    assert (after.status_code, after.json()) == (503, stopped)
