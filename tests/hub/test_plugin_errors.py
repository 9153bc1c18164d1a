"""A broken plugin is one clear line naming it: in a registration hook, a settings table,
an instance where a class belongs (or the reverse), and in validate_adapter."""

from __future__ import annotations

import pytest

from hub import hookimpl
from hub.adapters import Adapters
from hub.errors import PluginError
from hub.testing.storage import sample_adapter


class _Backend:
    name = "mem"
    description = "in memory"

    def __init__(self, root=None, **_):
        pass

    def push(self, adapter, *, team=None, metadata=None, share_with=()): ...
    def pull(self, ref, *, team=None, where="cli"): ...
    def list(self, *, team=None):
        return []

    def share(self, ref, *, team=None, with_team): ...
    def revoke(self, ref, *, team=None, from_team): ...
    def delete(self, ref, *, team=None): ...


class _Sgd:
    name = "sgd"
    description = "sgd"

    def build(self, params, *, lr, weight_decay=0.0):
        return None


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_registration_hook_that_raises_names_the_plugin(hub_factory):
    class P:
        @hookimpl
        def register_optimizers(self, register):
            raise RuntimeError("lost my config")

    hub = hub_factory(("shaky", P()))
    with pytest.raises(PluginError) as exc:
        hub.optimizers["sgd"]
    assert _one_line(exc) == (
        "plugin 'shaky' failed in register_optimizers: RuntimeError: lost my config; "
        "switch it off with --disable-plugin shaky"
    )


def test_storage_registered_as_an_instance_is_refused(hub_factory):
    class P:
        @hookimpl
        def register_storage(self, register):
            register(_Backend())

    with pytest.raises(PluginError) as exc:
        hub_factory(("p", P())).storage["mem"]
    assert _one_line(exc) == (
        "plugin 'p' registered an instance of _Backend as a storage: "
        "register the class itself, register(_Backend)"
    )


def test_optimizer_registered_as_a_class_is_refused(hub_factory):
    class P:
        @hookimpl
        def register_optimizers(self, register):
            register(_Sgd)

    with pytest.raises(PluginError) as exc:
        hub_factory(("p", P())).optimizers["sgd"]
    assert _one_line(exc) == (
        "plugin 'p' registered the class _Sgd as an optimizer: register an instance, register(_Sgd())"
    )


def test_validate_adapter_that_raises_names_the_plugin(hub_factory, tmp_path):
    class Policy:
        @hookimpl
        def validate_adapter(self, adapter):
            raise KeyError("r")

    store = Adapters(hub_factory(("policy", Policy())), _Backend(), team="alpha")
    with pytest.raises(PluginError) as exc:
        store.push(sample_adapter("upper"))
    assert _one_line(exc) == (
        "plugin 'policy' failed in validate_adapter: KeyError: 'r'; fix it or switch it off "
        "with --disable-plugin policy"
    )


def test_validate_adapter_returning_a_string_names_the_plugin(hub_factory):
    class Policy:
        @hookimpl
        def validate_adapter(self, adapter):
            return "rank too high"  # a string, not a list of strings

    store = Adapters(hub_factory(("policy", Policy())), _Backend(), team="alpha")
    with pytest.raises(PluginError) as exc:
        store.push(sample_adapter("upper"))
    assert _one_line(exc) == (
        "plugin 'policy' returned str 'rank too high' from validate_adapter: "
        "return None or a list of strings"
    )


def test_broken_policy_in_the_cli_is_one_error_line(qlora_cli, tmp_path, monkeypatch):
    class Policy:
        @hookimpl
        def validate_adapter(self, adapter):
            return "nope"

    d = tmp_path / "a"
    d.mkdir()
    for fname, data in sample_adapter("upper").files.items():
        (d / fname).write_bytes(data)
    monkeypatch.setenv("QLORA_HUB_STORAGE", "local")
    res = qlora_cli("adapters", "import", str(d), "--name", "upper", "--team", "alpha",
                    plugins=[("policy", Policy())])  # fmt: skip
    assert res.exit_code == 2
    assert res.err == (
        "error: plugin 'policy' returned str 'nope' from validate_adapter: "
        "return None or a list of strings\n"
    )


def test_route_registration_that_raises_names_the_plugin(hub_factory):
    class P:
        @hookimpl
        def register_routes(self, register):
            raise ImportError("no module named litestar_extras")

    with pytest.raises(PluginError) as exc:
        hub_factory(("web", P())).routes()
    assert _one_line(exc) == (
        "plugin 'web' failed in register_routes: ImportError: no module named litestar_extras; "
        "switch it off with --disable-plugin web"
    )
