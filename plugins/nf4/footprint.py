"""Bytes and bits per parameter of a loaded (quantized) model.

A 4-bit weight costs its packed codes (4 bits), its per-block absmax scale
(fp32 per 64 weights, or with double quantization 8 bits per 64 weights plus
an fp32 scale per 256 blocks) — the format's limit is
``4 + 8/64 + 32/(64*256) = 4.127`` bits with double quantization and
``4 + 32/64 = 4.5`` without. The 16- or 256-entry code tables are per-tensor
constants; they are counted apart (``tables_bytes``), not in the per-weight figure.
"""

from __future__ import annotations

from typing import Any


def nf4_limit_bits(double_quant: bool, blocksize: int = 64, nested_blocksize: int = 256) -> float:
    """The 4-bit format's bits per weight, scales included, code tables excluded."""
    if double_quant:
        return 4 + 8 / blocksize + 32 / (blocksize * nested_blocksize)
    return 4 + 32 / blocksize


def _nbytes(t: Any) -> int:
    return t.numel() * t.element_size()


def quant_state_bytes(state: Any) -> tuple[int, int]:
    """(scale bytes, code-table bytes) of a bitsandbytes 4-bit ``QuantState``."""
    scales, tables = _nbytes(state.absmax), _nbytes(state.code)
    if state.nested:
        scales += _nbytes(state.state2.absmax) + 4  # + the fp32 offset
        tables += _nbytes(state.state2.code)
    return scales, tables


def linear_storage(module: Any) -> dict[str, int] | None:
    """Storage of one bitsandbytes linear layer's weight, or ``None`` for other modules.

    Returns:
        ``{"params", "bytes", "tables_bytes"}``: original weight count, bytes of
        codes + scales, bytes of code tables.
    """
    import bitsandbytes as bnb

    weight = getattr(module, "weight", None)
    if isinstance(module, bnb.nn.Linear4bit) and weight.quant_state is not None:
        state = weight.quant_state
        scales, tables = quant_state_bytes(state)
        return {
            "params": state.shape.numel(),
            "bytes": _nbytes(weight) + scales,
            "tables_bytes": tables,
        }
    if isinstance(module, bnb.nn.Linear8bitLt):
        scb = getattr(weight, "SCB", None)
        if scb is None:
            scb = getattr(module.state, "SCB", None)
        scale = _nbytes(scb) if scb is not None else 0
        return {"params": weight.numel(), "bytes": _nbytes(weight) + scale, "tables_bytes": 0}
    return None


def model_footprint(model: Any) -> dict[str, Any]:
    """Bytes and bits per parameter, for the quantized linear weights and the whole model.

    Returns:
        ``parameters``/``bytes``/``bits_per_param`` for the whole model (every
        parameter and buffer, quantized weights at their stored size), the same
        three prefixed ``quantized_`` for the quantized linear weights alone,
        ``tables_bytes`` (code tables), and ``quantized_layers`` (count).
    """
    total_params = total_bytes = q_params = q_bytes = tables = layers = 0
    seen: set[int] = set()
    for module in model.modules():
        storage = linear_storage(module)
        if storage is not None:
            layers += 1
            q_params += storage["params"]
            q_bytes += storage["bytes"]
            tables += storage["tables_bytes"]
            seen.add(id(module.weight))
    for is_param, tensors in ((True, model.parameters()), (False, model.buffers())):
        for t in tensors:
            if id(t) in seen:
                continue
            seen.add(id(t))
            total_params += t.numel() if is_param else 0  # buffers (rotary tables) cost bytes only
            total_bytes += _nbytes(t)
    total_params += q_params
    total_bytes += q_bytes + tables
    return {
        "parameters": total_params,
        "bytes": total_bytes,
        "bits_per_param": 8 * total_bytes / total_params if total_params else 0.0,
        "quantized_parameters": q_params,
        "quantized_bytes": q_bytes,
        "quantized_bits_per_param": 8 * q_bytes / q_params if q_params else 0.0,
        "tables_bytes": tables,
        "quantized_layers": layers,
    }
