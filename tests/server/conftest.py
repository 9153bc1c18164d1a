"""A real server on loopback: the embedded base, adapters in the `local` backend, API keys.

Adapters (published by team ``alpha`` and shared with the server unless noted):
``upper`` and ``reverse`` (trained fixtures), ``r0``..``r5`` (seeded random LoRAs),
``private`` (alpha's, not shared with the server), ``beta-only`` (team beta's).

Engines: the servers run on every engine in ``QLORA_HUB_TEST_ENGINES`` (comma separated,
default ``hf``; ``hf`` always runs, others only when their plugin is installed), through
the session fixture ``engine_name``. Modules in :data:`ENGINE_INTERNAL` test the ``hf``
engine's own machinery (its bank, sampler or batch) and run on ``hf`` only.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hub.types import AdapterPayload

RANDOM_NAMES = [f"r{i}" for i in range(6)]
EIGHT = ["upper", "reverse", *RANDOM_NAMES]

ENGINES_ENV = "QLORA_HUB_TEST_ENGINES"

ENGINE_INTERNAL = {
    "test_engine.py": "the hf batching worker itself",
    "test_isolation.py": "the hf worker's rows and KV cache",
    "test_lora_architectures.py": "the gathered-LoRA bank on several architectures",
    "test_architectures.py": "the hf engine on several architectures, holding its bank lock",
    "test_sampling_rows.py": "the hf sampler's row functions",
}
"""Server test modules that run on the ``hf`` engine only, and why (single tests say so
with ``@pytest.mark.engine_internal``). Every other test that uses a server fixture runs
on each engine of ``QLORA_HUB_TEST_ENGINES``."""


ENGINE_REQUIRES = {"vllm": "vllm"}
"""Engine -> the module it needs; an engine whose module is not installed is left out."""


def engines_under_test() -> list[str]:
    """``hf``, then the other engines named in ``QLORA_HUB_TEST_ENGINES`` that are registered
    and installed."""
    import importlib.util

    wanted = [e.strip() for e in os.environ.get(ENGINES_ENV, "hf").split(",") if e.strip()]
    others = [e for e in dict.fromkeys(wanted) if e != "hf"]
    if not others:
        return ["hf"]
    from hub.plugins import Hub

    known = Hub().engines
    return ["hf"] + [
        e
        for e in others
        if e in known and importlib.util.find_spec(ENGINE_REQUIRES.get(e, "hub")) is not None
    ]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "engine_internal: tests the hf engine's own machinery (hf only)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run engine-internal modules on ``hf`` only (deselect their other engines' items)."""
    keep, drop = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        engine = callspec.params.get("engine_name", "hf") if callspec else "hf"
        internal = item.path.name in ENGINE_INTERNAL or item.get_closest_marker("engine_internal")
        (drop if engine != "hf" and internal else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(scope="session", params=engines_under_test())
def engine_name(request: pytest.FixtureRequest) -> str:
    """The engine the server fixtures run (``serve.engine``): ``hf``, and each other engine
    named in ``QLORA_HUB_TEST_ENGINES`` that is installed."""
    return request.param


@dataclass
class LiveServer:
    """A running server and what tests need to talk to it."""

    url: str
    keys: dict[str, str]
    state: Any
    store: Any
    home: Path
    hub: Any
    uvicorn: Any = None
    thread: threading.Thread | None = None

    def headers(self, who: str) -> dict[str, str]:
        """Authorization header of a named key (``alpha``, ``beta``, ``admin``)."""
        return {"Authorization": f"Bearer {self.keys[who]}"}

    def complete(
        self, model: str, prompt: str, *, max_tokens: int, who: str = "alpha", timeout: float = 120
    ) -> Any:
        """``POST /v1/completions`` with greedy decoding, as key ``who``; the ``httpx`` response."""
        import httpx

        return httpx.post(
            self.url + "/v1/completions",
            json={"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0},
            headers=self.headers(who),
            timeout=timeout,
        )

    def metric(self, series: str) -> float:
        """The value of one series in ``GET /metrics`` (name with labels, exactly); 0 if absent."""
        import httpx

        for line in httpx.get(self.url + "/metrics", timeout=30).text.splitlines():
            name, _, value = line.rpartition(" ")
            if name == series:
                return float(value)
        return 0.0

    def stop(self) -> None:
        """Stop uvicorn (and with it the engine)."""
        self.uvicorn.should_exit = True
        self.thread.join(timeout=30)

    def wait_idle(self, timeout_s: float = 60.0) -> None:
        """Wait until the engine has no decoding row and no waiting request (per /metrics),
        nor (``hf``) a prefill in flight: a request being prefilled is in neither gauge."""

        def busy() -> bool:
            prefilling = hasattr(getattr(self.state.engine, "prefill", None), "reqs")
            return bool(
                prefilling
                or self.metric("qlora_hub_active_rows")
                or self.metric("qlora_hub_queue_depth")
            )

        deadline = time.monotonic() + timeout_s
        while busy():
            if time.monotonic() > deadline:
                raise AssertionError(f"engine still busy after {timeout_s} s")
            time.sleep(0.02)


def wait_until(check: Any, *, what: str, timeout_s: float = 60.0) -> Any:
    """Poll ``check()`` until it is truthy and return it; fail naming ``what`` after ``timeout_s``.

    For what the server does after the client already has its answer (a queue place given
    back on a disconnect, the access-log line and metrics written after the last byte): a
    check made at once races with it on a loaded machine."""
    deadline = time.monotonic() + timeout_s
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not so after {timeout_s} s")
        time.sleep(0.02)
    return value


def running_in(function: Any) -> bool:
    """Whether some thread is inside ``function`` now (waiting in it or called from it)."""
    import sys

    code = getattr(function, "__func__", function).__code__
    for frame in sys._current_frames().values():
        while frame is not None:
            if frame.f_code is code:
                return True
            frame = frame.f_back
    return False


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_uvicorn(app: Any) -> tuple[Any, threading.Thread, str]:
    """Run ``app`` under uvicorn in a thread on a free loopback port; returns (server, thread, url).

    The HTTP protocol is ``serve``'s (server.http): httptools answering the server app's
    admission-gate refusals itself. uvicorn listens on a socket bound here: a port only
    found free could be taken by another connection before uvicorn bound it."""
    import uvicorn

    from server.http import http_protocol

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    base, loop = http_protocol()
    gate = getattr(getattr(app, "state", None), "protocol_gate", None)
    protocol = type("Test" + base.__name__, (base,), {"gate": gate})
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            access_log=False,
            http=protocol,
            loop=loop,
        )
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    return server, thread, f"http://127.0.0.1:{port}"


@pytest.fixture
def access_log(caplog: pytest.LogCaptureFixture):
    """``access_log(request_id)``: the server's access-log lines (dicts) for that request id.

    The middleware writes a line after the last byte of the response went out, so a client
    can hold the whole response a moment before the line exists: this waits for it (30 s).
    """
    import json
    import logging

    caplog.set_level(logging.INFO, logger="qlora_hub.server.access")

    def lines_of(request_id: str) -> list[dict[str, Any]]:
        deadline = time.monotonic() + 30
        while True:
            records = [
                json.loads(r.getMessage())
                for r in list(caplog.records)
                if r.name == "qlora_hub.server.access"
            ]
            mine = [r for r in records if r["request_id"] == request_id]
            if mine or time.monotonic() > deadline:
                return mine
            time.sleep(0.02)

    return lines_of


ADAPTERS_ENV = "QLORA_HUB_TEST_ADAPTERS"


def fixture_adapters(request: pytest.FixtureRequest, embedded_base: Path) -> dict[str, Path]:
    """The trained ``upper`` and ``reverse`` adapters (``trained_adapters``), or a kept copy.

    With ``QLORA_HUB_TEST_ADAPTERS=DIR``, their PEFT files are kept in ``DIR/<sha256 of the
    base's weights>``: a run that finds them there uses them instead of training again,
    one that does not trains and keeps them. CI sets it for both of its venvs, so the
    vllm venv (whose older transformers writes another ``config.json`` but the same
    weights) serves the adapters the main suite trained instead of training for minutes.
    """
    import hashlib
    import shutil
    import tempfile

    from hub.base import weight_files

    cache = os.environ.get(ADAPTERS_ENV)
    if not cache:
        return request.getfixturevalue("trained_adapters")
    digest = hashlib.sha256()
    for path in weight_files(embedded_base):
        digest.update(path.read_bytes())
    kept = Path(cache) / digest.hexdigest()
    if not kept.is_dir():
        trained = request.getfixturevalue("trained_adapters")
        Path(cache).mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=cache, prefix=".partial-"))
        for name, path in trained.items():
            (tmp / name).mkdir()
            for file in (AdapterPayload.CONFIG, AdapterPayload.WEIGHTS):
                shutil.copyfile(path / file, tmp / name / file)
        try:
            tmp.rename(kept)
        except OSError:  # another run kept them first
            shutil.rmtree(tmp)
    return {name: kept / name for name in ("upper", "reverse")}


