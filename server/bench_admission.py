"""``bench serve``'s admission scenarios: 429 latency under a burst, latency under a flood.

``burst``: ``n`` requests at once (each on its own connection, all opened first, then
every request written in the same instant) to a server whose queue holds ``max_queue``:
the requests the queue cannot take are answered 429, and their latency (request written
to the answer's first bytes arriving, stamped in the client transport's own callback, on
uvloop when installed: the client's cost is about half what asyncio streams cost) is what
the issue's target bounds (p99 < 100 ms).

``flood``: the p50 latency of ordinary 8-token completions, one at a time, each sent
beside 16 posts of 1 MB from clients without an API key, against the same p50 without
them, the two kinds alternating (target: within 1.5x).

The load generators run in their own Python process (asyncio over raw sockets), so their
work does not share the server's interpreter lock.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

BURST_CLIENT = r"""
import asyncio, json, sys, time

host, port, key, n, model = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
SETTLE_S = float(sys.argv[6])
body = json.dumps({"model": model, "prompt": "apple:", "max_tokens": 4, "temperature": 0}).encode()
request = (
    f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
).encode() + body


class Client(asyncio.Protocol):
    # the clock is read in the transport's own callbacks: no task switch, no stream buffer
    # between the first bytes of the answer arriving and the stamp
    def __init__(self, done):
        self.done, self.start, self.seconds, self.head = done, 0.0, None, b""

    def connection_made(self, transport):
        self.transport = transport

    def send(self):
        self.start = time.perf_counter()
        self.transport.write(request)

    def data_received(self, data):
        if self.seconds is None:
            self.seconds = time.perf_counter() - self.start
        self.head = (self.head + data)[:64]

    def connection_lost(self, exc):
        if not self.done.done():
            self.done.set_result(None)


async def main():
    loop = asyncio.get_running_loop()
    clients = []
    for _ in range(n):
        client = Client(loop.create_future())
        await loop.create_connection(lambda: client, host, port)
        clients.append(client)
    await asyncio.sleep(SETTLE_S)  # the server accepts all of them before any request
    for client in clients:  # every request written in one pass of the loop
        client.send()
    await asyncio.gather(*(c.done for c in clients))
    print(json.dumps([
        (int(c.head.split()[1]) if c.head.startswith(b"HTTP/") else 0, c.seconds or 0.0)
        for c in clients
    ]))


try:
    import uvloop  # the cheaper loop, so the client's own cost weighs less on the figures
except ImportError:
    asyncio.run(main())
else:
    uvloop.run(main())
"""

FLOOD_CLIENT = r"""
import asyncio, json, sys, time

host, port, key, model = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
n, senders, size = int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
body = json.dumps({"model": model, "prompt": "apple:", "max_tokens": 8, "temperature": 0}).encode()
normal = (
    f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
).encode() + body
big = b'{"model": "base", "prompt": "' + b"a" * size + b'"}'
anonymous = (
    f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
    f"Content-Length: {len(big)}\r\nConnection: close\r\n\r\n"
).encode() + big


async def post(request):
    try:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(request)
        await writer.drain()
        line = await reader.readline()
        await reader.read()
        writer.close()
        return line
    except OSError:  # the server answered 401 and closed before the whole body went out
        return b""


async def main():
    quiet, flooded = [], []
    for _ in range(n):  # alternate, so background load weighs on both alike
        for senders_now, times in ((0, quiet), (senders, flooded)):
            others = [asyncio.create_task(post(anonymous)) for _ in range(senders_now)]
            await asyncio.sleep(0)
            start = time.perf_counter()
            line = await post(normal)
            times.append(time.perf_counter() - start)
            assert b" 200 " in line, line
            await asyncio.gather(*others)
    print(json.dumps([quiet, flooded]))


asyncio.run(main())
"""


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else 0.0


def burst(url: str, key: str, model: str, n: int = 1000, settle_s: float = 2.0) -> dict[str, Any]:
    """``n`` simultaneous completions; latency of the 429 answers and how many there were.

    The ``n`` connections are opened first and left ``settle_s`` seconds before any request
    is written: the kernel completes a connection before the server's loop has accepted it
    (uvicorn's per-connection set-up, 0.2 ms or more each), so with too short a pause the
    requests' clocks would start while the server still accepts the connections opened
    just before, and the figure would time the accept backlog, not the answers.
    """
    host, port = url.removeprefix("http://").split(":")
    out = subprocess.run(
        [sys.executable, "-c", BURST_CLIENT, host, port, key, str(n), model, str(settle_s)],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    results = json.loads(out.stdout)
    rejected = [s for status, s in results if status == 429]
    statuses: dict[str, int] = {}
    for status, _ in results:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    return {
        "requests": n,
        "statuses": statuses,
        "rejected_429_p50_ms": round(_percentile(rejected, 0.5) * 1000, 1),
        "rejected_429_p99_ms": round(_percentile(rejected, 0.99) * 1000, 1),
        "rejected_429_max_ms": round(max(rejected, default=0.0) * 1000, 1),
    }


def _completion_times(
    url: str, key: str, model: str, n: int, senders: int, size: int
) -> tuple[list[float], list[float]]:
    """Latencies of ``n`` 8-token completions alone and ``n`` each sent beside ``senders``
    anonymous ``size``-byte posts, alternating."""
    host, port = url.removeprefix("http://").split(":")
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            FLOOD_CLIENT,
            host,
            port,
            key,
            model,
            str(n),
            str(senders),
            str(size),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    quiet, flooded = json.loads(out.stdout)
    return quiet, flooded


def flood(
    url: str, key: str, model: str, n: int = 20, senders: int = 16, size: int = 1 << 20
) -> dict[str, Any]:
    """p50 of ``n`` 8-token completions, quiet and each beside ``senders`` anonymous clients
    posting ``size``-byte bodies."""
    quiet_times, flooded_times = _completion_times(url, key, model, n, senders, size)
    quiet, flooded = _percentile(quiet_times, 0.5), _percentile(flooded_times, 0.5)
    return {
        "completions": n,
        "anonymous_senders": senders,
        "anonymous_body_bytes": size,
        "quiet_p50_ms": round(quiet * 1000, 1),
        "flooded_p50_ms": round(flooded * 1000, 1),
        "ratio_flooded_vs_quiet": round(flooded / quiet, 2),
    }
