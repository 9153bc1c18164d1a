"""A server backed by the vault: shared adapters serve; tampered ones are refused, logged, 404.

The adapters are published by team alpha into a real vault (encrypted, signed) and the
server reads them as its own team; the tampering happens to the stored blobs, as an
attacker with write access to the blob store could do it.
"""

from __future__ import annotations

import base64
import json
import logging

import httpx
import pytest

from server.random_adapter import random_lora_payload

REFUSED = 'qlora_hub_adapter_events_total{event="refused"}'


def complete(vault_server, model: str) -> httpx.Response:
    return vault_server.complete(model, "ab:", max_tokens=2, timeout=60)


def resident(vault_server) -> list[str]:
    """Names in the admin view of the cache (GET /v1/adapters)."""
    resp = httpx.get(
        vault_server.url + "/v1/adapters", headers=vault_server.headers("admin"), timeout=30
    )
    assert resp.status_code == 200
    return [e["name"] for e in resp.json()["data"]]


def publish(vault_server, embedded_base, name: str, seed: int) -> str:
    """Push ``name`` as alpha, shared with the server; returns its object id in the blob store."""
    store = vault_server.store
    before = set(store.backend.blobs.keys("objects/"))
    store.push(random_lora_payload(embedded_base, name, seed=seed, r=8), share_with=["server"])
    (oid,) = {key.split("/")[1] for key in set(store.backend.blobs.keys("objects/")) - before}
    return oid


def refusals(caplog, ref: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "qlora_hub.server.cache"
        and " refused: " in r.getMessage()
        and r.adapter in (ref, ref.split("@")[0])  # a bad manifest is refused before its version
    ]


def test_adapter_is_served_from_the_vault_once_shared_with_the_server(
    vault_server, embedded_base
) -> None:
    ref = vault_server.store.push(random_lora_payload(embedded_base, "later", seed=30, r=8))
    unshared = complete(vault_server, "later")
    vault_server.store.share(ref, with_team="server")
    shared = complete(vault_server, "later")
    assert unshared.status_code == 404
    assert (shared.status_code, shared.json()["model"]) == (200, "later@1")
    assert "later" in resident(vault_server)


def test_flipped_byte_in_a_vault_chunk_is_refused_logged_and_never_loaded(
    vault_server, embedded_base, caplog
) -> None:
    caplog.set_level(logging.WARNING, logger="qlora_hub.server.cache")
    store = vault_server.store
    key = f"objects/{publish(vault_server, embedded_base, 'chunk-flip', 31)}/payload"
    blob = bytearray(store.backend.blobs.get(key))
    assert len(blob) > 3 * 4096  # several chunks: the flip lands inside one, not the header
    blob[len(blob) // 2] ^= 0x01
    store.backend.blobs.put(key, bytes(blob))
    refused_before = vault_server.metric(REFUSED)

    resp = complete(vault_server, "chunk-flip")

    assert resp.status_code == 404
    assert resp.json()["error"]["message"] == (
        "model 'chunk-flip' does not exist or you do not have access to it"
    )
    (record,) = refusals(caplog, "chunk-flip@1")
    assert "failed authentication" in record.reason
    assert vault_server.metric(REFUSED) == refused_before + 1
    assert "chunk-flip" not in resident(vault_server)


def test_broken_manifest_signature_is_refused_logged_and_never_loaded(
    vault_server, embedded_base, caplog
) -> None:
    caplog.set_level(logging.WARNING, logger="qlora_hub.server.cache")
    store = vault_server.store
    key = f"objects/{publish(vault_server, embedded_base, 'bad-sig', 32)}/manifest"
    body = json.loads(store.backend.blobs.get(key))
    signature = bytearray(base64.b64decode(body["signature"]))
    signature[-1] ^= 0x01  # the ML-DSA half: a hybrid signature needs both halves valid
    body["signature"] = base64.b64encode(bytes(signature)).decode()
    store.backend.blobs.put(key, json.dumps(body, sort_keys=True, separators=(",", ":")).encode())

    resp = complete(vault_server, "bad-sig")

    assert resp.status_code == 404
    # the core's listing verifies each manifest, so a version whose signature breaks is
    # not visible to the server at all: nothing to load, nothing to log as a refusal
    assert all(
        "signature by team 'alpha' does not verify" in r.reason
        for r in refusals(caplog, "bad-sig@1")
    )
    assert "bad-sig" not in resident(vault_server)


@pytest.mark.parametrize("who", ["alpha", "admin"])
def test_refused_vault_adapter_stays_refused_on_every_request(
    vault_server, embedded_base, who
) -> None:
    """A refusal is not cached as a success: asking again is still 404 to a team, and an
    admin's load is still 422 with the reason (admins are told why)."""
    store = vault_server.store
    name = f"again-{who}"
    key = f"objects/{publish(vault_server, embedded_base, name, 33 if who == 'alpha' else 34)}/payload"
    blob = bytearray(store.backend.blobs.get(key))
    blob[-1] ^= 0x01
    store.backend.blobs.put(key, bytes(blob))
    if who == "alpha":
        statuses = [complete(vault_server, name).status_code for _ in range(2)]
    else:
        statuses = [
            httpx.post(
                vault_server.url + f"/v1/adapters/{name}/load",
                headers=vault_server.headers("admin"),
                timeout=60,
            ).status_code
            for _ in range(2)
        ]
    assert statuses == ([404, 404] if who == "alpha" else [422, 422])
    assert name not in resident(vault_server)


def test_server_settings_come_from_the_config_file(vault_server) -> None:
    """The home's qlora-hub.toml sets ``[serve] max_tokens_cap = 64`` (default 512)."""
    resp = httpx.post(
        vault_server.url + "/v1/completions",
        json={"model": "base", "prompt": "ab:", "max_tokens": 65},
        headers=vault_server.headers("alpha"),
        timeout=60,
    )
    assert resp.status_code == 400
    assert resp.json()["error"]["message"] == "max_tokens 65 is above this server's cap of 64"


def test_adapter_served_from_the_vault_is_never_written_to_disk_in_plaintext(
    vault_server, embedded_base
) -> None:
    """The server decrypts in memory: no file under the home holds the adapter's weights."""
    payload = random_lora_payload(embedded_base, "in-memory", seed=35, r=8)
    weights = payload.files[payload.WEIGHTS]
    vault_server.store.push(payload, share_with=["server"])
    assert complete(vault_server, "in-memory").status_code == 200
    assert "in-memory" in resident(vault_server)
    probe = weights[len(weights) // 2 : len(weights) // 2 + 64]  # tensor bytes, not the header
    files = [p for p in vault_server.home.rglob("*") if p.is_file()]
    assert files and not [p for p in files if probe in p.read_bytes()]
