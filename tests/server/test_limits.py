"""Capacity and time limits over HTTP: a full queue is 429 with Retry-After; a timeout is 504."""

from __future__ import annotations

import httpx
import pytest


def complete(live_server, **extra) -> httpx.Response:
    return httpx.post(
        live_server.url + "/v1/completions",
        json={"model": "base", "prompt": "go:", "max_tokens": 8, "temperature": 0, **extra},
        headers=live_server.headers("alpha"),
        timeout=120,
    )


@pytest.fixture
def engine(live_server):
    """The live server's engine; its queue bound is restored after the test."""
    engine = live_server.state.engine
    saved = engine.max_queue
    yield engine
    engine.max_queue = saved


@pytest.fixture
def short_timeout(live_server):
    """New requests get a per-request timeout of 0 s (already past it at the first step)."""
    saved = live_server.state.request_timeout_s
    live_server.state.request_timeout_s = 0.0
    yield
    live_server.state.request_timeout_s = saved


def test_full_queue_answers_429_with_retry_after(live_server, engine) -> None:
    engine.max_queue = 0  # every new request finds the queue full
    resp = complete(live_server)
    assert resp.status_code == 429
    assert resp.headers["retry-after"] == "1"
    assert resp.json()["error"]["message"] == "the server is at capacity; retry shortly"


def test_full_queue_refuses_a_stream_before_it_starts(live_server, engine) -> None:
    engine.max_queue = 0
    resp = complete(live_server, stream=True)
    assert (resp.status_code, resp.headers["retry-after"]) == (429, "1")


def test_requests_succeed_again_once_the_queue_has_room(live_server, engine) -> None:
    engine.max_queue = 0
    refused = complete(live_server)
    engine.max_queue = 256
    assert (refused.status_code, complete(live_server).status_code) == (429, 200)


def test_request_past_its_timeout_answers_504(live_server, short_timeout) -> None:
    resp = complete(live_server)
    assert resp.status_code == 504
    assert resp.json()["error"]["message"] == "request failed: timeout"


def test_stream_past_its_timeout_ends_with_an_error_event(live_server, short_timeout) -> None:
    resp = complete(live_server, stream=True)
    events = [line for line in resp.text.splitlines() if line]
    assert resp.status_code == 200  # the status line went out before the timeout
    assert '"message":"request failed: timeout"' in events[-2]
    assert events[-1] == "data: [DONE]"
