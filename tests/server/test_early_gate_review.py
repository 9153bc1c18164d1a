"""Review of the early admission decision (server.gate.plain_head) and the garbage
collector's settings while apps run (server.collector.Collector).

A head ``plain_head`` reads must be one llhttp (httptools, serve's parser) reads the same
way: the same fields and values, no 400, no upgrade. Otherwise a request is answered or
admitted for what the parser would refuse, or under a request id it would not give.
"""

from __future__ import annotations

import gc
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


@pytest.fixture
def shared():
    """A registry of running collectors of its own (another test's server may be running
    in this process: its collector is in the process-wide one), the heap unfrozen."""
    from server.collector import Collector

    threshold = gc.get_threshold()
    gc.unfreeze()
    yield Collector.Shared()
    gc.set_threshold(*threshold)


class _Cycle:
    """An object only the cyclic collector can free (it refers to itself)."""

    def __init__(self) -> None:
        self.me = self


def test_an_app_stopping_while_another_runs_leaves_its_threshold_and_its_garbage_free(
    shared,
) -> None:
    """A stopped Litestar app sits in reference cycles: frozen, its state, engine and base
    would stay for good. Its stop unfreezes them even while another app runs, and leaves
    the running app's threshold (was Python's 700 while it ran, and 50,000 for good once
    both had stopped)."""
    import weakref

    from server.collector import Collector

    before = gc.get_threshold()
    first, second = Collector(50_000, shared), Collector(20_000, shared)
    garbage = _Cycle()
    first.start()
    second.start()
    assert gc.get_freeze_count() > 0 and gc.get_threshold() == (20_000, *before[1:])
    gone, garbage = weakref.ref(garbage), None
    gc.collect()
    assert gone() is not None  # frozen: out of the collector's reach
    second.stop()  # the first still serves: its threshold comes back
    assert gc.get_threshold() == (50_000, *before[1:])
    gc.collect()
    assert gone() is None  # what the stopped app left in cycles is freed
    second.start()
    first.stop()
    assert gc.get_threshold() == (20_000, *before[1:])
    second.stop()  # the last one gives Python's settings back
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == before


def test_a_collector_stopped_without_starting_changes_nothing(shared) -> None:
    """Litestar runs the shutdown hooks also when a start-up hook failed: a server whose
    engine did not start must not unfreeze another server's heap."""
    from server.collector import Collector

    before = gc.get_threshold()
    running, failed = Collector(50_000, shared), Collector(50_000, shared)
    heap = [[] for _ in range(10)]  # built before the start: frozen with the rest

    def frozen() -> bool:  # frozen objects are out of the collector's generations
        return not any(o is heap for o in gc.get_objects())

    running.start()
    assert frozen()
    # (the frozen count itself moves: other threads of this process free frozen objects)
    failed.stop()
    assert frozen()
    assert gc.get_threshold() == (50_000, *before[1:])
    running.stop()
    running.stop()  # twice: nothing more
    assert not frozen() and gc.get_threshold() == before


def test_a_threshold_the_collector_cannot_take_is_a_config_error() -> None:
    from hub.errors import ConfigError
    from server.collector import Collector

    with pytest.raises(ConfigError) as refused:
        Collector(2**31)
    assert str(refused.value) == (
        "serve.gc_threshold is 2147483648: set it to 2147483647 or less (Python's default is 700)"
    )
    Collector(2**31 - 1)  # the largest the collector takes
