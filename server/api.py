"""The OpenAI-compatible endpoints: /v1/models, /v1/models/{id}, /v1/completions,
/v1/chat/completions.

Each handler authenticates first and reads the body only then (:func:`read_request`);
fields are checked by :func:`server.schemas.decode`, responses built by
:class:`server.responses.Reply`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

import anyio
from litestar import Request, get, post
from litestar.openapi.spec import OpenAPIMediaType, Operation, RequestBody
from litestar.response import Stream

from hub.errors import ValidationError
from hub.names import split_owner
from server.accesslog import on_close
from server.cache import AdapterUnavailable, CacheBusy
from server.errors import APIError, not_found
from server.request import GenRequest, QueueFullError
from server.responses import Reply, ReplyError, ReplyShape
from server.sampling import GREEDY_BELOW
from server.schemas import (
    SEED_MAX,
    BadRequest,
    ChatCompletionRequest,
    CompletionRequest,
    SamplingFields,
    decode,
    json_schema,
)

if TYPE_CHECKING:
    from server.state import ServerState

BASE_MODEL = "base"


class EventStream(Stream):
    """A ``text/event-stream`` response.

    Litestar 2 lets the route handler's media type (JSON for these routes) win over the
    response's own in ``Stream.to_asgi_response``; this keeps the stream's.
    """

    def to_asgi_response(self, *args: Any, media_type: Any = None, **kwargs: Any) -> Any:
        """Build the ASGI response with this stream's media type."""
        return super().to_asgi_response(*args, media_type=self.media_type, **kwargs)


def server_of(request: Request) -> ServerState:
    """The server state the app was built with."""
    return request.app.state.server


def base_entry(srv: ServerState) -> dict[str, Any]:
    """The base model's entry in ``/v1/models``, with the engine that serves it."""
    return {
        "id": BASE_MODEL,
        "object": "model",
        "created": srv.started,
        "owned_by": "qlora-hub",
        "engine": dict(srv.engine.info),
    }


@get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    """The base and every adapter the caller's team may use."""
    srv = server_of(request)
    caller = srv.authenticate(request)
    visible = await anyio.to_thread.run_sync(srv.cache.visible, caller.team)
    data = [base_entry(srv)]
    for name in sorted(visible):
        versions = visible[name]
        latest = versions[max(versions)]
        data.append(
            {
                "id": name,
                "object": "model",
                "created": srv.started,
                "owned_by": latest.team,
                "versions": sorted(versions),
            }
        )
    return {"object": "list", "data": data}


@get("/v1/models/{model_id:path}")
async def get_model(request: Request, model_id: PurePosixPath) -> dict[str, Any]:
    """One model the caller may use: ``base``, ``[OWNER/]NAME`` or ``[OWNER/]NAME@N``; 404 for
    any other (with ``OWNER``, only versions that team owns)."""
    srv = server_of(request)
    caller = srv.authenticate(request)
    model_id = str(model_id).lstrip("/")  # a path parameter: an owner-qualified id has a "/"
    if model_id == BASE_MODEL:
        return base_entry(srv)
    name, _, version = model_id.partition("@")
    version = "" if version == "latest" else version
    try:
        owner, name = split_owner(name)
    except ValidationError:
        raise not_found(model_id) from None
    visible = await anyio.to_thread.run_sync(srv.cache.visible, caller.team)
    versions = {v: rec for v, rec in visible.get(name, {}).items() if owner in (None, rec.team)}
    if not versions or (version and not (version.isdigit() and int(version) in versions)):
        raise not_found(model_id)
    latest = versions[int(version) if version else max(versions)]
    return {
        "id": model_id,
        "object": "model",
        "created": srv.started,
        "owned_by": latest.team,
        "versions": sorted(versions),
    }


