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
