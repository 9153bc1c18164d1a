"""Merge modes: what each team encrypts, and how the decrypted sum becomes a LoRA adapter.

For team k with weight p_k, LoRA factors A_k (r x in), B_k (out x r) and scale
s_k (``lora_alpha / r``, or ``lora_alpha / sqrt(r)`` with rsLoRA), the update a
LoRA adds to a layer is ``s_k B_k A_k``. The target is the exact weighted sum
``sum_k p_k s_k B_k A_k``.

- ``ffa`` (exact): every team trains with the same frozen A (shared seed) and
  scale s, so ``sum_k p_k s B_k A = s (sum_k p_k B_k) A``. Teams encrypt
  ``p_k B_k``; A travels in the clear (it is public, drawn from a shared seed)
  and must be byte-identical across teams.
- ``fedavg`` (inexact, FedIT): teams encrypt ``p_k A_k`` and ``p_k B_k``; the
  result ``s (sum p_k B_k)(sum p_k A_k)`` differs from the target by the cross
  terms ``p_j p_k B_j A_k`` (j != k). :func:`fedavg_gap` measures it.
- ``dense`` (exact before truncation): teams encrypt ``p_k s_k B_k A_k``
  (out x in); the decrypted sum D is factored back to rank r by truncated SVD,
  ``D ~ U_r S_r V_r^T``, with ``B = U_r sqrt(S_r / s)`` and ``A = sqrt(S_r / s) V_r^T``;
  the energy kept is ``sum_{i<=r} S_i^2 / sum_i S_i^2``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from hub.errors import ValidationError

if TYPE_CHECKING:
    import numpy as np
    import torch

MODES = ("ffa", "fedavg", "dense")
A_SUFFIX, B_SUFFIX = ".lora_A.weight", ".lora_B.weight"
DELTA_SUFFIX = ".delta"
# Config keys that must agree across teams for a mode's maths to hold.
SHARED_KEYS = {
    "ffa": ("peft_type", "r", "lora_alpha", "use_rslora", "target_modules"),
    "fedavg": ("peft_type", "r", "lora_alpha", "use_rslora", "target_modules"),
    "dense": ("peft_type", "target_modules"),
}


def check_mode(mode: str) -> str:
    """Return ``mode`` or raise naming the known modes."""
    if mode not in MODES:
        raise ValidationError(f"unknown merge mode {mode!r}: use one of {', '.join(MODES)}")
    return mode


def lora_scale(config: Mapping[str, Any], r: int | None = None) -> float:
    """The LoRA scale ``alpha / r`` (``alpha / sqrt(r)`` with rsLoRA) of a PEFT config."""
    r = int(r if r is not None else config["r"])
    alpha = float(config.get("lora_alpha", r))
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


def shared_config(config: Mapping[str, Any], mode: str) -> dict[str, Any]:
    """The part of a PEFT config every team in a round must share (lists sorted)."""
    out = {}
    for key in SHARED_KEYS[mode]:
        value = config.get(key)
        out[key] = sorted(value) if isinstance(value, list) else value
    return out


def lora_pairs(
    tensors: Mapping[str, torch.Tensor], config: Mapping[str, Any]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Module prefix -> (A, B); refuses anything that is not a plain LoRA pair."""
    if config.get("peft_type", "LORA") != "LORA":
        raise ValidationError(f"adapter is {config.get('peft_type')}, not LoRA: only LoRA merges")
    if config.get("fan_in_fan_out") or config.get("rank_pattern") or config.get("alpha_pattern"):
        raise ValidationError(
            "adapter uses fan_in_fan_out, rank_pattern or alpha_pattern: merge needs one r and alpha"
        )
    pairs: dict[str, list[Any]] = {}
    for name, t in tensors.items():
        for i, suffix in enumerate((A_SUFFIX, B_SUFFIX)):
            if name.endswith(suffix):
                pairs.setdefault(name[: -len(suffix)], [None, None])[i] = t
                break
        else:
            raise ValidationError(f"adapter tensor {name!r} is not a LoRA A or B weight")
    broken = sorted(m for m, (a, b) in pairs.items() if a is None or b is None)
    if broken or not pairs:
        raise ValidationError(f"adapter has unpaired LoRA weights: {', '.join(broken) or 'none'}")
    return {m: (a, b) for m, (a, b) in sorted(pairs.items())}


