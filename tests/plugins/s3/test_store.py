"""S3BlobStore against a real S3 API: atomic and conditional writes, bounded reads,
paginated listings, and one-line errors for a down, failing or refusing endpoint."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from hub.blobs import get_bounded
from hub.config import load_settings
from hub.errors import ConfigError, IntegrityError
from hub.plugins import Hub
from plugins.s3.store import S3BlobStore, parse_url
from plugins.s3.stream import StreamedObject, _Bytes


def _store(url, home, hub):
    return S3BlobStore(url, load_settings(home, hub=hub))


def test_put_get_exists_delete_keys(s3_url, tmp_path, s3_hub):
    store = _store(s3_url, tmp_path, s3_hub)
    store.put("objects/ab/payload", b"x" * 5000)
    store.put("objects/ab/keys/alpha", memoryview(b"k"))
    assert store.get("objects/ab/payload") == b"x" * 5000
    assert store.exists("objects/ab/payload") and not store.exists("objects/cd/payload")
    assert store.keys("objects/") == ["objects/ab/keys/alpha", "objects/ab/payload"]
    store.delete("objects/ab/payload")
    store.delete("objects/ab/payload")  # absent: no error
    assert store.keys("objects/") == ["objects/ab/keys/alpha"]
    with pytest.raises(IntegrityError, match=r"blob objects/ab/payload is missing from s3://"):
        store.get("objects/ab/payload")


def test_put_if_absent_lets_exactly_one_writer_win(s3_url, tmp_path, s3_hub):
    store = _store(s3_url, tmp_path, s3_hub)
    with ThreadPoolExecutor(8) as pool:
        won = list(
            pool.map(lambda i: store.put_if_absent("versions/upper/00000001", b"%d" % i), range(8))
        )
    assert won.count(True) == 1
    assert store.get("versions/upper/00000001") == b"%d" % won.index(True)


def test_reads_are_bounded_before_the_body_is_read(s3_url, tmp_path, s3_hub):
    store = _store(s3_url, tmp_path, s3_hub)
    store.put("objects/ab/manifest", b"m" * 70_000)
    with pytest.raises(IntegrityError, match="70,000 bytes, over its 65,536 byte bound"):
        get_bounded(store, "objects/ab/manifest", 65_536)


def test_keys_cannot_escape_the_prefix(s3_url, tmp_path, s3_hub):
    store = _store(s3_url, tmp_path, s3_hub)
    for key in ("../x", "/abs", "a//b", "A/B"):
        with pytest.raises(ValueError, match="invalid blob key"):
            store.put(key, b"x")


@pytest.mark.parametrize(
    "url", ["s3://", "s3://ab/x", "s3://Bucket/x", "s3://bucket/../x", "s3://bucket/x?y=1"]
)
def test_bad_urls_are_one_line_config_errors(url):
    with pytest.raises(ConfigError, match="vault.blob_url"):
        parse_url(url)


def test_listing_over_a_thousand_keys_is_paginated(s3_url, s3_endpoint, tmp_path, s3_hub):
    store = _store(s3_url, tmp_path, s3_hub)
    names = [f"names/upper/{i:08d}" for i in range(1_200)]
    _fill(s3_endpoint, store.bucket, [store.prefix + k for k in names])
    store.page_size = 500  # 3 pages without writing 2,001 keys first (S3's maximum is 1,000)
    pages = []
    store.client.meta.events.register("before-call.s3.ListObjectsV2", lambda **kw: pages.append(1))
    started = time.perf_counter()
    assert store.keys("names/upper/") == names
    elapsed = time.perf_counter() - started
    assert len(pages) == 3  # 500 keys a page
    assert elapsed < 10, f"listing 1,200 keys took {elapsed:.1f} s"


def _fill(ep, bucket, keys):
    """Create empty objects ``keys`` (PutObject from 16 threads)."""
    raw = ep.client()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: raw.put_object(Bucket=bucket, Key=k, Body=b""), keys))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_endpoint_down_is_one_line_naming_the_setting(s3_url, tmp_path, monkeypatch):
    monkeypatch.setenv("QLORA_HUB_S3_ENDPOINT_URL", f"http://127.0.0.1:{_free_port()}")
    monkeypatch.setenv("QLORA_HUB_S3_MAX_ATTEMPTS", "2")
    store = _store(s3_url, tmp_path, Hub())
    started = time.perf_counter()
    with pytest.raises(ConfigError) as exc:
        store.put("objects/ab/payload", b"x")
    message = str(exc.value)
    assert "\n" not in message and "after 2 attempts" in message
    assert "check s3.endpoint_url" in message
    assert time.perf_counter() - started < 15


class _Failing(BaseHTTPRequestHandler):
    """An S3 endpoint that answers every request 503 SlowDown-style and counts them."""

    count = 0

    def _fail(self):
        type(self).count += 1
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        body = b"<Error><Code>ServiceUnavailable</Code><Message>down</Message></Error>"
        self.send_response(503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = _fail

    def log_message(self, *args):
        pass


def test_503s_are_retried_then_one_line(s3_url, tmp_path, monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("QLORA_HUB_S3_ENDPOINT_URL", f"http://127.0.0.1:{server.server_port}")
        monkeypatch.setenv("QLORA_HUB_S3_MAX_ATTEMPTS", "3")
        store = _store(s3_url, tmp_path, Hub())
        with pytest.raises(ConfigError) as exc:
            store.put("objects/ab/payload", b"x")
        assert _Failing.count == 3  # the first try and two retries, with backoff
        message = str(exc.value)
        assert "\n" not in message
        assert "failed (503 ServiceUnavailable) on objects/ab/payload after 3 attempts" in message
        assert "s3.endpoint_url and s3.max_attempts" in message
    finally:
        server.shutdown()


def test_wrong_credentials_are_one_line_naming_the_setting(
    s3_url, s3_endpoint, tmp_path, monkeypatch, s3_hub
):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG0")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    store = _store(s3_url, tmp_path, s3_hub)
    if s3_endpoint.moto:  # moto checks credentials only when told to (its reset-auth API)
        _moto_auth(s3_endpoint, "0")
    try:
        with pytest.raises(ConfigError) as exc:
            store.put("objects/ab/payload", b"x")
    finally:
        if s3_endpoint.moto:
            _moto_auth(s3_endpoint, "inf")
    message = str(exc.value)
    assert "\n" not in message and "refused the credentials for s3://" in message
    assert "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE" in message


def _moto_auth(ep, count):
    request = urllib.request.Request(
        f"{ep.endpoint}/moto-api/reset-auth",
        data=count.encode(),
        method="POST",
        headers={"Content-Type": "text/plain"},
    )
    urllib.request.urlopen(request, timeout=10).read()


def test_a_missing_bucket_names_vault_blob_url(s3_endpoint, tmp_path, s3_hub):
    store = _store(f"s3://no-such-bucket-{time.time_ns()}/x", tmp_path, s3_hub)
    with pytest.raises(
        ConfigError, match=r"bucket 'no-such-bucket-\d+' does not exist at .*fix vault.blob_url"
    ):
        store.put("objects/ab/payload", b"x")


def test_view_streams_an_object_read_front_to_back(s3_url, tmp_path, s3_hub):
    import os

    store = _store(s3_url, tmp_path, s3_hub)
    data = os.urandom(StreamedObject.piece * 2 + 12345)  # three pieces, the last one short
    store.put("objects/ab/payload", data)
    view = store.view("objects/ab/payload")
    edge = StreamedObject.piece - 7
    assert len(view) == len(data)
    assert bytes(view.read_at(0, 10)) == data[:10]
    assert bytes(view.read_at(edge, 20)) == data[edge : edge + 20]  # across two pieces
    assert bytes(view.read_at(len(data) - 5, 5)) == data[-5:]
    with pytest.raises(ValueError, match="read front to back"):
        view.read_at(0, 10)  # its block may already hold later bytes


def test_a_streamed_read_across_blocks_returns_the_right_bytes():
    import os

    data = os.urandom(5000)
    view = StreamedObject("objects/ab/payload", _Bytes(data), len(data), None, block=1000)
    assert bytes(view.read_at(990, 2020)) == data[990:3010]  # spans three blocks
    assert bytes(view.read_at(4000, 1000)) == data[4000:]


def test_an_object_many_times_the_ring_streams_through_a_few_reused_blocks():
    import os

    class Counting(_Bytes):
        most = 0

        def read(self, n):
            out = super().read(n)
            self.most = max(self.most, self._pos - (view[0]._released if view else 0))
            return out

    data = os.urandom(200_000)
    body, view = Counting(data), []
    view.append(StreamedObject("objects/ab/payload", body, len(data), None, block=1000))
    frame, got = 1_337, bytearray()  # frames straddle blocks, as chunks do
    for pos in range(0, len(data), frame):
        got += view[0].read_at(pos, min(frame, len(data) - pos))
    assert got == data
    assert len(view[0]._ring) == StreamedObject.slots  # 200 blocks' worth through 4 buffers
    assert all(len(block) == 1000 for block in view[0]._ring)
    # the download never ran further ahead of the reader than the ring holds
    assert 0 < body.most <= StreamedObject.slots * 1000


def test_a_streamed_object_allocates_no_more_than_arrived_plus_one_block():
    # the server claims a terabyte and sends 10 bytes: one block is allocated, not a terabyte
    view = StreamedObject("objects/ab/payload", _Bytes(b"z" * 10), 1 << 40, lambda e: e)
    with pytest.raises(IntegrityError, match="came back shorter"):
        view.read_at(0, 4 << 20)
    assert [len(b) for b in view._ring] == [StreamedObject.block]


def test_closing_a_streamed_object_stops_a_download_waiting_for_the_reader():
    import os

    data = os.urandom(50_000)
    view = StreamedObject("objects/ab/payload", _Bytes(data), len(data), None, block=1000)
    assert bytes(view.read_at(0, 10)) == data[:10]  # the ring fills, then the download waits
    view.close()
    view._thread.join(5)
    assert not view._thread.is_alive()


def test_a_closed_objects_blocks_serve_the_next_download_never_its_bytes(monkeypatch):
    import os

    from plugins.s3 import stream

    monkeypatch.setattr(stream, "_SPARE", stream._Spare(stream.SPARE_BYTES))  # none yet
    first = StreamedObject("objects/ab/payload", _Bytes(os.urandom(3000)), 3000, None, block=1000)
    assert len(first.read_at(2000, 1000)) == 1000
    first._thread.join(5)
    blocks = list(first._ring)
    first.close()
    with pytest.raises(ValueError, match="is closed"):
        first.read_at(2500, 10)
    # the next download writes into the same (already mapped) blocks...
    data = os.urandom(1500)
    second = StreamedObject("objects/cd/payload", _Bytes(data), 1500, None, block=1000)
    assert bytes(second.read_at(0, 1500)) == data
    assert any(block is mine for block in blocks for mine in second._ring)
    second.close()
    # ...and hands out only bytes it received: the 3000 - 10 the server held back are
    # an error, not the last download's bytes still in the block
    short = StreamedObject("objects/ef/payload", _Bytes(b"z" * 10), 3000, lambda e: e, block=1000)
    with pytest.raises(IntegrityError, match="came back shorter"):
        short.read_at(0, 20)
    short.close()


def test_the_client_leaves_timestamps_as_text(s3_url, tmp_path, s3_hub):
    # dateutil parsed every LastModified (each listed key, each GetObject) and nothing
    # reads them: a listing of 1,000 records cost 121 ms of CPU, 27 ms as text
    store = _store(s3_url, tmp_path, s3_hub)
    store.put("names/upper/00000000", b"r")
    name = store.prefix + "names/upper/00000000"
    listed = store.client.list_objects_v2(Bucket=store.bucket, Prefix=name)["Contents"]
    got = store.client.get_object(Bucket=store.bucket, Key=name)
    assert isinstance(listed[0]["LastModified"], str) and isinstance(got["LastModified"], str)
    assert got["Body"].read() == b"r" and store.tagged_keys("names/") == {
        "names/upper/00000000": listed[0]["ETag"]
    }


class _Stalling(BaseHTTPRequestHandler):
    """An S3 endpoint that sends an object's headers and first bytes, then stalls."""

    protocol_version = "HTTP/1.1"
    release = threading.Event()

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(1 << 20))
        self.end_headers()
        self.wfile.write(b"z" * 10)
        self.wfile.flush()
        self.release.wait(30)

    def log_message(self, *args):
        pass


