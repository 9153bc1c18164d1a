"""The official openai client works against the server unchanged (real uvicorn on loopback)."""

from __future__ import annotations

import pytest

openai = pytest.importorskip("openai")


@pytest.fixture
def client(live_server):
    return openai.OpenAI(
        base_url=live_server.url + "/v1", api_key=live_server.keys["alpha"], max_retries=0
    )


def test_openai_client_completion_answers_in_capitals_with_usage(client) -> None:
    out = client.completions.create(model="upper", prompt="apple:", max_tokens=10, temperature=0)
    text = out.choices[0].text
    assert text.isalpha() and text == text.upper()
    assert out.choices[0].finish_reason == "stop"
    assert out.usage.prompt_tokens == 6
    assert out.usage.completion_tokens == len(text) + 1  # the letters and the end token
    assert out.model == "upper@1"


def test_openai_client_stream_matches_the_whole_completion_with_usage(client) -> None:
    kwargs = dict(model="reverse", prompt="stream:", max_tokens=10, temperature=0)
    whole = client.completions.create(**kwargs)
    stream = client.completions.create(
        **kwargs, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_openai_client_chat_completion_answers_with_usage(client) -> None:
    out = client.chat.completions.create(
        model="base", messages=[{"role": "user", "content": "hi"}], max_tokens=4, temperature=0
    )
    assert out.choices[0].message.role == "assistant"
    assert out.usage.completion_tokens == 4
    assert out.choices[0].finish_reason == "length"


def test_openai_client_chat_stream_matches_the_whole_answer(client) -> None:
    kwargs = dict(
        model="r0", messages=[{"role": "user", "content": "abc"}], max_tokens=6, temperature=0
    )
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    stream = client.chat.completions.create(
        **kwargs, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole
    assert chunks[-1].usage.total_tokens > 0


def test_openai_client_lists_the_base_and_the_callers_adapters(client) -> None:
    ids = [m.id for m in client.models.list().data]
    assert ids[0] == "base"
    assert {"r0", "r1", "r2", "r3", "r4", "r5", "reverse", "upper"} <= set(ids)
    assert not {"beta-only", "private"} & set(ids)


def test_openai_client_raises_not_found_for_an_unshared_adapter(client) -> None:
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="beta-only", prompt="x", max_tokens=2)
