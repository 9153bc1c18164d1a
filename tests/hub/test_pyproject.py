"""pyproject.toml floors match what the code needs, and what is installed satisfies them."""

from __future__ import annotations

import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
DEPENDENCIES = [
    Requirement(r)
    for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
]
NEEDED = {
    "transformers": "5.0",  # the code passes dtype= and uses v5 APIs
    "peft": "0.18.1",  # older PEFT fails to import under transformers v5
    "accelerate": "1.13",  # 4-bit bitsandbytes under transformers v5
    "cryptography": "50",  # hpke ML-KEM-768 + X25519, ML-DSA-65
    "numpy": "1.26",
}


def _floor(name: str) -> Version:
    req = next(r for r in DEPENDENCIES if r.name == name)
    return min(Version(s.version) for s in req.specifier if s.operator == ">=")


@pytest.mark.parametrize("name,needed", sorted(NEEDED.items()))
def test_floor_is_at_least_what_the_code_needs(name, needed):
    assert _floor(name) >= Version(needed)


@pytest.mark.parametrize("req", DEPENDENCIES, ids=lambda r: r.name)
def test_installed_version_satisfies_the_floor(req):
    assert req.specifier.contains(version(req.name), prereleases=True)
