"""The ``machine`` section of ``qlora-hub bench gpu``: GPU, library versions, commit.

``python -m hub.gpubench_machine OUT_JSON`` (its own process: importing torch and
bitsandbytes can fail, and the report says so instead of the run stopping).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def machine_info() -> dict[str, Any]:
    """GPU, library versions, commit: the ``machine`` section's result."""
    import importlib.metadata as md
    import platform

    info: dict[str, Any] = {"python": platform.python_version(), "cpus": os.cpu_count()}
    for dist in ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "safetensors"):
        try:
            info[dist] = md.version(dist)
        except md.PackageNotFoundError:
            info[dist] = None
    try:
        import bitsandbytes

        info["bitsandbytes"] = bitsandbytes.__version__
    except Exception as exc:  # reported, not fatal: the sections say what they miss
        info["bitsandbytes_error"] = f"{type(exc).__name__}: {exc}"
    import torch

    info["cuda_available"] = torch.cuda.is_available()
    info["torch_cuda"] = torch.version.cuda
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_bytes=props.total_memory,
                    gpu_capability=f"{props.major}.{props.minor}",
                    gpu_count=torch.cuda.device_count())  # fmt: skip
    info["commit"] = _commit()
    return info


def _commit() -> str | None:
    """``git rev-parse HEAD`` (``+dirty`` with local changes), else ``.git/HEAD``, else the
    environment's ``QLORA_HUB_COMMIT`` (a copied working tree without ``.git``)."""
    try:
        got = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, timeout=10)  # fmt: skip
        if got.returncode == 0:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                   cwd=ROOT, capture_output=True, text=True, timeout=10)  # fmt: skip
            return got.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        pass
    head = ROOT / ".git" / "HEAD"
    try:
        ref = head.read_text().strip()
        if ref.startswith("ref: "):
            return (ROOT / ".git" / ref[5:]).read_text().strip()
        return ref
    except OSError:
        return os.environ.get("QLORA_HUB_COMMIT")


if __name__ == "__main__":  # python -m hub.gpubench_machine OUT
    Path(sys.argv[1]).write_text(json.dumps(machine_info(), indent=2))
