"""server.schemas.decode: every 400 names its field; strictness about unknown names is a choice."""

from __future__ import annotations

import json

import pytest

from server.schemas import BadRequest, ChatCompletionRequest, CompletionRequest, decode


def body(**fields) -> bytes:
    return json.dumps({"model": "m", **fields}).encode()


def test_unknown_names_are_refused_when_strict_and_ignored_when_not() -> None:
    raw = body(prompt="x", temprature=1, stream_options={"include_usage": True, "extra": 1})
    with pytest.raises(BadRequest) as err:
        decode(raw, CompletionRequest)
    assert err.value.param == "temprature"
    data = decode(raw, CompletionRequest, strict=False)
    assert data.stream_options.include_usage is True


def test_every_refused_field_is_listed_in_one_message() -> None:
    raw = body(messages=[{"role": "user", "content": "x"}], tools=[{}], store=True)
    with pytest.raises(BadRequest) as err:
        decode(raw, ChatCompletionRequest)
    assert err.value.param == "tools"
    assert err.value.message.startswith("tools: tool and function calling is not supported")
    assert "; store: completions are not stored by this server" in err.value.message


def test_content_parts_and_developer_role_decode_to_text() -> None:
    raw = body(
        messages=[
            {
                "role": "developer",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            }
        ]
    )
    (message,) = decode(raw, ChatCompletionRequest).messages
    assert (message.role, message.text()) == ("developer", "ab")


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (b"\xff\xfe", None),
        (b"[" * 5000 + b"]" * 5000, None),
        (body(prompt="x", logit_bias={"a": 1}), "logit_bias"),
        (body(prompt="x", logit_bias={"5": 101}), "logit_bias"),
        (body(prompt="x", temperature=2.5), "temperature"),
        (body(prompt="x", n=0), "n"),
    ],
)
def test_malformed_or_out_of_range_bodies_are_bad_requests(raw, param) -> None:
    with pytest.raises(BadRequest) as err:
        decode(raw, CompletionRequest)
    assert err.value.param == param


def test_max_completion_tokens_is_the_limit_when_given() -> None:
    assert decode(body(prompt="x", max_completion_tokens=7), CompletionRequest).limit() == 7
    assert decode(body(prompt="x", max_tokens=5), CompletionRequest).limit() == 5
