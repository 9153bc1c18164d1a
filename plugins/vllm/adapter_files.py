"""Adapters on their way into vLLM: checks first, then a private RAM-backed directory.

vLLM loads a LoRA only from a directory. The server holds adapters as decrypted
tensors in memory, and plaintext weights must never reach persistent disk, so
:func:`ram_copy` writes them to a fresh directory (mode 0700) under a RAM-backed
file system (``[vllm] ram_dir``, ``/dev/shm`` by default) and removes it as soon as
vLLM has read it. :func:`check_adapter` refuses what vLLM would refuse, with a reason
that names the setting to change.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hub.engines import AdapterRefused

RAM_FILESYSTEMS = {"tmpfs", "ramfs"}
VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The ranks vLLM accepts for ``max_lora_rank``."""


def filesystem_type(path: Path) -> str | None:
    """The file system type of the mount holding ``path`` (Linux ``/proc/self/mounts``),
    or ``None`` where that cannot be told."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None
    path = path.resolve()
    best, kind = "", None
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = path == Path(point) or Path(point) in path.parents
        if inside and len(point) > len(best):
            best, kind = point, fields[2]
    return kind


def check_ram_dir(ram_dir: str) -> Path:
    """``ram_dir`` as a path, if it is a RAM-backed directory; otherwise :class:`AdapterRefused`."""
    path = Path(ram_dir)
    if not path.is_dir():
        raise AdapterRefused(
            f"[vllm] ram_dir {ram_dir} is not a directory: set it to a RAM-backed directory "
            "(tmpfs, such as /dev/shm) where adapters pass on their way into vLLM"
        )
    kind = filesystem_type(path)
    if kind not in RAM_FILESYSTEMS:
        raise AdapterRefused(
            f"[vllm] ram_dir {ram_dir} is on {kind or 'an unknown file system'}, not in RAM: "
            "plaintext adapter weights must not reach disk; set it to a tmpfs such as /dev/shm"
        )
    return path


def check_adapter(config: dict[str, Any], max_lora_rank: int) -> None:
    """Refuse what vLLM cannot serve (rank above ``max_lora_rank``, DoRA, biases, extra
    trained modules) before anything is written; raises :class:`AdapterRefused`."""
    pattern = config.get("rank_pattern") or {}
    ranks = [config.get("r", 8), *(pattern.values() if isinstance(pattern, dict) else [])]
    rank = max(int(r) for r in ranks)
    if rank > max_lora_rank:
        raise AdapterRefused(
            f"LoRA rank {rank} is above [vllm] max_lora_rank {max_lora_rank}: raise it "
            f"(QLORA_HUB_VLLM_MAX_LORA_RANK; vLLM takes {', '.join(map(str, VLLM_RANKS))})"
        )
    if config.get("use_dora"):
        raise AdapterRefused("vLLM does not serve DoRA adapters: serve it with --engine hf")
    if config.get("bias", "none") != "none":
        raise AdapterRefused("vLLM does not serve adapters with trained biases")
    if config.get("modules_to_save"):
        raise AdapterRefused(
            f"vLLM serves LoRA weights only, not fully trained modules "
            f"{config['modules_to_save']}: serve it with --engine hf"
        )


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


@contextmanager
def ram_copy(ram_dir: str, config: dict[str, Any], tensors: dict[str, Any]) -> Iterator[Path]:
    """A PEFT adapter directory in RAM for the length of the ``with`` block, then gone.

    The directory is new (``mkdtemp``: mode 0700, unpredictable name) under
    :func:`check_ram_dir`'s ``ram_dir``; its files are mode 0600.
    """
    from safetensors.torch import save

    root = check_ram_dir(ram_dir)
    tmp = Path(tempfile.mkdtemp(prefix="qlora-hub-vllm-", dir=root))
    try:
        state = {k: v.detach().contiguous() for k, v in tensors.items()}
        _write_private(tmp / "adapter_config.json", json.dumps(config).encode())
        _write_private(tmp / "adapter_model.safetensors", save(state))
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def base_shapes(source: Path) -> dict[str, tuple[int, int]]:
    """``module -> (in, out)`` of every 2-D ``*.weight`` in the base's safetensors files
    (read from their headers; no tensor is loaded): what an adapter may target."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, int]] = {}
    for file in sorted(source.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as fh:
            for key in fh.keys():  # noqa: SIM118 (safe_open has no __iter__)
                shape = fh.get_slice(key).get_shape()
                if key.endswith(".weight") and len(shape) == 2:
                    shapes[key.removesuffix(".weight")] = (int(shape[1]), int(shape[0]))
    return shapes


ZERO_RANK = 1


def zero_lora(shapes: dict[str, tuple[int, int]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A rank-1 LoRA of zeros on every ``q_proj`` of the base: it adds exactly nothing.

    vLLM's CPU LoRA ops index each row's LoRA slot with no check, so a row without a LoRA
    (slot -1) gets the weights of the last slot, another request's adapter, whenever a
    batch mixes base and adapter rows. Base requests on a CPU therefore run through this
    adapter (:class:`plugins.vllm.engine.VLLMEngine`).
    """
    import torch

    modules = [m for m in shapes if m.rsplit(".", 1)[-1] == "q_proj"]
    if not modules:
        raise AdapterRefused(
            "the base has no q_proj module to hang the all-zero base LoRA on (vLLM's CPU "
            "build needs one to keep base requests apart from adapters): serve it with "
            "--engine hf"
        )
    tensors = {}
    for module in modules:
        fan_in, fan_out = shapes[module]
        tensors[f"base_model.model.{module}.lora_A.weight"] = torch.zeros(ZERO_RANK, fan_in)
        tensors[f"base_model.model.{module}.lora_B.weight"] = torch.zeros(fan_out, ZERO_RANK)
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": ZERO_RANK,
        "lora_alpha": ZERO_RANK,
        "target_modules": ["q_proj"],
        "base_model_name_or_path": None,
    }
    return config, tensors
