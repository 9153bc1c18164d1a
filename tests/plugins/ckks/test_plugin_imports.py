"""Registering the ckks and plain plugins and their commands stays light (no heavy imports)."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import sys
import plugins.ckks, plugins.plain
from hub.cli import make_cli
from hub.plugins import Hub
hub = Hub(builtins=False, extra=[("ckks", plugins.ckks), ("plain", plugins.plain)])
make_cli(hub)
hub.aggregators["ckks"], hub.aggregators["plain"]
print(sorted(m for m in ("tenseal", "torch", "numpy") if m in sys.modules))
"""


def test_registering_imports_neither_tenseal_torch_nor_numpy() -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def imported_plugins(package: str) -> set[str]:
    """Top-level plugin packages that the modules of ``plugins/<package>`` import."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[3] / "plugins" / package
    found = set()
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            found |= {n.split(".")[1] for n in names if n.startswith("plugins.")}
    return found - {package}


def test_ckks_and_plain_import_no_other_plugin() -> None:
    # Both share the round protocol through hub.fed, not through each other.
    assert imported_plugins("ckks") == set()
    assert imported_plugins("plain") == set()


def test_trainer_imports_no_other_plugin() -> None:
    # fed run / bench fed-accuracy reach aggregators through the hub's registry
    assert imported_plugins("trainer") == set()
