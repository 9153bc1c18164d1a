"""A review of the refusal path (server.state Refusal, server.gate, server.auth, server.app).

What the protocol's gate (httptools) decides must log and count like the app's own gate
(h11, query strings); a key file rewritten must take effect at once (within
``KEY_FILE_CHECK_S``, 10 ms).
"""

from __future__ import annotations

import time

import httpx
import pytest

from server.auth import KEY_FILE_CHECK_S
from tests.server.conftest import start_small_server


@pytest.fixture(scope="module")
def live(small_home, embedded_base):
    server = start_small_server(small_home, embedded_base)
    yield server
    server.stop()


def test_an_admitted_request_that_fails_before_its_handler_logs_its_team_on_both_gates(
    live, access_log
) -> None:
    """The protocol's gate admits a request before the access log starts its record: the
    caller it found must still be in the line, as on the app's own gate."""
    for target, rid in (("/v1/completions", "rv-proto"), ("/v1/completions?x=1", "rv-app")):
        answer = httpx.post(
            live.url + target,
            content=b"{",
            headers={
                **live.headers("alpha"),
                "X-Request-ID": rid,
                "Content-Type": "application/json",
            },
            timeout=30,
        )
        assert answer.status_code == 400
    (by_protocol,), (by_app,) = access_log("rv-proto"), access_log("rv-app")
    assert by_app["team"] == "alpha"
    assert by_protocol["team"] == by_app["team"]
    assert by_protocol["key_id"] == by_app["key_id"]
    assert by_protocol["path"] == by_app["path"] == "/v1/completions"


def test_a_key_removed_from_the_file_is_refused_at_once_when_the_rewrite_keeps_the_mtime(
    tmp_path,
) -> None:
    """Revoking a key is rewriting the file without it. Two rewrites within one tick of the
    file system's clock share an mtime (133 of 399 unsynced consecutive replaces on this
    machine's ext4), as does a copy that keeps it (cp -p, rsync -t): the server must
    still see the new file."""
    import json
    import os

    from server.auth import KeyStore, keys_path

    store = KeyStore(tmp_path, check_s=0)  # every lookup looks at the file (see test_keys)
    kept = store.create("alpha")[1]
    revoked = store.create("beta")[1]
    assert store.lookup(revoked).team == "beta"
    path = keys_path(tmp_path)
    before = os.stat(path)
    records = json.loads(path.read_text())["keys"]
    edited = path.with_name(".api-keys.edit")
    edited.write_text(json.dumps({"keys": [r for r in records if r["team"] != "beta"]}))
    os.replace(edited, path)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(path).st_mtime_ns == before.st_mtime_ns
    assert store.lookup(revoked) is None
    assert store.lookup(kept).team == "alpha"


def test_an_unreadable_key_file_is_answered_alike_by_both_gates(live) -> None:
    """An operator's half-done edit of the key file: the protocol's gate and the app's own
    gate give the same answer (not a client error for a server problem)."""
    from server.auth import keys_path

    path = keys_path(live.home)
    saved = path.read_bytes()
    try:
        path.write_text('{"keys": [')
        time.sleep(2 * KEY_FILE_CHECK_S)  # the server's last look at the file has lapsed
        answers = [
            httpx.post(
                live.url + target,
                content=b"{}",
                headers={**live.headers("alpha"), "Content-Type": "application/json"},
                timeout=30,
            )
            for target in ("/v1/completions", "/v1/completions?x=1")
        ]
    finally:
        path.write_bytes(saved)
    by_protocol, by_app = answers
    # was 400 "Invalid HTTP request received." from the protocol (the parser's callback
    # raised), and uvicorn's plain-text 500 from the app's gate
    assert by_protocol.status_code == by_app.status_code == 500
    assert (
        by_protocol.json()
        == by_app.json()
        == {
            "error": {
                "message": "internal server error",
                "type": "server_error",
                "param": None,
                "code": 500,
            }
        }
    )
    assert by_protocol.headers["x-request-id"]
    assert live.complete("base", "hi", max_tokens=1).status_code == 200
