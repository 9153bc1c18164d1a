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
