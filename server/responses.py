"""OpenAI response bodies from engine events: whole or as server-sent events, ``n`` choices.

One :class:`Reply` follows the ``n`` engine requests of one API request (one per
choice). Events arrive on one queue as ``(choice index, event)``; the engine's
events are ``("delta", text[, tokens so far])``, ``("done", finish_reason, usage)``
and ``("error", message, usage)``. Logprobs come from each request's
``token_logprobs`` (one ``server.sampling.Sampled`` per generated token).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from litestar import Request
from litestar.response import Response


class ReplyError(Exception):
    """A choice failed: ``status`` and ``message`` for the caller."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Choice:
    """One choice: its engine request and what has been sent of it."""

    req: Any
    parts: list[str] = field(default_factory=list)
    tokens_sent: int = 0
    chars_sent: int = 0  # characters of the token texts already given logprobs
    finish: str | None = None
    usage: dict[str, int] | None = None


@dataclass
class ReplyShape:
    """What the response looks like: endpoint, model name, echo prefix, logprobs, usage."""

    chat: bool
    model: str
    prompt_tokens: int
    echo: str = ""
    logprobs: int | None = None
    include_usage: bool = False
    continuous_usage: bool = False


class Reply:
    """Turns the events of ``n`` engine requests into one OpenAI response."""

    def __init__(
        self, srv: Any, reqs: list[Any], events: asyncio.Queue, shape: ReplyShape, log: dict
    ) -> None:
        self.srv, self.events, self.shape, self.log = srv, events, shape, log
        self.choices = [Choice(r) for r in reqs]
        self.id = ("chatcmpl-" if shape.chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.kind = "chat.completion" if shape.chat else "text_completion"

    def cancel(self) -> None:
        """Cancel every choice's engine request."""
        for c in self.choices:
            c.req.cancel()

    def usage(self) -> dict[str, int]:
        """Prompt tokens once, completion tokens of every choice so far."""
        completion = sum(
            c.usage["completion_tokens"] if c.usage else len(c.req.generated) for c in self.choices
        )
        prompt = self.shape.prompt_tokens
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    def _account(self) -> None:
        usage = self.usage()
        self.log.update(
            prompt_tokens=usage["prompt_tokens"], completion_tokens=usage["completion_tokens"]
        )
        self.srv.metrics.tokens.labels("prompt").inc(usage["prompt_tokens"])
        self.srv.metrics.tokens.labels("completion").inc(usage["completion_tokens"])
        first = [c.req.first_token_at for c in self.choices if c.req.first_token_at is not None]
        if first:
            self.srv.metrics.ttft.observe(min(first) - self.choices[0].req.submitted)

    async def _next(self) -> tuple[int, tuple[Any, ...]]:
        try:
            return await asyncio.wait_for(self.events.get(), self.srv.request_timeout_s + 30)
        except TimeoutError:
            self.cancel()
            return 0, ("error", "timeout", None)

    def _end(self, index: int, event: tuple[Any, ...]) -> None:
        """Record a choice's last event; raises :class:`ReplyError` when it failed."""
        choice = self.choices[index]
        if event[0] == "error":
            self.cancel()
            status = 504 if event[1] == "timeout" else 500
            raise ReplyError(status, f"request failed: {event[1]}")
        choice.finish, choice.usage = event[1], event[2]

    async def whole(self, request: Request) -> Response:
        """Wait for every choice; a client that disconnects cancels them all."""
        watcher = asyncio.create_task(_wait_disconnect(request))
        try:
            while any(c.finish is None for c in self.choices):
                getter = asyncio.create_task(self._next())
                done, _ = await asyncio.wait({getter, watcher}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    self.log["cancelled"] = True
                    return Response(content=b"", status_code=499)
                index, event = getter.result()
                if event[0] == "delta":
                    self.choices[index].parts.append(event[1])
                    continue
                try:
                    self._end(index, event)
                except ReplyError:
                    self._account()
                    raise
            self._account()
            return Response(content=self._body())
        finally:
            watcher.cancel()
            self.cancel()

    def _body(self) -> dict[str, Any]:
        choices = []
        for i, c in enumerate(self.choices):
            text = "".join(c.parts)
            lp = (
                self._logprobs(c, len(c.req.generated), cut=self._cut(c, text))
                if self.shape.logprobs is not None
                else None
            )
            if self.shape.chat:
                message = {"role": "assistant", "content": text}
                choices.append(
                    {"index": i, "message": message, "logprobs": lp, "finish_reason": c.finish}
                )
            else:
                choices.append(
                    {
                        "index": i,
                        "text": self.shape.echo + text,
                        "logprobs": lp,
                        "finish_reason": c.finish,
                    }
                )
        return {
            "id": self.id,
            "object": self.kind,
            "created": self.created,
            "model": self.shape.model,
            "choices": choices,
            "usage": self.usage(),
        }

    def _cut(self, c: Choice, text: str) -> int | None:
        """How many of ``c``'s tokens produced ``text`` when a stop string cut it, else None."""
        if c.finish != "stop" or not c.req.stop:
            return None
        eos = self.srv.engine.eos_ids
        ids = [t for t in c.req.generated if t not in eos]
        for n in range(len(ids) + 1):
            if len(self.srv.tokenizer.decode(ids[:n])) >= len(text):
                return n
        return None

    def _logprobs(self, c: Choice, upto: int, cut: int | None = None) -> dict[str, Any] | None:
        """Logprobs of ``c``'s tokens from ``c.tokens_sent`` to ``upto`` (end tokens left out).

        ``cut``: keep at most this many tokens (those that made the text before a stop string).
        """
        tok, eos = self.srv.tokenizer, self.srv.engine.eos_ids
        entries = []
        for token, sampled in zip(
            c.req.generated[c.tokens_sent : upto],
            c.req.token_logprobs[c.tokens_sent : upto],
            strict=False,
        ):
            if token in eos:
                continue
            if cut is not None and len(entries) >= cut:
                break
            text = tok.decode([token])
            top = [(tok.decode([t]), lp) for t, lp in sampled.top]
            entries.append((text, sampled.logprob, top, len(self.shape.echo) + c.chars_sent))
            c.chars_sent += len(text)
        c.tokens_sent = max(c.tokens_sent, upto)
        if self.shape.chat:
            return {
                "content": [
                    {
                        "token": t,
                        "logprob": lp,
                        "bytes": list(t.encode()),
                        "top_logprobs": [
                            {"token": a, "logprob": b, "bytes": list(a.encode())} for a, b in top
                        ],
                    }
                    for t, lp, top, _ in entries
                ],
                "refusal": None,
            }
        return {
            "tokens": [e[0] for e in entries],
            "token_logprobs": [e[1] for e in entries],
            "top_logprobs": [dict(e[2]) for e in entries],
            "text_offset": [e[3] for e in entries],
        }

    def _chunk(
        self,
        index: int,
        text: str | None,
        finish: str | None,
        *,
        first: bool = False,
        upto: int | None = None,
    ) -> dict[str, Any]:
        c = self.choices[index]
        lp = None
        if self.shape.logprobs is not None and upto is not None:
            lp = self._logprobs(c, upto)
        if self.shape.chat:
            delta: dict[str, Any] = {"role": "assistant"} if first else {}
            if text:
                delta["content"] = text
            choice = {"index": index, "delta": delta, "logprobs": lp, "finish_reason": finish}
            kind = "chat.completion.chunk"
        else:
            choice = {"index": index, "text": text or "", "logprobs": lp, "finish_reason": finish}
            kind = "text_completion"
        chunk = {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.shape.model,
            "choices": [choice],
        }
        if self.shape.continuous_usage:
            chunk["usage"] = self.usage()
        return chunk

    async def sse(self) -> AsyncIterator[bytes]:
        """Server-sent events: per choice a chunk per text delta and a finish chunk; then
        the optional usage chunk and ``[DONE]``.

        A client that disconnects mid-stream makes Litestar cancel this generator (it listens
        for ``http.disconnect`` while streaming); ``finally`` then cancels the engine requests.
        """
        finished = False
        try:
            first = [True] * len(self.choices)
            for i in range(len(self.choices)):
                if self.shape.chat or self.shape.echo:
                    yield _event(self._chunk(i, self.shape.echo or None, None, first=True))
                    first[i] = False
            while any(c.finish is None for c in self.choices):
                index, event = await self._next()
                c = self.choices[index]
                if event[0] == "delta":
                    upto = event[2] if len(event) > 2 else len(c.req.token_logprobs)
                    yield _event(self._chunk(index, event[1], None, first=first[index], upto=upto))
                    first[index] = False
                    continue
                try:
                    self._end(index, event)
                except ReplyError as exc:
                    self._account()
                    yield _event(
                        {
                            "error": {
                                "message": exc.message,
                                "type": "server_error",
                                "param": None,
                                "code": None,
                            }
                        }
                    )
                    break
                final = self._chunk(index, None, c.finish, upto=len(c.req.generated))
                final["usage"] = self.usage()
                yield _event(final)
            else:
                self._account()
                if self.shape.include_usage:
                    usage_chunk = self._chunk(0, None, None)
                    usage_chunk["choices"] = []
                    usage_chunk["usage"] = self.usage()
                    yield _event(usage_chunk)
            yield b"data: [DONE]\n\n"
            finished = True
        finally:
            # runs when the stream ends and when the client goes away mid-stream
            if not finished:
                self.log["cancelled"] = True
            self.cancel()


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


async def _wait_disconnect(request: Request) -> None:
    """Return when the client disconnects (the body is already read, so only disconnect remains)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
