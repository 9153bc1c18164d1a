"""Plugin discovery, disabling, and the errors a broken plugin causes."""

import pytest

from hub import hookimpl
from hub.errors import PluginError
from hub.plugins import BUILTIN_PLUGINS, Hub, builtin_name


def test_builtins_are_registered_under_short_names():
    hub = Hub(entry_points=False)
    assert list(hub.infos) == [builtin_name(m) for m in BUILTIN_PLUGINS]
    assert {i.distribution for i in hub.infos.values()} == {"qlora-hub"}
    assert all(i.builtin for i in hub.infos.values())


def test_example_plugin_is_discovered_from_its_installed_distribution():
    hub = Hub()
    info = hub.infos["hello"]
    assert (info.distribution, info.version, info.builtin) == ("qlora-hub-hello", "0.2.0", False)
    assert info.hooks == [
        "register_commands",
        "register_optimizers",
        "register_routes",
        "validate_adapter",
    ]
    assert hub.optimizers.owner("sgd") == "hello"


def test_entry_point_plugin_from_a_new_distribution_registers_its_objects(make_distribution):
    make_distribution(
        "thirdparty-opt",
        "thirdopt",
        """
        from hub import hookimpl

        class Adam:
            name = "third_adam"
            description = "third-party optimizer"
            def build(self, params, *, lr, weight_decay=0.0):
                return ("adam", lr)

        @hookimpl
        def register_optimizers(register):
            register(Adam())
        """,
    )
    hub = Hub()
    assert hub.infos["thirdopt"].distribution == "thirdparty-opt"
    assert hub.optimizers["third_adam"].build([], lr=0.5) == ("adam", 0.5)


def test_broken_import_names_plugin_and_distribution(make_distribution):
    make_distribution("thirdparty-broken", "broken", "raise ImportError('needs libfoo')\n")
    with pytest.raises(PluginError) as exc:
        Hub()
    assert str(exc.value) == (
        "plugin 'broken' (distribution thirdparty-broken 1.0) failed to import: "
        "ImportError: needs libfoo; switch it off with --disable-plugin broken "
        "or QLORA_HUB_DISABLE_PLUGINS=broken"
    )


def test_broken_plugin_can_be_disabled(make_distribution):
    make_distribution("thirdparty-broken", "broken", "raise ImportError('needs libfoo')\n")
    hub = Hub(disable=["broken"])
    assert "broken" not in hub.infos
    assert hub.pm.is_blocked("broken")


def test_disabling_a_builtin_removes_what_it_registers():
    hub = Hub(disable=["hello"])
    assert "sgd" not in hub.optimizers
    assert "hello" not in hub.infos


def test_disabling_an_unknown_plugin_lists_known_ones():
    with pytest.raises(PluginError) as exc:
        Hub(entry_points=False, disable=["nf5"])
    assert str(exc.value).startswith(
        "cannot disable unknown plugin 'nf5': known plugins are ckks, "
    )


def test_misspelled_hook_implementation_is_an_error(hub_factory):
    class Typo:
        @hookimpl
        def register_quantiser(self, register):  # British spelling: not a hook
            pass

    with pytest.raises(PluginError) as exc:
        hub_factory(("typo", Typo()))
    assert str(exc.value) == (
        "plugin 'typo' implements unknown hook 'register_quantiser': "
        "check the spelling against docs/hooks.md"
    )


def test_hook_implementation_with_unknown_argument_is_an_error(hub_factory):
    class WrongArgs:
        @hookimpl
        def register_quantizers(self, registry):
            pass

    with pytest.raises(PluginError, match="plugin 'wrong' .* is invalid: "):
        hub_factory(("wrong", WrongArgs()))


def test_non_conforming_object_is_refused_when_the_registry_is_built(hub_factory):
    class Half:
        name = "half"
        description = "no build method"

    class Plugin:
        @hookimpl
        def register_optimizers(self, register):
            register(Half())

    hub = hub_factory(("halfplug", Plugin()))
    with pytest.raises(
        PluginError, match="plugin 'halfplug' registered an optimizer .* lacks build"
    ):
        _ = hub.optimizers


def test_two_plugins_registering_the_same_quantizer_name_is_an_error(hub_factory):
    def plugin_registering(name):
        class Q:
            description = "q"

            def load(self, source, options=None): ...
            def save(self, model, out_dir, manifest): ...
            def load_quantized(self, checkpoint): ...
            def footprint(self, model): ...

        Q.name = name

        class P:
            @hookimpl
            def register_quantizers(self, register):
                register(Q())

        return P()

    hub = hub_factory(("alpha", plugin_registering("same")), ("beta", plugin_registering("same")))
    with pytest.raises(PluginError) as exc:
        _ = hub.quantizers
    assert str(exc.value) == (
        "quantizer 'same' is registered by both plugins 'alpha' and 'beta': "
        "switch one off with --disable-plugin"
    )


def test_summary_reports_what_each_plugin_registered():
    rows = {r["name"]: r for r in Hub().summary()}
    assert rows["hello"]["registered"] == {"optimizer": ["sgd"]}
    assert rows["hello"]["distribution"] == "qlora-hub-hello"
