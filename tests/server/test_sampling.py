"""Sampling parameters over HTTP: ``stop``, ``seed``, ``top_p`` and ``temperature``."""

from __future__ import annotations

import httpx


def complete(live_server, model: str, prompt: str, **params) -> dict:
    resp = httpx.post(
        live_server.url + "/v1/completions",
        json={"model": model, "prompt": prompt, "max_tokens": 12, **params},
        headers=live_server.headers("alpha"),
        timeout=120,
    )
    assert resp.status_code == 200, resp.text
    return resp.json()["choices"][0]


def test_stop_string_cuts_the_completion_and_finishes_with_stop(live_server) -> None:
    full = complete(live_server, "upper", "quartz:", temperature=0)["text"]
    assert len(full) >= 4, full
    stop = full[2:4]
    cut = complete(live_server, "upper", "quartz:", temperature=0, stop=[stop])
    assert (cut["text"], cut["finish_reason"]) == (full[: full.index(stop)], "stop")


def test_same_seed_gives_the_same_sampled_text(live_server) -> None:
    a = complete(live_server, "base", "go:", temperature=1.0, seed=7, max_tokens=16)
    b = complete(live_server, "base", "go:", temperature=1.0, seed=7, max_tokens=16)
    c = complete(live_server, "base", "go:", temperature=1.0, seed=8, max_tokens=16)
    assert a["text"] == b["text"]
    assert a["text"] != c["text"]


def test_tiny_top_p_keeps_only_the_most_likely_token(live_server) -> None:
    greedy = complete(live_server, "upper", "piano:", temperature=0)["text"]
    nucleus = complete(live_server, "upper", "piano:", temperature=2.0, top_p=1e-9, seed=3)
    assert nucleus["text"] == greedy
