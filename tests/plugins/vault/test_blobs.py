"""The blob layer: file:// built in, other schemes from plugins, vault.root sharing."""

from __future__ import annotations

import pytest

from hub.errors import ConfigError, IntegrityError
from hub.testing.storage import sample_adapter
from hub.types import AdapterRef
from plugins.vault import blobs
from plugins.vault.backend import Vault


class MemoryBlobs:
    """A BlobStore kept in a dict (stands in for object storage)."""

    stores: dict[str, dict[str, bytes]] = {}

    def __init__(self, url):
        self.url = url
        self.data = self.stores.setdefault(url, {})

    def put(self, key, data):
        self.data[blobs.check_key(key)] = bytes(data)

    def get(self, key):
        if key not in self.data:
            raise IntegrityError(f"blob {key} is missing")
        return self.data[key]

    def exists(self, key):
        return key in self.data

    def delete(self, key):
        self.data.pop(key, None)

    def keys(self, prefix):
        return sorted(k for k in self.data if k.startswith(prefix))


@pytest.fixture
def mem_scheme(monkeypatch):
    monkeypatch.setitem(blobs.BLOB_SCHEMES, "mem", MemoryBlobs)
    yield "mem://bucket"
    MemoryBlobs.stores.clear()


def test_vault_runs_over_a_plugin_blob_scheme(home, mem_scheme):
    vault = Vault(home / "storage" / "vault", team="alpha", blob_url=mem_scheme)
    ref = vault.push(sample_adapter("upper"))
    assert vault.pull(ref).files == sample_adapter("upper").files
    stored = MemoryBlobs.stores[mem_scheme]
    assert sorted(k.rsplit("/", 1)[-1] for k in stored if k.startswith("objects/")) == [
        "alpha",
        "manifest",
        "payload",
    ]
    assert sorted(k for k in stored if k.startswith("names/")) == [
        "names/upper/00000000",  # alpha's signed claim of the name
        "names/upper/00000001",  # its signed publish record of upper@1
    ]
    assert not (home / "storage" / "vault" / "blobs").exists()


def test_register_blob_scheme_refuses_a_taken_scheme():
    with pytest.raises(ConfigError, match="'file' is already registered"):
        blobs.register_blob_scheme("file", MemoryBlobs)


def test_unknown_scheme_is_a_config_error(home):
    with pytest.raises(ConfigError, match="no blob store for scheme 'gopher'"):
        Vault(home / "storage" / "vault", team="alpha", blob_url="gopher://bucket/x")


@pytest.mark.parametrize("key", ["../x", "/abs", "objects/../../x", "a//b", "A/B"])
def test_file_blob_keys_cannot_escape(tmp_path, key):
    store = blobs.FileBlobStore((tmp_path / "b").as_uri())
    with pytest.raises(ValueError, match="invalid blob key"):
        store.put(key, b"x")


def test_file_blob_put_is_atomic_and_leaves_no_temp_files(tmp_path):
    store = blobs.FileBlobStore((tmp_path / "b").as_uri())
    store.put("objects/abc/payload", b"one")
    store.put("objects/abc/payload", b"two")
    assert store.get("objects/abc/payload") == b"two"
    assert [p.name for p in (tmp_path / "b" / "objects" / "abc").iterdir()] == ["payload"]


def test_vault_root_setting_shares_one_vault_between_homes(tmp_path, monkeypatch):
    from hub import teams

    shared = tmp_path / "shared"
    monkeypatch.setenv("QLORA_HUB_VAULT_ROOT", str(shared))
    a, b = tmp_path / "a", tmp_path / "b"
    teams.create_team(a, "alpha", passphrase=None)
    teams.create_team(b, "beta", passphrase=None)
    teams.trust(a, teams.export_public(b, "beta"))
    teams.trust(b, teams.export_public(a, "alpha"))
    ref = Vault(a / "storage" / "vault", team="alpha").push(
        sample_adapter("upper"), share_with=["beta"]
    )
    got = Vault(b / "storage" / "vault", team="beta").pull(AdapterRef("upper"))
    assert (got.version, got.files) == (ref.version, sample_adapter("upper").files)
    assert (shared / "index.sqlite").is_file()
