"""``torchrun --nproc_per_node 2 -m hub train``: DDP over gloo on two CPU processes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, embedded_base: Path):
    from plugins.trainer.synth import synthesize

    tmp = tmp_path_factory.mktemp("ddp")
    data = synthesize("upper", 64, tmp / "data", held_out=4)["train"]
    home = tmp / "home"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--standalone",  # a free port of its own: a fixed one may be taken on a shared machine
        "-m",
        "hub",
        "--home",
        str(home),
        "train",
        "--base",
        str(embedded_base),
        "--data",
        str(data),
        "--adapter",
        "ddp",
        "--no-store",
        "--max-steps",
        "3",
        "--batch-size",
        "4",
        "--max-length",
        "32",
        "--logging-steps",
        "1",
        "--eval-fraction",
        "0",
        "--lr",
        "0.01",
        "--threads",
        "1",
        "--quiet",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return home, proc.stdout


def test_both_ranks_end_with_identical_adapter_weights(ddp_run) -> None:
    _, stdout = ddp_run
    digests = dict(re.findall(r"rank (\d)/2: adapter sha256 ([0-9a-f]{64})", stdout))
    assert sorted(digests) == ["0", "1"]
    assert digests["0"] == digests["1"]


def test_only_rank_zero_writes_the_run(ddp_run) -> None:
    home, stdout = ddp_run
    assert [p.name for p in (home / "runs").iterdir()] == ["ddp"]
    run = home / "runs" / "ddp"
    assert sorted(p.name for p in run.iterdir()) == [
        "adapter",
        "loss.png",
        "manifest.json",
        "metrics.jsonl",
        "run.json",
    ]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["world_size"] == 2 and manifest["metrics"]["steps"] == 3
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 3]  # three step events and the end event, written once
    assert stdout.count("trained ddp:") == 1
