"""The server on the engine protocol: the built-in hf engine passes the engine contract,
/v1/models names the engine, an engine's refusal is the server's refusal, and
``serve --engine`` refuses an unknown engine in one line."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import httpx
import pytest

from hub.testing import EngineContract

from .conftest import LiveServer, start_uvicorn

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "qlora-hub-minimal"


class TestHFEngine(EngineContract):
    """The built-in engine, built through its registered factory like any other."""

    @pytest.fixture(scope="class")
    @classmethod
    def engine(cls, embedded_base, tmp_path_factory):
        from hub.config import load_settings
        from hub.engines import open_engine
        from hub.plugins import Hub

        settings = load_settings(tmp_path_factory.mktemp("hf-engine-home"))
        settings.override("serve.max_queue", 16)
        engine = open_engine(Hub(entry_points=False), settings, embedded_base, "hf").start()
        yield engine
        engine.stop()


def test_models_show_the_engine_on_the_base(small_home, embedded_base) -> None:
    from .conftest import start_small_server

    live = start_small_server(small_home, embedded_base, max_batch=4)
    try:
        resp = httpx.get(live.url + "/v1/models", headers=live.headers("alpha"), timeout=30)
        one = httpx.get(live.url + "/v1/models/base", headers=live.headers("alpha"), timeout=30)
    finally:
        live.stop()
    base = resp.json()["data"][0]
    assert (base["id"], one.json()["engine"]) == ("base", base["engine"])
    assert base["engine"] == {
        "engine": "hf",
        "format": "nf4",
        "device": "cpu",
        "dtype": "float32",
        "max_batch": 4,
    }


@pytest.fixture
def tiny_server(tmp_path, embedded_base):
    """A server on the guide's TinyEngine (max rank 64) with ``big`` (r=128) and ``small``
    (r=8) shared by alpha with the server; keys ``alpha`` and ``admin``."""
    sys.path.insert(0, str(EXAMPLE))
    import qlora_hub_minimal

    from hub.config import load_settings
    from hub.plugins import Hub
    from hub.store import open_store
    from server.app import build_state, create_app
    from server.auth import KeyStore
    from server.random_adapter import random_lora_payload

    hub = Hub(entry_points=False, extra=[("qlora_hub_minimal", qlora_hub_minimal)])
    settings = load_settings(tmp_path)
    settings.override("hub.storage", "local")
    settings.override("serve.engine", "tiny")
    store = open_store(hub, settings)
    for name, r in (("big", 128), ("small", 8)):
        payload = random_lora_payload(embedded_base, name, seed=5, r=r, targets=["q_proj"])
        store.push(payload, team="alpha", share_with=["server"])
    keys = KeyStore(tmp_path)
    tokens = {"alpha": keys.create("alpha")[1], "admin": keys.create("ops", admin=True)[1]}
    state = build_state(hub, settings, embedded_base, store, identity="server")
    server, thread, url = start_uvicorn(create_app(state, hub))
    live = LiveServer(url, tokens, state, store, tmp_path, hub, server, thread)
    yield live
    live.stop()


def test_an_adapter_the_engine_refuses_is_404_to_callers_and_422_to_admins(
    tiny_server, caplog
) -> None:
    caplog.set_level(logging.WARNING, logger="qlora_hub.server.cache")
    live = tiny_server
    caller = live.complete("big", "ab:", max_tokens=2)
    admin = httpx.post(
        live.url + "/v1/adapters/big/load", headers=live.headers("admin"), timeout=60
    )
    served = live.complete("small", "ab:", max_tokens=2)

    assert caller.status_code == 404
    assert "big" in caller.json()["error"]["message"]
    assert admin.status_code == 422
    assert "rank 128 is above this engine's maximum 64" in admin.json()["error"]["message"]
    assert served.status_code == 200 and served.json()["model"] == "small@1"
    refusals = [r for r in caplog.records if r.getMessage().startswith("adapter big@1 refused: ")]
    assert len(refusals) == 2  # one line per refused load, the reason in it
    assert all("rank 128 is above" in r.getMessage() for r in refusals)
    assert live.metric('qlora_hub_adapter_events_total{event="refused"}') == 2
    models = httpx.get(live.url + "/v1/models", headers=live.headers("alpha"), timeout=30)
    assert models.json()["data"][0]["engine"]["engine"] == "tiny"


def test_serve_with_an_unknown_engine_is_one_line_before_loading(qlora_cli, embedded_base) -> None:
    res = qlora_cli("serve", "--base", str(embedded_base), "--engine", "nope")
    assert res.exit_code == 2
    assert res.err.startswith("error: unknown engine 'nope': registered engines are hf")
    assert res.err.rstrip().endswith("(pick one with serve --engine or the setting serve.engine)")
    assert "loading base" not in res.err
