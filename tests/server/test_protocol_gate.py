"""The admission gate's refusals answered by serve's HTTP protocol (server.http, server.gate).

A generation request whose key, rate or queue place is refused is answered from the
parser's callback, with no ASGI task; the answer is the same bytes the app's own gate
writes (which still answers the requests the protocol does not check), logged and
counted under the route.
"""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest

from tests.server.conftest import start_uvicorn


class CountingApp:
    """ASGI middleware counting the requests that reach the app."""

    def __init__(self, app: Any) -> None:
        self.app, self.calls = app, 0

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.calls += 1
        await self.app(scope, receive, send)


@pytest.fixture(scope="module")
def served(small_home, embedded_base):
    """A server (hf engine) whose app counts the requests that reach it."""
    from hub.config import load_settings
    from server.app import build_state, create_app

    settings = load_settings(small_home["home"])
    settings.override("hub.storage", "local")
    hub = small_home["hub"]
    state = build_state(hub, settings, embedded_base, small_home["store"], identity="server")
    app = create_app(state, hub)
    counter = CountingApp(app.asgi_handler)
    app.asgi_handler = counter
    server, thread, url = start_uvicorn(app)
    yield {
        "url": url,
        "state": state,
        "counter": counter,
        "keys": small_home["keys"],
        "app": app,
        "server": server,
    }
    server.should_exit = True
    thread.join(timeout=30)


