"""The OpenAI-compatible endpoints: /v1/models, /v1/completions, /v1/chat/completions."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import anyio
from litestar import Request, get, post
from litestar.response import Response, Stream

from server.cache import AdapterUnavailable, CacheBusy
from server.engine import GenRequest, QueueFullError
from server.errors import APIError, not_found
from server.schemas import ChatCompletionRequest, CompletionRequest, SamplingFields

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


@get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    """The base and every adapter the caller's team may use."""
    srv = server_of(request)
    caller = srv.authenticate(request)
    visible = await anyio.to_thread.run_sync(srv.cache.visible, caller.team)
    data = [{"id": BASE_MODEL, "object": "model", "created": srv.started, "owned_by": "qlora-hub"}]
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


@post("/v1/completions", status_code=200)
async def completions(request: Request, data: CompletionRequest) -> Any:
    """Text completion with the adapter named by ``model``."""
    srv = server_of(request)
    prompt_ids = srv.tokenizer(data.text(), add_special_tokens=False)["input_ids"]
    return await _generate(request, data, prompt_ids, chat=False)


@post("/v1/chat/completions", status_code=200)
async def chat_completions(request: Request, data: ChatCompletionRequest) -> Any:
    """Chat completion: the messages go through the base's chat template."""
    srv = server_of(request)
    messages = [{"role": m.role, "content": m.content} for m in data.messages]
    text = srv.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    prompt_ids = srv.tokenizer(text, add_special_tokens=False)["input_ids"]
    return await _generate(request, data, prompt_ids, chat=True)


async def _generate(
    request: Request, data: SamplingFields, prompt_ids: list[int], chat: bool
) -> Any:
    srv = server_of(request)
    caller = srv.authenticate(request)
    log = request.scope["state"]["log"]
    log.update(team=caller.team, key_id=caller.key_id, model=data.model)
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
    events: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
    released = []

    def release() -> None:
        if entry is not None and not released:
            released.append(True)
            srv.cache.release(entry)

    req = GenRequest(
        prompt_ids=prompt_ids,
        slot=entry.slot if entry else 0,
        max_tokens=max_tokens,
        on_event=lambda ev: loop.call_soon_threadsafe(events.put_nowait, ev),
        temperature=data.temperature,
        top_p=data.top_p,
        stop=data.stops(),
        seed=data.seed,
        timeout_s=srv.request_timeout_s,
        release=release,
    )
    try:
        srv.engine.submit(req)
    except QueueFullError:
        release()
        raise APIError(
            429, "the server is at capacity; retry shortly", headers={"Retry-After": "1"}
        ) from None
    model_name = str(entry.ref) if entry else BASE_MODEL
    reply = Reply(srv, req, events, model_name, chat, log)
    if data.stream:
        include_usage = bool(data.stream_options and data.stream_options.include_usage)
        return EventStream(
            reply.sse(include_usage),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache"},
        )
    return await reply.whole(request)


def _check_lengths(srv: ServerState, data: SamplingFields, prompt_len: int, chat: bool) -> int:
    """``max_tokens`` to use; 400 when over the cap or when prompt + completion exceed the context."""
    if prompt_len == 0:
        raise APIError(400, "prompt is empty", param="messages" if chat else "prompt")
    if data.max_tokens is not None and data.max_tokens > srv.max_tokens_cap:
        raise APIError(
            400,
            f"max_tokens {data.max_tokens} is above this server's cap of {srv.max_tokens_cap}",
            param="max_tokens",
        )
    room = srv.context - prompt_len
    if room <= 0:
        raise APIError(
            400,
            f"the prompt is {prompt_len} tokens; this model's context is {srv.context} tokens",
            param="messages" if chat else "prompt",
        )
    wanted = (
        data.max_tokens
        if data.max_tokens is not None
        else (min(room, srv.max_tokens_cap) if chat else 16)
    )
    if wanted > room:
        raise APIError(
            400,
            f"prompt ({prompt_len} tokens) plus max_tokens ({wanted}) exceeds the context of {srv.context} tokens",
            param="max_tokens",
        )
    return wanted


