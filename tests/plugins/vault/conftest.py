"""Fixtures for the vault tests: a home with three local teams and a vault acting as alpha."""

from __future__ import annotations

from pathlib import Path

import pytest

from hub import teams
from plugins.vault.backend import Vault

TEAMS = ("alpha", "beta", "gamma")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A home directory where alpha, beta and gamma all have (unprotected) keys."""
    h = tmp_path / "home"
    for team in TEAMS:
        teams.create_team(h, team, passphrase=None)
    return h


@pytest.fixture
def vault(home: Path) -> Vault:
    """A vault acting as alpha, with 1 KiB chunks so small adapters span several chunks."""
    return Vault(home / "storage" / "vault", team="alpha", chunk_size=1024)


@pytest.fixture
def world(tmp_path: Path):
    """alpha and beta each in their own home, trusting each other, over one vault root
    (4 KiB chunks): ``(root, homes, vaults)``."""
    root = tmp_path / "shared-vault"
    homes = {t: tmp_path / t for t in ("alpha", "beta")}
    for t, h in homes.items():
        teams.create_team(h, t, passphrase=None)
    teams.trust(homes["alpha"], teams.export_public(homes["beta"], "beta"))
    teams.trust(homes["beta"], teams.export_public(homes["alpha"], "alpha"))
    vaults = {t: Vault(root, home=h, team=t, chunk_size=4096) for t, h in homes.items()}
    return root, homes, vaults
