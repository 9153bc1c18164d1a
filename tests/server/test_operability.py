"""What operators see: adapter log lines with name and reason, storage failures as 503 and in
/ready, base mismatches refused with a reason, bounded per-adapter metrics, process metrics."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import httpx
import pytest

from tests.server.conftest import start_small_server


@pytest.fixture(scope="module")
def live(small_home, embedded_base, engine_name):
    server = start_small_server(
        small_home, embedded_base, metrics_max_label_values=1, engine=engine_name
    )
    yield server
    server.stop()


def test_loads_and_refusals_are_logged_with_the_adapter_and_the_reason(
    live, embedded_base, caplog
) -> None:
    from server.random_adapter import random_lora_payload

    caplog.set_level(logging.INFO, logger="qlora_hub.server.cache")
    payload = random_lora_payload(embedded_base, "other-base", seed=300, r=8)
    live.store.push(
        payload, team="alpha", share_with=["server"], metadata={"base_fingerprint": "ab" * 32}
    )
    assert live.complete("r0", "hi", max_tokens=2).status_code == 200
    refused = live.complete("other-base", "hi", max_tokens=2)
    assert refused.status_code == 404
    messages = [r.getMessage() for r in caplog.records if r.name == "qlora_hub.server.cache"]
    assert any(m.startswith("adapter r0@1 loaded in ") for m in messages), messages
    served = live.state.base_fingerprint[:12]
    assert (
        "adapter other-base@1 refused: other-base@1: trained on another base (abababababab); "
        f"this server serves {served}: retrain or re-import it with --base for this base"
    ) in messages
    assert live.metric('qlora_hub_adapter_events_total{event="refused"}') >= 1


def test_a_storage_failure_during_a_cold_load_is_503_and_shows_in_ready(live) -> None:
    root = Path(live.store.backend.root)
    moved = root.with_name(root.name + ".away")
    live.state.cache._listings.clear()  # the next request asks storage
    root.rename(moved)
    try:
        response = live.complete("r2", "hi", max_tokens=2)
        ready = httpx.get(live.url + "/ready", timeout=30)
    finally:
        moved.rename(root)
    assert response.status_code == 503, response.text
    assert response.json()["error"]["message"].startswith("adapter storage is unavailable (")
    assert response.headers["retry-after"] == "5"
    assert ready.status_code == 503
    assert ready.json()["reason"].startswith("adapter storage: ")
    assert "FileNotFoundError" in ready.json()["reason"]
    live.state.cache._listings.clear()
    assert live.complete("r2", "hi", max_tokens=2).status_code == 200
    assert httpx.get(live.url + "/ready", timeout=30).json() == {"ready": True}


def test_metrics_have_process_cache_queue_and_inter_token_families(live) -> None:
    live.state.cache._listings.clear()
    for name in ("r0", "r1", "r0"):
        assert live.complete(name, "hello there", max_tokens=4).status_code == 200
    text = httpx.get(live.url + "/metrics", timeout=30).text
    for family in (
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "qlora_hub_queue_seconds_count",
        "qlora_hub_inter_token_seconds_count",
    ):
        assert any(line.startswith(family) for line in text.splitlines()), family
    assert live.metric('qlora_hub_adapter_events_total{event="hit"}') >= 1
    assert live.metric('qlora_hub_adapter_events_total{event="miss"}') >= 1
    assert live.metric("qlora_hub_queue_seconds_count") >= 3
    assert live.metric("qlora_hub_inter_token_seconds_count") >= 3


def test_per_adapter_labels_are_bounded_by_the_setting(live) -> None:
    """``metrics_max_label_values`` is 1 here: the first adapter seen keeps its name."""
    for name in ("r0", "r1", "r2", "base"):
        assert live.complete(name, "hi", max_tokens=2).status_code == 200
    text = httpx.get(live.url + "/metrics", timeout=30).text
    adapters = {
        line.split('adapter="')[1].split('"')[0]
        for line in text.splitlines()
        if line.startswith("qlora_hub_adapter_requests_total{")
    }
    assert len(adapters) == 2 and "other" in adapters, adapters
    teams = {
        line.split('team="')[1].split('"')[0]
        for line in text.splitlines()
        if line.startswith("qlora_hub_adapter_requests_total{")
    }
    assert teams == {"alpha"}


def test_api_and_app_do_not_import_each_other() -> None:
    import server

    root = Path(server.__file__).parent

    def imports(name: str) -> set[str]:
        tree = ast.parse((root / f"{name}.py").read_text())
        return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}

    assert "server.app" not in imports("api")
    assert "server.api" not in imports("state")
    assert "server.app" not in imports("state")
