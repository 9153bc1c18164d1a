"""Gathered LoRA: many resident adapters applied in one forward pass, one adapter per row.

Every adapter's ``A`` and ``B`` matrices live in a stacked *slot* of a
:class:`LoRABank` (``A[slot]: (rank, in)``, ``B[slot]: (out, rank)``; ranks
are zero-padded to the bank's rank, which leaves the product unchanged).
Each wrapped linear layer gathers the slot of every row and applies
``scale[slot] * (x @ A.T) @ B.T`` with two batched matmuls, as Punica and S-LoRA
do, instead of looping over adapters inside every layer like PEFT's
``adapter_names``. Slot 0 is all zeros: the plain base.

Which layers are wrapped follows the adapters, not the architecture: a layer
is wrapped the first time an adapter with tensors for it (by its module name,
as PEFT saves it) is added, so ``model.layers.N`` (Llama), ``transformer.h.N``
(GPT-2, Bloom, Falcon) and ``gpt_neox.layers.N`` are all the same to the bank.
Any ``nn.Linear`` (and subclass: bitsandbytes ``Linear4bit``, Falcon's
``FalconLinear``) or transformers ``Conv1D`` (GPT-2; weight stored ``(in, out)``)
can be wrapped. Inputs may be ``(batch, tokens, in)`` or flattened to
``(batch * tokens, in)`` (OPT's feed-forward).
"""

from __future__ import annotations

import json
import re
import threading
from typing import Any

import torch
from torch import nn

from hub.errors import ValidationError
from hub.types import AdapterPayload

_PEFT_PREFIX = "base_model.model."


def linear_shape(module: nn.Module) -> tuple[int, int] | None:
    """``(in_features, out_features)`` of a layer LoRA can target, or ``None``.

    ``nn.Linear`` and its subclasses (bitsandbytes 4/8-bit layers, ``FalconLinear``)
    carry the two sizes; transformers' ``Conv1D`` stores its weight as ``(in, out)``.
    """
    if isinstance(module, nn.Linear):
        return int(module.in_features), int(module.out_features)
    if type(module).__name__ == "Conv1D" and getattr(module, "weight", None) is not None:
        fan_in, fan_out = module.weight.shape
        return int(fan_in), int(fan_out)
    return None


def model_device(model: nn.Module) -> torch.device:
    """Where ``model`` takes its input ids: its input embeddings' device (else its first
    parameter's; CPU for a model without parameters)."""
    try:
        param = model.get_input_embeddings().weight
    except (AttributeError, NotImplementedError):
        param = None
    if param is None:
        param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


