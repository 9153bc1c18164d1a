"""Fixtures for core tests: third-party distributions made on the fly."""

import sys
import textwrap
from pathlib import Path

import pytest


@pytest.fixture
def make_distribution(tmp_path, monkeypatch):
    """Install a one-module distribution with a ``qlora_hub`` entry point onto sys.path.

    ``make_distribution(dist, plugin_name, module_source)``: writes
    ``<module>.py`` and ``<dist>-1.0.dist-info`` (METADATA + entry_points.txt),
    which importlib.metadata discovers exactly like a pip-installed package.
    """
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))

    def make(dist: str, plugin_name: str, source: str) -> Path:
        module = dist.replace("-", "_")
        (site / f"{module}.py").write_text(textwrap.dedent(source))
        info = site / f"{module}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(f"[qlora_hub]\n{plugin_name} = {module}\n")
        return site

    yield make
    for name in [m for m in sys.modules if m.startswith("thirdparty_")]:
        del sys.modules[name]
