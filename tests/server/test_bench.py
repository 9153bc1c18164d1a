"""``qlora-hub bench serve --json`` runs every scenario and reports the two ratios."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

QLORA_HUB = str(Path(sys.executable).parent / "qlora-hub")


@pytest.mark.slow
def test_bench_serve_json_reports_every_scenario_without_failures(embedded_base, tmp_path) -> None:
    proc = subprocess.run(
        [
            QLORA_HUB,
            "--home",
            str(tmp_path),
            "bench",
            "serve",
            "--json",
            "--base",
            str(embedded_base),
            "--requests",
            "8",
            "--clients",
            "4",
            "--max-tokens",
            "2",
            "--repeats",
            "1",
            "--burst",
            "40",
            "--flood-requests",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    for scenario in ("mixed8", "single1", "naive8"):
        assert result[scenario]["requests"] == 8
        assert result[scenario]["failures"] == 0
        # every streamed text chunk carries at least one token, so never more chunks than tokens
        assert 0 < result[scenario]["text_chunks"] <= result[scenario]["completion_tokens"]
    assert result["storage"] == "vault"
    assert result["cold_load_ms"]["n"] == 8
    assert result["ratio_mixed8_vs_naive8"] > 0 and result["ratio_mixed8_vs_single1"] > 0
    assert result["burst"]["requests"] == 40
    assert sum(result["burst"]["statuses"].values()) == 40
    assert set(result["burst"]["statuses"]) <= {"200", "429"}
    assert result["anonymous_flood"]["quiet_p50_ms"] > 0
    assert result["anonymous_flood"]["flooded_p50_ms"] > 0
