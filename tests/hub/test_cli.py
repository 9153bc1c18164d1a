"""The command line: plugin listing, errors, disabling, no heavy imports on start."""

import json
import subprocess
import sys

import pytest

from hub.cli import main
from hub.plugins import Hub

HEAVY = ("torch", "transformers", "peft", "bitsandbytes", "tenseal", "litestar", "cryptography")


def run(*args, env=None):
    """Run the real CLI in a subprocess; return (exit code, stdout, stderr)."""
    proc = subprocess.run(
        [sys.executable, "-m", "hub", *args], capture_output=True, text=True, env=env, timeout=120
    )
    return proc.returncode, proc.stdout, proc.stderr


def call(capsys, *args):
    """Run the CLI in process; return (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def test_plugins_json_lists_builtins_and_the_example_plugin(capsys):
    code, out, _ = call(capsys, "plugins", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert code == 0
    assert {"nf4", "lora", "paged", "trainer", "local", "vault", "ckks", "plain", "server"} <= set(
        rows
    )
    assert rows["hello"]["version"] == "0.2.0"
    assert rows["hello"]["hooks"] == sorted(rows["hello"]["hooks"])


def test_plugins_table_shows_each_plugin_and_its_registrations(capsys):
    code, out, _ = call(capsys, "plugins")
    assert code == 0
    assert "qlora-hub-hello" in out
    assert "optimizer: sgd" in out


def test_plugin_commands_appear_and_disappear_with_the_plugin(capsys):
    expected = len(Hub().optimizers)
    code, out, _ = call(capsys, "hello")
    assert (code, out) == (0, f"hello from qlora-hub-hello: {expected} optimizers registered\n")
    code, _, err = call(capsys, "--disable-plugin", "hello", "hello")
    assert code == 2
    assert "No such command 'hello'" in err


def test_disable_plugins_environment_variable_switches_plugins_off(capsys, monkeypatch):
    monkeypatch.setenv("QLORA_HUB_DISABLE_PLUGINS", "hello, plain")
    code, out, _ = call(capsys, "plugins", "--json")
    names = {r["name"] for r in json.loads(out)}
    assert code == 0
    assert "hello" not in names and "plain" not in names and "nf4" in names


def test_user_error_prints_one_line_and_exits_2(capsys):
    code, out, err = call(capsys, "--disable-plugin", "nope", "plugins")
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("error: cannot disable unknown plugin 'nope': known plugins are ")


def test_verbose_shows_the_traceback(capsys):
    code, _, err = call(capsys, "-v", "--disable-plugin", "nope", "plugins")
    assert code == 2
    assert "Traceback (most recent call last)" in err
    assert "hub.errors.PluginError" in err


def test_config_error_from_a_command_names_the_file(capsys, tmp_path):
    (tmp_path / "qlora-hub.toml").write_text("[serve]\nbogus = 1\n")
    code, _, err = call(capsys, "--home", str(tmp_path), "config")
    assert code == 2
    assert err.startswith(f"error: {tmp_path / 'qlora-hub.toml'}: unknown key 'serve.bogus'")


def test_config_show_reports_values_and_sources(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("QLORA_HUB_SERVE_PORT", "8123")
    code, out, _ = call(capsys, "--home", str(tmp_path), "config", "--json")
    rows = {r["key"]: r for r in json.loads(out)["settings"]}
    assert code == 0
    assert rows["serve.port"] == {
        "key": "serve.port",
        "value": 8123,
        "source": "$QLORA_HUB_SERVE_PORT",
    }


def test_python_dash_m_hub_runs_the_cli():
    code, out, _ = run("--version")
    assert code == 0
    assert out.startswith("qlora-hub, version ")


def test_help_loads_every_plugin_without_importing_heavy_libraries():
    probe = (
        "import sys\n"
        "from hub.cli import make_cli\n"
        "from hub.plugins import Hub\n"
        "hub = Hub(); make_cli(hub); hub.summary()\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""


def test_help_lists_the_command_groups():
    code, out, _ = run("--help")
    assert code == 0
    for group in ("adapters", "base", "bench", "data", "fed", "plugins", "team"):
        assert f"  {group} " in out


def test_plugin_failing_to_add_commands_is_named(hub_factory):
    from hub import hookimpl
    from hub.cli import make_cli
    from hub.errors import PluginError

    class Broken:
        @hookimpl
        def register_commands(self, cli):
            raise RuntimeError("no click today")

    with pytest.raises(PluginError) as exc:
        make_cli(hub_factory(("broken_cmds", Broken())))
    assert str(exc.value) == (
        "plugin 'broken_cmds' failed to add its commands: RuntimeError: no click today; "
        "switch it off with --disable-plugin broken_cmds"
    )


def test_relative_home_is_made_absolute(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, _ = call(capsys, "--home", "rel-home", "config", "--json")
    assert code == 0
    assert json.loads(out)["home"] == str(tmp_path / "rel-home")
