"""``qlora-hub bench s3`` measures vault push/pull next to raw boto3 put/get, same run."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def test_bench_s3_reports_vault_and_raw_figures_for_each_size(s3_url, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "hub",
            "--home",
            str(tmp_path / "h"),
            "bench",
            "s3",
            "--url",
            s3_url,
            "--sizes",
            "1",
            "--repeats",
            "1",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    (row,) = result["results"]
    assert row["size_mb"] == 1.0
    for key in ("raw_put_mb_s", "push_mb_s", "raw_get_mb_s", "pull_mb_s", "pull_cold_mb_s"):
        assert row[key] > 0
    assert (
        row["pull_vs_raw"] == round(row["pull_mb_s"] / row["raw_get_mb_s"], 3)
        or abs(row["pull_vs_raw"] - row["pull_mb_s"] / row["raw_get_mb_s"]) < 0.05
    )
    assert result["url"].startswith(s3_url + "/bench-")
