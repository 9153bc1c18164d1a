"""The admin view of the adapter cache and its byte budget, over HTTP."""

from __future__ import annotations

import httpx


def complete(live_server, model: str) -> httpx.Response:
    return live_server.complete(model, "ab:", max_tokens=2)


def listing(live_server) -> dict:
    resp = httpx.get(
        live_server.url + "/v1/adapters", headers=live_server.headers("admin"), timeout=30
    )
    assert resp.status_code == 200
    return resp.json()


def test_admin_listing_shows_size_hits_and_load_time(live_server) -> None:
    assert [complete(live_server, "r3").status_code for _ in range(2)] == [200, 200]
    (entry,) = [e for e in listing(live_server)["data"] if e["name"] == "r3"]
    stored = next(rec for rec in live_server.store.list(team="server") if rec.name == "r3")
    assert entry["version"] == 1
    assert entry["bytes"] >= stored.size > 0
    assert entry["hits"] >= 2
    assert entry["load_ms"] > 0
    assert entry["in_use"] == 0


def test_admin_load_makes_an_adapter_resident(live_server) -> None:
    live_server.state.cache.unload("r4")
    resp = httpx.post(
        live_server.url + "/v1/adapters/r4/load", headers=live_server.headers("admin"), timeout=60
    )
    assert (resp.status_code, resp.json()["name"], resp.json()["version"]) == (200, "r4", 1)
    assert "r4" in [e["name"] for e in listing(live_server)["data"]]


def test_admin_load_and_unload_of_an_unknown_adapter_are_404(live_server) -> None:
    admin = live_server.headers("admin")
    load = httpx.post(live_server.url + "/v1/adapters/nope/load", headers=admin, timeout=60)
    unload = httpx.delete(live_server.url + "/v1/adapters/nope", headers=admin, timeout=60)
    assert (load.status_code, unload.status_code) == (404, 404)


def test_byte_budget_of_one_adapter_keeps_one_resident_and_answers_every_request(
    live_server,
) -> None:
    cache = live_server.state.cache
    assert complete(live_server, "r0").status_code == 200
    one = next(e["bytes"] for e in listing(live_server)["data"] if e["name"] == "r0")
    cache.set_budget(max_bytes=one)
    try:
        statuses = [complete(live_server, m).status_code for m in ("r0", "r1", "r2", "r0")]
        after = listing(live_server)
    finally:
        cache.set_budget(max_bytes=1 << 30)
    assert statuses == [200] * 4
    assert after["resident_bytes"] <= one
    assert [e["name"] for e in after["data"]] == ["r0"]
