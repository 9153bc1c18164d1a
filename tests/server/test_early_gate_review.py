"""Review of the early admission decision (server.gate.plain_head).

A head ``plain_head`` reads must be one llhttp (httptools, serve's parser) reads the same
way: the same fields and values, no 400, no upgrade. Otherwise a request is answered or
admitted for what the parser would refuse, or under a request id it would not give.
"""

from __future__ import annotations

import random

import pytest

httptools = pytest.importorskip("httptools")


class _Heads:
    """httptools callbacks: the fields of the first head, and whether it was complete."""

    def __init__(self) -> None:
        self.fields: list[tuple[bytes, bytes]] = []
        self.complete = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.complete:
            self.fields.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.complete = True


def parsed(raw: bytes) -> tuple[list[tuple[bytes, bytes]], bool] | None:
    """The fields llhttp gives for the head of ``raw`` and whether it asks an upgrade;
    ``None`` when it refuses the head (uvicorn's 400)."""
    heads = _Heads()
    parser = httptools.HttpRequestParser(heads)
    head = raw[: raw.index(b"\r\n\r\n") + 4]
    try:
        parser.feed_data(head)
    except httptools.HttpParserUpgrade:
        return heads.fields, True
    except httptools.HttpParserError:
        return None
    assert heads.complete
    return heads.fields, parser.should_upgrade()


def head(*fields: bytes) -> bytes:
    return b"POST /v1/completions HTTP/1.1\r\n" + b"".join(fields) + b"\r\n{}"


@pytest.mark.parametrize(
    "fields",
    [
        (b"X-Request-ID: e-3 \t\r\n",),  # llhttp keeps what follows a value
        (b"Authorization: Bearer k  \r\n",),
        (b"Content-Length: 2\r\nContent-Length: 2\r\n",),
        (b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n",),
        (b"Transfer-Encoding: chunked, gzip\r\n",),
        (b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",),
        (b"Content-Length:\r\n",),
        (b"Content-Length: +2\r\n",),
        (b"Content-Length: 2 2\r\n",),
        (b"Content-Length: 99999999999999999999\r\n",),
    ],
    ids=[
        "trailing-ws-id",
        "trailing-ws-key",
        "duplicate-length",
        "length-and-chunked",
        "chunked-not-last",
        "chunked-twice",
        "empty-length",
        "signed-length",
        "two-numbers",
        "overflow",
    ],
)
def test_plain_head_never_reads_a_head_unlike_the_parser(fields) -> None:
    from server.gate import plain_head

    raw = head(*fields)
    early = plain_head(raw, 16384)
    if early is not None:
        assert parsed(raw) == (early[1], False)


def test_plain_head_agrees_with_the_parser_on_random_heads() -> None:
    """Every head plain_head reads (of 4,000 drawn from a seeded generator, most of them
    plain) is one llhttp reads with the same fields, and without refusing it."""
    from server.gate import plain_head

    names = [b"Host", b"Authorization", b"Content-Length", b"content-length", b"X-Request-ID"]
    names += [b"Transfer-Encoding", b"Upgrade", b"Connection", b"Expect", b"X-A"]
    parts = [b" ", b"\t", b"0", b"7", b"a", b",", b"-", b"+", b"chunked", b"gzip", b"close"]
    parts += [b"upgrade", b"websocket", b"Bearer k", b"100-continue", b"18446744073709551616"]
    draw = random.Random(20261127)
    read = 0
    for _ in range(4000):
        fields = []
        for _ in range(draw.randrange(6)):
            value = b"".join(draw.choice(parts) for _ in range(draw.randrange(4)))
            fields.append(draw.choice(names) + b":" + value + b"\r\n")
        raw = head(*fields)
        early = plain_head(raw, 16384)
        if early is None:
            continue
        read += 1
        assert parsed(raw) == (early[1], False), raw
    assert read > 1000  # the property was tried on many heads plain_head reads