class Reply:
    """Turns engine events into an OpenAI response, whole or as server-sent events."""

    def __init__(
        self,
        srv: ServerState,
        req: GenRequest,
        events: asyncio.Queue,
        model: str,
        chat: bool,
        log: dict,
    ) -> None:
        self.srv, self.req, self.events, self.model, self.chat, self.log = (
            srv,
            req,
            events,
            model,
            chat,
            log,
        )
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())

    def _account(self, usage: dict[str, int] | None) -> None:
        if usage:
            self.log.update(
                prompt_tokens=usage["prompt_tokens"], completion_tokens=usage["completion_tokens"]
            )
            self.srv.metrics.tokens.labels("prompt").inc(usage["prompt_tokens"])
            self.srv.metrics.tokens.labels("completion").inc(usage["completion_tokens"])
        if self.req.first_token_at is not None:
            self.srv.metrics.ttft.observe(self.req.first_token_at - self.req.submitted)

    async def _next(self) -> tuple[Any, ...]:
        try:
            return await asyncio.wait_for(self.events.get(), self.srv.request_timeout_s + 30)
        except TimeoutError:
            self.req.cancel()
            return ("error", "timeout", None)

    async def whole(self, request: Request) -> Response:
        """Wait for the full completion; a client that disconnects cancels the request."""
        watcher = asyncio.create_task(_wait_disconnect(request))
        parts: list[str] = []
        try:
            while True:
                getter = asyncio.create_task(self._next())
                done, _ = await asyncio.wait({getter, watcher}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    self.req.cancel()
                    self.log["cancelled"] = True
                    return Response(content=b"", status_code=499)
                event = getter.result()
                if event[0] == "delta":
                    parts.append(event[1])
                    continue
                self._account(event[2])
                if event[0] == "error":
                    status = 504 if event[1] == "timeout" else 500
                    raise APIError(status, f"request failed: {event[1]}")
                return Response(content=self._body("".join(parts), event[1], event[2]))
        finally:
            watcher.cancel()
            self.req.cancel()

    def _body(self, text: str, finish: str, usage: dict[str, int]) -> dict[str, Any]:
        if self.chat:
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": finish,
            }
            kind = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
            kind = "text_completion"
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": usage,
        }

    def _chunk(self, text: str | None, finish: str | None, first: bool = False) -> dict[str, Any]:
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant"} if first else {}
            if text:
                delta["content"] = text
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            kind = "chat.completion.chunk"
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
            kind = "text_completion"
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        }

    async def sse(self, include_usage: bool) -> AsyncIterator[bytes]:
        """Server-sent events: one chunk per text delta, a finish chunk, optional usage, ``[DONE]``.

        A client that disconnects mid-stream makes Litestar cancel this generator (it listens
        for ``http.disconnect`` while streaming); ``finally`` then cancels the engine request.
        """
        finished = False
        try:
            first = True
            if self.chat:
                yield _event(self._chunk(None, None, first=True))
                first = False
            while True:
                event = await self._next()
                if event[0] == "delta":
                    yield _event(self._chunk(event[1], None, first))
                    first = False
                    continue
                self._account(event[2])
                if event[0] == "error":
                    yield _event(
                        {
                            "error": {
                                "message": f"request failed: {event[1]}",
                                "type": "server_error",
                                "param": None,
                                "code": None,
                            }
                        }
                    )
                    break
                final = self._chunk(None, event[1])
                final["usage"] = event[2]
                yield _event(final)
                if include_usage:
                    usage_chunk = self._chunk(None, None)
                    usage_chunk["choices"] = []
                    usage_chunk["usage"] = event[2]
                    yield _event(usage_chunk)
                break
            yield b"data: [DONE]\n\n"
            finished = True
        finally:
            # runs when the stream ends and when the client goes away mid-stream
            if not finished:
                self.log["cancelled"] = True
            self.req.cancel()


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


async def _wait_disconnect(request: Request) -> None:
    """Return when the client disconnects (the body is already read, so only disconnect remains)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
