"""Nonces never repeat; secret keys never reach logs, errors, the index or the blobs."""

from __future__ import annotations

import base64
import json
import logging

import pytest

from hub import teams
from hub.errors import HubError
from hub.testing.storage import sample_adapter
from hub.types import AdapterRef
from plugins.vault import objects
from plugins.vault.backend import Vault


def test_nonces_never_repeat_across_many_pushes(vault):
    nonces = []
    for seed in range(40):
        vault.push(sample_adapter(f"a{seed % 4}", seed))
    for key in vault.blobs.keys("objects/"):
        if key.endswith("/payload"):
            nonces += objects.chunk_nonces(vault.blobs.get(key))
    assert len(nonces) >= 40 * 9
    assert len(set(nonces)) == len(nonces)


def test_every_version_gets_a_fresh_data_key(vault):
    keys = set()
    for seed in range(5):
        ref = vault.push(sample_adapter("upper", seed))
        keys.add(vault._data_key(vault.state("upper"), ref.version, "alpha"))
    assert len(keys) == 5


def _secrets(home, vault):
    """Every private key (raw and as stored), every data key, and the passphrase."""
    out = [b"correct horse battery"]
    for team in ("alpha", "beta"):
        bundle = json.loads((home / "teams" / team / "key.json").read_bytes())
        if "bundle" in bundle:
            for k in ("ed25519", "x25519", "mldsa65", "mlkem768"):
                raw = base64.b64decode(bundle["bundle"][k])
                out += [raw, raw.hex().encode(), bundle["bundle"][k].encode()]
    for name in vault.records.names():
        state = vault.state(name)
        for version in state.live():
            key = vault._data_key(state, version, "alpha")
            out += [key, key.hex().encode(), base64.b64encode(key)]
    return out


def _stored_bytes(root):
    return [p.read_bytes() for p in root.rglob("*") if p.is_file()]


def test_secrets_never_in_index_audit_log_or_blobs(home, vault, caplog):
    caplog.set_level(logging.DEBUG)
    ref = vault.push(sample_adapter("upper"), share_with=["beta"])
    vault.pull(ref, team="beta")
    vault.revoke(AdapterRef("upper"), from_team="beta")
    everything = b"".join(_stored_bytes(vault.root)) + caplog.text.encode()
    for secret in _secrets(home, vault):
        assert secret not in everything


def test_secrets_never_in_error_messages(home, vault, monkeypatch, tmp_path):
    ref = vault.push(sample_adapter("upper"))
    messages = []
    teams.create_team(tmp_path / "p", "delta", passphrase="correct horse battery")
    attempts = [
        lambda: teams.load_identity(tmp_path / "p", "delta", passphrase="wrong"),
        lambda: vault.pull(AdapterRef("upper", 7)),
        lambda: vault.pull(ref, team="beta"),
        lambda: vault.share(ref, with_team="nobody"),
    ]
    with vault.index.read() as db:
        oid = vault.index.version_row(db, "upper", 1)["object_id"]
    blob = bytearray(vault.blobs.get(f"objects/{oid}/payload"))
    blob[-1] ^= 1
    vault.blobs.put(f"objects/{oid}/payload", bytes(blob))
    attempts.append(lambda: vault.pull(ref))
    for attempt in attempts:
        with pytest.raises(HubError) as info:
            attempt()
        messages.append(str(info.value) + repr(info.value.__cause__) + repr(info.value.__context__))
    text = "\n".join(messages).encode()
    for secret in _secrets(home, vault):
        assert secret not in text


def test_vault_and_identity_reprs_hide_keys(vault):
    vault.push(sample_adapter("upper"))
    assert repr(vault.identity("alpha")) == "Identity(team='alpha', suite='hybrid')"
    assert "key" not in repr(vault).lower()


def test_passphrase_protected_key_file_never_stores_the_passphrase(tmp_path):
    teams.create_team(tmp_path, "alpha", passphrase="correct horse battery")
    vault = Vault(tmp_path / "storage" / "vault", team="alpha", passphrase="correct horse battery")
    vault.push(sample_adapter("upper"))
    for data in _stored_bytes(tmp_path):
        assert b"correct horse battery" not in data


def test_plaintext_weights_never_reach_the_vault_directory(home, vault):
    adapter = sample_adapter("upper")
    ref = vault.push(adapter, share_with=["beta"])
    vault.pull(ref, team="beta")
    weights = adapter.files["adapter_model.safetensors"]
    probes = [weights[i : i + 64] for i in range(200, len(weights), 997)]
    stored = b"".join(_stored_bytes(home))
    assert probes and not any(p in stored for p in probes)
