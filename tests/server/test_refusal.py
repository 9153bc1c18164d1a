"""Adapters that fail verification are refused, logged and 404, and never loaded."""

from __future__ import annotations

import logging

import httpx

from server.random_adapter import random_lora_payload


def test_tampered_adapter_is_refused_with_404_and_never_loaded(
    live_server, embedded_base, caplog
) -> None:
    caplog.set_level(logging.WARNING, logger="qlora_hub.server.cache")
    ref = live_server.store.push(
        random_lora_payload(embedded_base, "tampered", seed=21, r=8),
        team="alpha",
        share_with=["server"],
    )
    weights = (
        live_server.store.backend.root / "tampered" / str(ref.version) / "adapter_model.safetensors"
    )
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))

    resp = httpx.post(
        live_server.url + "/v1/completions",
        json={"model": "tampered", "prompt": "x:", "max_tokens": 2},
        headers=live_server.headers("alpha"),
        timeout=60,
    )

    assert resp.status_code == 404
    assert all(e["name"] != "tampered" for e in live_server.state.cache.info())
    assert any(
        r.getMessage().startswith("adapter tampered@1 refused: ") and r.adapter == "tampered@1"
        for r in caplog.records
    )


def test_adapter_for_another_architecture_is_refused_with_404(live_server, embedded_base) -> None:
    from safetensors.torch import load, save

    payload = random_lora_payload(embedded_base, "misshapen", seed=22, r=8)
    tensors = load(payload.files[payload.WEIGHTS])
    tensors = {k: (v[:, :64].contiguous() if "lora_A" in k else v) for k, v in tensors.items()}
    payload.files[payload.WEIGHTS] = save(tensors)
    live_server.store.push(payload, team="alpha", share_with=["server"])
    resp = httpx.post(
        live_server.url + "/v1/completions",
        json={"model": "misshapen", "prompt": "x:", "max_tokens": 2},
        headers=live_server.headers("alpha"),
        timeout=60,
    )
    assert resp.status_code == 404
