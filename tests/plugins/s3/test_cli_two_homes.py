"""Two homes on two "machines" (separate home directories, index and processes)
share, pull and revoke an adapter through one S3 bucket, with the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from hub.testing.storage import sample_adapter


@pytest.fixture
def cli(s3_url, tmp_path):
    env = {
        **os.environ,
        "QLORA_HUB_VAULT_BLOB_URL": s3_url,  # the bucket is all the two homes share
        "QLORA_HUB_DISABLE_PLUGINS": "",
    }
    env.pop("QLORA_HUB_HOME", None)
    env.pop("QLORA_HUB_PASSPHRASE", None)

    def run(home, team, *args, ok=True):
        proc = subprocess.run(
            [sys.executable, "-m", "hub", "--home", str(tmp_path / home), *args],
            capture_output=True,
            text=True,
            timeout=120,
            env={**env, "QLORA_HUB_TEAM": team},
            cwd=tmp_path,
        )
        assert (proc.returncode == 0) == ok, proc.stdout + proc.stderr[-2000:]
        return proc.stdout + proc.stderr

    return run


def test_two_homes_share_pull_and_revoke_through_one_bucket(cli, tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    for name, data in sample_adapter("upper").files.items():
        (adapter / name).write_bytes(data)
    for home, team in (("alpha-home", "alpha"), ("beta-home", "beta")):
        cli(home, team, "team", "create", team, "--no-passphrase", "--classical")
        cli(home, team, "team", "export-public", team, "--out", f"{team}.pub.json")
    cli("alpha-home", "alpha", "team", "trust", "beta.pub.json")
    cli("beta-home", "beta", "team", "trust", "alpha.pub.json")

    assert "pushed upper@1" in cli(
        "alpha-home", "alpha", "adapters", "push", "adapter", "--name", "upper"
    )
    out = cli("beta-home", "beta", "adapters", "pull", "upper", ok=False)
    assert "error: no adapter upper visible to team 'beta'" in out
    out = cli("alpha-home", "alpha", "adapters", "share", "upper", "--with", "beta")
    assert "shared upper with beta" in out
    out = cli("beta-home", "beta", "adapters", "pull", "upper@latest")
    assert out.startswith("upper@1 by alpha:") and "verified" in out
    assert "readers: alpha, beta" in cli("beta-home", "beta", "adapters", "list")

    out = cli("alpha-home", "alpha", "adapters", "revoke", "upper", "--from", "beta")
    assert "revoked beta from upper; re-encrypted as upper@2" in out
    out = cli("beta-home", "beta", "adapters", "pull", "upper@1", ok=False)
    assert "error: team beta's access to upper@1 was revoked by its owner" in out
    assert "upper@2" in cli("alpha-home", "alpha", "adapters", "pull", "upper")
    # beta's own machine never held a vault blob: everything went through the bucket
    assert not (tmp_path / "beta-home" / "storage" / "vault" / "blobs").exists()