@pytest.fixture(scope="session")
def serve_home(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, embedded_base: Path
) -> dict[str, Any]:
    """A data directory with the adapters published in `local` storage and three API keys."""
    from hub.config import load_settings
    from hub.plugins import Hub
    from hub.store import open_store
    from server.auth import KeyStore
    from server.random_adapter import random_lora_payload

    trained_adapters = fixture_adapters(request, embedded_base)
    home = tmp_path_factory.mktemp("serve-home")
    hub = Hub()
    settings = load_settings(home)
    settings.override("hub.storage", "local")
    store = open_store(hub, settings)
    for name in ("upper", "reverse"):
        store.push(
            AdapterPayload.from_dir(trained_adapters[name], name),
            team="alpha",
            share_with=["server"],
        )
    for i, name in enumerate(RANDOM_NAMES):
        store.push(
            random_lora_payload(embedded_base, name, seed=100 + i, r=8),
            team="alpha",
            share_with=["server"],
        )
    store.push(random_lora_payload(embedded_base, "private", seed=7, r=8), team="alpha")
    store.push(
        random_lora_payload(embedded_base, "beta-only", seed=8, r=8),
        team="beta",
        share_with=["server"],
    )
    keys = KeyStore(home)
    tokens = {
        "alpha": keys.create("alpha")[1],
        "beta": keys.create("beta")[1],
        "admin": keys.create("ops", admin=True)[1],
    }
    return {
        "home": home,
        "hub": hub,
        "settings": settings,
        "store": store,
        "keys": tokens,
    }