async def read_request(request: Request, kind: type[SamplingFields]) -> Any:
    """The request body decoded and checked as ``kind``; 400 naming the field otherwise."""
    srv = server_of(request)
    # serve.unknown_fields; read with a default so a state built without it stays strict
    strict = getattr(srv, "unknown_fields", "reject") != "ignore"
    try:
        data = decode(await request.body(), kind, strict=strict)
    except BadRequest as exc:
        raise APIError(400, exc.message, param=exc.param) from None
    except RecursionError:
        raise APIError(400, "request body is not valid JSON: nested too deeply") from None
    except UnicodeDecodeError as exc:
        raise APIError(400, f"request body is not valid UTF-8 JSON: {exc.reason}") from None
    vocab = len(srv.tokenizer)
    for token in data.logit_bias or {}:
        if not 0 <= token < vocab:
            raise APIError(
                400,
                f"logit_bias: token id {token} is outside this model's vocabulary (0..{vocab - 1})",
                param="logit_bias",
            )
    return data


def with_body(kind: type[SamplingFields]) -> type[Operation]:
    """An OpenAPI operation documenting ``kind`` as the JSON body.

    The handlers read the body themselves, after authentication, so Litestar does not
    see a ``data`` parameter to document.
    """

    @dataclass
    class WithBody(Operation):
        def __post_init__(self) -> None:
            schema = OpenAPIMediaType(schema=json_schema(kind))  # type: ignore[arg-type]
            self.request_body = RequestBody(content={"application/json": schema}, required=True)

    return WithBody


@post("/v1/completions", status_code=200, operation_class=with_body(CompletionRequest))
async def completions(request: Request) -> Any:
    """Text completion with the adapter named by ``model``."""
    srv = server_of(request)
    caller = srv.authenticate(request)
    leave = srv.admit(request)  # a full queue is 429 before the body is read
    data: CompletionRequest = await read_request(request, CompletionRequest)
    prompt_ids = await anyio.to_thread.run_sync(_tokenize, srv, data.text())
    echo = data.text() if data.echo else ""
    return await _generate(request, caller, data, prompt_ids, chat=False, echo=echo, leave=leave)


@post("/v1/chat/completions", status_code=200, operation_class=with_body(ChatCompletionRequest))
async def chat_completions(request: Request) -> Any:
    """Chat completion: the messages go through the base's chat template."""
    srv = server_of(request)
    caller = srv.authenticate(request)
    leave = srv.admit(request)  # a full queue is 429 before the body is read
    data: ChatCompletionRequest = await read_request(request, ChatCompletionRequest)
    # ``developer`` is the system turn of newer OpenAI clients
    messages = [
        {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
        for m in data.messages
    ]
    try:
        text = await anyio.to_thread.run_sync(
            lambda: srv.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False
            )
        )
    except Exception as exc:  # a template may refuse roles or orders it does not know
        raise APIError(
            400, f"the base's chat template refused these messages: {exc}", param="messages"
        ) from None
    prompt_ids = await anyio.to_thread.run_sync(_tokenize, srv, text)
    return await _generate(request, caller, data, prompt_ids, chat=True, leave=leave)


def _tokenize(srv: ServerState, text: str) -> list[int]:
    return srv.tokenizer(text, add_special_tokens=False)["input_ids"]


def choice_seed(seed: int | None, index: int) -> int | None:
    """The seed of choice ``index``: ``seed`` itself for the first, a distinct one after."""
    if seed is None or index == 0:
        return seed
    return (seed + index * 0x9E3779B97F4A7C15) % (SEED_MAX + 1)


