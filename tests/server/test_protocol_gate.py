"""The admission gate's refusals answered by serve's HTTP protocol (server.http, server.gate).

A generation request whose key, rate or queue place is refused is answered from the
parser's callback, with no ASGI task; the answer is the same bytes the app's own gate
writes (which still answers the requests the protocol does not check), logged and
counted under the route.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import time
from typing import Any

import pytest

from tests.server.conftest import start_uvicorn, wait_until


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
    every request on the loop: start-up freezes what it built and raises the young
    threshold, shutdown gives both back."""
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
    before = gc.get_threshold()
    with TestClient(app) as client:
        assert client.get("/health").status_code == 200
        assert gc.get_freeze_count() > 10_000
        # young collections wait for serve.gc_threshold new objects, not Python's 700
        assert gc.get_threshold() == (50_000, *before[1:])
        # the state and the base's modules are out of the collector's generations
        tracked = {id(o) for o in gc.get_objects()}
        assert id(state) not in tracked
        assert id(state.engine) not in tracked
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == before
    assert id(state) in {id(o) for o in gc.get_objects()}

    from hub.errors import ConfigError

    state.gc_threshold = 0
    with pytest.raises(ConfigError) as refused:
        create_app(state, hub)
    assert str(refused.value) == (
        "serve.gc_threshold is 0: set it to 1 or more (Python's default is 700)"
    )


@contextlib.contextmanager
def parsed_heads(served):
    """Count the request heads the server's parser began (``on_message_begin``) meanwhile."""
    protocol = served["server"].config.http
    begun = {"heads": 0}
    original = protocol.on_message_begin

    def counted(self) -> None:
        begun["heads"] += 1
        original(self)

    protocol.on_message_begin = counted
    try:
        yield begun
    finally:
        del protocol.on_message_begin  # the class's own again


