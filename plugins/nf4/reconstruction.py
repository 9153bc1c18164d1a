"""Quantize-dequantize round trips of one weight matrix, and their error.

``nf4`` and ``fp4`` go through bitsandbytes' own ``quantize_4bit`` /
``dequantize_4bit`` (the kernels the model uses), so their bytes and errors
are the real ones. ``int4_absmax`` is the plain reference: symmetric
integers -7..7 scaled by each block's absmax (fp32), no code book.
"""

from __future__ import annotations

from typing import Any

from plugins.nf4.footprint import quant_state_bytes

BLOCKSIZE = 64
FORMATS = ("nf4", "fp4", "int4_absmax")
"""The formats compared side by side, in report order."""


def bnb_roundtrip(
    weight: Any, quant_type: str, *, double_quant: bool = True, blocksize: int = BLOCKSIZE
) -> tuple[Any, int]:
    """Quantize ``weight`` with bitsandbytes 4-bit and dequantize it.

    Returns:
        (dequantized weight, bytes stored: packed codes + scales, code tables excluded).
    """
    import bitsandbytes.functional as F

    packed, state = F.quantize_4bit(
        weight, blocksize=blocksize, compress_statistics=double_quant, quant_type=quant_type
    )
    restored = F.dequantize_4bit(packed, state)
    return restored, packed.numel() * packed.element_size() + quant_state_bytes(state)[0]


def int4_absmax_roundtrip(weight: Any, *, blocksize: int = BLOCKSIZE) -> tuple[Any, int]:
    """Blockwise symmetric int4: ``round(w / (absmax / 7))`` in -7..7, fp32 absmax per block.

    Returns:
        (dequantized weight, bytes stored: 4 bits per weight + 4 bytes per block).
    """
    import torch

    flat = weight.float().flatten()
    n = flat.numel()
    pad = (-n) % blocksize
    blocks = torch.nn.functional.pad(flat, (0, pad)).view(-1, blocksize)
    absmax = blocks.abs().amax(dim=1, keepdim=True)
    scale = torch.where(absmax > 0, absmax / 7, torch.ones_like(absmax))
    restored = (torch.round(blocks / scale).clamp(-7, 7) * scale).flatten()[:n]
    return restored.view_as(weight).to(weight.dtype), (n + 1) // 2 + blocks.shape[0] * 4


def roundtrip(weight: Any, fmt: str, *, double_quant: bool = True) -> tuple[Any, int]:
    """Round trip ``weight`` through ``fmt`` (one of :data:`FORMATS`)."""
    if fmt == "int4_absmax":
        return int4_absmax_roundtrip(weight)
    return bnb_roundtrip(weight, fmt, double_quant=double_quant)


def error_sums(original: Any, restored: Any) -> dict[str, float]:
    """Sums that combine across layers: squared error, squared norm, max abs error."""
    o = original.double()
    diff = o - restored.double()
    return {
        "sq_err": diff.pow(2).sum().item(),
        "sq_norm": o.pow(2).sum().item(),
        "max_abs": diff.abs().max().item(),
    }


def figures(sums: dict[str, float], nbytes: int, params: int) -> dict[str, float]:
    """Report figures from :func:`error_sums` totals: bytes, bits/param, relative MSE, max abs."""
    return {
        "bytes": nbytes,
        "bits_per_param": 8 * nbytes / params,
        "rel_mse": sums["sq_err"] / sums["sq_norm"] if sums["sq_norm"] else 0.0,
        "max_abs": sums["max_abs"],
    }


def compare_formats(weight: Any, *, double_quant: bool = True) -> dict[str, dict[str, Any]]:
    """Round trip ``weight`` through every format: ``{fmt: {bytes, sums}}``."""
    out = {}
    for fmt in FORMATS:
        restored, nbytes = roundtrip(weight, fmt, double_quant=double_quant)
        out[fmt] = {"bytes": nbytes, "sums": error_sums(weight, restored)}
    return out