def frozen_digest(frozen: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the names, dtypes, shapes and raw bytes of the frozen A tensors."""
    import torch

    h = hashlib.sha256()
    for name in sorted(frozen):
        t = frozen[name].contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def encode_update(
    mode: str, tensors: Mapping[str, torch.Tensor], config: Mapping[str, Any], weight: float
) -> tuple[list[dict[str, Any]], np.ndarray, dict[str, torch.Tensor]]:
    """What team k sends for ``mode``.

    Returns:
        ``(layout, vector, frozen)``: ``layout`` lists ``{"name", "shape"}`` in
        vector order, ``vector`` is the float64 weighted update (flattened,
        concatenated), ``frozen`` holds the A tensors sent in the clear (ffa only).
    """
    import numpy as np

    check_mode(mode)
    pairs = lora_pairs(tensors, config)
    layout: list[dict[str, Any]] = []
    parts: list[np.ndarray] = []
    frozen: dict[str, torch.Tensor] = {}

    def put(name: str, value: torch.Tensor) -> None:
        layout.append({"name": name, "shape": list(value.shape)})
        parts.append(value.double().reshape(-1).numpy() * weight)

    for module, (a, b) in pairs.items():
        if mode == "ffa":
            frozen[module + A_SUFFIX] = a
            put(module + B_SUFFIX, b)
        elif mode == "fedavg":
            put(module + A_SUFFIX, a)
            put(module + B_SUFFIX, b)
        else:
            put(module + DELTA_SUFFIX, lora_scale(config) * (b.double() @ a.double()))
    return layout, np.concatenate(parts), frozen


def split_vector(layout: Sequence[Mapping[str, Any]], vector: np.ndarray) -> dict[str, np.ndarray]:
    """Cut a flat vector back into named arrays following ``layout``."""
    out, pos = {}, 0
    for entry in layout:
        n = math.prod(entry["shape"])
        out[entry["name"]] = vector[pos : pos + n].reshape(entry["shape"])
        pos += n
    return out


def decode_merged(
    mode: str,
    layout: Sequence[Mapping[str, Any]],
    vector: np.ndarray,
    frozen: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    rank: int | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """Turn the decrypted sum into LoRA tensors (float64, so the
    caller rounds once to its output dtype), a PEFT config and a report.

    Args:
        mode: the round's merge mode.
        layout, vector: as produced by :func:`encode_update` (summed over teams).
        frozen: the shared A tensors (ffa).
        config: the PEFT config of the contributions (first team's).
        rank: target rank for ``dense`` (default: the config's ``r``).
    """
    import numpy as np
    import torch

    named = split_vector(layout, vector)
    config = dict(config)
    report: dict[str, Any] = {"mode": mode}
    if mode in ("ffa", "fedavg"):
        tensors = {n: torch.from_numpy(np.ascontiguousarray(v)) for n, v in named.items()}
        tensors.update(frozen)  # kept as sent: byte-identical A
        return tensors, config, report
    rank = int(rank or config["r"])
    config["r"] = rank
    scale = lora_scale(config, rank)
    tensors, kept, total = {}, 0.0, 0.0
    per_module = {}
    for name, dense in named.items():
        module = name[: -len(DELTA_SUFFIX)]
        u, s, vh = torch.linalg.svd(torch.from_numpy(dense), full_matrices=False)
        k = min(rank, s.numel())
        root = torch.sqrt(s[:k] / scale)
        b = u[:, :k] * root
        a = root[:, None] * vh[:k]
        if k < rank:  # keep the declared rank: pad with zero directions
            b = torch.nn.functional.pad(b, (0, rank - k))
            a = torch.nn.functional.pad(a, (0, 0, 0, rank - k))
        tensors[module + A_SUFFIX] = a
        tensors[module + B_SUFFIX] = b
        energy = float((s**2).sum())
        kept_m = float((s[:k] ** 2).sum())
        per_module[module] = kept_m / energy if energy else 1.0
        kept, total = kept + kept_m, total + energy
    report["rank"] = rank
    report["energy_kept"] = kept / total if total else 1.0
    report["energy_kept_min_module"] = min(per_module.values()) if per_module else 1.0
    return tensors, config, report


def dense_delta(tensors: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, Any]:
    """Module -> ``s B A`` (float64): the update an adapter adds to each layer."""
    return {
        m: lora_scale(config) * (b.double() @ a.double())
        for m, (a, b) in lora_pairs(tensors, config).items()
    }


def relative_gap(
    merged: Mapping[str, torch.Tensor],
    merged_config: Mapping[str, Any],
    exact: Mapping[str, torch.Tensor],
) -> float:
    """``||delta(merged) - exact||_F / ||exact||_F`` over all modules."""
    got = dense_delta(merged, merged_config)
    num = sum(float(((got[m] - exact[m]) ** 2).sum()) for m in exact)
    den = sum(float((exact[m] ** 2).sum()) for m in exact)
    return math.sqrt(num / den) if den else 0.0


def exact_sum(
    updates: Sequence[tuple[Mapping[str, torch.Tensor], Mapping[str, Any], float]],
) -> dict[str, Any]:
    """The exact target ``sum_k p_k s_k B_k A_k`` per module, from ``(tensors, config, p_k)``."""
    total: dict[str, Any] = {}
    for tensors, config, weight in updates:
        for m, d in dense_delta(tensors, config).items():
            total[m] = total[m] + weight * d if m in total else weight * d
    return total
