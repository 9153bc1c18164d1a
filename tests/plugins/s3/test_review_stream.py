"""Review attacks on the s3 store's reads from an endpoint that does not play by the rules."""

from __future__ import annotations

import contextlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from hub.config import load_settings
from hub.errors import IntegrityError
from hub.plugins import Hub
from plugins.s3.store import S3BlobStore


class _Chunked(BaseHTTPRequestHandler):
    """An S3 endpoint answering every GET with a chunked body (no Content-Length)."""

    protocol_version = "HTTP/1.1"
    sent = 0

    def do_GET(self):
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        piece = b"z" * 65536
        try:
            for _ in range(64):  # 4 MiB, more than the client needs to read to refuse it
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                type(self).sent += len(piece)
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def _store_on(handler, tmp_path, monkeypatch):
    """An ``S3BlobStore`` whose endpoint is a loopback HTTP server answering with ``handler``."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("QLORA_HUB_S3_ENDPOINT_URL", f"http://127.0.0.1:{server.server_port}")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        yield S3BlobStore("s3://qlora-hub-test/rv", load_settings(tmp_path, hub=Hub()))
    finally:
        server.shutdown()


def test_a_payload_without_a_length_is_refused_before_its_body_is_read(tmp_path, monkeypatch):
    with _store_on(_Chunked, tmp_path, monkeypatch) as store:
        # before: the whole body was read into memory, however long the endpoint made it
        with pytest.raises(IntegrityError, match="no Content-Length") as exc:
            store.view("objects/ab/payload")
        assert "\n" not in str(exc.value)


class _Lying(BaseHTTPRequestHandler):
    """An S3 endpoint whose ListObjectsV2 answer names a key outside the asked prefix."""

    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = (
            b'<?xml version="1.0" encoding="UTF-8"?>'
            b'<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            b"<Name>qlora-hub-test</Name><Prefix>rv/objects/ab/</Prefix><KeyCount>2</KeyCount>"
            b"<MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated>"
            b"<Contents><Key>rv/objects/ab/payload</Key><ETag>&quot;1&quot;</ETag><Size>1</Size></Contents>"
            b"<Contents><Key>rv/names/other/00000000</Key><ETag>&quot;2&quot;</ETag><Size>1</Size></Contents>"
            b"</ListBucketResult>"
        )
        self.send_response(200)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_a_listing_naming_keys_outside_its_prefix_is_refused(tmp_path, monkeypatch):
    # the vault deletes what a listing of objects/<id>/ names: never another name's records
    with (
        _store_on(_Lying, tmp_path, monkeypatch) as store,
        pytest.raises(IntegrityError, match="outside the prefix objects/ab/"),
    ):
        store.keys("objects/ab/")


def test_a_forked_child_reads_on_its_own_connections_and_pool(s3_url, tmp_path, s3_hub):
    import os
    import time

    import plugins.s3.store as store_module

    store = S3BlobStore(s3_url, load_settings(tmp_path, hub=s3_hub))
    store.put("names/x/00000000", b"r" * 100)
    assert store.get("names/x/00000000") == b"r" * 100  # a pooled keep-alive connection
    assert list(store.get_many(["names/x/00000000"], 1000)) == [b"r" * 100]
    parent = id(store.client)
    with store_module._POOL_LOCK:  # another thread of the parent holds it as it forks
        pid = os.fork()
    if pid == 0:  # the child: exit 0 only if it read on its own client and pool
        code = 1
        try:
            ok = id(store.client) != parent
            code = 0 if ok and list(store.get_many(["names/x/00000000"], 1000)) else 2
        finally:
            os._exit(code)
    deadline = time.monotonic() + 30
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if done[0] == 0:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    assert done[0] == pid and os.waitstatus_to_exitcode(done[1]) == 0  # hung or shared: not 0
