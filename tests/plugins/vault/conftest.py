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