def test_closing_a_streamed_object_wakes_a_download_blocked_on_the_socket(tmp_path, monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stalling)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("QLORA_HUB_S3_ENDPOINT_URL", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    try:
        store = S3BlobStore("s3://qlora-hub-test/st", load_settings(tmp_path, hub=Hub()))
        view = store.view("objects/ab/payload")
        time.sleep(0.2)  # the download got 10 bytes, and its socket read now blocks
        t0 = time.monotonic()
        view.close()
        view._thread.join(10)
        # before: the thread slept in recv until s3.read_timeout_s (60 s)
        assert not view._thread.is_alive() and time.monotonic() - t0 < 2
    finally:
        _Stalling.release.set()
        server.shutdown()


def test_get_many_reads_in_order_concurrently_and_bounded(s3_url, tmp_path, s3_hub):
    import threading

    store = _store(s3_url, tmp_path, s3_hub)
    keys = [f"names/upper/{i:08d}" for i in range(12)]
    for i, key in enumerate(keys):
        store.put(key, b"r" * i)
    store.put("names/upper/big", b"x" * 101)
    threads = set()
    store.client.meta.events.register(
        "before-call.s3.GetObject", lambda **kw: threads.add(threading.current_thread().name)
    )
    assert list(store.get_many(keys, 100)) == [b"r" * i for i in range(12)]
    assert all(t.startswith("s3-get") for t in threads) and len(threads) > 1
    many = store.get_many([keys[3], "names/upper/big", keys[4]], 100)
    assert next(many) == b"rrr"
    with pytest.raises(IntegrityError, match="over its 100 byte bound"):
        next(many)


def test_a_streamed_body_shorter_than_its_length_is_refused_at_the_missing_bytes():
    view = StreamedObject("objects/ab/payload", _Bytes(b"x" * 100), 200, lambda exc: exc)
    assert bytes(view.read_at(90, 10)) == b"x" * 10
    with pytest.raises(IntegrityError, match="came back shorter than its 200 bytes: try again"):
        view.read_at(95, 10)


def test_a_connection_dropped_mid_body_is_the_stores_one_line_error():
    class Dropping:
        def __init__(self):
            self.sent = False

        def read(self, n):
            if self.sent:
                raise ConnectionResetError("peer reset")
            self.sent = True
            return b"y" * 64

        def close(self):
            pass

    fail = lambda exc: ConfigError(f"cannot reach S3 ({type(exc).__name__})")  # noqa: E731
    view = StreamedObject("objects/ab/payload", Dropping(), 1000, fail)
    with pytest.raises(ConfigError, match=r"^cannot reach S3 \(ConnectionResetError\)$"):
        view.read_at(0, 100)


def test_pull_decrypts_a_streamed_payload_and_refuses_a_flipped_last_byte(s3_vault):
    from hub.testing.storage import sample_adapter

    adapter = sample_adapter("wide", 1, r=16, hidden=4096, layers=3)  # about 3 MiB of payload
    ref = s3_vault.push(adapter)
    assert s3_vault.pull(ref).files == adapter.files
    (key,) = [k for k in s3_vault.blobs.keys("objects/") if k.endswith("/payload")]
    blob = bytearray(s3_vault.blobs.get(key))
    assert len(blob) > 2 * StreamedObject.piece
    blob[-1] ^= 1
    s3_vault.blobs.put(key, bytes(blob))
    with pytest.raises(IntegrityError, match="failed authentication"):
        s3_vault.pull(ref)
