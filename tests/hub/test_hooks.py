"""One test per hook: a plugin implementing it is called by the host with the documented arguments.

Lifecycle hooks are also exercised end to end by the plugins that call them
(storage push/pull, training); these tests pin the host side of each contract.
"""

import json

from hub import hookimpl
from hub.types import AdapterPayload, AdapterRef


class _Named:
    description = "test object"

    def __init__(self, name):
        self.name = name


class _Quantizer(_Named):
    def load(self, source, options=None): ...
    def save(self, model, out_dir, manifest): ...
    def load_quantized(self, checkpoint): ...
    def footprint(self, model):
        return {"bits_per_param": 4.0}


class _Adapter(_Named):
    def attach(self, model, options): ...
    def load(self, model, adapter, adapter_name): ...
    def save(self, model, out_dir): ...


class _Optimizer(_Named):
    def build(self, params, *, lr, weight_decay=0.0):
        return ("built", lr, weight_decay)


class _Storage:
    name = "mem"
    description = "in-memory"

    def __init__(self, root, **options): ...
    def push(self, adapter, *, team, metadata=None): ...
    def pull(self, ref, *, team): ...
    def list(self, *, team): ...
    def share(self, ref, *, team, with_team): ...
    def revoke(self, ref, *, team, from_team): ...
    def delete(self, ref, *, team): ...


class _Aggregator(_Named):
    def init_round(self, round_dir, *, round_id, teams, mode, **params): ...
    def contribute(self, round_dir, *, team, update, weight): ...
    def aggregate(self, round_dir): ...
    def finalize(self, round_dir): ...


def _payload(rank):
    return AdapterPayload(
        name="a",
        files={
            "adapter_config.json": json.dumps({"r": rank}).encode(),
            "adapter_model.safetensors": b"",
        },
    )


def test_hook_register_quantizers(hub_factory):
    class P:
        @hookimpl
        def register_quantizers(self, register):
            register(_Quantizer("q4"))

    hub = hub_factory(("p", P()))
    assert hub.quantizers["q4"].footprint(None) == {"bits_per_param": 4.0}
    assert hub.quantizers.owner("q4") == "p"


def test_hook_register_adapters(hub_factory):
    class P:
        @hookimpl
        def register_adapters(self, register):
            register(_Adapter("ia3"))

    assert list(hub_factory(("p", P())).adapters) == ["ia3"]


def test_hook_register_optimizers(hub_factory):
    class P:
        @hookimpl
        def register_optimizers(self, register):
            register(_Optimizer("lion"))

    hub = hub_factory(("p", P()))
    assert hub.optimizers["lion"].build([], lr=0.1, weight_decay=0.01) == ("built", 0.1, 0.01)


def test_hook_register_storage(hub_factory, tmp_path):
    class P:
        @hookimpl
        def register_storage(self, register):
            register(_Storage)

    hub = hub_factory(("p", P()))
    assert hub.storage["mem"] is _Storage
    assert isinstance(hub.storage["mem"](tmp_path), _Storage)


def test_hook_register_aggregators(hub_factory):
    class P:
        @hookimpl
        def register_aggregators(self, register):
            register(_Aggregator("secure_sum"))

    assert list(hub_factory(("p", P())).aggregators) == ["secure_sum"]


def test_hook_register_routes():
    from litestar import Litestar
    from litestar.testing import TestClient

    from hub.plugins import Hub

    routes = Hub().routes()  # the installed example plugin adds GET /hello
    with TestClient(Litestar(route_handlers=routes)) as client:
        response = client.get("/hello")
    assert response.status_code == 200
    assert response.json() == {"hello": "qlora-hub-hello"}


def test_hook_register_commands(hub_factory):
    import click
    from click.testing import CliRunner

    from hub.cli import make_cli

    class P:
        @hookimpl
        def register_commands(self, cli):
            @cli.commands["bench"].command("noop")
            def noop():
                click.echo("noop ran")

    cli = make_cli(hub_factory(("p", P())))
    result = CliRunner().invoke(cli, ["bench", "noop"])
    assert (result.exit_code, result.output) == (0, "noop ran\n")


def test_hook_validate_adapter():
    from hub.plugins import Hub

    hub = Hub()  # the example plugin refuses LoRA ranks above 64
    assert hub.pm.hook.validate_adapter(adapter=_payload(8)) == []  # pluggy drops None
    assert hub.pm.hook.validate_adapter(adapter=_payload(128)) == [
        ["LoRA rank 128 exceeds this hub's policy maximum of 64"]
    ]


def test_hook_adapter_published(hub_factory):
    seen = []

    class P:
        @hookimpl
        def adapter_published(self, ref, team, manifest):
            seen.append((str(ref), team, manifest["name"]))

    hub = hub_factory(("p", P()))
    hub.pm.hook.adapter_published(
        ref=AdapterRef("upper", 2), team="alpha", manifest={"name": "upper"}
    )
    assert seen == [("upper@2", "alpha", "upper")]


def test_hook_adapter_loaded(hub_factory):
    seen = []

    class P:
        @hookimpl
        def adapter_loaded(self, ref, where):  # a subset of the arguments is allowed
            seen.append((str(ref), where))

    hub = hub_factory(("p", P()))
    hub.pm.hook.adapter_loaded(ref=AdapterRef("upper", 1), team="beta", where="server")
    assert seen == [("upper@1", "server")]


def test_hook_training_event(hub_factory):
    events = []

    class P:
        @hookimpl
        def training_event(self, event):
            events.append(event)

    hub = hub_factory(("p", P()))
    hub.pm.hook.training_event(
        event={"kind": "step", "step": 3, "loss": 1.5, "learning_rate": 1e-3}
    )
    assert events == [{"kind": "step", "step": 3, "loss": 1.5, "learning_rate": 1e-3}]


def test_hook_key_provider(hub_factory):
    class Declines:
        @hookimpl
        def key_provider(self, team, purpose):
            return None

    class Supplies:
        @hookimpl
        def key_provider(self, team, purpose):
            return f"{team}:{purpose}".encode()

    class NeverAsked:
        @hookimpl(trylast=True)
        def key_provider(self, team, purpose):
            raise AssertionError("firstresult must stop before this provider")

    hub = hub_factory(("never", NeverAsked()), ("supplies", Supplies()), ("declines", Declines()))
    assert hub.pm.hook.key_provider(team="alpha", purpose="sign") == b"alpha:sign"


def test_hook_register_settings(hub_factory, tmp_path, monkeypatch):
    from hub.config import load_settings

    class P:
        @hookimpl
        def register_settings(self, register):
            register("sqlite", {"path": ("", str), "timeout_s": (5.0, float)})

    (tmp_path / "qlora-hub.toml").write_text('[sqlite]\npath = "/srv/adapters.db"\n')
    monkeypatch.setenv("QLORA_HUB_SQLITE_TIMEOUT_S", "2.5")
    settings = load_settings(tmp_path, hub=hub_factory(("p", P())))
    assert (settings.get("sqlite.path"), settings.get("sqlite.timeout_s")) == (
        "/srv/adapters.db",
        2.5,
    )
    assert settings.sources["sqlite.timeout_s"] == "$QLORA_HUB_SQLITE_TIMEOUT_S"
