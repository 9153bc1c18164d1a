"""Who may use what: API keys -> teams, 404 for anything not shared, admin keys, rate limits."""

from __future__ import annotations

import httpx
import pytest

from server.auth import KeyStore, RateLimiter, keys_path

# (key, model) -> status. alpha publishes upper/private; private is not shared with the server;
# beta publishes beta-only; ops (the admin key's team) has nothing shared with it.
MATRIX = {
    ("alpha", "upper"): 200,
    ("alpha", "upper@1"): 200,
    ("alpha", "upper@9"): 404,
    ("alpha", "beta-only"): 404,
    ("alpha", "private"): 404,
    ("alpha", "missing"): 404,
    ("alpha", "base"): 200,
    ("beta", "upper"): 404,
    ("beta", "beta-only"): 200,
    ("beta", "private"): 404,
    ("beta", "base"): 200,
    ("admin", "upper"): 404,
    ("admin", "base"): 200,
    ("none", "upper"): 401,
    ("none", "base"): 401,
    ("forged", "base"): 401,
}


def _headers(live_server, who):
    if who == "none":
        return {}
    if who == "forged":
        return {"Authorization": "Bearer qh-not-a-real-key"}
    return live_server.headers(who)


@pytest.mark.parametrize(("who", "model"), sorted(MATRIX))
def test_auth_matrix_gives_the_expected_status(live_server, who, model) -> None:
    resp = httpx.post(
        live_server.url + "/v1/completions",
        json={"model": model, "prompt": "ab:", "max_tokens": 1, "temperature": 0},
        headers=_headers(live_server, who),
        timeout=60,
    )
    assert resp.status_code == MATRIX[(who, model)]


@pytest.mark.parametrize(("who", "status"), [("none", 401), ("alpha", 403), ("admin", 200)])
def test_admin_endpoints_need_an_admin_key(live_server, who, status) -> None:
    resp = httpx.get(
        live_server.url + "/v1/adapters", headers=_headers(live_server, who), timeout=30
    )
    assert resp.status_code == status


def test_models_lists_only_the_callers_adapters(live_server) -> None:
    resp = httpx.get(
        live_server.url + "/v1/models", headers=live_server.headers("beta"), timeout=30
    )
    assert [m["id"] for m in resp.json()["data"]] == ["base", "beta-only"]


def test_keys_are_stored_only_as_hashes(live_server) -> None:
    stored = keys_path(live_server.home).read_text()
    assert all(key not in stored for key in live_server.keys.values())
    assert KeyStore(live_server.home).lookup(live_server.keys["beta"]).team == "beta"


def test_rate_limit_answers_429_with_retry_after(live_server) -> None:
    saved = live_server.state.limiter
    live_server.state.limiter = RateLimiter(2)
    try:
        codes = [
            httpx.get(live_server.url + "/v1/models", headers=live_server.headers("alpha"))
            for _ in range(3)
        ]
    finally:
        live_server.state.limiter = saved
    assert [r.status_code for r in codes] == [200, 200, 429]
    assert int(codes[2].headers["retry-after"]) >= 1
