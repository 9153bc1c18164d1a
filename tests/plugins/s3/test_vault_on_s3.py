"""The vault with its blobs on S3: two machines pushing at once, a push killed
mid-upload, and objects replaced or deleted behind the vault's back.

"Machines" are processes with separate homes, so they share no SQLite lock
and no index: only the bucket. Children are forked (they start in milliseconds).
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import socket
import time

import pytest

from hub.errors import ConfigError, IntegrityError
from hub.testing.storage import sample_adapter
from hub.types import AdapterRef
from plugins.vault.backend import Vault

FORK = multiprocessing.get_context("fork")


def _machine(home, url):
    return Vault(home / "storage" / "vault", home=home, team="alpha", blob_url=url)


def _push_n(home, url, worker, n, barrier):
    vault = _machine(home, url)
    barrier.wait()
    for i in range(n):
        seed = worker * 100 + i
        vault.push(sample_adapter("upper", seed), metadata={"seed": seed})


def _second_home(home, tmp_path):
    """Another machine holding alpha's keys: its own home, index and pins."""
    other = tmp_path / "home2"
    for part in ("teams", "trust"):
        shutil.copytree(home / part, other / part)
    return other


def test_two_machines_pushing_one_name_get_distinct_intact_versions(home, s3_url, tmp_path):
    homes = [home, _second_home(home, tmp_path)]
    barrier = FORK.Barrier(2)
    children = [
        FORK.Process(target=_push_n, args=(h, s3_url, w, 3, barrier)) for w, h in enumerate(homes)
    ]
    for c in children:
        c.start()
    for c in children:
        c.join(120)
        assert c.exitcode == 0
    for h in homes:  # each machine sees the same six versions, each one intact
        vault = _machine(h, s3_url)
        records = vault.list()
        assert sorted(r.version for r in records) == [1, 2, 3, 4, 5, 6]
        seeds = set()
        for rec in records:
            got = vault.pull(AdapterRef("upper", rec.version))
            seed = got.manifest["metadata"]["seed"]
            assert got.files == sample_adapter("upper", seed).files
            seeds.add(seed)
        assert seeds == {0, 1, 2, 100, 101, 102}


def _push_forever(home, url, start):
    vault = _machine(home, url)
    seed = start
    while True:
        vault.push(sample_adapter("upper", seed, r=8, hidden=512), metadata={"seed": seed})
        seed += 1


def test_a_push_killed_mid_upload_lists_no_partial_version(home, s3_url):
    vault = _machine(home, s3_url)
    vault.push(sample_adapter("upper", 0, r=8, hidden=512), metadata={"seed": 0})
    for trial, delay in enumerate((0.3, 0.6, 0.9, 1.3)):
        child = FORK.Process(target=_push_forever, args=(home, s3_url, 100 * (trial + 1)))
        child.start()
        time.sleep(delay)
        os.kill(child.pid, signal.SIGKILL)
        child.join()
    fresh = _machine(home, s3_url)  # a new process's view: only the bucket and the records
    listed = [r.version for r in fresh.list()]
    assert listed[0] == 1
    for version in listed:
        got = fresh.pull(AdapterRef("upper", version))
        seed = got.manifest["metadata"]["seed"]
        assert got.files == sample_adapter("upper", seed, r=8, hidden=512).files
    # every upload a kill cut short is an orphan (blobs, no signed record), never a version
    assert all(
        o not in {fresh.pull(AdapterRef("upper", v)).manifest["object_id"] for v in listed}
        for o in fresh.orphans()
    )


@pytest.fixture
def pushed(s3_vault, s3_endpoint):
    ref = s3_vault.push(sample_adapter("upper"), share_with=["beta"])
    oid = s3_vault.pull(ref).manifest["object_id"]
    return s3_vault, ref, oid, s3_endpoint.client(), s3_vault.blobs


def _fresh(vault):
    return Vault(vault.root, home=vault.home, team="alpha", blob_url=vault.blobs.url)


@pytest.mark.parametrize("part", ["payload", "manifest", "keys/alpha"])
def test_an_object_replaced_behind_the_vaults_back_is_refused(pushed, part):
    vault, ref, oid, raw, blobs = pushed
    key = blobs.prefix + f"objects/{oid}/{part}"
    data = bytearray(raw.get_object(Bucket=blobs.bucket, Key=key)["Body"].read())
    data[len(data) // 2] ^= 1
    raw.put_object(Bucket=blobs.bucket, Key=key, Body=bytes(data))
    with pytest.raises(IntegrityError) as exc:
        _fresh(vault).pull(ref)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("part", ["payload", "manifest", "keys/alpha"])
def test_an_object_deleted_behind_the_vaults_back_is_refused(pushed, part):
    vault, ref, oid, raw, blobs = pushed
    raw.delete_object(Bucket=blobs.bucket, Key=blobs.prefix + f"objects/{oid}/{part}")
    with pytest.raises(IntegrityError, match="missing|altered|not readable|refused"):
        _fresh(vault).pull(ref)


def test_a_record_deleted_or_replaced_behind_the_vaults_back_is_refused(pushed):
    vault, ref, oid, raw, blobs = pushed
    vault.list()  # this home pins the newest record it verified
    key = blobs.prefix + "names/upper/00000001"
    raw.delete_object(Bucket=blobs.bucket, Key=key)
    with pytest.raises(IntegrityError, match="rolled back or replaced"):
        _fresh(vault).pull(ref)
    raw.put_object(Bucket=blobs.bucket, Key=key, Body=b'{"record": {}, "signature": ""}')
    with pytest.raises(IntegrityError):
        _fresh(vault).pull(ref)


def test_a_push_while_the_endpoint_is_down_fails_in_one_line_and_writes_nothing(
    home, s3_url, s3_hub, monkeypatch
):
    vault = _machine(home, s3_url)
    vault.push(sample_adapter("upper", 0))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    with monkeypatch.context() as m:
        m.setenv("QLORA_HUB_S3_ENDPOINT_URL", dead)
        m.setenv("QLORA_HUB_S3_MAX_ATTEMPTS", "2")
        with pytest.raises(ConfigError) as exc:
            _machine(home, s3_url).push(sample_adapter("upper", 1))
    assert "\n" not in str(exc.value) and "check s3.endpoint_url" in str(exc.value)
    fresh = _machine(home, s3_url)  # the endpoint is back
    assert [r.version for r in fresh.list()] == [1]
    assert fresh.pull(AdapterRef("upper", 1)).files == sample_adapter("upper", 0).files
    assert fresh.orphans() == []