async def _generate(
    request: Request,
    caller: Any,
    data: SamplingFields,
    prompt_ids: list[int],
    *,
    chat: bool,
    echo: str = "",
    leave: Callable[[], None] = lambda: None,
) -> Any:
    srv = server_of(request)
    log = request.scope["state"]["log"]
    log.update(team=caller.team, key_id=caller.key_id, model=data.model)
    if data.user:
        log["user"] = data.user[:200]
    max_tokens = _check_lengths(srv, data, len(prompt_ids), chat)
    entry = None
    if data.model != BASE_MODEL:
        try:
            ref = await anyio.to_thread.run_sync(srv.cache.resolve, data.model, caller.team)
            entry = await anyio.to_thread.run_sync(srv.cache.acquire, ref)
        except AdapterUnavailable:
            raise not_found(data.model) from None
        except CacheBusy:
            raise APIError(
                503, "every resident adapter is busy; retry shortly", headers={"Retry-After": "1"}
            ) from None
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[tuple[int, tuple[Any, ...]]] = asyncio.Queue()
    running = [data.n]  # the adapter stays pinned until every choice has ended

    def release() -> None:
        running[0] -= 1
        if entry is not None and running[0] == 0:
            srv.cache.release(entry)

    def on_event(index: int):
        return lambda ev: loop.call_soon_threadsafe(events.put_nowait, (index, ev))

    request_id = request.scope["state"].get("request_id", "-")
    reqs = [
        GenRequest(
            prompt_ids=prompt_ids,
            slot=entry.slot if entry else 0,
            max_tokens=max_tokens,
            on_event=on_event(i),
            temperature=data.temperature if data.temperature >= GREEDY_BELOW else 0.0,
            top_p=data.top_p,
            stop=data.stops(),
            seed=choice_seed(data.seed, i),
            presence_penalty=data.presence_penalty,
            frequency_penalty=data.frequency_penalty,
            logit_bias=dict(data.logit_bias or {}),
            logprobs=data.top_logprobs_wanted(),
            timeout_s=srv.request_timeout_s,
            release=release,
            request_id=request_id if data.n == 1 else f"{request_id}/{i}",
            adapter=str(entry.ref) if entry else BASE_MODEL,
            team=caller.team,
        )
        for i in range(data.n)
    ]
    _submit(srv, reqs, entry, running)
    leave()  # queued: the engine's queue counts it from now on
    # whatever ends the HTTP exchange (a client gone mid-stream too) ends the rows
    on_close(request.scope, lambda: [req.cancel() for req in reqs])
    stream = data.stream_options
    shape = ReplyShape(
        chat=chat,
        model=str(entry.ref) if entry else BASE_MODEL,
        prompt_tokens=len(prompt_ids),
        echo=echo,
        logprobs=data.top_logprobs_wanted(),
        include_usage=bool(data.stream and stream and stream.include_usage),
        continuous_usage=bool(data.stream and stream and stream.continuous_usage_stats),
    )
    reply = Reply(srv, reqs, events, shape, log)
    if data.stream:
        return EventStream(
            reply.sse(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )
    try:
        return await reply.whole(request)
    except ReplyError as exc:
        raise APIError(exc.status, exc.message) from None


def _submit(srv: ServerState, reqs: list[GenRequest], entry: Any, running: list[int]) -> None:
    """Queue every choice; on any failure cancel those queued and give the pin back."""
    submitted = 0
    try:
        for req in reqs:
            srv.engine.submit(req)
            submitted += 1
    except BaseException as exc:
        for queued in reqs[:submitted]:
            queued.cancel()
        running[0] -= len(reqs) - submitted  # those never reached the engine
        if entry is not None and running[0] == 0:
            srv.cache.release(entry)
        if isinstance(exc, QueueFullError):
            raise APIError(
                429, "the server is at capacity; retry shortly", headers={"Retry-After": "1"}
            ) from None
        if isinstance(exc, ValueError):
            raise APIError(400, str(exc)) from None
        raise


def _check_lengths(srv: ServerState, data: SamplingFields, prompt_len: int, chat: bool) -> int:
    """The completion length to use; 400 when over the cap or when prompt + completion exceed
    the context."""
    field = "max_completion_tokens" if data.max_completion_tokens is not None else "max_tokens"
    asked = data.limit()
    if prompt_len == 0:
        raise APIError(400, "prompt is empty", param="messages" if chat else "prompt")
    if asked is not None and asked > srv.max_tokens_cap:
        raise APIError(
            400,
            f"{field} {asked} is above this server's cap of {srv.max_tokens_cap}",
            param=field,
        )
    room = srv.context - prompt_len
    if room <= 0:
        raise APIError(
            400,
            f"the prompt is {prompt_len} tokens; this model's context is {srv.context} tokens",
            param="messages" if chat else "prompt",
        )
    wanted = asked if asked is not None else (min(room, srv.max_tokens_cap) if chat else 16)
    if wanted > room:
        raise APIError(
            400,
            f"prompt ({prompt_len} tokens) plus {field} ({wanted}) exceeds the context of {srv.context} tokens",
            param=field,
        )
    return wanted
