"""Imports point inwards: plugins and server import hub; hub imports neither; plugins
never import each other (what two plugins share lives in hub/)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_plugins_never_import_another_plugin_or_the_server():
    wrong = []
    for path in sorted((ROOT / "plugins").rglob("*.py")):
        own = path.relative_to(ROOT / "plugins").parts[0]
        for mod in _imports(path):
            parts = mod.split(".")
            if parts[0] == "server" or (parts[0] == "plugins" and parts[1:2] not in ([own], [])):
                wrong.append(f"{path.relative_to(ROOT)} imports {mod}")
    assert wrong == []


def test_hub_imports_no_plugin_and_not_the_server():
    wrong = [
        f"{path.relative_to(ROOT)} imports {mod}"
        for path in sorted((ROOT / "hub").rglob("*.py"))
        for mod in _imports(path)
        if mod.split(".")[0] in ("plugins", "server")
    ]
    assert wrong == []
