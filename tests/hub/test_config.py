"""Settings precedence and configuration errors."""

import pytest

from hub.config import SCHEMA, ensure_home, env_name, load_settings
from hub.errors import ConfigError


def test_defaults_apply_without_a_file(tmp_path):
    s = load_settings(tmp_path)
    assert s.get("serve.port") == SCHEMA["serve"]["port"][0]
    assert s.sources["serve.port"] == "default"
    assert s.config_file is None


def test_precedence_is_flag_over_env_over_file_over_default(tmp_path, monkeypatch):
    (tmp_path / "qlora-hub.toml").write_text("[serve]\nport = 9001\nhost = '0.0.0.0'\n")
    monkeypatch.setenv("QLORA_HUB_SERVE_PORT", "9002")
    s = load_settings(tmp_path)
    assert s.get("serve.host") == "0.0.0.0"
    assert s.sources["serve.host"] == str(tmp_path / "qlora-hub.toml")
    assert s.get("serve.port") == 9002
    assert s.sources["serve.port"] == "$QLORA_HUB_SERVE_PORT"
    s.override("serve.port", 9003)
    assert s.get("serve.port") == 9003
    assert s.sources["serve.port"] == "flag"


def test_hub_table_keys_use_short_environment_names():
    assert env_name("hub", "team") == "QLORA_HUB_TEAM"
    assert env_name("train", "r") == "QLORA_HUB_TRAIN_R"


def test_explicit_config_file_wins_over_home_file(tmp_path):
    (tmp_path / "qlora-hub.toml").write_text("[train]\nr = 4\n")
    other = tmp_path / "other.toml"
    other.write_text("[train]\nr = 8\n")
    assert load_settings(tmp_path, other).get("train.r") == 8


def test_malformed_toml_names_file_and_line(tmp_path):
    path = tmp_path / "qlora-hub.toml"
    path.write_text("[serve]\nport = 1\nhost = \n")
    with pytest.raises(ConfigError) as exc:
        load_settings(tmp_path)
    msg = str(exc.value)
    assert msg.startswith(f"{path}: invalid TOML: ")
    assert "line 3" in msg


def test_unknown_key_names_key_and_file(tmp_path):
    path = tmp_path / "qlora-hub.toml"
    path.write_text("[serve]\nprot = 1\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(tmp_path)
    assert str(exc.value).startswith(
        f"{path}: unknown key 'serve.prot'; known keys in [serve] are host, port"
    )


def test_unknown_table_is_an_error(tmp_path):
    (tmp_path / "qlora-hub.toml").write_text("[sevre]\nport = 1\n")
    with pytest.raises(ConfigError, match=r"unknown table \[sevre\]"):
        load_settings(tmp_path)


def test_wrong_type_names_the_key(tmp_path):
    path = tmp_path / "qlora-hub.toml"
    path.write_text("[serve]\nport = 'eighty'\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(tmp_path)
    assert str(exc.value) == f"{path}: serve.port must be int, got 'eighty'"


def test_missing_explicit_config_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist: check the --config path"):
        load_settings(tmp_path, tmp_path / "nope.toml")


def test_home_under_a_file_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError) as exc:
        ensure_home(blocker / "home")
    assert str(exc.value).startswith(f"home directory {blocker / 'home'} is not writable")
    assert str(exc.value).endswith("choose another with --home or QLORA_HUB_HOME")


def _declaring(table, keys):
    from hub import hookimpl

    class P:
        @hookimpl
        def register_settings(self, register):
            register(table, keys)

    return P()


def test_plugin_table_is_unknown_without_its_plugin(tmp_path):
    (tmp_path / "qlora-hub.toml").write_text("[sqlite]\npath = 'x'\n")
    with pytest.raises(ConfigError, match=r"unknown table \[sqlite\]"):
        load_settings(tmp_path)


def test_plugin_table_loads_and_shows_in_config(hub_factory, tmp_path, capsys):
    from hub.cli import make_cli

    (tmp_path / "qlora-hub.toml").write_text("[sqlite]\npath = 'x.db'\n")
    hub = hub_factory(("sqlite", _declaring("sqlite", {"path": ("", str)})))
    assert load_settings(tmp_path, hub=hub).get("sqlite.path") == "x.db"
    make_cli(hub).main(["--home", str(tmp_path), "config"], standalone_mode=False, obj=hub)
    assert "sqlite.path = 'x.db'" in capsys.readouterr().out


def test_plugin_may_not_declare_a_core_table(hub_factory, tmp_path):
    from hub.errors import PluginError

    hub = hub_factory(("sneaky", _declaring("vault", {"root": ("/tmp", str)})))
    with pytest.raises(PluginError, match="plugin 'sneaky' declared settings table 'vault'"):
        load_settings(tmp_path, hub=hub)


def test_plugin_setting_with_a_bad_type_names_the_plugin(hub_factory, tmp_path):
    from hub.errors import PluginError

    hub = hub_factory(("p", _declaring("mine", {"n": (1, dict)})))
    with pytest.raises(PluginError, match=r"plugin 'p' declared setting mine.n"):
        load_settings(tmp_path, hub=hub)


def test_hub_quantizer_setting_is_gone(tmp_path):
    (tmp_path / "qlora-hub.toml").write_text("[hub]\nquantizer = 'nf4'\n")
    with pytest.raises(ConfigError, match="unknown key 'hub.quantizer'"):
        load_settings(tmp_path)


def test_adapter_bounds_have_documented_defaults(tmp_path):
    s = load_settings(tmp_path)
    assert (s.get("adapters.max_bytes"), s.get("adapters.max_abs_weight")) == (2 << 30, 1000.0)
