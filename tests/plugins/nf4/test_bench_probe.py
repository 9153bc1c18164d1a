"""The fresh-process load probe behind ``qlora-hub bench quant`` measures what it says."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_probe_finds_the_checkpoint_weights_resident_after_a_pre_quantized_load(
    nf4_checkpoint: Path,
) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "plugins.nf4.bench", "pre_quantized", str(nf4_checkpoint)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    probe = json.loads(proc.stdout.strip().splitlines()[-1])
    weights = (nf4_checkpoint / "model.safetensors").stat().st_size
    page = 4096
    assert probe["peak_reset"] is True
    # the 4-bit weights are read from the checkpoint's own mapping: never a second copy of it
    assert probe["cold_breakdown"]["checkpoint_files"] < weights + 2 * page
    # once every weight is resident, a load in a warmed-up process costs about the weights
    assert weights <= probe["warm_over_baseline"] < 1.5 * weights
    assert probe["resident_peak_rss"] - probe["baseline_rss"] >= weights
