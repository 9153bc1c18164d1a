"""Review attacks on the s3 store's reads from an endpoint that does not play by the rules."""

from __future__ import annotations

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


def test_a_payload_without_a_length_is_refused_before_its_body_is_read(tmp_path, monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Chunked)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("QLORA_HUB_S3_ENDPOINT_URL", f"http://127.0.0.1:{server.server_port}")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        store = S3BlobStore("s3://qlora-hub-test/rv", load_settings(tmp_path, hub=Hub()))
        # before: the whole body was read into memory, however long the endpoint made it
        with pytest.raises(IntegrityError, match="no Content-Length") as exc:
            store.view("objects/ab/payload")
        assert "\n" not in str(exc.value)
    finally:
        server.shutdown()


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
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Lying)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("QLORA_HUB_S3_ENDPOINT_URL", f"http://127.0.0.1:{server.server_port}")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        store = S3BlobStore("s3://qlora-hub-test/rv", load_settings(tmp_path, hub=Hub()))
        with pytest.raises(IntegrityError, match="outside the prefix objects/ab/"):
            store.keys("objects/ab/")
    finally:
        server.shutdown()