@pytest.fixture(scope="session")
def live_server(serve_home: dict[str, Any], embedded_base: Path, engine_name: str):
    """The server under uvicorn on loopback, shared by the API tests (one per engine)."""
    from server.app import build_state, create_app

    hub, settings = serve_home["hub"], serve_home["settings"]
    settings.override("serve.rate_limit_per_minute", 100_000)
    settings.override("serve.max_body_bytes", 64 * 1024)
    settings.override("serve.engine", engine_name)
    state = build_state(hub, settings, embedded_base, serve_home["store"], identity="server")
    app = create_app(state, hub, max_body_bytes=64 * 1024)
    server, thread, url = start_uvicorn(app)
    live = LiveServer(
        url, serve_home["keys"], state, serve_home["store"], serve_home["home"], hub, server, thread
    )
    yield live
    server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture(scope="module")
def vault_server(tmp_path_factory: pytest.TempPathFactory, embedded_base: Path, engine_name: str):
    """A server reading adapters from the `vault` backend as its own team ``server``.

    Teams ``alpha`` and ``server`` have keys in one home (each trusts the other);
    ``store`` is the vault acting as alpha (the publisher). The home's config file
    (``qlora-hub.toml``) picks the vault, 4 KiB chunks (an adapter spans many) and a
    ``max_tokens`` cap of 64. Nothing is published yet: each test pushes what it needs.
    Keys: ``alpha`` and ``admin``.
    """
    from hub import teams
    from hub.config import load_settings
    from hub.plugins import Hub
    from hub.store import open_store
    from server.app import build_state, create_app
    from server.auth import KeyStore

    home = tmp_path_factory.mktemp("vault-serve-home")
    for team in ("alpha", "server"):
        teams.create_team(home, team, passphrase=None)
    (home / "qlora-hub.toml").write_text(
        '[hub]\nstorage = "vault"\n\n[vault]\nchunk_size = 4096\n\n[serve]\nmax_tokens_cap = 64\n'
    )
    hub = Hub()
    settings = load_settings(home)
    publisher = open_store(hub, settings, team="alpha")
    served_from = open_store(hub, settings, team="server")
    keys = KeyStore(home)
    tokens = {"alpha": keys.create("alpha")[1], "admin": keys.create("ops", admin=True)[1]}
    settings.override("serve.engine", engine_name)
    state = build_state(hub, settings, embedded_base, served_from, identity="server")
    server, thread, url = start_uvicorn(create_app(state, hub))
    yield LiveServer(url, tokens, state, publisher, home, hub, server, thread)
    server.should_exit = True
    thread.join(timeout=30)


