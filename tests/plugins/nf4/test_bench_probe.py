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


def test_a_primed_probe_puts_the_libraries_set_up_behind_its_baseline(
    nf4_checkpoint: Path, tmp_path: Path
) -> None:
    from plugins.nf4.bench import _write_primer

    primer = _write_primer(tmp_path / "primer")["pre_quantized"]
    args = ["pre_quantized", str(nf4_checkpoint)]
    fresh, primed = (
        json.loads(
            subprocess.run(
                [sys.executable, "-m", "plugins.nf4.bench", *args, *extra],
                capture_output=True, text=True, cwd=ROOT, check=True,
            ).stdout.strip().splitlines()[-1]
        )
        for extra in ([], [str(primer)])
    )  # fmt: skip
    weights = (nf4_checkpoint / "model.safetensors").stat().st_size
    mib = 2**20
    # a fresh process faults in megabytes of library code on its first load; a primed one does not
    assert fresh["cold_breakdown"]["library_code"] > 4 * mib
    assert primed["cold_breakdown"]["library_code"] < 1 * mib
    assert primed["cold_breakdown"]["checkpoint_files"] < weights + 2 * 4096
    assert weights <= primed["resident_peak_rss"] - primed["baseline_rss"]
    assert (primed["resident_peak_rss"] - primed["baseline_rss"]) < (
        fresh["resident_peak_rss"] - fresh["baseline_rss"]
    )