def exchange(url: str, raw: bytes) -> bytes:
    """Write ``raw`` on a fresh connection; everything the server sends until it closes."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(raw)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def post(
    target: str, key: str | None, body: bytes = b"", length: int | None = None, rid=""
) -> bytes:
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    rid = f"X-Request-ID: {rid}\r\n" if rid else ""
    size = len(body) if length is None else length
    return (
        f"POST {target} HTTP/1.1\r\nHost: test\r\n{auth}{rid}"
        f"Content-Type: application/json\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n"
    ).encode() + body


def split(answer: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    return status, headers, body


def test_a_refusal_never_reaches_the_app_and_matches_the_apps_own_answer(served) -> None:
    counter, before = served["counter"], served["counter"].calls
    by_protocol = exchange(served["url"], post("/v1/completions", None, length=10**6, rid="p-1"))
    assert counter.calls == before  # answered before any ASGI work
    # a query string is not checked by the protocol: the app's gate answers it
    by_app = exchange(served["url"], post("/v1/completions?x=1", None, length=10**6, rid="a-1"))
    assert counter.calls == before + 1

    (status_p, headers_p, body_p), (status_a, headers_a, body_a) = split(by_protocol), split(by_app)
    assert status_p == status_a == "HTTP/1.1 401 Unauthorized"
    assert json.loads(body_p) == {
        "error": {
            "message": "missing or invalid API key: send Authorization: Bearer <key>",
            "type": "invalid_request_error",
            "param": None,
            "code": 401,
        }
    }
    assert body_p == body_a
    assert headers_p["x-request-id"] == "p-1" and headers_a["x-request-id"] == "a-1"
    for name in ("x-request-id", "date"):
        headers_p.pop(name), headers_a.pop(name)
    assert headers_p == headers_a
    assert headers_p["connection"] == "close"


def test_a_full_queue_is_429_from_the_protocol_and_counted_under_its_route(served) -> None:
    import httpx

    state, counter = served["state"], served["counter"]

    def metric(series: str) -> float:
        for line in httpx.get(served["url"] + "/metrics", timeout=30).text.splitlines():
            name, _, value = line.rpartition(" ")
            if name == series:
                return float(value)
        return 0.0

    series = 'qlora_hub_requests_total{route="/v1/chat/completions",status="429"}'
    counted, before = metric(series), counter.calls
    saved, state.engine.max_queue = state.engine.max_queue, 0
    try:
        answers = [
            exchange(served["url"], post("/v1/chat/completions", served["keys"]["alpha"], b"{}"))
            for _ in range(5)
        ]
    finally:
        state.engine.max_queue = saved
    assert {split(a)[0] for a in answers} == {"HTTP/1.1 429 Too Many Requests"}
    assert all(split(a)[1]["retry-after"] == "1" for a in answers)
    assert counter.calls == before  # none of the five reached the app
    assert metric(series) == counted + 5
    assert state.admission.holding == 0


def test_requests_pipelined_after_a_refusal_are_dropped_with_the_connection(served) -> None:
    counter, before = served["counter"], served["counter"].calls
    good = json.dumps({"model": "r0", "prompt": "hi", "max_tokens": 1}).encode()
    raw = post("/v1/completions", "qh-not-a-key", b"{}") + post(
        "/v1/completions", served["keys"]["alpha"], good
    )
    answer = exchange(served["url"], raw)
    assert answer.count(b"HTTP/1.1 ") == 1 and answer.startswith(b"HTTP/1.1 401 ")
    assert counter.calls == before
    assert served["state"].admission.holding == 0


def test_an_admitted_request_keeps_its_place_and_completes(served) -> None:
    counter, before = served["counter"], served["counter"].calls
    good = json.dumps({"model": "r0", "prompt": "hi", "max_tokens": 2, "temperature": 0})
    answer = exchange(
        served["url"], post("/v1/completions", served["keys"]["alpha"], good.encode())
    )
    status, headers, body = split(answer)
    assert status == "HTTP/1.1 200 OK"
    assert json.loads(body)["usage"]["completion_tokens"] == 2
    assert counter.calls == before + 1
    assert served["state"].admission.holding == 0


def test_uvicorn_config_gives_the_protocol_the_apps_gate(served, tmp_path) -> None:
    from litestar import Litestar

    from hub.config import load_settings
    from server.http import uvicorn_config

    settings = load_settings(tmp_path)
    gate = served["app"].state.protocol_gate
    assert uvicorn_config(served["app"], settings).http.gate is gate
    assert uvicorn_config(Litestar([]), settings).http.gate is None
    # h11 has no protocol gate: the app's own gate answers there
    assert not hasattr(uvicorn_config(served["app"], settings, parser="h11").http, "gate")


def test_a_refusal_pipelined_behind_a_running_request_waits_for_its_answer(served) -> None:
    good = json.dumps({"model": "r0", "prompt": "hi", "max_tokens": 4, "temperature": 0})
    first = post("/v1/completions", served["keys"]["alpha"], good.encode()).replace(
        b"Connection: close\r\n", b""
    )
    answer = exchange(served["url"], first + post("/v1/completions", None, b"{}"))
    # the 200 comes whole, then the 401 (the app's gate answers it in turn), never interleaved
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert answer.count(b"HTTP/1.1 ") == 2
    second = answer[answer.index(b"HTTP/1.1 ", 1) :]
    assert second.startswith(b"HTTP/1.1 401 Unauthorized\r\n")
    body = split(answer[: answer.index(b"HTTP/1.1 ", 1)])[2]
    assert json.loads(body)["usage"]["completion_tokens"] == 4


def test_a_503_past_limit_concurrency_takes_no_queue_place(served) -> None:
    state, key = served["state"], served["keys"]["alpha"]
    served["server"].config.limit_concurrency = 1  # this connection alone reaches the cap
    try:
        answers = [exchange(served["url"], post("/v1/completions", key, b"{}")) for _ in range(3)]
    finally:
        served["server"].config.limit_concurrency = None
    assert {split(a)[0] for a in answers} == {"HTTP/1.1 503 Service Unavailable"}
    assert state.admission.holding == 0  # was 3: admitted by the protocol, never given back


def test_a_request_pipelined_behind_a_closing_one_takes_no_queue_place(served) -> None:
    key = served["keys"]["alpha"]
    good = json.dumps({"model": "r0", "prompt": "hi", "max_tokens": 1}).encode()
    # the first asks to close: uvicorn never starts the second, so nothing may admit it
    answer = exchange(served["url"], post("/v1/completions", key, good) * 2)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.count(b"HTTP/1.1 ") == 1
    assert served["state"].admission.holding == 0


def test_the_heap_built_at_start_up_is_frozen_while_the_app_runs_and_released_at_shutdown(
    small_home, embedded_base
) -> None:
    """A full collection over the loaded base (about 250 ms with the lock held) would stall
    every request on the loop: start-up freezes what it built, shutdown lets it go."""
    import gc

    from litestar.testing import TestClient

    from hub.config import load_settings
    from server.app import build_state, create_app

    settings = load_settings(small_home["home"])
    settings.override("hub.storage", "local")
    hub = small_home["hub"]
    state = build_state(hub, settings, embedded_base, small_home["store"], identity="server")
    app = create_app(state, hub)
    gc.unfreeze()  # whatever another server left frozen does not count here
    assert gc.get_freeze_count() == 0
    with TestClient(app) as client:
        assert client.get("/health").status_code == 200
        assert gc.get_freeze_count() > 10_000
        # the state and the base's modules are out of the collector's generations
        tracked = {id(o) for o in gc.get_objects()}
        assert id(state) not in tracked
        assert id(state.engine) not in tracked
    assert gc.get_freeze_count() == 0
    assert id(state) in {id(o) for o in gc.get_objects()}
