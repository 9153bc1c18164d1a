"""The register callback: protocol checks, names, duplicates, lookups."""

import pytest

from hub.errors import PluginError, UnknownNameError
from hub.registry import Registry
from hub.types import OptimizerFactory, Quantizer


class GoodOptimizer:
    name = "good"
    description = "a conforming optimizer factory"

    def build(self, params, *, lr, weight_decay=0.0):
        return list(params)


def test_register_accepts_conforming_object_and_returns_it_by_name():
    reg = Registry("optimizer", OptimizerFactory)
    obj = GoodOptimizer()
    reg.register(obj, plugin="p")
    assert reg["good"] is obj
    assert list(reg) == ["good"]
    assert reg.owner("good") == "p"


def test_register_refuses_object_missing_protocol_members_and_names_them():
    class NoMethods:
        name = "broken"
        description = "x"

    reg = Registry("quantizer", Quantizer)
    with pytest.raises(PluginError) as exc:
        reg.register(NoMethods(), plugin="p1")
    assert str(exc.value).startswith("plugin 'p1' registered a quantizer ")
    assert "lacks footprint, load, load_quantized, save: implement hub.types.Quantizer" in str(
        exc.value
    )


@pytest.mark.parametrize("bad", ["has-dash", "1starts", "", "a b", None])
def test_register_refuses_names_that_are_not_identifiers(bad):
    obj = GoodOptimizer()
    obj.name = bad
    with pytest.raises(PluginError, match="names must be Python identifiers"):
        Registry("optimizer", OptimizerFactory).register(obj, plugin="p")


def test_duplicate_name_error_names_both_plugins():
    reg = Registry("optimizer", OptimizerFactory)
    reg.register(GoodOptimizer(), plugin="first")
    with pytest.raises(PluginError) as exc:
        reg.register(GoodOptimizer(), plugin="second")
    assert str(exc.value) == (
        "optimizer 'good' is registered by both plugins 'first' and 'second': "
        "switch one off with --disable-plugin"
    )


def test_unknown_name_lists_known_names():
    reg = Registry("optimizer", OptimizerFactory)
    reg.register(GoodOptimizer(), plugin="p")
    with pytest.raises(UnknownNameError) as exc:
        reg["nope"]
    assert str(exc.value) == "unknown optimizer 'nope': known optimizers are good"