SMALL_ADAPTERS = ["r0", "r1", "r2"]


@pytest.fixture(scope="session")
def small_home(tmp_path_factory: pytest.TempPathFactory, embedded_base: Path) -> dict[str, Any]:
    """A data directory without trained adapters (fast): ``r0``..``r2`` (alpha's, shared
    with the server), ``beta-only`` (beta's, shared with the server), `local` storage, and
    keys ``alpha``, ``beta`` and ``admin``."""
    from hub.config import load_settings
    from hub.plugins import Hub
    from hub.store import open_store
    from server.auth import KeyStore
    from server.random_adapter import random_lora_payload

    home = tmp_path_factory.mktemp("small-home")
    hub = Hub()
    settings = load_settings(home)
    settings.override("hub.storage", "local")
    store = open_store(hub, settings)
    for i, name in enumerate(SMALL_ADAPTERS):
        payload = random_lora_payload(embedded_base, name, seed=200 + i, r=8)
        store.push(payload, team="alpha", share_with=["server"])
    payload = random_lora_payload(embedded_base, "beta-only", seed=210, r=8)
    store.push(payload, team="beta", share_with=["server"])
    keys = KeyStore(home)
    tokens = {
        "alpha": keys.create("alpha")[1],
        "beta": keys.create("beta")[1],
        "admin": keys.create("ops", admin=True)[1],
    }
    return {"home": home, "hub": hub, "store": store, "keys": tokens}


def start_small_server(
    small_home: dict[str, Any], embedded_base: Path, **values: Any
) -> LiveServer:
    """A server on ``small_home`` with ``serve.*`` settings overridden (``max_queue=2`` means
    ``serve.max_queue``, ``engine="vllm"`` picks the engine; default ``hf``); stop it with
    :meth:`LiveServer.stop`."""
    from hub.config import load_settings
    from server.app import build_state, create_app

    settings = load_settings(small_home["home"])
    settings.override("hub.storage", "local")
    settings.override("serve.rate_limit_per_minute", 100_000)
    for key, value in values.items():
        settings.override(f"serve.{key}", value)
    hub = small_home["hub"]
    state = build_state(hub, settings, embedded_base, small_home["store"], identity="server")
    app = create_app(state, hub, max_body_bytes=settings.get("serve.max_body_bytes"))
    server, thread, url = start_uvicorn(app)
    return LiveServer(
        url, small_home["keys"], state, small_home["store"], small_home["home"], hub, server, thread
    )
