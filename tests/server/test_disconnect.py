"""A client that goes away cancels its request: the engine drops the row at its next step.

The requests ask the plain base for 500 tokens of ``go:`` (greedy), which it never ends
early, so a request that was not cancelled would run to ``length``.
"""

from __future__ import annotations

import json
import socket
import time

import httpx

MAX_TOKENS = 500
CANCELLED = 'qlora_hub_finished_requests_total{reason="cancelled"}'
CANCELLED_TOKENS = 'qlora_hub_generated_tokens_total{reason="cancelled"}'
LENGTH = 'qlora_hub_finished_requests_total{reason="length"}'


def open_request(live_server, body: dict, request_id: str) -> socket.socket:
    """Send a completion request on a raw socket (so the test decides when it closes)."""
    host, port = live_server.url.removeprefix("http://").split(":")
    data = json.dumps(body).encode()
    head = (
        "POST /v1/completions HTTP/1.1\r\n"
        f"Host: {host}\r\n"
        f"Authorization: Bearer {live_server.keys['alpha']}\r\n"
        f"X-Request-ID: {request_id}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    )
    sock = socket.create_connection((host, int(port)), timeout=60)
    sock.sendall(head.encode() + data)
    return sock


def counters(live_server) -> tuple[float, float, float]:
    return tuple(live_server.metric(s) for s in (CANCELLED, CANCELLED_TOKENS, LENGTH))


def long_request(stream: bool) -> dict:
    return {
        "model": "base",
        "prompt": "go:",
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "stream": stream,
    }


def test_closing_the_connection_mid_stream_cancels_the_request(live_server, access_log) -> None:
    live_server.wait_idle()
    before = counters(live_server)
    sock = open_request(live_server, long_request(stream=True), "disconnect-stream")
    received = b""
    while received.count(b"data: ") < 2:  # the first text chunks have arrived
        chunk = sock.recv(65536)
        assert chunk, received
        received += chunk
    sock.close()
    live_server.wait_idle()
    after = counters(live_server)

    assert received.startswith(b"HTTP/1.1 200 ")
    assert b"content-type: text/event-stream" in received.lower()
    assert after[0] - before[0] == 1  # this request ended as cancelled ...
    assert after[2] == before[2]  # ... not by running to max_tokens
    assert 2 <= after[1] - before[1] < MAX_TOKENS
    (record,) = access_log("disconnect-stream")
    assert record["cancelled"] is True


def test_closing_the_connection_while_waiting_for_a_whole_completion_cancels_it(
    live_server, access_log
) -> None:
    live_server.wait_idle()
    before = counters(live_server)
    sock = open_request(live_server, long_request(stream=False), "disconnect-whole")
    deadline = time.monotonic() + 60
    while not live_server.metric("qlora_hub_active_rows"):  # the request is decoding
        assert time.monotonic() < deadline, "the request never started decoding"
        time.sleep(0.01)
    sock.close()
    live_server.wait_idle()
    after = counters(live_server)

    assert after[0] - before[0] == 1
    assert after[2] == before[2]
    assert after[1] - before[1] < MAX_TOKENS
    (record,) = access_log("disconnect-whole")
    assert (record["status"], record["cancelled"]) == (499, True)


def test_a_stream_read_to_the_end_is_not_counted_as_cancelled(live_server) -> None:
    live_server.wait_idle()
    before = counters(live_server)
    with httpx.stream(
        "POST",
        live_server.url + "/v1/completions",
        json={**long_request(stream=True), "max_tokens": 3},
        headers=live_server.headers("alpha"),
        timeout=60,
    ) as resp:
        lines = [line for line in resp.iter_lines() if line]
    live_server.wait_idle()
    assert lines[-1] == "data: [DONE]"
    assert counters(live_server)[0] == before[0]
