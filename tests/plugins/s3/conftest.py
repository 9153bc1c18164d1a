"""Fixtures of the s3 plugin's tests: the loopback S3 (:mod:`plugins.s3.testing`), a home
with three teams, and a vault whose blobs are in the test's own prefix."""

from __future__ import annotations

from pathlib import Path

import pytest

from hub import teams
from plugins.s3 import testing

s3_endpoint = testing.s3_endpoint
s3_env = testing.s3_env
s3_url = testing.s3_url


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A home with alpha, beta and gamma (classical keys: the same formats, faster)."""
    h = tmp_path / "home"
    for team in ("alpha", "beta", "gamma"):
        teams.create_team(h, team, passphrase=None, suite="classical")
    return h


@pytest.fixture(scope="session")
def s3_hub():
    from hub.plugins import Hub

    return Hub()


@pytest.fixture
def s3_vault(home, s3_url, s3_hub):
    """A vault acting as alpha whose blobs are in the test's S3 prefix."""
    from plugins.vault.backend import Vault

    return Vault(home / "storage" / "vault", hub=s3_hub, team="alpha", blob_url=s3_url)
