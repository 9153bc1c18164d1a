"""OpenAI request fields the server honours, through the real ``openai`` client on loopback."""

from __future__ import annotations

import httpx
import pytest

openai = pytest.importorskip("openai")


@pytest.fixture
def client(live_server):
    return openai.OpenAI(
        base_url=live_server.url + "/v1", api_key=live_server.keys["alpha"], max_retries=0
    )


def reference_greedy(live_server, prompt: str, steps: int, adjust=None):
    """Greedy tokens and their logprobs from the served base itself (slot 0, no adapter),
    one full forward per step; ``adjust(logits, generated)`` changes the logits picked from."""
    import torch

    engine = live_server.state.engine
    ids = live_server.state.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    generated, logprobs = [], []
    for _ in range(steps):
        with torch.no_grad(), engine.bank.lock:
            engine.bank.rows = torch.zeros(1, dtype=torch.long)
            logits = engine.model(input_ids=torch.tensor([ids + generated])).logits[0, -1].float()
        picked = adjust(logits.clone(), generated) if adjust else logits
        token = int(picked.argmax())
        logprobs.append(float(torch.log_softmax(logits, -1)[token]))
        generated.append(token)
    return generated, logprobs


def no_end(live_server) -> dict[str, int]:
    """A ``logit_bias`` that forbids the end tokens: the completion runs to ``max_tokens``."""
    return {str(t): -100 for t in live_server.state.engine.eos_ids}


def without_end(live_server):
    """``adjust`` for :func:`reference_greedy` matching :func:`no_end`."""

    def adjust(logits, generated):
        for t in live_server.state.engine.eos_ids:
            logits[t] -= 100
        return logits

    return adjust


def token_id(live_server, char: str) -> int:
    return live_server.state.tokenizer.convert_tokens_to_ids(char)


def test_max_completion_tokens_limits_a_chat_completion(client) -> None:
    out = client.chat.completions.create(
        model="base",
        messages=[{"role": "user", "content": "hi"}],
        max_completion_tokens=3,
        temperature=0,  # greedy: sampled, the base may end within 3 tokens ("stop")
    )
    assert (out.usage.completion_tokens, out.choices[0].finish_reason) == (3, "length")


def test_text_content_parts_equal_the_same_text_as_a_string(client) -> None:
    kwargs = dict(model="upper", max_tokens=8, temperature=0)
    plain = client.chat.completions.create(
        messages=[{"role": "user", "content": "hello"}], **kwargs
    )
    parts = client.chat.completions.create(
        messages=[
            {
                "role": "user",
                "content": [{"type": "text", "text": "hel"}, {"type": "text", "text": "lo"}],
            }
        ],
        **kwargs,
    )
    assert parts.choices[0].message.content == plain.choices[0].message.content
    assert parts.usage == plain.usage


def test_developer_role_is_the_system_turn(client) -> None:
    kwargs = dict(model="base", max_tokens=6, temperature=0)
    system = client.chat.completions.create(
        messages=[{"role": "system", "content": "be terse"}, {"role": "user", "content": "x"}],
        **kwargs,
    )
    developer = client.chat.completions.create(
        messages=[{"role": "developer", "content": "be terse"}, {"role": "user", "content": "x"}],
        **kwargs,
    )
    assert developer.choices[0].message.content == system.choices[0].message.content


def test_tool_role_message_is_rendered_through_the_chat_template(live_server, client) -> None:
    messages = [
        {"role": "user", "content": "weather?"},
        {"role": "tool", "content": "sunny", "tool_call_id": "call_1"},
    ]
    out = client.chat.completions.create(model="base", messages=messages, max_tokens=2)
    text = "<|user|>weather?<|end|><|tool|>sunny<|end|><|assistant|>"
    expected = len(live_server.state.tokenizer(text, add_special_tokens=False)["input_ids"])
    assert out.usage.prompt_tokens == expected


def test_models_retrieve_answers_a_visible_adapter_and_the_base(client) -> None:
    upper = client.models.retrieve("upper")
    assert (upper.id, upper.owned_by) == ("upper", "alpha")
    assert client.models.retrieve("upper@1").id == "upper@1"
    assert client.models.retrieve("upper@latest").id == "upper@latest"
    assert client.models.retrieve("base").owned_by == "qlora-hub"


