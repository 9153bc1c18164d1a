"""The core's blob layer: the register_blob_stores hook and open_blobs."""

from __future__ import annotations

import pytest

from hub import hookimpl
from hub.blobs import BlobStore, open_blobs, put_new
from hub.errors import ConfigError, PluginError
from hub.plugins import Hub


class _Mem:
    def __init__(self, url, settings):
        self.url, self.settings, self.data = url, settings, {}

    def put(self, key, data):
        self.data[key] = bytes(data)

    def put_if_absent(self, key, data):
        if key in self.data:
            return False
        self.put(key, data)
        return True

    def get(self, key, limit=None):
        return self.data[key]

    def exists(self, key):
        return key in self.data

    def delete(self, key):
        self.data.pop(key, None)

    def keys(self, prefix):
        return sorted(k for k in self.data if k.startswith(prefix))


class _MemPlugin:
    @hookimpl
    def register_blob_stores(self, register):
        register("mem", _Mem)


def test_hook_register_blob_stores(tmp_path):
    hub = Hub(builtins=False, entry_points=False, extra=[("memblobs", _MemPlugin())])
    store = open_blobs("mem://bucket/x", hub=hub, home=tmp_path)
    assert isinstance(store, _Mem) and isinstance(store, BlobStore)
    assert store.url == "mem://bucket/x"
    assert store.settings.home == tmp_path  # the factory gets the settings
    assert put_new(store, "names/a/00000000", b"1") is True
    assert put_new(store, "names/a/00000000", b"2") is False
    assert store.get("names/a/00000000") == b"1"


def test_the_builtin_s3_plugin_registers_s3_and_its_settings(tmp_path, s3_url, s3_hub):
    from hub.config import load_settings

    store = open_blobs(s3_url, hub=s3_hub, home=tmp_path)
    assert type(store).__name__ == "S3BlobStore" and isinstance(store, BlobStore)
    settings = load_settings(tmp_path, hub=s3_hub)
    assert settings.get("s3.max_attempts") == 3  # QLORA_HUB_S3_MAX_ATTEMPTS from the fixture
    assert settings.get("s3.region") == ""


def test_two_plugins_registering_one_scheme_is_an_error_naming_both(tmp_path):
    hub = Hub(
        builtins=False, entry_points=False, extra=[("one", _MemPlugin()), ("two", _MemPlugin())]
    )
    with pytest.raises(PluginError, match="'mem' is registered by plugins 'one' and 'two'"):
        open_blobs("mem://b", hub=hub, home=tmp_path)


def test_a_bad_scheme_name_is_refused(tmp_path):
    class Bad:
        @hookimpl
        def register_blob_stores(self, register):
            register("S3 ", _Mem)

    hub = Hub(builtins=False, entry_points=False, extra=[("bad", Bad())])
    with pytest.raises(PluginError, match="plugin 'bad' registered blob scheme 'S3 '"):
        open_blobs("mem://b", hub=hub, home=tmp_path)


def test_an_unknown_scheme_names_the_known_ones(tmp_path, s3_hub):
    with pytest.raises(ConfigError, match=r"no blob store for scheme 'gs'; known: .*file.*s3"):
        open_blobs("gs://b/x", hub=s3_hub, home=tmp_path)
