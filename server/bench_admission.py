"""``bench serve``'s admission scenarios: 429 latency under a burst, latency under a flood.

``burst``: ``n`` requests at once (each on its own connection, all opened first, then
every request written in the same instant) to a server whose queue holds ``max_queue``:
the requests the queue cannot take are answered 429, and their latency (request written
to status line read) is what the issue's target bounds (p99 < 100 ms).

``flood``: the p50 latency of ordinary 8-token completions, one at a time, while 16
clients without an API key post 1 MB bodies in a loop, against the same p50 on a quiet
server (target: within 1.5x).

The load generators run in their own Python process (asyncio over raw sockets), so their
work does not share the server's interpreter lock.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import httpx

BURST_CLIENT = r"""
import asyncio, json, sys, time

host, port, key, n, model = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
body = json.dumps({"model": model, "prompt": "apple:", "max_tokens": 4, "temperature": 0}).encode()
request = (
    f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
).encode() + body


async def one(conn, go):
    reader, writer = conn
    await go.wait()
    start = time.perf_counter()
    writer.write(request)
    line = await reader.readline()
    seconds = time.perf_counter() - start
    await reader.read()
    writer.close()
    return int(line.split()[1]) if line else 0, seconds


async def main():
    conns = []
    for _ in range(n):
        conns.append(await asyncio.open_connection(host, port))
    go = asyncio.Event()
    tasks = [asyncio.create_task(one(c, go)) for c in conns]
    await asyncio.sleep(0.2)
    go.set()
    print(json.dumps(await asyncio.gather(*tasks)))


asyncio.run(main())
"""

FLOOD_CLIENT = r"""
import asyncio, sys

host, port, senders, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
head = (
    f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
    f"Content-Length: {size}\r\nConnection: close\r\n\r\n"
).encode()
chunk = b'{"model": "base", "prompt": "' + b"a" * (size - 32) + b'"}'
chunk = chunk[:size].ljust(size, b" ")


async def sender():
    while True:
        try:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(head + chunk)
            await writer.drain()
            await reader.read()
            writer.close()
        except OSError:
            await asyncio.sleep(0.01)


async def main():
    await asyncio.gather(*(sender() for _ in range(senders)))


asyncio.run(main())
"""


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else 0.0


def burst(url: str, key: str, model: str, n: int = 1000) -> dict[str, Any]:
    """``n`` simultaneous completions; latency of the 429 answers and how many there were."""
    host, port = url.removeprefix("http://").split(":")
    out = subprocess.run(
        [sys.executable, "-c", BURST_CLIENT, host, port, key, str(n), model],
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


def _p50_of_completions(url: str, key: str, model: str, n: int) -> float:
    body = {"model": model, "prompt": "apple:", "max_tokens": 8, "temperature": 0}
    times = []
    with httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=600
    ) as http:
        for _ in range(n):
            start = time.perf_counter()
            http.post("/v1/completions", json=body).raise_for_status()
            times.append(time.perf_counter() - start)
    return _percentile(times, 0.5)


def flood(
    url: str, key: str, model: str, n: int = 20, senders: int = 16, size: int = 1 << 20
) -> dict[str, Any]:
    """p50 of ``n`` 8-token completions, quiet and while ``senders`` anonymous clients post
    ``size``-byte bodies in a loop."""
    quiet = _p50_of_completions(url, key, model, n)
    host, port = url.removeprefix("http://").split(":")
    proc = subprocess.Popen(
        [sys.executable, "-c", FLOOD_CLIENT, host, port, str(senders), str(size)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(1.0)  # the flood is under way
        flooded = _p50_of_completions(url, key, model, n)
    finally:
        proc.kill()
        proc.wait()
    return {
        "completions": n,
        "anonymous_senders": senders,
        "anonymous_body_bytes": size,
        "quiet_p50_ms": round(quiet * 1000, 1),
        "flooded_p50_ms": round(flooded * 1000, 1),
        "ratio_flooded_vs_quiet": round(flooded / quiet, 2),
    }
