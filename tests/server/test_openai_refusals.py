"""OpenAI fields that cannot apply here are a 400 naming the field and saying why."""

from __future__ import annotations

import pytest

openai = pytest.importorskip("openai")

TOOLS = (
    "tool and function calling is not supported: the server does not parse calls from model output"
)
CHAT = dict(model="base", messages=[{"role": "user", "content": "x"}], max_tokens=2)
COMPLETION = dict(model="base", prompt="x", max_tokens=2)


@pytest.fixture
def client(live_server):
    return openai.OpenAI(
        base_url=live_server.url + "/v1", api_key=live_server.keys["alpha"], max_retries=0
    )


def refused(call, **kwargs) -> dict:
    with pytest.raises(openai.BadRequestError) as err:
        call(**kwargs)
    return err.value.body


TOOL_SPEC = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]


@pytest.mark.parametrize(
    ("extra", "param", "message"),
    [
        ({"tools": TOOL_SPEC}, "tools", f"tools: {TOOLS}"),
        ({"tool_choice": "required"}, "tool_choice", f"tool_choice: {TOOLS}"),
        ({"parallel_tool_calls": True}, "parallel_tool_calls", f"parallel_tool_calls: {TOOLS}"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {}},
                }
            },
            "response_format",
            "response_format: 'json_schema' needs constrained decoding, which this server does "
            'not do; only {"type": "text"} is served',
        ),
        ({"store": True}, "store", "store: completions are not stored by this server"),
        ({"top_logprobs": 2}, "top_logprobs", "top_logprobs: top_logprobs needs logprobs: true"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "data:,"}}],
                    }
                ]
            },
            "messages[0].content[0]",
            "messages[0].content[0]: only text content parts are served (got 'image_url')",
        ),
    ],
)
def test_chat_field_that_cannot_apply_is_400_with_the_reason(client, extra, param, message) -> None:
    body = refused(client.chat.completions.create, **{**CHAT, **extra})
    assert (body["param"], body["message"]) == (param, message)


@pytest.mark.parametrize(
    ("extra", "param", "message"),
    [
        (
            {"best_of": 3},
            "best_of",
            "best_of: ranking candidates by logprob is not supported; ask for n choices",
        ),
        (
            {"suffix": "end"},
            "suffix",
            "suffix: fill-in-the-middle needs a base trained for it; these bases are plain causal LMs",
        ),
        (
            {"echo": True, "logprobs": 1},
            "echo",
            "echo: echo with logprobs needs the prompt's logprobs, which the engine does not compute",
        ),
        ({"seed": 2**64}, "seed", "seed: Expected `int` <= 9223372036854775807"),
        ({"seed": -1}, "seed", "seed: Expected `int` >= 0"),
        ({"n": 17}, "n", "n: Expected `int` <= 16"),
        ({"logprobs": 21}, "logprobs", "logprobs: Expected `int` <= 20"),
        (
            {"presence_penalty": 2.5},
            "presence_penalty",
            "presence_penalty: Expected `float` <= 2.0",
        ),
        (
            {"logit_bias": {"999999": 5}},
            "logit_bias",
            "logit_bias: token id 999999 is outside this model's vocabulary (0..262)",
        ),
        (
            {"max_tokens": 4, "extra_body": {"max_completion_tokens": 5}},
            "max_completion_tokens",
            "max_completion_tokens: differs from max_tokens; send one of them",
        ),
    ],
)
def test_completion_field_out_of_range_or_inapplicable_is_400(
    client, extra, param, message
) -> None:
    body = refused(client.completions.create, **{**COMPLETION, **extra})
    assert (body["param"], body["message"]) == (param, message)


def test_unknown_field_is_400_naming_it_and_the_setting(client) -> None:
    body = refused(client.completions.create, **COMPLETION, extra_body={"temprature": 0.5})
    assert body["param"] == "temprature"
    assert body["message"] == (
        "unknown field 'temprature': this server refuses names that are no OpenAI field it "
        'knows (serve.unknown_fields = "ignore" accepts them)'
    )


def test_unknown_field_in_a_message_is_400_naming_its_path(client) -> None:
    messages = [{"role": "user", "content": "x", "mood": "happy"}]
    body = refused(client.chat.completions.create, **{**CHAT, "messages": messages})
    assert body["param"] == "messages[0].mood"


def test_unknown_fields_ignore_setting_accepts_unknown_names(live_server, client) -> None:
    live_server.state.unknown_fields = "ignore"
    try:
        out = client.completions.create(
            **COMPLETION, temperature=0, extra_body={"temprature": 0.5, "nonsense": [1]}
        )
    finally:
        live_server.state.unknown_fields = "reject"
    assert out.usage.completion_tokens >= 1
