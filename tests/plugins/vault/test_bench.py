"""`qlora-hub bench vault` measures what it says, on adapters that round-trip."""

from __future__ import annotations

from plugins.vault.bench import run_bench


def test_bench_reports_every_ratio_for_each_size():
    result = run_bench([1], repeats=1, latency_runs=1)
    (row,) = result["results"]
    assert row["size_mb"] == 1.0
    for key in ("raw_decrypt_mb_s", "pull_mb_s", "sha256_mb_s", "decrypt_sha256_mb_s"):
        assert row[key] > 0
    assert 0 < row["pull_vs_raw_ceiling"] <= 1.0
    assert abs(row["pull_vs_raw"] - row["pull_mb_s"] / row["raw_decrypt_mb_s"]) < 0.01
    assert result["target_met"] is (row["pull_vs_raw"] >= 0.7)
