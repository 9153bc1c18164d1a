"""The example third-party storage backend (docs/examples/qlora-hub-dirstore): written from
docs/writing-plugins.md with no import from plugins.*, it passes the contract suite and gets
names, validation, policy and lifecycle hooks from the core."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from hub.testing import StorageBackendContract
from hub.testing.storage import contract_home, sample_adapter

# the contract suites' fixtures use only current pytest APIs
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestDeprecationWarning")

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "qlora-hub-dirstore"
sys.path.insert(0, str(EXAMPLE))
import qlora_hub_dirstore  # noqa: E402
from qlora_hub_dirstore import DirStore  # noqa: E402


class TestDirStoreContract(StorageBackendContract):
    @pytest.fixture
    def storage_backend(self, tmp_path):
        return DirStore(tmp_path / "storage" / "dirstore", home=contract_home(tmp_path))


def test_example_imports_nothing_from_plugins():
    imported = set()
    for path in (EXAMPLE / "qlora_hub_dirstore").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module.split(".")[0])
            elif isinstance(node, ast.Import):
                imported.update(a.name.split(".")[0] for a in node.names)
    assert "hub" in imported and "plugins" not in imported and "server" not in imported


def test_example_opened_by_the_hub_reads_its_settings_table_from_config(qlora_cli, tmp_path):
    """`--config FILE` reaches the backend: its [dirstore] root decides where bytes land."""
    elsewhere = tmp_path / "shared-adapters"
    config = tmp_path / "other.toml"
    config.write_text(f'[hub]\nstorage = "dirstore"\n\n[dirstore]\nroot = "{elsewhere}"\n')
    adapter_dir = tmp_path / "adapter"
    adapter_dir.mkdir()
    for fname, data in sample_adapter("upper").files.items():
        (adapter_dir / fname).write_bytes(data)
    plugins = [("dirstore", qlora_hub_dirstore)]
    no_keys = qlora_cli("--config", str(config), "adapters", "push", str(adapter_dir),
                        "--name", "upper", "--team", "alpha", plugins=plugins)  # fmt: skip
    assert no_keys.exit_code == 2 and "no keys for team 'alpha'" in no_keys.err  # it signs
    assert not (elsewhere / "upper").exists()
    assert qlora_cli("team", "create", "alpha", "--no-passphrase", plugins=plugins).exit_code == 0
    res = qlora_cli("--config", str(config), "adapters", "push", str(adapter_dir),
                    "--name", "upper", "--team", "alpha", plugins=plugins)  # fmt: skip
    assert res.exit_code == 0, res.err
    assert res.out.startswith("pushed upper@1 (") and res.out.rstrip().endswith("bytes, signed)")
    assert (elsewhere / "upper" / "1" / "adapter_model.safetensors").read_bytes() == (
        sample_adapter("upper").files["adapter_model.safetensors"]
    )


def test_cli_helper_loads_no_other_installed_plugin(qlora_cli):
    res = qlora_cli("plugins", "--json", plugins=[("dirstore", qlora_hub_dirstore)], builtins=False)
    assert res.exit_code == 0
    import json

    assert [row["name"] for row in json.loads(res.out)] == ["dirstore"]


def test_cli_helper_reports_user_errors_as_one_line(qlora_cli):
    res = qlora_cli("adapters", "pull", "upper\n", "--team", "alpha", plugins=[qlora_hub_dirstore])
    assert res.exit_code == 2
    assert (
        res.err.startswith("error: adapter name 'upper\\n' is invalid") and res.err.count("\n") == 1
    )
