"""Review attacks on serve's protocol gate (server.http): no queue place may leak when the
protocol admits a request that uvicorn then never runs."""

from __future__ import annotations

import json

import pytest

from tests.server.conftest import start_uvicorn
from tests.server.test_protocol_gate import exchange, post, split


@pytest.fixture(scope="module")
def capped(small_home, embedded_base):
    """A server (hf engine) and its ``uvicorn.Server`` (to change ``limit_concurrency``)."""
    from hub.config import load_settings
    from server.app import build_state, create_app

    settings = load_settings(small_home["home"])
    settings.override("hub.storage", "local")
    hub = small_home["hub"]
    state = build_state(hub, settings, embedded_base, small_home["store"], identity="server")
    server, thread, url = start_uvicorn(create_app(state, hub))
    yield {"url": url, "state": state, "server": server, "keys": small_home["keys"]}
    server.should_exit = True
    thread.join(timeout=30)


def test_a_503_past_limit_concurrency_takes_no_queue_place(capped) -> None:
    state, key = capped["state"], capped["keys"]["alpha"]
    capped["server"].config.limit_concurrency = 1  # this connection alone reaches the cap
    try:
        answers = [exchange(capped["url"], post("/v1/completions", key, b"{}")) for _ in range(3)]
    finally:
        capped["server"].config.limit_concurrency = None
    assert {split(a)[0] for a in answers} == {"HTTP/1.1 503 Service Unavailable"}
    assert state.admission.holding == 0  # was 3: admitted by the protocol, never given back


def test_a_request_pipelined_behind_a_closing_one_takes_no_queue_place(capped) -> None:
    key = capped["keys"]["alpha"]
    good = json.dumps({"model": "r0", "prompt": "hi", "max_tokens": 1}).encode()
    # the first asks to close: uvicorn never starts the second, so nothing may admit it
    answer = exchange(capped["url"], post("/v1/completions", key, good) * 2)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.count(b"HTTP/1.1 ") == 1
    assert capped["state"].admission.holding == 0
