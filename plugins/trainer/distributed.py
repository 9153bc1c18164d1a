"""Running under ``torchrun``: which rank this process is, and one run directory for all ranks."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def world() -> tuple[int, int]:
    """``(rank, world_size)`` from the torchrun environment (``(0, 1)`` when not distributed)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def rank_device(device: Any = None) -> Any:
    """The ``torch.device`` this process trains on (:func:`hub.models.resolve_device`).

    Under torchrun each rank takes its own GPU (``cuda:LOCAL_RANK``) when the
    device is CUDA; the CPU is shared.
    """

    from hub.models import resolve_device

    target = resolve_device(device)
    if target.type == "cuda" and world()[1] > 1:
        target = resolve_device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
    return target


def agree_on_run_dir(run_dir: Path, device: Any = None) -> Path:
    """Under torchrun, every rank uses rank 0's choice of run directory.

    Each rank picks a free directory name on its own, and rank 0 may already
    have created its directory when another rank looks; so the process group is
    started here (gloo on CPU, nccl on GPU, by ``device``; the Trainer reuses it)
    and rank 0's choice is broadcast.
    """
    rank, world_size = world()
    if world_size <= 1:
        return run_dir
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        cuda = rank_device(device).type == "cuda"
        if cuda:
            torch.cuda.set_device(rank_device(device))
        dist.init_process_group("nccl" if cuda else "gloo")
    choice = [str(run_dir)]
    dist.broadcast_object_list(choice, src=0)
    return Path(choice[0])
