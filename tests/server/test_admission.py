"""Authenticate first, cheap rejections first; malformed bodies are 400; pins never leak.

Rejections (no key, rate limit, full queue) must come back before the server reads the
body: each test sends the headers of a 1 MB post and only a few bytes of its body.
"""

from __future__ import annotations

import json
import socket

import httpx
import pytest

from tests.server.conftest import running_in, start_small_server, wait_until


@pytest.fixture(scope="module")
def live(small_home, embedded_base, engine_name):
    server = start_small_server(small_home, embedded_base, max_resident=2, engine=engine_name)
    server.state.cache.wait_s = 3.0  # a leaked pin shows as a quick 503, not a minute's wait
    yield server
    server.stop()


def head_only(live, key: str | None, path: str = "/v1/completions") -> bytes:
    """Send a 1 MB post's headers and 64 bytes of its body; what the server answers within 10 s."""
    host, port = live.url.removeprefix("http://").split(":")
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\n{auth}"
        "Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n"
    )
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head.encode() + b'{"model": "base", "prompt": "' + b"a" * 34)
        try:
            return sock.recv(65536)
        except TimeoutError:
            return b"(no answer in 10 s: the server waited for the body)"


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:80]
    return int(answer.split()[1])


def test_a_post_without_a_key_is_401_before_its_body_arrives(live) -> None:
    assert status_of(head_only(live, None)) == 401
    assert status_of(head_only(live, "qh-not-a-key", "/v1/chat/completions")) == 401


def test_a_full_queue_is_429_before_the_body_arrives(live) -> None:
    engine = live.state.engine
    saved, engine.max_queue = engine.max_queue, 0
    try:
        answer = head_only(live, live.keys["alpha"])
    finally:
        engine.max_queue = saved
    assert status_of(answer) == 429
    assert b"retry-after: 1" in answer.lower()
    assert live.metric('qlora_hub_rejected_requests_total{reason="queue_full"}') >= 1


def test_a_rate_limited_key_is_429_before_the_body_arrives(live) -> None:
    from server.auth import RateLimiter

    saved = live.state.limiter
    live.state.limiter = RateLimiter(1)  # one request a minute
    live.state.limiter.take(live.state.keys.lookup(live.keys["beta"]).key_id)  # spent
    try:
        answer = head_only(live, live.keys["beta"], "/v1/chat/completions")
    finally:
        live.state.limiter = saved
    assert status_of(answer) == 429
    assert live.metric('qlora_hub_rejected_requests_total{reason="rate_limited"}') >= 1


def post(live, body: bytes, path: str = "/v1/completions") -> httpx.Response:
    return httpx.post(
        live.url + path,
        content=body,
        headers={**live.headers("alpha"), "Content-Type": "application/json"},
        timeout=60,
    )


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_a_deeply_nested_body_is_400(live, path) -> None:
    body = b'{"model": "base", "prompt": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    response = post(live, body, path)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/completions", b'{"model": "base", "prompt": "\xff\xfe\xfd"}'),
        (
            "/v1/chat/completions",
            b'{"model": "base", "messages": [{"role": "user", "content": "\xff"}]}',
        ),
    ],
)
def test_a_body_that_is_not_utf8_is_400(live, path, body) -> None:
    response = post(live, body, path)
    assert response.status_code == 400, response.text
    assert "not valid UTF-8" in response.json()["error"]["message"]


def test_failed_requests_release_their_adapter_pins(live) -> None:
    """A seed of 2**64 was a 500 that left its adapter pinned: two of them filled a 2-slot
    cache and every other team got 503."""
    for name in ("r0", "r1"):
        response = httpx.post(
            live.url + "/v1/completions",
            json={"model": name, "prompt": "hi", "max_tokens": 2, "seed": 2**64},
            headers=live.headers("alpha"),
            timeout=60,
        )
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == "seed"
    assert all(entry["in_use"] == 0 for entry in live.state.cache.info())
    response = live.complete("beta-only", "hi", max_tokens=2, who="beta")
    assert response.status_code == 200, response.text
    assert live.state.admission.holding == 0


def test_every_queue_place_is_given_back(live) -> None:
    for _ in range(3):
        assert live.complete("base", "hi", max_tokens=2).status_code == 200
    post(live, b"{not json")
    head_only(live, live.keys["alpha"])  # the client goes away before sending its body
    live.wait_idle()
    # the server sees that client go after head_only returned: its place comes back then
    wait_until(lambda: live.state.admission.holding == 0, what="every queue place given back")


def test_unknown_paths_are_counted_under_one_label_and_logged(live, caplog) -> None:
    import logging

    caplog.set_level(logging.INFO, logger="qlora_hub.server.access")
    unknown = 'qlora_hub_requests_total{route="(unknown)",status="404"}'
    before = live.metric(unknown)
    for path in ("/wp-admin", "/.env", "/v2/anything"):
        assert httpx.get(live.url + path, timeout=30).status_code == 404

    def logged() -> set:
        records = [json.loads(r.getMessage()) for r in caplog.records if r.name.endswith("access")]
        return {r.get("unknown_path") for r in records}

    # the line and the count are written after the answer's last byte went out
    wait_until(lambda: {"/wp-admin", "/.env", "/v2/anything"} <= logged(), what="three lines")
    wait_until(lambda: live.metric(unknown) >= before + 3, what="three counted under one label")


def test_a_stream_abandoned_before_its_first_chunk_is_cancelled(live) -> None:
    """A client gone before its stream started (the handler was still waiting for the adapter
    cache) ends as cancelled, never at its full length (the exchange's end cancels the rows,
    whether or not the stream's generator ever ran)."""
    import time

    cancelled = 'qlora_hub_finished_requests_total{reason="cancelled"}'
    length = 'qlora_hub_finished_requests_total{reason="length"}'
    live.wait_idle()
    before = (live.metric(cancelled), live.metric(length))
    engine = live.state.engine
    saved, engine.eos_ids = engine.eos_ids, set()  # nothing ends early: 300 tokens or cancel
    body = json.dumps(
        {"model": "r2", "prompt": "go:", "max_tokens": 300, "temperature": 0, "stream": True}
    ).encode()
    host, port = live.url.removeprefix("http://").split(":")
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {live.keys['alpha']}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    try:
        with live.state.cache._cond:  # the handler waits in the adapter cache
            sock = socket.create_connection((host, int(port)))
            sock.sendall(head.encode() + body)
            # gone before the body was read, the request would never reach the engine
            wait_until(lambda: running_in(live.state.cache.acquire), what="the handler waits")
            sock.close()  # gone before the stream started
            time.sleep(0.2)
        # the request is queued after the cache lets it go: the engine may look idle first
        ended = lambda: live.metric(cancelled) + live.metric(length) > sum(before)  # noqa: E731
        wait_until(ended, what="the request ended", timeout_s=300)
        live.wait_idle(300)
    finally:
        engine.eos_ids = saved
    assert (live.metric(cancelled), live.metric(length)) == (before[0] + 1, before[1])
