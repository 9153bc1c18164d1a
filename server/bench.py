"""``qlora-hub bench serve``: the server's throughput, latency and cold-load numbers in one run.

Everything runs on loopback against real uvicorn servers with the embedded
base: 8 seeded random LoRA adapters published to the vault and shared with
the server, ``clients`` concurrent streaming clients, greedy decoding.

Scenarios: ``mixed8`` (requests spread over 8 adapters, gathered-LoRA
continuous batching), ``single1`` (the same load on one adapter), and
``naive8`` (the 8-adapter load on a server that runs one request at a time,
switching adapters with PEFT's ``set_adapter``). A static PEFT
``adapter_names`` mixed batch is measured in-process beside them.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from server.bench_admission import burst, flood
from server.naive import NaiveEngine

ADAPTERS = [f"bench{i}" for i in range(8)]
WORDS = ["apple", "river", "stone", "cloud", "tiger", "piano", "green", "light"]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _drive(
    url: str, key: str, models: list[str], n: int, clients: int, max_tokens: int
) -> dict[str, Any]:
    """``n`` streaming completions from ``clients`` concurrent clients; tokens/s and latencies."""
    import httpx

    latencies: list[float] = []
    ttfts: list[float] = []
    tokens = 0
    chunks = 0  # SSE events carrying text: the server's per-token work over HTTP
    failures = 0
    jobs = asyncio.Queue()
    for i in range(n):
        jobs.put_nowait(i)

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal tokens, chunks, failures
        while not jobs.empty():
            i = jobs.get_nowait()
            body = {
                "model": models[i % len(models)],
                "prompt": WORDS[i % len(WORDS)] + ":",
                "max_tokens": max_tokens,
                "temperature": 0,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            start = time.perf_counter()
            first = None
            async with http.stream("POST", "/v1/completions", json=body) as resp:
                if resp.status_code != 200:
                    failures += 1
                    await resp.aread()
                    continue
                async for line in resp.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if chunk.get("choices") and chunk["choices"][0].get("text"):
                        chunks += 1
                        first = first or time.perf_counter()
                    if chunk.get("usage") and not chunk.get("choices"):
                        tokens += chunk["usage"]["completion_tokens"]
            end = time.perf_counter()
            latencies.append(end - start)
            ttfts.append((first or end) - start)

    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=600) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        wall = time.perf_counter() - start
    return {
        "requests": n,
        "failures": failures,
        "completion_tokens": tokens,
        "text_chunks": chunks,
        "wall_s": round(wall, 3),
        "tokens_per_s": round(tokens / wall, 1),
        "latency_p50_ms": round(_percentile(latencies, 0.5) * 1000, 1),
        "latency_p99_ms": round(_percentile(latencies, 0.99) * 1000, 1),
        "ttft_p50_ms": round(_percentile(ttfts, 0.5) * 1000, 1),
        "ttft_p99_ms": round(_percentile(ttfts, 0.99) * 1000, 1),
    }


def _publish(hub: Any, home: Path, base: Path, settings: Any) -> tuple[Any, str]:
    """Publish 8 seeded random adapters to the vault (team ``bench``), shared with ``server``."""
    from hub import teams
    from hub.store import open_store
    from server.random_adapter import random_lora_payload

    teams.create_team(home, "bench", passphrase=None)
    teams.create_team(home, "server", passphrase=None)
    store = open_store(hub, settings, backend="vault")
    for i, name in enumerate(ADAPTERS):
        store.push(
            random_lora_payload(base, name, seed=1000 + i), team="bench", share_with=["server"]
        )
    return store, "vault"


def run_bench(
    hub: Any,
    *,
    base: Path | None,
    n_requests: int = 64,
    clients: int = 32,
    max_tokens: int = 16,
    repeats: int = 5,
    progress: bool = True,
    burst_requests: int = 1000,
    flood_requests: int = 20,
    engines: tuple[str, ...] = ("hf",),
) -> dict[str, Any]:
    """Run every scenario; returns the JSON-able result (ratios against baselines from this run).

    ``burst_requests`` simultaneous requests measure the 429 answers' latency;
    ``flood_requests`` completions measure latency while anonymous 1 MB posts arrive
    (:mod:`server.bench_admission`). ``engines``: the first one gives the top-level
    figures; with more than one, ``engines`` in the result holds each engine's mixed8,
    single1 and engine-only runs, measured one engine after the other in this run.
    """
    import logging

    from rich.progress import Progress

    logging.getLogger("qlora_hub.server.access").setLevel(logging.WARNING)

    from hub.config import load_settings
    from server.app import build_state, create_app
    from server.auth import KeyStore
    from server.model import load_served_base

    with (
        tempfile.TemporaryDirectory(prefix="qlora-hub-bench-") as tmp,
        Progress(disable=not progress) as bar,
    ):
        task = bar.add_task("bench serve", total=6)
        home = Path(tmp) / "home"
        home.mkdir()
        if base is None:
            from hub.base import build_base

            base = Path(tmp) / "base"
            build_base(base)
        settings = load_settings(home, hub=hub)  # plugin tables too ([vllm] from the environment)
        settings.override("serve.rate_limit_per_minute", 1_000_000)
        settings.override("serve.max_batch", max(clients, 1))
        store, backend = _publish(hub, home, base, settings)
        key = KeyStore(home).create("bench")[1]
        admin = KeyStore(home).create("ops", admin=True)[1]
        bar.advance(task)

        per_engine = {}
        for number, engine in enumerate(engines):
            settings.override("serve.engine", engine)
            source = load_served_base(hub, base) if engine == "hf" else base
            state = build_state(hub, settings, source, store, identity="server")
            server, url = _start(create_app(state, hub), settings)
            try:
                run = _scenarios(state, url, key, admin, n_requests, clients, max_tokens, repeats)
                if number == 0:
                    eos, state.engine.eos_ids = state.engine.eos_ids, set()
                    burst_run = burst(url, key, ADAPTERS[0], burst_requests)  # admitted: 4 tokens
                    state.engine.eos_ids = eos
                    flood_run = flood(url, key, ADAPTERS[0], flood_requests)
            finally:
                _stop(server)
                state.engine.stop()
            per_engine[engine] = {"info": state.engine.info, **run}
            bar.advance(task, 3 if number == 0 else 0)
        first = per_engine[engines[0]]
        mixed, single, engine_only = first["mixed8"], first["single1"], first["engine_only"]
        cold = first["cold_load_ms"]
        settings.override("serve.engine", "hf")

        naive_base = load_served_base(hub, base)
        naive = NaiveEngine(hub, naive_base.model, naive_base.tokenizer)
        naive_state = build_state(
            hub, settings, load_served_base(hub, base), store, identity="server"
        )
        naive.attach_from(naive_state.cache, ADAPTERS)
        naive_state.engine = naive
        server, url = _start(create_app(naive_state, hub), settings)
        try:
            naive_run = asyncio.run(_drive(url, key, ADAPTERS, n_requests, clients, max_tokens))
        finally:
            _stop(server)
            naive.stop()
        bar.advance(task)
        peft_mixed = naive.static_mixed_batch(ADAPTERS, WORDS, clients, max_tokens)
        bar.advance(task)

    return {
        "machine": _machine(),
        "storage": backend,
        "clients": clients,
        "requests_per_scenario": n_requests,
        "repeats": repeats,
        "max_tokens": max_tokens,
        "mixed8": mixed,
        "single1": single,
        "naive8": naive_run,
        "peft_adapter_names_static_batch": peft_mixed,
        "engine_only": engine_only,
        "ratio_engine_mixed8_vs_single1": round(
            engine_only["mixed8"]["tokens_per_s"] / engine_only["single1"]["tokens_per_s"], 2
        ),
        "cold_load_ms": cold,
        "ratio_mixed8_vs_naive8": round(mixed["tokens_per_s"] / naive_run["tokens_per_s"], 2),
        "ratio_mixed8_vs_single1": round(mixed["tokens_per_s"] / single["tokens_per_s"], 2),
        "burst": burst_run,
        "anonymous_flood": flood_run,
        **({"engines": per_engine} if len(engines) > 1 else {}),
        "targets": {
            "mixed8_vs_naive8": 3.0,
            "mixed8_vs_single1": 0.8,
            "burst_429_p99_ms": 100,
            "flood_p50_vs_quiet": 1.5,
        },
    }


def _scenarios(
    state: Any,
    url: str,
    key: str,
    admin: str,
    n_requests: int,
    clients: int,
    max_tokens: int,
    repeats: int,
) -> dict[str, Any]:
    """One engine's cold loads, mixed8 and single1 over HTTP and without HTTP (medians)."""
    cold = _cold_loads(url, admin)
    asyncio.run(_drive(url, key, ADAPTERS, clients, clients, max_tokens))  # warm-up
    # alternate the two scenarios and keep each one's median run: other processes on
    # the machine then weigh on both alike
    mixed_runs, single_runs = [], []
    for _ in range(repeats):
        mixed_runs.append(asyncio.run(_drive(url, key, ADAPTERS, n_requests, clients, max_tokens)))
        single_runs.append(
            asyncio.run(_drive(url, key, ADAPTERS[:1], n_requests, clients, max_tokens))
        )
    engine_runs: dict[str, list[dict[str, Any]]] = {"mixed8": [], "single1": []}
    for _ in range(repeats):
        engine_runs["mixed8"].append(_engine_only(state, ADAPTERS, clients, max_tokens))
        engine_runs["single1"].append(_engine_only(state, ADAPTERS[:1], clients, max_tokens))
    return {
        "cold_load_ms": cold,
        "mixed8": _median_run(mixed_runs),
        "single1": _median_run(single_runs),
        "engine_only": {label: _median_run(runs) for label, runs in engine_runs.items()},
    }


