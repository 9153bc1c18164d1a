"""Seeded, frozen LoRA ``A`` matrices: the same seed gives the same bytes on every machine.

Each module's ``A`` comes from its own generator, seeded from the shared seed
and the module's name, so the values do not depend on which other modules are
targeted or in what order they are visited. The values are Gaussian with
standard deviation ``1/sqrt(in_features)``: with A frozen, only B learns, and
this scale (1.7x the standard deviation of PEFT's default Kaiming-uniform init)
made B-only training converge faster on the synthetic tasks.
"""

from __future__ import annotations

import hashlib
from typing import Any


def module_seed(seed: int, module_name: str) -> int:
    """A 63-bit seed for one module, derived from the shared seed and its name."""
    digest = hashlib.sha256(f"{seed}:{module_name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def seeded_a(seed: int, module_name: str, shape: tuple[int, int]) -> Any:
    """The frozen ``A`` of ``module_name``: float32, normal with std ``1/sqrt(in_features)``."""
    import torch

    gen = torch.Generator(device="cpu").manual_seed(module_seed(seed, module_name))
    return torch.randn(shape, generator=gen, dtype=torch.float32) / shape[1] ** 0.5


def freeze_a(peft_model: Any, seed: int, adapter_name: str = "default") -> int:
    """Overwrite every ``lora_A`` of ``adapter_name`` with :func:`seeded_a` and freeze it.

    Returns the number of ``A`` matrices frozen.
    """
    import torch

    count = 0
    for name, module in peft_model.named_modules():
        lora_a = getattr(module, "lora_A", None)
        if not isinstance(lora_a, torch.nn.ModuleDict) or adapter_name not in lora_a:
            continue
        weight = lora_a[adapter_name].weight
        # key by the name PEFT saves (no adapter name, no wrapper prefix) so it is stable
        key = name.removeprefix("base_model.model.")
        with torch.no_grad():
            weight.copy_(seeded_a(seed, key, tuple(weight.shape)).to(weight.dtype))
        weight.requires_grad_(False)
        count += 1
    return count
