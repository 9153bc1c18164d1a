"""``qlora-hub bench s3`` measures vault push/pull next to raw boto3 put/get, same run."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def _bench_s3(tmp_path, *args: str, env: dict[str, str]) -> dict:
    """``qlora-hub bench s3 ARGS --json`` in its own process; the parsed JSON."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "hub",
            "--home",
            str(tmp_path / "h"),
            "bench",
            "s3",
            *args,
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def test_bench_s3_reports_vault_and_raw_figures_for_each_size(s3_url, tmp_path):
    result = _bench_s3(
        tmp_path, "--url", s3_url, "--sizes", "1", "--repeats", "1", env=dict(os.environ)
    )
    (row,) = result["results"]
    assert row["size_mb"] == 1.0
    for key in ("raw_put_mb_s", "push_mb_s", "raw_get_mb_s", "pull_mb_s", "pull_cold_mb_s"):
        assert row[key] > 0
    assert (
        row["pull_vs_raw"] == round(row["pull_mb_s"] / row["raw_get_mb_s"], 3)
        or abs(row["pull_vs_raw"] - row["pull_mb_s"] / row["raw_get_mb_s"]) < 0.05
    )
    assert result["url"].startswith(s3_url + "/bench-")
    assert row["pull_vs_raw_median"] > 0
    assert row["cpu_ms"]["pull"]["client"] > 0 and row["cpu_ms"]["raw_get"]["client"] > 0
    # an endpoint given by --url: its CPU time is not read, the bound is the client's alone
    assert result["server_cpu_measured"] is False
    assert row["cpu_ms"]["pull"]["server"] == 0.0


def test_bench_s3_with_its_own_server_reads_that_servers_cpu_time(tmp_path):
    # no endpoint and no credentials given: it starts its own moto
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "QLORA_HUB_S3"))}
    result = _bench_s3(tmp_path, "--sizes", "16", "--repeats", "2", env=env)
    (row,) = result["results"]
    assert result["server_cpu_measured"] is True
    assert row["cpu_ms"]["pull"]["server"] > 0  # moto's own process served the pulls
    # the bound: the best raw get over the pull's CPU time (both processes) per core
    pull = row["cpu_ms"]["pull"]
    # the least CPU of any round (both processes) is at most the mean of the rounds
    assert 0 < pull["least_round"] <= pull["client"] + pull["server"] + 0.1
    pull_cpu_s = pull["least_round"] / 1000
    raw_get_s = row["size_mb"] / row["raw_get_mb_s"]
    bound = raw_get_s / (pull_cpu_s / result["machine"]["cpus"])
    assert abs(row["pull_vs_raw_cpu_bound"] - bound) <= 0.02 * bound + 0.01
