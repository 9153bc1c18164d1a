"""uvicorn limits from settings: header deadline (slow loris), connection cap, header size."""

from __future__ import annotations

import socket
import threading
import time

import pytest


@pytest.fixture(autouse=True)
def _switch_interval():
    """uvicorn_config sets the process's GIL switch interval: give the next tests theirs back."""
    import sys

    saved = sys.getswitchinterval()
    yield
    sys.setswitchinterval(saved)


@pytest.fixture(params=["httptools", "h11"])
def serve(tmp_path, request):
    """``serve(**settings)``: a tiny Litestar app under the server's uvicorn config; its url.
    Every test runs with both HTTP parsers (each protocol class has its own limits code)."""
    import uvicorn
    from litestar import Litestar, get

    from hub.config import load_settings
    from server.http import uvicorn_config
    from tests.server.conftest import free_port

    @get("/health", sync_to_thread=False)
    def health() -> dict[str, str]:
        return {"status": "ok"}

    servers = []

    def start(**values):
        settings = load_settings(tmp_path)
        for key, value in {"serve.port": free_port(), **values}.items():
            settings.override(key, value)
        config = uvicorn_config(Litestar([health]), settings, parser=request.param)
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            assert thread.is_alive()
            time.sleep(0.02)
        servers.append((server, thread))
        return server, ("127.0.0.1", settings.get("serve.port"))

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=10)


def closed_by_server(sock: socket.socket, within_s: float) -> bool:
    sock.settimeout(within_s)
    try:
        return sock.recv(1024) == b""
    except TimeoutError:
        return False


def test_slow_loris_connections_are_closed_after_the_header_timeout(serve) -> None:
    _, addr = serve(**{"serve.header_timeout_s": 1.0})
    socks = [socket.create_connection(addr) for _ in range(30)]
    for sock in socks:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # headers never finish
    started = time.monotonic()
    try:
        time.sleep(0.5)
        for sock in socks:
            sock.sendall(b"X-Slow: 1\r\n")  # trickling bytes does not reset the deadline
        assert all(closed_by_server(s, 5.0) for s in socks)
        assert time.monotonic() - started < 5.0
    finally:
        for sock in socks:
            sock.close()


def test_a_complete_request_is_not_cut_by_the_header_timeout(serve) -> None:
    import httpx

    _, (host, port) = serve(**{"serve.header_timeout_s": 1.0})
    with httpx.Client(base_url=f"http://{host}:{port}") as client:
        assert client.get("/health").status_code == 200
        time.sleep(0.3)
        assert client.get("/health").status_code == 200  # same keep-alive connection


def test_connections_over_the_cap_get_503(serve) -> None:
    import httpx

    from tests.server.conftest import wait_until

    _, (host, port) = serve(**{"serve.limit_concurrency": 4, "serve.header_timeout_s": 30.0})
    url = f"http://{host}:{port}/health"
    idle = [socket.create_connection((host, port)) for _ in range(4)]
    # the server counts a connection once its loop accepted it, and forgets it once it saw
    # it close: a fixed sleep raced both on a loaded machine
    try:
        wait_until(lambda: httpx.get(url, timeout=30).status_code == 503, what="503 at the cap")
    finally:
        for sock in idle:
            sock.close()
    wait_until(lambda: httpx.get(url, timeout=30).status_code == 200, what="200 below the cap")


def test_a_request_head_past_max_header_bytes_is_refused_before_it_ends(serve) -> None:
    _, addr = serve(**{"serve.max_header_bytes": 4096, "serve.header_timeout_s": 30.0})
    with socket.create_connection(addr) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 8192)
        sock.settimeout(5)
        answer = sock.recv(1024)
    assert answer.startswith(b"HTTP/1.1 400 ")


def test_settings_reach_uvicorn(tmp_path) -> None:
    from hub.config import load_settings
    from server.http import uvicorn_config

    settings = load_settings(tmp_path)
    for key, value in {
        "serve.limit_concurrency": 77,
        "serve.keep_alive_timeout_s": 3.0,
        "serve.graceful_shutdown_s": 12.0,
        "serve.header_timeout_s": 2.5,
    }.items():
        settings.override(key, value)
    config = uvicorn_config(object(), settings)
    assert config.limit_concurrency == 77
    assert config.timeout_keep_alive == 3
    assert config.timeout_graceful_shutdown == 12
    assert config.http.header_timeout_s == 2.5


def test_httptools_with_uvloop_is_the_default_parser(tmp_path) -> None:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from hub.config import load_settings
    from server.http import uvicorn_config

    config = uvicorn_config(object(), load_settings(tmp_path))
    assert issubclass(config.http, HttpToolsProtocol)
    assert (config.loop, config.http.max_header_bytes) == ("uvloop", 16384)


def test_the_serving_process_takes_its_switch_interval_from_the_setting(tmp_path):
    import sys

    from hub.config import load_settings
    from server.http import uvicorn_config

    settings = load_settings(tmp_path)
    try:
        uvicorn_config(object(), settings)
        assert sys.getswitchinterval() == pytest.approx(0.005)  # Python's default
        settings.override("serve.switch_interval_ms", 0.5)
        uvicorn_config(object(), settings)
        assert sys.getswitchinterval() == pytest.approx(0.0005)
    finally:
        sys.setswitchinterval(0.005)


@pytest.mark.parametrize(
    "name, value, message",
    [
        (
            "GC_THRESHOLD",
            "0",
            "error: serve.gc_threshold is 0: set it to 1 or more (Python's default is 700)",
        ),
        (
            "SWITCH_INTERVAL_MS",
            "0",
            "error: serve.switch_interval_ms is 0.0: set it above 0 and at most 1000"
            " (Python's default is 5.0)",
        ),
    ],
)
def test_serve_refuses_a_bad_interpreter_setting_in_one_line_before_loading(
    qlora_cli, embedded_base, monkeypatch, name, value, message
) -> None:
    monkeypatch.setenv(f"QLORA_HUB_SERVE_{name}", value)
    res = qlora_cli("serve", "--base", str(embedded_base), "--storage", "local")
    assert res.exit_code == 2
    assert res.err.strip() == message
    assert "loading base" not in res.err
