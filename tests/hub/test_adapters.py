"""The core's adapter lifecycle (hub/adapters.py) over real backends and the real CLI:
hooks fired once, validation and policy on load, bounds on weights, base fingerprints
recorded, settings from --config reaching the vault, claims only what the backend does."""

from __future__ import annotations

import json

import pytest
from safetensors.numpy import load, save

from hub import hookimpl
from hub.config import load_settings
from hub.errors import AccessError, IntegrityError, ValidationError
from hub.plugins import Hub
from hub.store import open_store
from hub.testing.storage import sample_adapter
from hub.types import AdapterPayload, AdapterRef

FP = "ab" * 32


class Listener:
    def __init__(self):
        self.events = []
        self.veto = False

    @hookimpl
    def validate_adapter(self, adapter):
        return ["policy says no"] if self.veto else None

    @hookimpl
    def adapter_published(self, ref, team, manifest):
        self.events.append(("published", str(ref), team))

    @hookimpl
    def adapter_loaded(self, ref, team, where):
        self.events.append(("loaded", str(ref), team, where))


@pytest.fixture
def listener():
    return Listener()


@pytest.fixture
def local_env(qlora_home, monkeypatch):
    monkeypatch.setenv("QLORA_HUB_STORAGE", "local")
    monkeypatch.delenv("QLORA_HUB_TEAM", raising=False)
    return qlora_home


def write_dir(path, adapter):
    path.mkdir(parents=True)
    for fname, data in adapter.files.items():
        (path / fname).write_bytes(data)
    return path


def scaled(adapter, factor):
    tensors = load(adapter.files[AdapterPayload.WEIGHTS])
    adapter.files[AdapterPayload.WEIGHTS] = save({k: v * factor for k, v in tensors.items()})
    return adapter


def test_push_and_pull_through_open_store_fire_each_hook_once(local_env, listener):
    hub = Hub(entry_points=False, extra=[("listener", listener)])
    store = open_store(hub, load_settings(local_env, hub=hub), team="alpha")
    ref = store.push(sample_adapter("upper"), share_with=["beta"])
    store.pull(ref, team="beta", where="server")
    assert listener.events == [
        ("published", "upper@1", "alpha"),
        ("loaded", "upper@1", "beta", "server"),
    ]


def test_trainer_pull_fires_adapter_loaded_once(local_env, listener):
    from plugins.trainer.adapters import resolve_adapter

    hub = Hub(entry_points=False, extra=[("listener", listener)])
    settings = load_settings(local_env, hub=hub)
    open_store(hub, settings, team="alpha").push(sample_adapter("upper"))
    got = resolve_adapter("upper@1", hub=hub, settings=settings, team="alpha")
    assert got.files == sample_adapter("upper").files
    assert [e for e in listener.events if e[0] == "loaded"] == [
        ("loaded", "upper@1", "alpha", "cli")
    ]


def test_cli_pull_runs_the_policy_on_load(local_env, listener, qlora_cli, tmp_path):
    d = write_dir(tmp_path / "a", sample_adapter("upper"))
    plugins = [("listener", listener)]
    assert qlora_cli("adapters", "push", str(d), "--name", "upper", "--team", "alpha",
                     plugins=plugins).exit_code == 0  # fmt: skip
    listener.veto = True  # the policy changed after the push
    res = qlora_cli("adapters", "pull", "upper", "--team", "alpha", plugins=plugins)
    assert (res.exit_code, res.err) == (
        2,
        "error: adapter 'upper' vetoed by policy: policy says no\n",
    )
    assert [e for e in listener.events if e[0] == "loaded"] == []


def test_cli_export_validates_and_writes_nothing_when_refused(
    local_env, listener, qlora_cli, tmp_path
):
    d = write_dir(tmp_path / "a", sample_adapter("upper"))
    plugins = [("listener", listener)]
    qlora_cli("adapters", "push", str(d), "--name", "upper", "--team", "alpha", plugins=plugins)
    listener.veto = True
    out = tmp_path / "exported"
    res = qlora_cli("adapters", "export", "upper", "--out", str(out), "--team", "alpha",
                    plugins=plugins)  # fmt: skip
    assert res.exit_code == 2 and "vetoed by policy" in res.err
    assert not out.exists() and list(tmp_path.glob(".exported*")) == []


def test_import_refuses_weights_far_outside_any_trained_adapter(local_env, qlora_cli, tmp_path):
    d = write_dir(tmp_path / "a", scaled(sample_adapter("upper"), 1e30))
    res = qlora_cli("adapters", "import", str(d), "--name", "upper", "--team", "alpha")
    assert res.exit_code == 2
    assert "over adapters.max_abs_weight=1000" in res.err and res.err.count("\n") == 1
    assert not (local_env / "storage" / "local" / "upper").exists()


def test_weight_bound_is_a_setting(local_env, qlora_cli, tmp_path, monkeypatch):
    d = write_dir(tmp_path / "a", scaled(sample_adapter("upper"), 1e4))
    monkeypatch.setenv("QLORA_HUB_ADAPTERS_MAX_ABS_WEIGHT", "1e6")
    res = qlora_cli("adapters", "import", str(d), "--name", "upper", "--team", "alpha")
    assert res.exit_code == 0, res.err


def test_stored_adapter_over_the_bound_is_refused_on_load(local_env, listener):
    """A version stored under a looser bound (or written into storage directly) is refused
    when it is loaded, e.g. by the server."""
    from hub.adapters import Adapters
    from hub.validation import Limits

    hub = Hub(entry_points=False, extra=[("listener", listener)])
    settings = load_settings(local_env, hub=hub)
    loose = open_store(hub, settings, team="alpha")
    ref = Adapters(hub, loose.backend, limits=Limits(max_abs_weight=0)).push(
        scaled(sample_adapter("upper"), 1e30), team="alpha"
    )
    with pytest.raises(ValidationError, match="over adapters.max_abs_weight"):
        loose.pull(ref, where="server")