@pytest.mark.parametrize("name", ["beta-only", "private", "nothing-here", "upper@99"])
def test_models_retrieve_is_404_for_what_the_team_cannot_use(client, name) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve(name)
    assert err.value.body["message"] == (
        f"model {name!r} does not exist or you do not have access to it"
    )


def test_n_with_a_seed_gives_n_distinct_reproducible_choices_and_summed_usage(
    live_server, client
) -> None:
    kwargs = dict(
        model="base",
        prompt="go:",
        max_tokens=8,
        temperature=1.0,
        seed=11,
        n=3,
        logit_bias=no_end(live_server),
    )
    out = client.completions.create(**kwargs)
    again = client.completions.create(**kwargs)
    texts = [c.text for c in out.choices]
    assert [c.index for c in out.choices] == [0, 1, 2]
    assert texts == [c.text for c in again.choices]
    assert len(set(texts)) == 3
    assert out.usage.prompt_tokens == 3
    assert [c.finish_reason for c in out.choices] == ["length"] * 3
    assert out.usage.completion_tokens == 3 * 8
    single = client.completions.create(**{**kwargs, "n": 1})
    assert single.choices[0].text == texts[0]


def test_n_choices_stream_with_their_index_and_give_the_pin_back(live_server, client) -> None:
    kwargs = dict(model="r1", prompt="ab:", max_tokens=5, temperature=0, n=2)
    whole = client.completions.create(**kwargs)
    chunks = list(client.completions.create(**kwargs, stream=True))
    for i in range(2):
        text = "".join(c.choices[0].text for c in chunks if c.choices and c.choices[0].index == i)
        assert text == whole.choices[i].text
    assert whole.choices[0].text == whole.choices[1].text  # greedy: the same answer twice
    live_server.wait_idle()
    assert [e["in_use"] for e in live_server.state.cache.info() if e["name"] == "r1"] == [0]


@pytest.mark.engine_internal  # reference_greedy runs the hf engine's model and bank
def test_completion_logprobs_equal_the_models_log_softmax(live_server, client) -> None:
    tokens, logprobs = reference_greedy(live_server, "seven:", 5, without_end(live_server))
    kwargs = dict(
        model="base",
        prompt="seven:",
        max_tokens=5,
        temperature=0,
        logprobs=2,
        logit_bias=no_end(live_server),
    )
    out = client.completions.create(**kwargs)
    lp = out.choices[0].logprobs
    tok = live_server.state.tokenizer
    assert lp.tokens == [tok.decode([t]) for t in tokens]
    # the engine decodes with a KV cache, the reference in one pass: bf16 rounding apart
    assert lp.token_logprobs == pytest.approx(logprobs, abs=1e-2)
    assert all(len(top) <= 2 for top in lp.top_logprobs)  # two ids may decode alike
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(5)]
    streamed = [c.choices[0].logprobs for c in client.completions.create(**kwargs, stream=True)]
    streamed = [s for s in streamed if s is not None]
    assert [t for s in streamed for t in s.tokens] == lp.tokens
    assert [o for s in streamed for o in s.text_offset] == lp.text_offset
    assert [x for s in streamed for x in s.token_logprobs] == lp.token_logprobs


def test_chat_logprobs_with_top_logprobs_in_openai_shape_streamed_too(live_server, client) -> None:
    kwargs = dict(
        model="base",
        messages=[{"role": "user", "content": "q"}],
        max_tokens=4,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
        logit_bias=no_end(live_server),
    )
    out = client.chat.completions.create(**kwargs)
    content = out.choices[0].logprobs.content
    assert len(content) == 4
    for entry in content:
        assert entry.bytes == list(entry.token.encode())
        assert len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].logprob >= entry.logprob - 1e-6
    streamed = [
        e
        for c in client.chat.completions.create(**kwargs, stream=True)
        if c.choices and c.choices[0].logprobs
        for e in c.choices[0].logprobs.content
    ]
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in content]


