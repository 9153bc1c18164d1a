"""``qlora-hub bench fed`` reports ckks and plain figures from the same run (no timing asserts)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import plugins.ckks
import plugins.plain
from hub.cli import make_cli
from hub.plugins import Hub


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    hub = Hub(builtins=False, extra=[("ckks", plugins.ckks), ("plain", plugins.plain)])
    home = tmp_path_factory.mktemp("benchhome")
    result = CliRunner().invoke(
        make_cli(hub),
        ["--home", str(home), "bench", "fed", "--json", "--shapes", "tiny", "--teams", "3"],
        obj=hub,
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_bench_reports_both_aggregators_per_million_parameters(report: dict) -> None:
    (row,) = report["rounds"]
    assert (row["shape"], row["teams"], row["encrypted_parameters"]) == ("tiny", 3, 1024)
    for name in ("ckks", "plain"):
        assert {
            "encrypt_s_per_mparam_per_team",
            "aggregate_s_per_mparam",
            "decrypt_s_per_mparam",
            "wire_bytes",
        } <= set(row[name])


def test_bench_ckks_matches_plain_within_1e_6(report: dict) -> None:
    assert report["rounds"][0]["max_abs_error_vs_plain"] < 1e-6


def test_bench_ckks_wire_bytes_are_one_ciphertext_per_4096_values(report: dict) -> None:
    ckks = report["rounds"][0]["ckks"]
    # 1024 values fit one ciphertext; a ciphertext at N=8192 is about 330 KB.
    assert 300_000 < ckks["contribution_bytes"] < 400_000


def test_bench_measures_fedavg_gap_and_dense_energy(report: dict) -> None:
    (maths,) = report["merge_modes"]
    assert maths["fedavg_relative_error"] > 0.1
    assert 0 < maths["dense_energy_kept"] < 1