class BatchedLoRALinear(nn.Module):
    """A base linear layer plus the per-row LoRA delta of its bank slot."""

    def __init__(self, base: nn.Module, name: str, bank: LoRABank) -> None:
        super().__init__()
        self.base = base
        self.name = name
        self.bank = bank

    @property
    def weight(self) -> torch.Tensor:
        """The base layer's weight (model code sometimes reads it for its dtype)."""
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        """The base layer's bias."""
        return getattr(self.base, "bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``base(x)`` plus, for each row ``i``, ``scale[s] * x_i A[s].T B[s].T`` with ``s = rows[i]``.

        ``x`` is ``(batch, ..., in)`` or batch-major flattened ``(batch * tokens, in)``.
        """
        out = self.base(x)
        rows = self.bank.rows
        if rows is None or not self.bank.any_adapter:
            return out
        a_all, b_all, s_all = self.bank.weights[self.name]
        batch, fan_in = rows.shape[0], a_all.shape[2]
        if x.numel() % (batch * fan_in):
            raise RuntimeError(
                f"{self.name}: input {tuple(x.shape)} does not split into {batch} rows of {fan_in}"
            )
        xs = x.reshape(batch, -1, fan_in)  # (batch, tokens, in), whether x was 2-D or 3-D
        a = a_all.index_select(0, rows)  # (batch, r, in)
        b = b_all.index_select(0, rows)  # (batch, out, r)
        h = torch.bmm(xs.to(a.dtype), a.transpose(1, 2))
        delta = torch.bmm(h, b.transpose(1, 2)) * s_all.index_select(0, rows)[:, None, None]
        # add in the LoRA dtype, then round once, as PEFT does
        return (out + delta.reshape(out.shape)).to(out.dtype)


class LoRABank:
    """Stacked LoRA weights of every resident adapter, indexed by slot.

    Args:
        model: a causal LM. Its LoRA-targetable layers (:func:`linear_shape`) are
            listed in :attr:`shapes`; each is wrapped in place by
            :class:`BatchedLoRALinear` when the first adapter targeting it is added.
        dtype: dtype of the stacked weights (the model's compute dtype).
    """

    def __init__(
        self,
        model: nn.Module,
        dtype: torch.dtype = torch.float32,
        *,
        max_adapters: int = 8,
        rank: int = 8,
        device: torch.device | str | None = None,
    ) -> None:
        if max_adapters < 1 or rank < 1:
            raise ValueError(f"max_adapters ({max_adapters}) and rank ({rank}) must be positive")
        self.model = model
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else model_device(model)
        self.lock = threading.RLock()
        self.rows: torch.Tensor | None = None
        self.rank = rank
        self.capacity = max_adapters + 1  # slot 0 is the base
        self.shapes: dict[str, tuple[int, int]] = {}
        """module name -> (in, out) of every layer an adapter may target."""
        self.weights: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        """module name -> (A (slots, rank, in), B (slots, out, rank), scale (slots,)) of wrapped layers."""
        self.used: set[int] = set()
        self.reallocations = 0
        """How often every stack was reallocated (more adapters than slots, or a larger rank)."""
        wrapped = {n for n, m in model.named_modules() if isinstance(m, BatchedLoRALinear)}
        for name, module in model.named_modules():
            if name in wrapped:
                self.shapes[name] = linear_shape(module.base)
            elif (shape := linear_shape(module)) and name.rpartition(".")[0] not in wrapped:
                self.shapes[name] = shape

    @property
    def any_adapter(self) -> bool:
        """False while only the base (slot 0) is in use: the delta is skipped entirely."""
        return bool(self.used)

    def _wrap(self, name: str) -> None:
        """Wrap layer ``name`` and give it zero stacks of the bank's size."""
        module = self.model.get_submodule(name)
        if not isinstance(module, BatchedLoRALinear):
            parent_name, _, child = name.rpartition(".")
            parent = self.model.get_submodule(parent_name) if parent_name else self.model
            setattr(parent, child, BatchedLoRALinear(module, name, self))
        self.weights[name] = self._stacks(name, self.capacity, self.rank)

    def _stacks(self, name: str, capacity: int, rank: int) -> tuple[torch.Tensor, ...]:
        """Zero ``(A, B, scale)`` stacks of ``capacity`` slots for layer ``name``, on the bank's device."""
        fan_in, fan_out = self.shapes[name]
        dtype, device = self.dtype, self.device
        return (
            torch.zeros(capacity, rank, fan_in, dtype=dtype, device=device),
            torch.zeros(capacity, fan_out, rank, dtype=dtype, device=device),
            torch.zeros(capacity, dtype=dtype, device=device),
        )

    def _grow(self, capacity: int, rank: int) -> None:
        """Reallocate every stack to ``capacity`` slots of rank ``rank`` (zero padded).

        Only when the preallocated slots are all taken (retired adapters still pinned by
        running requests) or an adapter's rank exceeds the bank's.
        """
        self.reallocations += bool(self.weights)
        for name, (a, b, s) in self.weights.items():
            na, nb, ns = self._stacks(name, capacity, rank)
            na[: a.shape[0], : a.shape[1]] = a
            nb[: b.shape[0], :, : b.shape[2]] = b
            ns[: s.shape[0]] = s
            self.weights[name] = (na, nb, ns)
        self.capacity, self.rank = capacity, rank

    def add(
        self,
        tensors: dict[str, tuple[torch.Tensor, torch.Tensor]],
        rank: int,
        scale: float | dict[str, float],
    ) -> int:
        """Copy an adapter's weights into a free slot; returns the slot.

        Args:
            tensors: module name -> ``(A (r, in), B (out, r))``; ranks may differ per module.
            rank: the largest ``r`` among them.
            scale: LoRA scaling, one for every module or per module name (``alpha_pattern``).
        """
        with self.lock:
            unknown = sorted(set(tensors) - set(self.shapes))
            if unknown:
                raise ValueError(f"no LoRA-targetable layer named {unknown[0]!r} in the base")
            slot = next((s for s in range(1, self.capacity) if s not in self.used), self.capacity)
            if slot >= self.capacity or rank > self.rank:
                # all slots taken: double, so a run of adds past the preallocation stays amortized
                capacity = 2 * self.capacity if slot >= self.capacity else self.capacity
                self._grow(capacity, max(self.rank, rank))
            for name in tensors:
                if name not in self.weights:
                    self._wrap(name)
            for name, (a_all, b_all, s_all) in self.weights.items():
                a_all[slot].zero_()
                b_all[slot].zero_()
                s_all[slot] = 0.0
                if name in tensors:
                    a, b = tensors[name]
                    a_all[slot, : a.shape[0]] = a.to(self.device, self.dtype)
                    b_all[slot, :, : b.shape[1]] = b.to(self.device, self.dtype)
                    s_all[slot] = scale[name] if isinstance(scale, dict) else scale
            self.used.add(slot)
            return slot

    def remove(self, slot: int) -> None:
        """Free ``slot`` (its weights are overwritten by the next :meth:`add`)."""
        with self.lock:
            self.used.discard(slot)
            for _, _, s_all in self.weights.values():
                s_all[slot] = 0.0


def pattern_value(pattern: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's ``rank_pattern``/``alpha_pattern`` lookup: the first key matching the name's tail.

    A key matches ``module`` when ``module`` ends with it after a dot (or is it);
    keys may be regular expressions, as in ``peft.utils.other.get_pattern_key``.
    """
    for key in pattern:
        if re.match(rf"(.*\.)?({key})$", module):
            return pattern[key]
    return default


_NOT_SERVABLE = {
    "use_dora": "DoRA rescales every output column by a norm of W + BA, which the gathered path "
    "does not compute; merge it (qlora-hub merge) or serve it with PEFT",
    "modules_to_save": "it carries full trained copies of {value} that cannot change per row; "
    "retrain without modules_to_save",
    "target_parameters": "it adapts raw parameters {value}, not linear layers",
}


def _refuse_config(config: dict[str, Any], where: str) -> None:
    """Raise for config features the gathered path cannot apply exactly."""
    if config.get("peft_type", "LORA") != "LORA":
        raise ValidationError(f"{where}: peft_type {config.get('peft_type')!r} is not LORA")
    for key, why in _NOT_SERVABLE.items():
        value = config.get(key)
        if value:
            raise ValidationError(f"{where}: {key} is not servable: " + why.format(value=value))
    if config.get("bias", "none") != "none" or config.get("lora_bias"):
        raise ValidationError(f"{where}: trained biases are not servable; retrain with bias none")
    for key in ("rank_pattern", "alpha_pattern"):
        if not isinstance(config.get(key) or {}, dict):
            raise ValidationError(f"{where}: {key} must be an object of module name -> number")


def parse_adapter(payload: AdapterPayload, shapes: dict[str, tuple[int, int]]) -> dict[str, Any]:
    """Check a PEFT LoRA payload against the base and return its per-module ``(A, B)``, rank, scale.

    Only safetensors and JSON are read. Modules are found by the adapter's own
    tensor names (``base_model.model.<module>.lora_A.weight``); ``shapes`` maps
    the base's targetable module names to ``(in, out)``. Per-module ranks and
    alphas (``rank_pattern``, ``alpha_pattern``, rsLoRA) give per-module scales.
    Refuses (``ValidationError``, one line naming the adapter and the reason)
    what the gathered path cannot apply exactly: another PEFT type, DoRA,
    ``modules_to_save``, trained biases, or tensors whose names or shapes do not
    match the base.

    Returns:
        ``{"tensors": {module: (A, B)}, "rank": max r, "scale": {module: scale}}``.
    """
    where = f"adapter {payload.ref}"
    try:
        config = payload.config()
        tensors = payload.tensors()
    except (KeyError, ValueError, json.JSONDecodeError) as exc:
        raise ValidationError(f"{where}: unreadable files ({exc})") from None
    _refuse_config(config, where)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        module, _, kind = key.removeprefix(_PEFT_PREFIX).rpartition(".lora_")
        if kind not in ("A.weight", "B.weight"):
            raise ValidationError(f"{where}: unexpected tensor {key!r} (only LoRA A and B serve)")
        if module not in shapes:
            raise ValidationError(f"{where}: tensor {key!r} targets no linear layer of the base")
        pairs.setdefault(module, {})[kind[0]] = tensor
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    scales: dict[str, float] = {}
    for module, ab in pairs.items():
        rank, scale = _module_scale(config, module, where)
        fan_in, fan_out = shapes[module]
        a, b = ab.get("A"), ab.get("B")
        if a is None or b is None or a.shape != (rank, fan_in) or b.shape != (fan_out, rank):
            raise ValidationError(
                f"{where}: {module} needs A {(rank, fan_in)} and B {(fan_out, rank)}, "
                f"got {None if a is None else tuple(a.shape)} and {None if b is None else tuple(b.shape)}"
            )
        out[module], scales[module] = (a, b), scale
    if not out:
        raise ValidationError(f"{where}: no LoRA tensors")
    rank = max(a.shape[0] for a, _ in out.values())
    return {"tensors": out, "rank": rank, "scale": scales}


def _module_scale(config: dict[str, Any], module: str, where: str) -> tuple[int, float]:
    """``(r, scaling)`` of one module, as PEFT computes them (patterns, then rsLoRA)."""
    rank = int(pattern_value(config.get("rank_pattern") or {}, module, config.get("r", 8)))
    alpha = float(
        pattern_value(config.get("alpha_pattern") or {}, module, config.get("lora_alpha", 8))
    )
    if rank <= 0:
        raise ValidationError(f"{where}: {module} has rank {rank}; ranks must be positive")
    return rank, alpha / (rank**0.5) if config.get("use_rslora") else alpha / rank
