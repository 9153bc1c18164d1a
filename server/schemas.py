"""Request bodies of the OpenAI-compatible endpoints: msgspec structs and their checks.

:func:`decode` turns a body into a request or raises :class:`BadRequest` naming the field:
wrong types and out-of-range values (msgspec), fields OpenAI defines that this server
cannot honour (each with the reason, :func:`refusals`), and, when ``strict``, names
that are no field at all. Every field declared here is honoured; docs/serving.md has
the table.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

MAX_N = 16
"""Most choices (``n``) one request may ask for."""
MAX_TOP_LOGPROBS = 20
"""Most alternatives per token in ``logprobs`` / ``top_logprobs``."""
SEED_MAX = 2**63 - 1

PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
Temperature = Annotated[float, msgspec.Meta(ge=0.0, le=2.0)]
TopP = Annotated[float, msgspec.Meta(gt=0.0, le=1.0)]
Penalty = Annotated[float, msgspec.Meta(ge=-2.0, le=2.0)]
Bias = Annotated[float, msgspec.Meta(ge=-100.0, le=100.0)]
Seed = Annotated[int, msgspec.Meta(ge=0, le=SEED_MAX)]
Choices = Annotated[int, msgspec.Meta(ge=1, le=MAX_N)]
TopLogprobs = Annotated[int, msgspec.Meta(ge=0, le=MAX_TOP_LOGPROBS)]
Stop = str | Annotated[list[str], msgspec.Meta(max_length=4)] | None
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class BadRequest(Exception):
    """A 400: ``message`` for the caller, ``param`` the field it is about."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param = message, param


class StreamOptions(msgspec.Struct):
    """``stream_options``: ``include_usage`` adds a last chunk with the usage counts;
    ``continuous_usage_stats`` puts the counts so far on every chunk."""

    include_usage: bool = False
    continuous_usage_stats: bool = False


class ContentPart(msgspec.Struct):
    """One part of a message's content; only ``{"type": "text", "text": ...}`` is served."""

    type: str
    text: str | None = None
    image_url: Any = None
    input_audio: Any = None
    file: Any = None
    refusal: str | None = None


class ChatMessage(msgspec.Struct):
    """One chat turn; ``developer`` is the system turn of newer clients."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[Any] | None = None
    function_call: Any = None
    refusal: str | None = None

    def text(self) -> str:
        """The content as one string (text parts joined)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text or "" for p in self.content)


class ResponseFormat(msgspec.Struct):
    """``response_format``: only ``{"type": "text"}`` is served."""

    type: str
    json_schema: Any = None


class SamplingFields(msgspec.Struct, kw_only=True):
    """Fields shared by completions and chat completions."""

    model: Name
    max_tokens: PositiveInt | None = None
    max_completion_tokens: PositiveInt | None = None
    temperature: Temperature = 1.0
    top_p: TopP = 1.0
    presence_penalty: Penalty = 0.0
    frequency_penalty: Penalty = 0.0
    logit_bias: Annotated[dict[int, Bias], msgspec.Meta(max_length=300)] | None = None
    stop: Stop = None
    seed: Seed | None = None
    n: Choices = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # OpenAI fields this server cannot honour: declared so that :func:`refusals` explains them
    best_of: int | None = None
    suffix: str | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None
    modalities: list[str] | None = None
    audio: Any = None
    prediction: Any = None
    reasoning_effort: str | None = None
    web_search_options: Any = None

    def stops(self) -> list[str]:
        """``stop`` as a list of non-empty strings."""
        if self.stop is None:
            return []
        return [s for s in ([self.stop] if isinstance(self.stop, str) else self.stop) if s]

    def limit(self) -> int | None:
        """The completion length asked for: ``max_completion_tokens``, else ``max_tokens``."""
        return (
            self.max_completion_tokens
            if self.max_completion_tokens is not None
            else self.max_tokens
        )

    def top_logprobs_wanted(self) -> int | None:
        """None for no logprobs, else how many alternatives per token (0: the token only)."""
        raise NotImplementedError


class CompletionRequest(SamplingFields, kw_only=True):
    """``POST /v1/completions``."""

    prompt: str | Annotated[list[str], msgspec.Meta(min_length=1, max_length=1)]
    logprobs: TopLogprobs | None = None
    echo: bool = False

    def text(self) -> str:
        """The single prompt."""
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def top_logprobs_wanted(self) -> int | None:
        """``logprobs``: None, or how many alternatives per token."""
        return self.logprobs


class ChatCompletionRequest(SamplingFields, kw_only=True):
    """``POST /v1/chat/completions``."""

    messages: Annotated[list[ChatMessage], msgspec.Meta(min_length=1)]
    logprobs: bool = False
    top_logprobs: TopLogprobs | None = None

    def top_logprobs_wanted(self) -> int | None:
        """None unless ``logprobs`` is true; then ``top_logprobs`` (default 0)."""
        return (self.top_logprobs or 0) if self.logprobs else None


def json_schema(kind: type[msgspec.Struct]) -> dict[str, Any]:
    """``kind``'s JSON schema with every ``$ref`` inlined (for the OpenAPI document)."""
    (top,), defs = msgspec.json.schema_components([kind], ref_template="{name}")

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(defs[node["$ref"]])
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    return inline(top)


