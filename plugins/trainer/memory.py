"""The memory account of a QLoRA run, against the QLoRA paper's estimate ``0.52p + 24krd``.

``p`` is the number of base parameters (NF4 with double quantization costs
about 4.13 bits = 0.52 bytes each); each of the ``k`` adapted matrices adds
``2rd`` LoRA parameters, and each of those costs about 12 bytes while training
(bf16 weight and gradient, two fp32 Adam moments), hence ``24krd``.
"""

from __future__ import annotations

from typing import Any


def tensor_bytes(tensors: Any) -> int:
    """Sum of ``numel * element_size`` over tensors."""
    return sum(t.numel() * t.element_size() for t in tensors)


def memory_account(model: Any, optimizer: Any, r: int) -> dict[str, Any]:
    """Measured bytes of base, adapter and optimizer state, and the formula's estimate.

    Args:
        model: the ``PeftModel`` being trained.
        optimizer: its optimizer, after at least one step (state is created lazily).
        r: LoRA rank.
    """
    import torch

    from hub.optim import optimizer_state_bytes

    adapter = [p for n, p in model.named_parameters() if "lora_" in n]
    base = [p for n, p in model.named_parameters() if "lora_" not in n]
    buffers = list(model.buffers())
    # bitsandbytes keeps the 4-bit quantization constants (absmax, nested code) outside
    # the parameters, on each weight's quant_state
    quant_state = 0
    for p in base:
        qs = getattr(p, "quant_state", None)
        if qs is not None:
            for t in (qs.absmax, getattr(qs, "code", None)):
                if torch.is_tensor(t):
                    quant_state += tensor_bytes([t])
            nested = getattr(qs, "state2", None)
            if nested is not None:
                quant_state += tensor_bytes([nested.absmax, nested.code])
    p_count = 0
    for p in base:
        # a packed 4-bit parameter stores two weights per byte
        p_count += p.numel() * (2 if p.dtype == torch.uint8 and hasattr(p, "quant_state") else 1)
    k = sum(1 for n, _ in model.named_parameters() if "lora_A" in n)
    d = getattr(getattr(model, "config", None), "hidden_size", 0) or 0
    estimate_base = 0.52 * p_count
    estimate_lora = 24 * k * r * d
    return {
        "base_params": p_count,
        "base_bytes": tensor_bytes(base) + tensor_bytes(buffers) + quant_state,
        "adapter_params": sum(p.numel() for p in adapter),
        "adapter_bytes": tensor_bytes(adapter),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "optimizer_state_bytes": optimizer_state_bytes(optimizer),
        "k": k,
        "r": r,
        "d": d,
        "formula": "0.52p + 24krd",
        "formula_bytes": int(estimate_base + estimate_lora),
        "formula_base_bytes": int(estimate_base),
        "formula_lora_bytes": int(estimate_lora),
    }


def format_account(acc: dict[str, Any]) -> str:
    """The account as a few printable lines."""
    mib = 1 << 20

    def m(b: float) -> str:
        return f"{b / mib:8.2f} MiB"

    measured = acc["base_bytes"] + acc["adapter_bytes"] + acc["optimizer_state_bytes"]
    return "\n".join(
        [
            "memory account (measured vs 0.52p + 24krd):",
            f"  base          {m(acc['base_bytes'])}  ({acc['base_params']:,} params; 0.52p = {m(acc['formula_base_bytes']).strip()})",
            f"  adapter       {m(acc['adapter_bytes'])}  ({acc['adapter_params']:,} params, k={acc['k']} r={acc['r']} d={acc['d']})",
            f"  optimizer     {m(acc['optimizer_state_bytes'])}",
            f"  total         {m(measured)}  vs formula {m(acc['formula_bytes']).strip()}",
        ]
    )
