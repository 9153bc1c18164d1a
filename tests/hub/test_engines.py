"""Engines: the register_engines hook, the registry and open_engine, and the guide's example
engine passing the engine contract suite."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hub import hookimpl
from hub.engines import open_engine
from hub.errors import PluginError, UnknownNameError
from hub.testing import EngineContract

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "examples" / "qlora-hub-minimal"


class _Settings:
    def __init__(self, **values):
        self.values = {"serve.engine": "hf", **values}

    def get(self, key):
        return self.values[key]


class _Incomplete:
    name = "half"


def _engine_plugin(name, factory):
    class Plugin:
        @hookimpl
        def register_engines(self, register):
            register(name, factory)

    return Plugin()


def test_hook_register_engines(hub_factory):
    calls = []

    def factory(hub, settings, source):
        calls.append((hub, settings, source))
        return "engine"

    hub = hub_factory(("echo_plugin", _engine_plugin("echo", factory)))
    assert list(hub.engines) == ["echo"]
    assert hub.engines["echo"] is factory
    assert hub.engines.owner("echo") == "echo_plugin"
    settings = _Settings()
    assert hub.engines["echo"](hub, settings, "/base") == "engine"
    assert calls == [(hub, settings, "/base")]


def test_the_built_in_hf_engine_is_registered_by_the_server_plugin():
    from hub.plugins import Hub

    hub = Hub(entry_points=False)
    assert hub.engines.owner("hf") == "server"
    row = next(r for r in hub.summary() if r["name"] == "server")
    assert row["registered"]["engine"] == ["hf"]


def test_unknown_engine_is_one_line_naming_the_registered_ones(hub_factory):
    hub = hub_factory(
        ("a", _engine_plugin("echo", lambda *a: None)), ("b", _engine_plugin("hf", lambda *a: None))
    )
    with pytest.raises(UnknownNameError) as info:
        open_engine(hub, _Settings(**{"serve.engine": "vlm"}), "/base")
    assert str(info.value) == (
        "unknown engine 'vlm': registered engines are echo, hf "
        "(pick one with serve --engine or the setting serve.engine)"
    )


def test_two_plugins_registering_one_engine_name_is_an_error(hub_factory):
    hub = hub_factory(
        ("first", _engine_plugin("echo", lambda *a: None)),
        ("second", _engine_plugin("echo", lambda *a: None)),
    )
    with pytest.raises(PluginError, match="'echo' is registered by both plugins 'first' and"):
        list(hub.engines)


@pytest.mark.parametrize(
    "name,factory,message",
    [
        ("no-dash", lambda *a: None, "names must be Python identifiers"),
        ("echo", "not callable", "with a non-callable"),
    ],
)
def test_a_bad_registration_is_refused_naming_the_plugin(hub_factory, name, factory, message):
    hub = hub_factory(("bad", _engine_plugin(name, factory)))
    with pytest.raises(PluginError, match=message) as info:
        list(hub.engines)
    assert "plugin 'bad'" in str(info.value)


def test_a_factory_returning_an_incomplete_engine_is_refused(hub_factory):
    hub = hub_factory(("half_plugin", _engine_plugin("half", lambda *a: _Incomplete())))
    with pytest.raises(PluginError) as info:
        open_engine(hub, _Settings(), "/base", "half")
    message = str(info.value)
    assert message.startswith(
        "engine 'half' (plugin 'half_plugin') built _Incomplete, which lacks "
    )
    assert "add_adapter" in message and message.endswith("implement hub.engines.Engine")


def test_importing_hub_engines_imports_no_torch():
    code = "import sys, hub.engines, hub.testing.engine; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert out.stdout.strip() == "False", out.stderr[-2000:]


def test_server_request_re_exports_the_engine_types():
    import hub.engines
    import server.request

    for name in ("GenRequest", "QueueFullError", "AdapterRefused"):
        assert getattr(server.request, name) is getattr(hub.engines, name)


class TestExampleEngine(EngineContract):
    """The guide's TinyEngine (docs/examples/qlora-hub-minimal) passes the contract."""

    max_lora_rank = 64

    @pytest.fixture(scope="class")
    @classmethod
    def engine(cls, embedded_base):
        sys.path.insert(0, str(EXAMPLE))
        from qlora_hub_minimal.engine import TinyEngine

        engine = TinyEngine(embedded_base).start()
        yield engine
        engine.stop()
