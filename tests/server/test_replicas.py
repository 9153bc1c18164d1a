"""Two server replicas over one vault on S3 (moto on loopback): each has its own home,
index, pins and adapter cache, and shares nothing with the other but the bucket.

A version published by team alpha reaches requests for ``name`` on every replica
within ``serve.list_ttl_s`` with no failed request; ``name@N`` resolves at once
whatever the listing cache holds; a revocation reaches every replica within the
same bound.
"""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path

import httpx
import pytest

from plugins.s3 import testing
from server.random_adapter import random_lora_payload
from tests.server.conftest import LiveServer, start_uvicorn

s3_endpoint = testing.s3_endpoint
s3_env = testing.s3_env

LIST_TTL_S = 1.0


def _bound(servers: list[LiveServer]) -> float:
    """How late a replica may be: the TTL, then per replica polled in turn the two listings
    a request after it makes (the caller's and the server's, timed here against this S3)
    and a pull of the new version, plus 5 s for a loaded 2-core machine."""
    started = time.perf_counter()
    servers[0].store.list(team="server")
    return LIST_TTL_S + 3 * len(servers) * (time.perf_counter() - started) + 5.0


def _replica(publisher_home: Path, home: Path, url: str, embedded_base: Path) -> LiveServer:
    """A server on its own home holding only team ``server``'s keys and alpha's public key."""
    from hub.config import load_settings
    from hub.plugins import Hub
    from hub.store import open_store
    from server.app import build_state, create_app
    from server.auth import KeyStore
    from server.model import load_served_base

    shutil.copytree(publisher_home / "teams" / "server", home / "teams" / "server")
    shutil.copytree(publisher_home / "trust", home / "trust")
    (home / "qlora-hub.toml").write_text(
        f'[hub]\nstorage = "vault"\n\n[vault]\nblob_url = "{url}"\n\n'
        f"[serve]\nlist_ttl_s = {LIST_TTL_S}\n"
    )
    hub = Hub()
    settings = load_settings(home)
    store = open_store(hub, settings, team="server")
    keys = KeyStore(home)
    tokens = {"alpha": keys.create("alpha")[1]}
    state = build_state(
        hub, settings, load_served_base(hub, embedded_base), store, identity="server"
    )
    server, thread, base_url = start_uvicorn(create_app(state, hub))
    return LiveServer(base_url, tokens, state, store, home, hub, server, thread)


@pytest.fixture(scope="module")
def replicas(s3_endpoint, tmp_path_factory, embedded_base):
    """(alpha's vault, [replica 1, replica 2]) over one fresh ``s3://`` prefix."""
    from hub import teams
    from plugins.vault.backend import Vault

    mp = pytest.MonkeyPatch()
    for key, value in s3_endpoint.env.items():
        mp.setenv(key, value)
    mp.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    root = tmp_path_factory.mktemp("replicas")
    url = f"s3://{s3_endpoint.bucket}/replicas-{uuid.uuid4().hex[:12]}"
    publisher_home = root / "publisher"
    for team in ("alpha", "server"):
        teams.create_team(publisher_home, team, passphrase=None, suite="classical")
    alpha = Vault(
        publisher_home / "storage" / "vault", home=publisher_home, team="alpha", blob_url=url
    )
    servers = [_replica(publisher_home, root / f"replica{i}", url, embedded_base) for i in (1, 2)]
    yield alpha, servers
    for s in servers:
        s.stop()
    mp.undo()


def _model(server: LiveServer, model: str) -> tuple[int, str | None]:
    resp = server.complete(model, "ab:", max_tokens=1, timeout=60)
    return resp.status_code, resp.json().get("model") if resp.status_code == 200 else None


def _until(servers: list[LiveServer], model: str, want: tuple[int, str | None], seen: list):
    """Seconds until every replica answers ``want`` for ``model``; every answer goes to ``seen``."""
    started = time.monotonic()
    pending = list(servers)
    while pending:
        for server in list(pending):
            got = _model(server, model)
            seen.append(got)
            if got == want:
                pending.remove(server)
        if time.monotonic() - started > 60:
            break  # the assertion below reports how long it took
        time.sleep(0.05)
    return time.monotonic() - started


def test_every_replica_serves_a_new_version_within_list_ttl_without_failing(
    replicas, embedded_base
) -> None:
    alpha, servers = replicas
    alpha.push(random_lora_payload(embedded_base, "swap", seed=1, r=8), share_with=["server"])
    assert [_model(s, "swap") for s in servers] == [(200, "swap@1")] * 2  # listings now cached

    bound = _bound(servers)
    alpha.push(random_lora_payload(embedded_base, "swap", seed=2, r=8))  # readers carry over
    seen: list = []
    elapsed = _until(servers, "swap", (200, "swap@2"), seen)

    assert elapsed <= bound
    assert set(seen) <= {(200, "swap@1"), (200, "swap@2")}  # no failed request meanwhile


def test_an_explicit_version_resolves_at_once_whatever_the_listing_ttl(
    replicas, embedded_base
) -> None:
    alpha, servers = replicas
    alpha.push(random_lora_payload(embedded_base, "pin", seed=3, r=8), share_with=["server"])
    assert [_model(s, "pin") for s in servers] == [(200, "pin@1")] * 2
    for s in servers:  # a listing cached for an hour still lets pin@2 through
        s.state.cache.list_ttl_s = 3600.0
    try:
        alpha.push(random_lora_payload(embedded_base, "pin", seed=4, r=8))
        stale = [_model(s, "pin") for s in servers]  # the TTL is what delays `pin`
        exact = [_model(s, "pin@2") for s in servers]
        after = [_model(s, m) for s in servers for m in ("pin", "pin@1")]
    finally:
        for s in servers:
            s.state.cache.list_ttl_s = LIST_TTL_S
    assert stale == [(200, "pin@1")] * 2
    assert exact == [(200, "pin@2")] * 2
    assert after == [(200, "pin@2"), (200, "pin@1")] * 2


def test_a_revocation_reaches_every_replica_within_list_ttl(replicas, embedded_base) -> None:
    alpha, servers = replicas
    ref = alpha.push(random_lora_payload(embedded_base, "gone", seed=5, r=8), share_with=["server"])
    assert [_model(s, "gone") for s in servers] == [(200, "gone@1")] * 2  # resident on both

    bound = _bound(servers)
    alpha.revoke(ref, from_team="server")
    seen: list = []
    elapsed = _until(servers, "gone@1", (404, None), seen)

    assert elapsed <= bound
    assert set(seen) <= {(200, "gone@1"), (404, None)}
    assert [_model(s, m) for s in servers for m in ("gone", "gone@1", "gone@2")] == [
        (404, None)
    ] * 6
    status = httpx.get(servers[0].url + "/ready", timeout=30).status_code
    assert status == 200  # a refusal is not a storage failure
