"""Bad input is a 4xx naming the problem, never a 500."""

from __future__ import annotations

import httpx
import pytest


@pytest.fixture
def post(live_server):
    def send(body=None, *, content=None, path="/v1/completions", who="alpha"):
        return httpx.post(
            live_server.url + path,
            json=body,
            content=content,
            headers={**live_server.headers(who), "Content-Type": "application/json"},
            timeout=60,
        )

    return send


def test_invalid_json_is_400(post) -> None:
    resp = post(content=b'{"model": "base", "prompt": ')
    assert resp.status_code == 400
    assert resp.json()["error"]["type"] == "invalid_request_error"


def test_wrong_type_is_400_naming_the_field(post) -> None:
    resp = post({"model": "base", "prompt": "hi", "max_tokens": "ten"})
    assert resp.status_code == 400
    assert resp.json()["error"]["param"] == "max_tokens"
    assert "max_tokens" in resp.json()["error"]["message"]


def test_unknown_field_is_400_naming_the_field(post) -> None:
    resp = post({"model": "base", "prompt": "hi", "best_of": 3})
    assert resp.status_code == 400
    assert "best_of" in resp.json()["error"]["message"]


def test_missing_model_is_400_naming_the_field(post) -> None:
    resp = post({"prompt": "hi"})
    assert resp.status_code == 400
    assert "model" in resp.json()["error"]["message"]


def test_n_above_the_limit_is_400(post) -> None:
    resp = post({"model": "base", "prompt": "hi", "n": 17})
    assert resp.status_code == 400
    assert resp.json()["error"]["param"] == "n"


def test_temperature_out_of_range_is_400(post) -> None:
    resp = post({"model": "base", "prompt": "hi", "temperature": 7})
    assert resp.status_code == 400
    assert resp.json()["error"]["param"] == "temperature"


def test_bad_chat_role_is_400(post) -> None:
    resp = post(
        {"model": "base", "messages": [{"role": "wizard", "content": "x"}]},
        path="/v1/chat/completions",
    )
    assert resp.status_code == 400
    assert "role" in resp.json()["error"]["message"]


def test_prompt_longer_than_the_context_is_400(post) -> None:
    resp = post({"model": "base", "prompt": "x" * 600, "max_tokens": 1})
    assert resp.status_code == 400
    assert (
        resp.json()["error"]["message"]
        == "the prompt is 600 tokens; this model's context is 512 tokens"
    )


def test_prompt_plus_max_tokens_over_the_context_is_400(post) -> None:
    resp = post({"model": "base", "prompt": "x" * 500, "max_tokens": 20})
    assert resp.status_code == 400
    assert resp.json()["error"]["param"] == "max_tokens"


def test_max_tokens_above_the_cap_is_400(post) -> None:
    resp = post({"model": "base", "prompt": "hi", "max_tokens": 513})
    assert resp.status_code == 400
    assert resp.json()["error"]["message"] == "max_tokens 513 is above this server's cap of 512"


def test_body_over_the_limit_is_413(post) -> None:
    resp = post({"model": "base", "prompt": "x" * 70_000})
    assert resp.status_code == 413


def test_unknown_adapter_is_404(post) -> None:
    resp = post({"model": "no-such-adapter", "prompt": "hi", "max_tokens": 1})
    assert resp.status_code == 404
    assert resp.json()["error"]["message"] == (
        "model 'no-such-adapter' does not exist or you do not have access to it"
    )


def test_malformed_model_reference_is_404(post) -> None:
    resp = post({"model": "upper@x@y", "prompt": "hi", "max_tokens": 1})
    assert resp.status_code == 404