def test_import_records_the_base_fingerprint_from_the_flag(local_env, qlora_cli, tmp_path):
    d = write_dir(tmp_path / "a", sample_adapter("upper"))
    res = qlora_cli("adapters", "import", str(d), "--name", "upper", "--team", "alpha",
                    "--base", FP)  # fmt: skip
    assert res.exit_code == 0, res.err
    hub = Hub(entry_points=False)
    [record] = open_store(hub, load_settings(local_env), team="alpha").list()
    assert record.base_fingerprint == FP


def test_push_of_a_training_run_records_its_base_fingerprint(local_env, qlora_cli, tmp_path):
    run = tmp_path / "run"
    write_dir(run / "adapter", sample_adapter("upper"))
    (run / "manifest.json").write_text(json.dumps({"name": "upper", "base_fingerprint": FP}))
    res = qlora_cli("adapters", "push", str(run), "--name", "upper", "--team", "alpha")
    assert res.exit_code == 0, res.err
    [record] = open_store(Hub(entry_points=False), load_settings(local_env), team="alpha").list()
    assert record.base_fingerprint == FP


def test_malformed_base_fingerprint_is_refused(local_env, qlora_cli, tmp_path):
    d = write_dir(tmp_path / "a", sample_adapter("upper"))
    res = qlora_cli("adapters", "import", str(d), "--name", "upper", "--team", "alpha",
                    "--base", "not-a-fingerprint")  # fmt: skip
    assert res.exit_code == 2 and "is not a base fingerprint" in res.err


def test_symlinked_metadata_file_is_refused(local_env, qlora_cli, tmp_path):
    secret = tmp_path / "key.json"
    secret.write_text('{"private": "do not copy"}')
    d = write_dir(tmp_path / "a", sample_adapter("upper"))
    (d / "training_metadata.json").symlink_to(secret)
    res = qlora_cli("adapters", "import", str(d), "--name", "upper", "--team", "alpha")
    assert res.exit_code == 2 and "not symlinks" in res.err
    assert not (local_env / "storage" / "local" / "upper").exists()


def test_local_revoke_says_plainly_it_does_not_reencrypt(local_env, qlora_cli, tmp_path):
    d = write_dir(tmp_path / "a", sample_adapter("upper"))
    qlora_cli("adapters", "push", str(d), "--name", "upper", "--team", "alpha",
              "--share-with", "beta")  # fmt: skip
    res = qlora_cli("adapters", "revoke", "upper", "--from", "beta", "--team", "alpha")
    assert res.exit_code == 0 and "re-encrypted as" not in res.out
    assert "local does not re-encrypt" in res.out
    res = qlora_cli("adapters", "pull", "upper", "--team", "alpha")
    assert res.out.startswith("upper@1 by alpha: ") and "hashes checked (not signed)" in res.out


def test_trailing_newline_name_is_refused_by_push(local_env, qlora_cli, tmp_path):
    d = write_dir(tmp_path / "a", sample_adapter("upper"))
    res = qlora_cli("adapters", "push", str(d), "--name", "upper\n", "--team", "alpha")
    assert (res.exit_code, res.err) == (
        2,
        "error: adapter name 'upper\\n' is invalid: use 1-64 ASCII letters, digits, '.', '_' "
        "or '-', starting with a letter or digit, without '..'\n",
    )


def test_a_reader_cannot_publish_under_the_owners_name(local_env):
    store = open_store(Hub(entry_points=False), load_settings(local_env), team="alpha")
    store.push(sample_adapter("upper"), share_with=["beta"])
    with pytest.raises(AccessError, match="belongs to team 'alpha'"):
        store.push(sample_adapter("upper", 2), team="beta")
    assert [r.version for r in store.list()] == [1]


def test_storage_returning_another_version_is_an_integrity_error(local_env):
    store = open_store(Hub(entry_points=False), load_settings(local_env), team="alpha")
    store.push(sample_adapter("upper", 1))
    store.push(sample_adapter("upper", 2))
    real_pull = store.backend.pull
    store.backend.pull = lambda ref, **kw: real_pull(AdapterRef(ref.name, 1), **kw)
    with pytest.raises(IntegrityError, match="returned upper@1 when asked for upper@2"):
        store.pull(AdapterRef("upper", 2))


def test_settings_from_config_reach_the_vault(qlora_home, qlora_cli, tmp_path, monkeypatch):
    """`--config FILE` (not <home>/qlora-hub.toml) decides the vault's root and chunk size."""
    monkeypatch.delenv("QLORA_HUB_TEAM", raising=False)
    shared = tmp_path / "shared-vault"
    config = tmp_path / "team.toml"
    config.write_text(f'[vault]\nroot = "{shared}"\nchunk_size = 4096\n')
    assert qlora_cli("team", "create", "alpha", "--no-passphrase").exit_code == 0
    d = write_dir(tmp_path / "a", sample_adapter("upper"))
    res = qlora_cli("--config", str(config), "adapters", "push", str(d), "--name", "upper",
                    "--team", "alpha")  # fmt: skip
    assert res.exit_code == 0, res.err
    assert "signed and encrypted" in res.out
    assert (shared / "index.sqlite").is_file()
    assert not (qlora_home / "storage" / "vault" / "index.sqlite").exists()
    shown = qlora_cli("--config", str(config), "adapters", "show", "upper", "--team", "alpha")
    assert json.loads(shown.out)["manifest"]["payload"]["chunk_size"] == 4096
