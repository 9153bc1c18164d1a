"""One team's extreme sampling parameters never touch another team's co-batched requests."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.server.conftest import EIGHT


def post(live_server, who: str, body: dict) -> httpx.Response:
    return httpx.post(
        live_server.url + "/v1/completions",
        json=body,
        headers=live_server.headers(who),
        timeout=120,
    )


def test_temperature_1e_40_is_greedy_and_its_batch_of_16_completes(live_server) -> None:
    prompts = [(EIGHT[i % 8], f"w{i}:") for i in range(15)]
    alone = [
        live_server.complete(m, p, max_tokens=6).json()["choices"][0]["text"] for m, p in prompts
    ]
    greedy = live_server.complete("base", "tiny:", max_tokens=6, who="beta").json()
    live_server.wait_idle()
    tiny = {"model": "base", "prompt": "tiny:", "max_tokens": 6, "temperature": 1e-40}
    with ThreadPoolExecutor(16) as pool:
        poisoned = pool.submit(post, live_server, "beta", tiny)
        batch = [
            pool.submit(
                post,
                live_server,
                "alpha",
                {"model": m, "prompt": p, "max_tokens": 6, "temperature": 0},
            )
            for m, p in prompts
        ]
        answers = [f.result() for f in batch]
        tiny_answer = poisoned.result()
    assert [r.status_code for r in answers] == [200] * 15
    assert [r.json()["choices"][0]["text"] for r in answers] == alone
    assert tiny_answer.status_code == 200, tiny_answer.text
    assert tiny_answer.json()["choices"][0]["text"] == greedy["choices"][0]["text"]


def test_seed_of_2_to_the_64_is_400_and_pins_no_adapter(live_server) -> None:
    body = {"model": "r2", "prompt": "x", "max_tokens": 2, "temperature": 1, "seed": 2**64}
    resp = post(live_server, "alpha", body)
    assert resp.status_code == 400
    assert resp.json()["error"]["param"] == "seed"
    assert all(e["in_use"] == 0 for e in live_server.state.cache.info())
