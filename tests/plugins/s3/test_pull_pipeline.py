"""How a pull over S3 overlaps its requests, and that the overlap never changes what
is checked before a byte is used: a warm pull requests the payload its last pull read
while it re-reads the signed records, a name's records are read several at once, and a
refused payload stops its download."""

from __future__ import annotations

import threading
import time

import pytest

from hub.errors import AccessError, IntegrityError
from hub.testing.storage import sample_adapter
from hub.types import AdapterRef
from plugins.s3.stream import StreamedObject
from plugins.vault.backend import Vault


def _as(vault, team):
    return Vault(vault.root, home=vault.home, hub=vault.hub, team=team, blob_url=vault.blobs.url)


def _gets(vault):
    """Keys of every GetObject the vault's client sends from now on (any thread)."""
    keys: list[str] = []
    vault.blobs.client.meta.events.register(
        "before-call.s3.GetObject", lambda params, **kw: keys.append(params["url_path"])
    )
    return keys


def _downloads_stop():
    for thread in [t for t in threading.enumerate() if t.name == "s3-body"]:
        thread.join(10)
        assert not thread.is_alive()


def test_a_revoked_team_is_refused_although_its_payload_was_requested_early(s3_vault):
    ref = s3_vault.push(sample_adapter("upper"), share_with=["beta"])
    beta = _as(s3_vault, "beta")
    old = beta.pull(ref).manifest["object_id"]  # beta's last pull read this object
    s3_vault.revoke(ref, from_team="beta")
    gets = _gets(beta)
    with pytest.raises(AccessError, match="access to upper@1 was revoked by its owner"):
        beta.pull(ref)
    # requested early (a helper thread sends it: it may not have gone out when pull raised)...
    deadline = time.monotonic() + 30
    while not any(k.endswith(f"objects/{old}/payload") for k in gets):
        assert time.monotonic() < deadline, gets
        time.sleep(0.01)
    _downloads_stop()  # ...and dropped


def test_a_warm_pull_of_a_replaced_record_is_refused_with_its_payload_downloading(
    s3_vault, s3_endpoint
):
    ref = s3_vault.push(sample_adapter("upper"))
    s3_vault.pull(ref)
    blobs = s3_vault.blobs
    key = blobs.prefix + "names/upper/00000001"
    raw = s3_endpoint.client()
    raw.put_object(Bucket=blobs.bucket, Key=key, Body=b'{"record": {}, "signature": ""}')
    with pytest.raises(IntegrityError, match="rolled back or replaced"):
        s3_vault.pull(ref)
    _downloads_stop()


def test_a_warm_pull_of_latest_returns_the_new_version_not_the_early_guess(s3_vault):
    s3_vault.push(sample_adapter("upper", 1))
    first = s3_vault.pull(AdapterRef("upper"))
    second = sample_adapter("upper", 2)
    s3_vault.push(second)
    gets = _gets(s3_vault)
    pulled = s3_vault.pull(AdapterRef("upper"))
    assert (pulled.version, pulled.files) == (2, second.files)
    old, new = first.manifest["object_id"], pulled.manifest["object_id"]
    assert [k.rsplit("/", 2)[-2] for k in gets if k.endswith("/payload")] == [old, new]
    _downloads_stop()


def test_a_names_records_are_read_several_at_once_in_order(s3_vault):
    for seed in range(4):
        ref = s3_vault.push(sample_adapter("upper", seed))
    fresh = _as(s3_vault, "alpha")
    threads = set()

    def note(params, **kw):
        if "/names/" in params["url_path"]:
            threads.add(threading.current_thread().name)

    fresh.blobs.client.meta.events.register("before-call.s3.GetObject", note)
    assert fresh.pull(ref).version == 4
    assert len(threads) > 1 and all(t.startswith("s3-get") for t in threads)


@pytest.mark.parametrize("tamper", ["append", "flip"])
def test_a_refused_payload_larger_than_the_ring_stops_its_download(
    s3_vault, s3_endpoint, monkeypatch, tamper
):
    monkeypatch.setattr(StreamedObject, "block", 64 << 10)  # a 256 KiB ring, 3 MiB payload
    adapter = sample_adapter("wide", 1, r=16, hidden=4096, layers=3)
    ref = s3_vault.push(adapter)
    oid = s3_vault.pull(ref).manifest["object_id"]
    blobs, raw = s3_vault.blobs, s3_endpoint.client()
    key = blobs.prefix + f"objects/{oid}/payload"
    data = bytearray(raw.get_object(Bucket=blobs.bucket, Key=key)["Body"].read())
    if tamper == "append":  # longer than its header (and so its signed manifest) says
        data += b"\0" * (1 << 20)
    else:
        data[-1] ^= 1
    raw.put_object(Bucket=blobs.bucket, Key=key, Body=bytes(data))
    match = "does not match its header" if tamper == "append" else "failed authentication"
    with pytest.raises(IntegrityError, match=match):
        s3_vault.pull(ref)
    _downloads_stop()  # without a close the download would wait for the reader forever


def test_records_this_home_verified_are_requested_before_the_listing(s3_vault, monkeypatch):
    ref = s3_vault.push(sample_adapter("upper"))
    s3_vault.push(sample_adapter("upper", 2))  # records 0-2, pinned at 2
    fresh = _as(s3_vault, "alpha")  # a new process: the pin comes from the home
    calls: list[tuple[str, list[str]]] = []
    blobs = fresh.blobs
    tagged_keys, get_many = blobs.tagged_keys, blobs.get_many
    monkeypatch.setattr(
        blobs, "tagged_keys", lambda p: calls.append(("list", [p])) or tagged_keys(p)
    )
    monkeypatch.setattr(
        blobs, "get_many", lambda ks, limit: calls.append(("get", ks)) or get_many(ks, limit)
    )
    assert fresh.pull(ref).version == 1
    pinned = [f"names/upper/{i:08d}" for i in (2, 0, 1)]  # the pinned one first
    assert calls[:2] == [("get", pinned), ("list", ["names/upper/"])]


def test_a_warm_pull_fetches_no_record_it_verified_under_the_same_etag(s3_vault, s3_endpoint):
    ref = s3_vault.push(sample_adapter("upper"), share_with=["beta"])
    s3_vault.pull(ref)
    gets = _gets(s3_vault)
    assert s3_vault.pull(ref).version == 1
    assert [k for k in gets if "/names/" in k] == []  # listed, not fetched again
    _as(s3_vault, "alpha").revoke(ref, from_team="beta")  # elsewhere: new records, fetched
    gets.clear()
    latest = AdapterRef("upper")
    assert s3_vault.pull(latest).version == 2
    fetched = [k.rsplit("/", 1)[-1] for k in gets if "/names/" in k]
    assert fetched and all(seq > "00000001" for seq in fetched)  # only the new ones
    blobs, raw = s3_vault.blobs, s3_endpoint.client()  # rewritten: a new ETag, read, refused
    key = blobs.prefix + "names/upper/00000000"
    raw.put_object(Bucket=blobs.bucket, Key=key, Body=b'{"record": {}, "signature": ""}')
    with pytest.raises(IntegrityError):
        s3_vault.pull(latest)