def _engine_only(state: Any, models: list[str], rows: int, max_tokens: int) -> dict[str, Any]:
    """The engine without HTTP: ``rows`` requests at once, no end token, so every row makes
    exactly ``max_tokens`` tokens; isolates the cost of mixing adapters in the LoRA path."""
    import threading

    from server.engine import GenRequest

    entries = [state.cache.acquire(state.cache.resolve(m, None)) for m in models]
    done = threading.Semaphore(0)
    reqs = [
        GenRequest(
            prompt_ids=state.tokenizer(WORDS[i % len(WORDS)] + ":")["input_ids"],
            slot=entries[i % len(entries)].slot,
            max_tokens=max_tokens,
            on_event=lambda ev: ev[0] != "delta" and done.release(),
        )
        for i in range(rows)
    ]
    saved = state.engine.eos_ids
    state.engine.eos_ids = set()
    start = time.perf_counter()
    for req in reqs:
        state.engine.submit(req)
    for _ in reqs:
        done.acquire()
    wall = time.perf_counter() - start
    state.engine.eos_ids = saved
    for entry in entries:
        state.cache.release(entry)
    tokens = sum(len(r.generated) for r in reqs)
    return {
        "rows": rows,
        "tokens": tokens,
        "wall_s": round(wall, 3),
        "tokens_per_s": round(tokens / wall, 1),
    }


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median throughput, plus every run's tokens/s."""
    ordered = sorted(runs, key=lambda r: r["tokens_per_s"])
    return {**ordered[len(ordered) // 2], "runs_tokens_per_s": [r["tokens_per_s"] for r in runs]}


def _cold_loads(url: str, admin: str) -> dict[str, float]:
    """Admin-load each adapter once on a fresh server: pull, verify, decrypt, attach (server side ms)."""
    import httpx

    times = []
    with httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {admin}"}, timeout=120
    ) as http:
        for name in ADAPTERS:
            resp = http.post(f"/v1/adapters/{name}/load")
            resp.raise_for_status()
            times.append(resp.json()["load_ms"])
    return {"p50": round(statistics.median(times), 2), "max": round(max(times), 2), "n": len(times)}


def _start(app: Any, settings: Any) -> tuple[Any, str]:
    import socket
    import threading

    import uvicorn

    from server.http import uvicorn_config

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # what `serve` runs: its protocol, limits and GIL switch interval
    server = uvicorn.Server(
        uvicorn_config(app, settings, host="127.0.0.1", port=port, log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("bench server failed to start")
        time.sleep(0.05)
    server._bench_thread = thread
    return server, f"http://127.0.0.1:{port}"


def _stop(server: Any) -> None:
    server.should_exit = True
    server._bench_thread.join(timeout=30)


def _machine() -> dict[str, Any]:
    import os
    import platform

    import torch

    return {
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def render(result: dict[str, Any]) -> None:
    """A rich table of the scenarios and the two ratios."""
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"bench serve ({result['clients']} clients, {result['max_tokens']} tokens/request)"
    )
    for col in ("scenario", "tokens/s", "p50 ms", "p99 ms", "TTFT p50 ms", "failures"):
        table.add_column(col)
    rows = [(name, result[name]) for name in ("mixed8", "single1", "naive8")]
    for engine, run in result.get("engines", {}).items():
        rows += [(f"{engine} {name}", run[name]) for name in ("mixed8", "single1")]
    for name, r in rows:
        table.add_row(
            name,
            str(r["tokens_per_s"]),
            str(r["latency_p50_ms"]),
            str(r["latency_p99_ms"]),
            str(r["ttft_p50_ms"]),
            str(r["failures"]),
        )
    console = Console()
    console.print(table)
    console.print(f"mixed8 / naive8 = {result['ratio_mixed8_vs_naive8']}x (target >= 3)")
    console.print(f"mixed8 / single1 = {result['ratio_mixed8_vs_single1']} (target >= 0.8)")
    console.print(
        f"engine only (no HTTP): mixed8/single1 = {result['ratio_engine_mixed8_vs_single1']}"
    )
    console.print(f"PEFT adapter_names static batch: {result['peft_adapter_names_static_batch']}")
    console.print(f"cold adapter load ({result['storage']}): {result['cold_load_ms']} ms")
    b, f = result["burst"], result["anonymous_flood"]
    console.print(
        f"burst of {b['requests']}: {b['statuses']}; 429 p50 {b['rejected_429_p50_ms']} ms, "
        f"p99 {b['rejected_429_p99_ms']} ms (target p99 < 100)"
    )
    console.print(
        f"p50 with {f['anonymous_senders']} anonymous 1 MB posters: {f['flooded_p50_ms']} ms vs "
        f"{f['quiet_p50_ms']} ms quiet = {f['ratio_flooded_vs_quiet']}x (target <= 1.5)"
    )
