"""Running under ``torchrun``: which rank this process is, and one run directory for all ranks."""

from __future__ import annotations

import os
from pathlib import Path


def world() -> tuple[int, int]:
    """``(rank, world_size)`` from the torchrun environment (``(0, 1)`` when not distributed)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def agree_on_run_dir(run_dir: Path) -> Path:
    """Under torchrun, every rank uses rank 0's choice of run directory.

    Each rank picks a free directory name on its own, and rank 0 may already
    have created its directory when another rank looks; so the process group is
    started here (gloo on CPU, nccl on GPU; the Trainer reuses it) and rank 0's
    choice is broadcast.
    """
    rank, world_size = world()
    if world_size <= 1:
        return run_dir
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    choice = [str(run_dir)]
    dist.broadcast_object_list(choice, src=0)
    return Path(choice[0])
