"""The API key table looks at its file at most every ``check_s`` (10 ms by default), and
request ids cost no system call: a burst of refused requests pays neither per request."""

from __future__ import annotations

import json
import os
import random
import re
import time

from server.accesslog import request_id_from
from server.auth import KEY_FILE_CHECK_S, KeyStore, keys_path


def _drop_team(home, team: str) -> None:
    """Revoke ``team``'s keys as an operator would: the file rewritten without them."""
    path = keys_path(home)
    records = json.loads(path.read_text())["keys"]
    edited = path.with_name(".api-keys.edit")
    edited.write_text(json.dumps({"keys": [r for r in records if r["team"] != team]}))
    os.replace(edited, path)


def test_a_removed_key_is_refused_once_the_check_interval_has_passed(tmp_path) -> None:
    store = KeyStore(tmp_path)
    assert store.check_s == KEY_FILE_CHECK_S == 0.01
    kept, revoked = store.create("alpha")[1], store.create("beta")[1]
    assert store.lookup(revoked).team == "beta"
    _drop_team(tmp_path, "beta")
    time.sleep(2 * KEY_FILE_CHECK_S)
    assert store.lookup(revoked) is None
    assert store.lookup(kept).team == "alpha"


def test_lookups_within_the_interval_do_not_look_at_the_file(tmp_path) -> None:
    """Within ``check_s`` of the last look the table answers from memory: a rewrite is
    seen only once the interval is over (an hour here, so the test cannot race it)."""
    writer = KeyStore(tmp_path)
    revoked = writer.create("beta")[1]
    store = KeyStore(tmp_path, check_s=3600)
    assert store.lookup(revoked).team == "beta"
    _drop_team(tmp_path, "beta")
    # any look at the file would now miss the key: a thousand lookups made none
    assert [store.lookup(revoked).team for _ in range(1000)] == ["beta"] * 1000
    assert KeyStore(tmp_path, check_s=0).lookup(revoked) is None  # a fresh look sees it


def test_an_unreadable_key_file_is_looked_at_again_on_every_request(tmp_path) -> None:
    """A file that does not parse starts no interval: each lookup tries it again, so the
    first request after the fix is served."""
    store = KeyStore(tmp_path, check_s=3600)
    key = store.create("alpha")[1]
    path = keys_path(tmp_path)
    good = path.read_bytes()
    path.write_text('{"keys": [')
    fresh = KeyStore(tmp_path, check_s=3600)
    for _ in range(2):
        try:
            fresh.lookup(key)
        except json.JSONDecodeError:
            pass
        else:
            raise AssertionError("an unparsable key file was accepted")
    path.write_bytes(good)
    assert fresh.lookup(key).team == "alpha"


def test_request_ids_are_128_bit_hex_distinct_and_differ_in_a_forked_child() -> None:
    ids = {request_id_from([]) for _ in range(10_000)}
    assert len(ids) == 10_000
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert request_id_from([(b"X-Request-ID", b"mine-1")]) == "mine-1"
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id, then leave without running any test machinery
        os.write(write, request_id_from([]).encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.waitpid(pid, 0)
    os.close(read)
    # without a reseed after fork the child's next id would be the parent's next id
    assert re.fullmatch(r"[0-9a-f]{32}", child)
    assert child != request_id_from([])


def test_a_rewrite_during_a_look_is_seen_check_s_after_the_rewrite(tmp_path) -> None:
    """The operator's rewrite lands while a look reads the file (which then takes 50 ms
    more: a large file parsed, or the interpreter lock held by the engine): every lookup
    that starts ``check_s`` after the rewrite refuses the removed key."""
    revoked = KeyStore(tmp_path).create("beta")[1]
    rewritten: list[float] = []

    class SlowLook(KeyStore):  # the real file, rewritten after the read, before the look ends
        def _records(self) -> list[dict]:
            records = super()._records()
            if not rewritten:
                _drop_team(tmp_path, "beta")
                rewritten.append(time.monotonic())
                time.sleep(0.05)
            return records

    store = SlowLook(tmp_path)
    assert store.lookup(revoked).team == "beta"  # that look started before the rewrite
    assert time.monotonic() >= rewritten[0] + store.check_s
    assert store.lookup(revoked) is None


def _untemper(y: int) -> int:
    """One Mersenne Twister state word from one 32-bit output."""
    y ^= y >> 18
    y ^= (y << 15) & 0xEFC60000
    t = y
    for _ in range(5):
        t = y ^ ((t << 7) & 0x9D2C5680)
    y, t = t & 0xFFFFFFFF, t & 0xFFFFFFFF
    for _ in range(3):
        t = y ^ (t >> 11)
    return t & 0xFFFFFFFF


def test_the_ids_a_client_sees_do_not_tell_the_next_ones() -> None:
    """Every client sees an id, refusals included. 156 ids from Python's Mersenne Twister
    give away its whole state: a client could then count the requests others made between
    two of its own, and know the next id."""
    words = []
    for rid in (request_id_from([]) for _ in range(156)):
        value = int(rid, 16)
        words += [(value >> (32 * k)) & 0xFFFFFFFF for k in range(4)]
    clone = random.Random()
    clone.setstate((3, (*(_untemper(w) for w in words), 624), None))
    predicted = {f"{clone.getrandbits(128):032x}" for _ in range(100)}
    assert not predicted & {request_id_from([]) for _ in range(100)}
