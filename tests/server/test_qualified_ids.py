"""Owner-qualified model ids (``alpha/upper``, ``alpha/upper@2``) in the OpenAI API.

The attacker is team beta, a real team with write access to the shared vault folder: it
deletes alpha's name records and re-claims ``upper`` for itself, before the server (a
fresh home) ever read alpha's. A request that names the owner must never get beta's
weights; unqualified names keep working (trust on first use).
"""

from __future__ import annotations

import sqlite3

import pytest


@pytest.fixture(scope="module")
def served(tmp_path_factory, embedded_base, engine_name):
    from litestar.testing import TestClient

    from hub import teams
    from hub.config import load_settings
    from hub.plugins import Hub
    from hub.store import open_store
    from server.app import build_state, create_app
    from server.auth import KeyStore
    from server.random_adapter import random_lora_payload

    tmp = tmp_path_factory.mktemp("qualified")
    root, hub = tmp / "vault", Hub()
    homes = {t: tmp / t for t in ("alpha", "beta", "server")}
    stores = {}
    for t, home in homes.items():
        teams.create_team(home, t, passphrase=None)
        (home / "qlora-hub.toml").write_text(
            f'[hub]\nstorage = "vault"\n\n[vault]\nroot = "{root}"\nchunk_size = 4096\n'
        )
    for t, home in homes.items():
        for other in homes:
            if other != t:
                teams.trust(home, teams.export_public(homes[other], other))
    for t, home in homes.items():
        stores[t] = open_store(hub, load_settings(home), team=t)

    def lora(name, seed):
        return random_lora_payload(embedded_base, name, seed=seed, r=4)

    stores["alpha"].push(lora("upper", 1), share_with=["server"])
    stores["alpha"].push(lora("lower", 2), share_with=["server"])
    # beta re-claims alpha's `upper`: its name records go, then beta publishes its own
    vault = stores["beta"].backend
    for key in vault.blobs.keys("names/upper/"):
        vault.blobs.delete(key)
    db = sqlite3.connect(root / "index.sqlite")
    with db:
        db.execute("DELETE FROM names WHERE name = 'upper'")
    db.close()
    stores["beta"].push(lora("upper", 666), share_with=["server", "alpha"])

    settings = load_settings(homes["server"])
    settings.override("serve.engine", engine_name)
    state = build_state(hub, settings, embedded_base, stores["server"], identity="server")
    keys = KeyStore(homes["server"])
    tokens = {t: keys.create(t)[1] for t in ("alpha", "beta")}
    with TestClient(create_app(state, hub)) as client:
        yield client, tokens, state


def complete(client, token: str, model: str):
    body = {"model": model, "prompt": "apple:", "max_tokens": 2, "temperature": 0}
    headers = {"Authorization": f"Bearer {token}"}
    return client.post("/v1/completions", json=body, headers=headers)


def test_a_reclaimed_name_is_404_when_the_owner_is_named(served) -> None:
    client, tokens, state = served
    # unqualified: trust on first use, beta's upper is what the storage holds now
    first = complete(client, tokens["alpha"], "upper")
    assert first.status_code == 200, first.text
    beta_version = int(first.json()["model"].rpartition("@")[2])
    for model in ("alpha/upper", f"alpha/upper@{beta_version}", "alpha/upper@latest"):
        answer = complete(client, tokens["alpha"], model)
        assert answer.status_code == 404, (model, answer.text)
        assert answer.json()["error"]["message"] == (
            f"model {model!r} does not exist or you do not have access to it"
        )
        got = client.get(
            f"/v1/models/{model}", headers={"Authorization": f"Bearer {tokens['alpha']}"}
        )
        assert got.status_code == 404, (model, got.text)
    # the owner's check ran in the core too: a forged listing still cannot load beta's bytes
    from hub.types import AdapterRef
    from server.cache import AdapterUnavailable

    with pytest.raises(AdapterUnavailable):
        state.cache.acquire(AdapterRef("alpha/upper", beta_version))
    assert [str(e.ref) for e in state.cache.entries.values()] == [f"upper@{beta_version}"]


def test_an_owner_qualified_id_serves_only_that_owners_version(served) -> None:
    client, tokens, state = served
    auth = {"Authorization": f"Bearer {tokens['alpha']}"}
    for model, served_as in (
        ("alpha/lower", "alpha/lower@1"),
        ("alpha/lower@1", "alpha/lower@1"),
        ("beta/upper", None),
    ):
        answer = complete(client, tokens["alpha"], model)
        assert answer.status_code == 200, (model, answer.text)
        if served_as:
            assert answer.json()["model"] == served_as
    assert complete(client, tokens["alpha"], "lower").json()["model"] == "lower@1"
    one = client.get("/v1/models/alpha/lower@1", headers=auth)
    assert one.status_code == 200, one.text
    assert (one.json()["id"], one.json()["owned_by"]) == ("alpha/lower@1", "alpha")
    assert client.get("/v1/models/beta/upper", headers=auth).json()["owned_by"] == "beta"
    assert client.get("/v1/models/beta/lower", headers=auth).status_code == 404
    assert client.get("/v1/models/alpha/lower@2", headers=auth).status_code == 404
    assert client.get("/v1/models/Bad Team/lower", headers=auth).status_code == 404