@pytest.mark.engine_internal  # reference_greedy runs the hf engine's model and bank
def test_penalties_change_greedy_output_as_the_openai_rule_says(live_server, client) -> None:
    end = without_end(live_server)

    def penalised(logits, generated):
        for t in set(generated):
            logits[t] -= 1.5 * generated.count(t) + 0.5
        return end(logits, generated)

    tokens, _ = reference_greedy(live_server, "aaaa:", 10, penalised)
    plain, _ = reference_greedy(live_server, "aaaa:", 10, end)
    assert tokens != plain
    kwargs = dict(
        model="base",
        prompt="aaaa:",
        max_tokens=10,
        temperature=0,
        logit_bias=no_end(live_server),
    )
    out = client.completions.create(
        **kwargs, frequency_penalty=1.5, presence_penalty=0.5, logprobs=0
    )
    tok = live_server.state.tokenizer
    assert out.choices[0].logprobs.tokens == [tok.decode([t]) for t in tokens]
    assert client.completions.create(**kwargs).choices[0].text != out.choices[0].text


def test_logit_bias_forces_a_token(live_server, client) -> None:
    z = token_id(live_server, "Z")
    out = client.completions.create(
        model="upper", prompt="abc:", max_tokens=4, temperature=0, logit_bias={str(z): 100}
    )
    assert out.choices[0].text == "ZZZZ"


def test_echo_returns_the_prompt_then_the_completion(client) -> None:
    kwargs = dict(model="upper", prompt="echo:", max_tokens=6, temperature=0)
    plain = client.completions.create(**kwargs).choices[0].text
    echoed = client.completions.create(**kwargs, echo=True).choices[0].text
    assert echoed == "echo:" + plain
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(**kwargs, echo=True, stream=True)
        if c.choices
    )
    assert streamed == echoed


def test_continuous_usage_stats_put_counts_so_far_on_every_chunk(client) -> None:
    chunks = list(
        client.completions.create(
            model="base",
            prompt="count:",
            max_tokens=5,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True, "continuous_usage_stats": True},
        )
    )
    counts = [c.usage.completion_tokens for c in chunks]
    assert all(c.usage.prompt_tokens == 6 for c in chunks)
    assert counts == sorted(counts) and counts[-1] == 5


def test_user_and_harmless_defaults_are_accepted(live_server) -> None:
    body = {
        "model": "base",
        "messages": [{"role": "user", "content": "x"}],
        "max_tokens": 1,
        "user": "someone@example.com",
        "presence_penalty": 0,
        "frequency_penalty": 0,
        "best_of": 1,
        "tool_choice": "none",
        "parallel_tool_calls": False,
        "response_format": {"type": "text"},
        "logit_bias": {},
        "n": 1,
    }
    resp = httpx.post(
        live_server.url + "/v1/chat/completions",
        json=body,
        headers=live_server.headers("alpha"),
        timeout=60,
    )
    assert resp.status_code == 200, resp.text


def test_logprobs_end_where_a_stop_string_cuts_the_text(live_server, client) -> None:
    letters = {str(token_id(live_server, c)): 100 for c in "ABCDEFGHIJ"}  # one char per token
    kwargs = dict(
        model="base",
        prompt="quartz:",
        max_tokens=12,
        temperature=0,
        logprobs=0,
        logit_bias={**no_end(live_server), **letters},
    )
    full = client.completions.create(**kwargs).choices[0]
    assert "".join(full.logprobs.tokens) == full.text and len(full.text) == 12, full.text
    stop = full.text[2:4]
    cut = client.completions.create(**kwargs, stop=[stop]).choices[0]
    kept = full.text.index(stop)
    assert (cut.text, cut.finish_reason) == (full.text[:kept], "stop")
    assert cut.logprobs.tokens == full.logprobs.tokens[:kept]
    assert cut.logprobs.token_logprobs == full.logprobs.token_logprobs[:kept]


def test_user_is_written_to_the_access_log(live_server, access_log) -> None:
    resp = httpx.post(
        live_server.url + "/v1/completions",
        json={"model": "base", "prompt": "x", "max_tokens": 1, "user": "user-42"},
        headers={**live_server.headers("alpha"), "X-Request-ID": "t4-user-field"},
        timeout=60,
    )
    assert resp.status_code == 200
    assert [line.get("user") for line in access_log("t4-user-field")] == ["user-42"]