def decode(body: bytes, kind: type[SamplingFields], *, strict: bool = True) -> Any:
    """Decode and check a request body; raises :class:`BadRequest` naming the field.

    Args:
        body: the raw JSON body.
        kind: :class:`CompletionRequest` or :class:`ChatCompletionRequest`.
        strict: refuse names that are no field of ``kind`` (else ignore them).
    """
    try:
        data = msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as exc:
        text, _, where = str(exc).partition(" - at `")
        param = _param_of(where.rstrip("`")) if where else None
        if param == "logit_bias":
            text = f"maps token ids (integers, as strings) to biases from -100 to 100; {text}"
        raise BadRequest(f"{param}: {text}" if param else text, param) from None
    except msgspec.DecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if strict:
        unknown = unknown_fields(body, kind)
        if unknown:
            raise BadRequest(
                f"unknown field {unknown[0]!r}: this server refuses names that are no "
                'OpenAI field it knows (serve.unknown_fields = "ignore" accepts them)',
                unknown[0],
            )
    problems = refusals(data)
    if problems:
        raise BadRequest("; ".join(f"{p}: {why}" for p, why in problems), problems[0][0])
    return data


def _param_of(path: str) -> str:
    """``$.messages[0].role`` -> ``messages[0].role``; ``key in `$.logit_bias`` -> ``logit_bias``."""
    path = path.split("`$")[-1] if "`$" in path else path
    return path.removeprefix("$").removeprefix(".").replace("[...]", "") or "body"


def unknown_fields(body: bytes, kind: type[SamplingFields]) -> list[str]:
    """Names in ``body`` (top level, ``messages[i]``, ``stream_options``) that are no field."""
    raw = msgspec.json.decode(body, type=dict[str, msgspec.Raw])
    found = [k for k in raw if k not in kind.__struct_fields__]
    nested: dict[str, type[msgspec.Struct]] = {"stream_options": StreamOptions}
    for key, struct in nested.items():
        if key in raw:
            inner = msgspec.json.decode(raw[key], type=dict[str, Any] | None) or {}
            found += [f"{key}.{k}" for k in inner if k not in struct.__struct_fields__]
    if "messages" in raw:
        for i, message in enumerate(
            msgspec.json.decode(raw["messages"], type=list[dict[str, Any]])
        ):
            found += [
                f"messages[{i}].{k}" for k in message if k not in ChatMessage.__struct_fields__
            ]
    return found


TOOLS = (
    "tool and function calling is not supported: the server does not parse calls from model output"
)


def refusals(data: SamplingFields) -> list[tuple[str, str]]:
    """``(field, reason)`` for every field set to something this server cannot honour."""
    out: list[tuple[str, str]] = []
    if data.best_of is not None and data.best_of > 1:
        out.append(("best_of", "ranking candidates by logprob is not supported; ask for n choices"))
    if data.suffix:
        out.append(
            (
                "suffix",
                "fill-in-the-middle needs a base trained for it; these bases are plain causal LMs",
            )
        )
    if isinstance(data, CompletionRequest) and data.echo and data.logprobs is not None:
        out.append(
            (
                "echo",
                "echo with logprobs needs the prompt's logprobs, which the engine does not compute",
            )
        )
    if (
        isinstance(data, ChatCompletionRequest)
        and data.top_logprobs is not None
        and not data.logprobs
    ):
        out.append(("top_logprobs", "top_logprobs needs logprobs: true"))
    if data.tools:
        out.append(("tools", TOOLS))
    if data.tool_choice not in (None, "none"):
        out.append(("tool_choice", TOOLS))
    if data.functions:
        out.append(("functions", TOOLS))
    if data.function_call not in (None, "none"):
        out.append(("function_call", TOOLS))
    if data.parallel_tool_calls:
        out.append(("parallel_tool_calls", TOOLS))
    if data.response_format is not None and data.response_format.type != "text":
        out.append(
            (
                "response_format",
                f"{data.response_format.type!r} needs constrained decoding, which this server does not do; "
                'only {"type": "text"} is served',
            )
        )
    if data.store:
        out.append(("store", "completions are not stored by this server"))
    if data.modalities and set(data.modalities) != {"text"}:
        out.append(("modalities", "only text output is served"))
    if data.audio is not None:
        out.append(("audio", "only text output is served"))
    if data.prediction is not None:
        out.append(("prediction", "predicted outputs (speculative decoding) are not supported"))
    if data.reasoning_effort is not None:
        out.append(("reasoning_effort", "the served models are not reasoning models"))
    if data.web_search_options is not None:
        out.append(("web_search_options", "web search is not available to this server"))
    if isinstance(data, ChatCompletionRequest):
        out += _message_refusals(data.messages)
    if data.max_tokens is not None and data.max_completion_tokens not in (None, data.max_tokens):
        out.append(("max_completion_tokens", "differs from max_tokens; send one of them"))
    return out


def _message_refusals(messages: list[ChatMessage]) -> list[tuple[str, str]]:
    out = []
    for i, m in enumerate(messages):
        for j, part in enumerate(m.content if isinstance(m.content, list) else []):
            if part.type != "text" or part.text is None:
                why = f"only text content parts are served (got {part.type!r} with no text)"
                if part.type != "text":
                    why = f"only text content parts are served (got {part.type!r})"
                out.append((f"messages[{i}].content[{j}]", why))
        if m.tool_calls:
            out.append((f"messages[{i}].tool_calls", TOOLS))
        if m.function_call is not None:
            out.append((f"messages[{i}].function_call", TOOLS))
    return out