def exchange_in_two(url: str, raw: bytes, cut: int) -> bytes:
    """:func:`exchange`, the first ``cut`` bytes arriving alone, the rest 50 ms later."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(raw[:cut])
        time.sleep(0.05)
        sock.sendall(raw[cut:])
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_a_refusal_in_the_first_bytes_is_answered_before_the_parser_as_the_parser_would(
    served,
) -> None:
    state, url = served["state"], served["url"]
    saved, state.engine.max_queue = state.engine.max_queue, 0
    try:
        with parsed_heads(served) as early:
            whole = {
                401: exchange(url, post("/v1/completions", "qh-not-a-key", b"{}", rid="e-1")),
                429: exchange(url, post("/v1/chat/completions", served["keys"]["alpha"], b"{}")),
            }
        assert early["heads"] == 0  # neither reached the parser
        with parsed_heads(served) as parsed:
            cut = {  # the head's last byte arrives alone: the parser's callback answers
                401: post("/v1/completions", "qh-not-a-key", b"{}", rid="e-1"),
                429: post("/v1/chat/completions", served["keys"]["alpha"], b"{}"),
            }
            cut = {
                k: exchange_in_two(url, raw, raw.index(b"\r\n\r\n") + 3) for k, raw in cut.items()
            }
        assert parsed["heads"] == 2
    finally:
        state.engine.max_queue = saved
    for status, answer in whole.items():
        (line_w, headers_w, body_w), (line_c, headers_c, body_c) = split(answer), split(cut[status])
        assert line_w == line_c and line_w.startswith(f"HTTP/1.1 {status} ")
        assert body_w == body_c
        for name in ("x-request-id", "date"):
            headers_w.pop(name), headers_c.pop(name)
        assert headers_w == headers_c
    assert split(whole[401])[1]["x-request-id"] == "e-1"
    assert state.admission.holding == 0


def test_a_request_admitted_from_its_first_bytes_keeps_its_place_caller_and_rate(
    served, access_log
) -> None:
    from server.auth import RateLimiter

    state = served["state"]
    good = json.dumps({"model": "r0", "prompt": "hi", "max_tokens": 2, "temperature": 0})
    saved, state.limiter = state.limiter, RateLimiter(1)  # one request a minute per key
    try:
        with parsed_heads(served) as parsed:
            answer = exchange(
                served["url"],
                post("/v1/completions", served["keys"]["alpha"], good.encode(), rid="e-2"),
            )
            again = exchange(served["url"], post("/v1/completions", served["keys"]["alpha"], b"{}"))
    finally:
        state.limiter = saved
    status, _, body = split(answer)
    assert status == "HTTP/1.1 200 OK"  # its one token was spent once, not again by the parser
    assert json.loads(body)["usage"]["completion_tokens"] == 2
    assert split(again)[0] == "HTTP/1.1 429 Too Many Requests"  # the minute's token is gone
    assert parsed["heads"] == 1  # the admitted one went on through the parser
    (line,) = access_log("e-2")
    assert (line["status"], line["team"]) == (200, "alpha")
    assert state.admission.holding == 0


@pytest.mark.parametrize(
    "edit",
    [
        (b"Content-Length: 2\r\n", b"Content-Length: two\r\n"),
        (b"Content-Length: 2\r\n", b"Content-Length: 2\r\nContent-Length: 2\r\n"),
        (b"Content-Length: 2\r\n", b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n"),
    ],
    ids=["not-a-number", "duplicate-length", "length-and-chunked"],
)
def test_a_head_the_parser_refuses_is_its_400_taking_no_place_nor_rate(served, edit) -> None:
    """A plain head llhttp refuses is left to it: the 400 it answers, with or without a
    key, spends no rate token and takes no queue place (from the first bytes, a keyless one
    was answered 401, and a keyed one spent the key's token before the parser's 400)."""
    from server.auth import RateLimiter

    state, counter, url = served["state"], served["counter"], served["url"]
    key, before = served["keys"]["alpha"], counter.calls
    good = json.dumps({"model": "r0", "prompt": "hi", "max_tokens": 1}).encode()
    saved, state.limiter = state.limiter, RateLimiter(1)  # one request a minute per key
    try:
        with parsed_heads(served) as parsed:
            answers = [
                exchange(url, post("/v1/completions", k, b"{}").replace(*edit)) for k in (key, None)
            ]
        assert parsed["heads"] == 2  # both went to the parser
        after = exchange(url, post("/v1/completions", key, good))
    finally:
        state.limiter = saved
    assert all(a.startswith(b"HTTP/1.1 400 Bad Request\r\n") for a in answers), answers
    assert counter.calls == before + 1  # only the last request reached the app
    assert split(after)[0] == "HTTP/1.1 200 OK"  # the key's one token was still there
    wait_until(lambda: state.admission.holding == 0, what="no place held")


def test_a_request_id_followed_by_whitespace_is_read_as_the_parser_reads_it(served) -> None:
    """llhttp keeps the whitespace after a value: ``X-Request-ID: e-3 `` is no well-formed
    id, so the refusal gets a fresh one, whether its head arrives whole or cut in two."""
    url = served["url"]
    raw = post("/v1/completions", "qh-not-a-key", b"{}", rid="e-3 ")
    whole = exchange(url, raw)
    cut = exchange_in_two(url, raw, raw.index(b"\r\n\r\n") + 3)
    for answer in (whole, cut):
        line, headers, _ = split(answer)
        assert line == "HTTP/1.1 401 Unauthorized"
        assert re.fullmatch("[0-9a-f]{32}", headers["x-request-id"]), headers["x-request-id"]


@pytest.mark.parametrize(
    "edit",
    [
        (b"Host: test\r\n", b"Host: test\r\n folded\r\n"),  # obs-fold
        (b"Host: test\r\n", b"Host : test\r\n"),  # space before the colon
        (b"Host: test\r\n", b"Host: test\n"),  # a bare LF
        (b"Host: test\r\n", b"Host: t\xe9st\r\n"),  # obs-text
        (b"Host: test\r\n", b"Host: test\r\nUpgrade: websocket\r\n"),
        (b" HTTP/1.1\r\n", b" HTTP/1.0\r\n"),
        (b"POST /v1/completions ", b"POST /v1/completions?x=1 "),
        (b"POST /v1/completions ", b"POST /v1/%63ompletions "),
    ],
    ids=["obs-fold", "space-colon", "bare-lf", "obs-text", "upgrade", "http10", "query", "escaped"],
)
def test_a_head_that_is_not_plain_is_left_to_the_parser(served, edit) -> None:
    raw = post("/v1/completions", "qh-not-a-key", b"{}").replace(*edit)
    with parsed_heads(served) as parsed:
        whole = exchange(served["url"], raw)
        cut = exchange_in_two(served["url"], raw, 10)
    assert parsed["heads"] == 2  # the parser read it, whole or cut: the same answer
    assert split(whole)[0] == split(cut)[0]
    assert served["state"].admission.holding == 0


def test_plain_head_reads_fields_as_the_parser_does_and_in_linear_time() -> None:
    from server.gate import plain_head

    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization:\t Bearer k \t\r\n"
        b"X-Empty:\r\nX-Request-ID: a:b\r\n\r\n{}"
    )
    assert plain_head(head, 16384) == (
        "/v1/chat/completions",
        [
            (b"host", b"x"),
            (b"authorization", b"Bearer k \t"),  # llhttp keeps what follows a value
            (b"x-empty", b""),
            (b"x-request-id", b"a:b"),
        ],
    )
    assert plain_head(head, 40) is None  # the head's end lies past the limit
    assert plain_head(head[:-4], 16384) is None  # no end of head yet
    started = time.perf_counter()
    spaces = (
        b"POST /v1/completions HTTP/1.1\r\nX: a" + b" " * 65536 + b"\r\n" + b"Y: " + b"\t" * 300
    )
    assert plain_head(spaces + b"\r\n\r\n", 1 << 20) is not None
    assert plain_head(spaces + b"\x01\r\n\r\n", 1 << 20) is None
    # linear: microseconds; a pattern backtracking over the whitespace would take minutes
    assert time.perf_counter() - started < 5


def test_a_caller_admitted_from_the_first_bytes_is_not_the_next_requests_on_the_connection(
    served,
) -> None:
    """The first request's caller and queue place, decided from the connection's first
    bytes, go to its own request cycle only: a keyless request after it on the same
    kept-alive connection is refused, and no place is left held."""
    host, port = served["url"].removeprefix("http://").split(":")
    good = json.dumps({"model": "r0", "prompt": "hi", "max_tokens": 1}).encode()
    first = post("/v1/completions", served["keys"]["alpha"], good).replace(
        b"Connection: close\r\n", b""
    )
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(first)
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(65536)
        head, _, body = answer.partition(b"\r\n\r\n")
        length = int(split(head + b"\r\n\r\n")[1]["content-length"])
        while len(body) < length:
            body += sock.recv(65536)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        sock.sendall(post("/v1/completions", None, good))
        second = b""
        while chunk := sock.recv(65536):
            second += chunk
    assert second.startswith(b"HTTP/1.1 401 Unauthorized\r\n")
    assert served["state"].admission.holding == 0
