"""Gathered LoRA: many resident adapters applied in one forward pass, one adapter per row.

Every adapter's ``A`` and ``B`` matrices live in a stacked *slot* of a
:class:`LoRABank` (``A[slot]: (rank, in)``, ``B[slot]: (out, rank)``; ranks
are zero-padded to the bank's rank, which leaves the product unchanged).
Each wrapped linear layer gathers the slot of every row and applies
``scale * (x @ A.T) @ B.T`` with two batched matmuls, as Punica and S-LoRA
do, instead of looping over adapters inside every layer like PEFT's
``adapter_names``. Slot 0 is all zeros: the plain base.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import torch
from torch import nn

from hub.errors import ValidationError
from hub.types import AdapterPayload

_PEFT_PREFIX = "base_model.model."


class BatchedLoRALinear(nn.Module):
    """A base linear layer plus the per-row LoRA delta of its bank slot."""

    def __init__(self, base: nn.Module, name: str, bank: LoRABank) -> None:
        super().__init__()
        self.base = base
        self.name = name
        self.bank = bank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``base(x)`` plus, for each row ``i``, ``scale[s] * x_i A[s].T B[s].T`` with ``s = rows[i]``."""
        out = self.base(x)
        rows = self.bank.rows
        if rows is None or not self.bank.any_adapter:
            return out
        a_all, b_all = self.bank.weights[self.name]
        a = a_all.index_select(0, rows)  # (batch, r, in)
        b = b_all.index_select(0, rows)  # (batch, out, r)
        h = torch.bmm(x.to(a.dtype), a.transpose(1, 2))
        delta = (
            torch.bmm(h, b.transpose(1, 2)) * self.bank.scales.index_select(0, rows)[:, None, None]
        )
        # add in the LoRA dtype, then round once, as PEFT does
        return (out + delta).to(out.dtype)


class LoRABank:
    """Stacked LoRA weights of every resident adapter, indexed by slot.

    Args:
        model: a causal LM; each ``nn.Linear``-like module inside its decoder
            layers (4-bit or not) is wrapped in place by :class:`BatchedLoRALinear`.
        dtype: dtype of the stacked weights (the model's compute dtype).
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.float32) -> None:
        self.dtype = dtype
        self.lock = threading.RLock()
        self.rows: torch.Tensor | None = None
        self.rank = 8
        self.capacity = 1
        self.shapes: dict[str, tuple[int, int]] = {}
        self.weights: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.scales = torch.zeros(1, dtype=dtype)
        self.used: set[int] = set()
        for name, module in list(model.named_modules()):
            if ".layers." not in name or not hasattr(module, "in_features"):
                continue
            if isinstance(module, BatchedLoRALinear):
                continue
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            setattr(parent, child, BatchedLoRALinear(module, name, self))
            self.shapes[name] = (module.in_features, module.out_features)
        for name, (fan_in, fan_out) in self.shapes.items():
            self.weights[name] = (
                torch.zeros(1, self.rank, fan_in, dtype=dtype),
                torch.zeros(1, fan_out, self.rank, dtype=dtype),
            )

    @property
    def any_adapter(self) -> bool:
        """False while only the base (slot 0) is in use: the delta is skipped entirely."""
        return bool(self.used)

    def _grow(self, capacity: int, rank: int) -> None:
        """Reallocate every stack to ``capacity`` slots of rank ``rank`` (zero padded)."""
        for name, (a, b) in self.weights.items():
            fan_in, fan_out = self.shapes[name]
            na = torch.zeros(capacity, rank, fan_in, dtype=self.dtype)
            nb = torch.zeros(capacity, fan_out, rank, dtype=self.dtype)
            na[: a.shape[0], : a.shape[1]] = a
            nb[: b.shape[0], :, : b.shape[2]] = b
            self.weights[name] = (na, nb)
        scales = torch.zeros(capacity, dtype=self.dtype)
        scales[: self.scales.shape[0]] = self.scales
        self.scales, self.capacity, self.rank = scales, capacity, rank

    def add(self, tensors: dict[str, torch.Tensor], rank: int, scale: float) -> int:
        """Copy an adapter's weights (module name -> (A, B)) into a free slot; returns the slot."""
        with self.lock:
            slot = next((s for s in range(1, self.capacity) if s not in self.used), self.capacity)
            if slot >= self.capacity or rank > self.rank:
                self._grow(max(self.capacity, slot + 1), max(self.rank, rank))
            for name, (a_all, b_all) in self.weights.items():
                a_all[slot].zero_()
                b_all[slot].zero_()
                if name in tensors:
                    a, b = tensors[name]
                    a_all[slot, : a.shape[0]] = a.to(self.dtype)
                    b_all[slot, :, : b.shape[1]] = b.to(self.dtype)
            self.scales[slot] = scale
            self.used.add(slot)
            return slot

    def remove(self, slot: int) -> None:
        """Free ``slot`` (its weights are overwritten by the next :meth:`add`)."""
        with self.lock:
            self.used.discard(slot)
            self.scales[slot] = 0.0


def parse_adapter(payload: AdapterPayload, shapes: dict[str, tuple[int, int]]) -> dict[str, Any]:
    """Check a PEFT LoRA payload against the base and return its per-module ``(A, B)``, rank, scale.

    Only safetensors and JSON are read. Refuses (``ValidationError``, one line)
    adapters the gathered path cannot apply exactly: another PEFT type, DoRA,
    extra trained modules, per-module ranks, or tensors whose names or shapes
    do not match the base.
    """
    try:
        config = payload.config()
        tensors = payload.tensors()
    except (KeyError, ValueError, json.JSONDecodeError) as exc:
        raise ValidationError(f"adapter {payload.ref}: unreadable files ({exc})") from None
    where = f"adapter {payload.ref}"
    if config.get("peft_type", "LORA") != "LORA":
        raise ValidationError(f"{where}: peft_type {config.get('peft_type')!r} is not LORA")
    if config.get("use_dora") or config.get("modules_to_save") or config.get("rank_pattern"):
        raise ValidationError(f"{where}: DoRA, modules_to_save and rank_pattern are not servable")
    rank, alpha = int(config.get("r", 8)), float(config.get("lora_alpha", 8))
    scale = alpha / (rank**0.5) if config.get("use_rslora") else alpha / rank
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        module, _, kind = key.removeprefix(_PEFT_PREFIX).rpartition(".lora_")
        if kind not in ("A.weight", "B.weight"):
            raise ValidationError(f"{where}: unexpected tensor {key!r}")
        if module not in shapes:
            raise ValidationError(f"{where}: tensor {key!r} targets no linear layer of the base")
        pairs.setdefault(module, {})[kind[0]] = tensor
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for module, ab in pairs.items():
        fan_in, fan_out = shapes[module]
        a, b = ab.get("A"), ab.get("B")
        if a is None or b is None or a.shape != (rank, fan_in) or b.shape != (fan_out, rank):
            raise ValidationError(
                f"{where}: {module} needs A {(rank, fan_in)} and B {(fan_out, rank)}, "
                f"got {None if a is None else tuple(a.shape)} and {None if b is None else tuple(b.shape)}"
            )
        out[module] = (a, b)
    if not out:
        raise ValidationError(f"{where}: no LoRA tensors")
    return {"tensors": out, "rank": rank, "scale": scale}
