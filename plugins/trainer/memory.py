"""The memory account of a QLoRA run, against the QLoRA paper's estimate ``0.52p + 24krd``.

``p`` is the number of base parameters (NF4 with double quantization costs
about 4.13 bits = 0.52 bytes each); each of the ``k`` adapted matrices adds
``2rd`` LoRA parameters, and each of those costs about 12 bytes while training
(bf16 weight and gradient, two fp32 Adam moments), hence ``24krd``.

:func:`qlora_estimate` adds what the formula leaves out (the layers kept in
full precision, the activations of the largest batch) so the measured peak
(:class:`PeakMemory`: ``torch.cuda.max_memory_allocated`` on a GPU, the
process's peak RSS on the CPU) has something to be compared with.
"""

from __future__ import annotations

import resource
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
    packed = [p for p in base if getattr(p, "quant_state", None) is not None]
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
        "packed_weight_bytes": tensor_bytes(packed),
        "quant_state_bytes": quant_state,
        "other_base_bytes": tensor_bytes(base) - tensor_bytes(packed) + tensor_bytes(buffers),
        "adapter_params": sum(p.numel() for p in adapter),
        "adapter_bytes": tensor_bytes(adapter),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "trainable_bytes": tensor_bytes(p for p in model.parameters() if p.requires_grad),
        "optimizer_state_bytes": optimizer_state_bytes(optimizer),
        "k": k,
        "r": r,
        "d": d,
        "formula": "0.52p + 24krd",
        "formula_bytes": int(estimate_base + estimate_lora),
        "formula_base_bytes": int(estimate_base),
        "formula_lora_bytes": int(estimate_lora),
    }


def run_account(
    model: Any,
    optimizer: Any,
    opts: Any,
    peak: PeakMemory,
    batch_shape: tuple[int, int],
    *,
    mixed: bool,
    opt_info: dict[str, Any],
) -> dict[str, Any]:
    """A finished run's :func:`memory_account`, its measured peak and its :func:`qlora_estimate`.

    Args:
        opts: the run's ``TrainOptions`` (``r``, ``gradient_checkpointing``).
        batch_shape: rows x width of the largest training batch.
        mixed: the run computed in 16 bits (autocast), else in fp32.
        opt_info: what :func:`hub.optim.describe_optimizer` said ran (``state_bits``).
    """
    account = memory_account(model, optimizer, opts.r)
    account.update(peak.report())
    account["estimate"] = qlora_estimate(
        account,
        config=getattr(model, "config", None),
        batch_shape=batch_shape,
        gradient_checkpointing=opts.gradient_checkpointing,
        compute_bytes=2 if mixed else 4,
        state_bits=opt_info.get("state_bits", 32),
    )
    return account


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
            *_peak_lines(acc, m),
        ]
    )


def _peak_lines(acc: dict[str, Any], m: Any) -> list[str]:
    """The measured peak against the QLoRA estimate, when both are in the account."""
    est = acc.get("estimate")
    if not (est and acc.get("peak_bytes")):
        return []
    kind = "CUDA max allocated" if acc["peak_kind"] == "cuda_max_memory_allocated" else "peak RSS"
    return [
        f"  peak ({kind}, {acc['device']}) {m(acc['peak_bytes']).strip()} vs QLoRA estimate "
        f"{m(est['total_bytes']).strip()} (activations {m(est['activation_bytes']).strip()})"
    ]


class PeakMemory:
    """The peak memory of training on ``device``, measured from construction on.

    CUDA: ``torch.cuda.max_memory_allocated`` (tensors only, after a reset here;
    bitsandbytes' paged optimizer state lives in CUDA managed memory, outside
    torch's allocator, so it is not counted: that is what paging saves). CPU:
    the process's peak resident set size (interpreter and libraries included).
    """

    def __init__(self, device: Any) -> None:
        import torch

        self.device = torch.device(device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def report(self) -> dict[str, Any]:
        """``peak_bytes``, ``peak_kind`` (``cuda_max_memory_allocated`` or ``rss``), ``device``."""
        import torch

        if self.device.type == "cuda":
            return {
                "device": str(self.device),
                "peak_kind": "cuda_max_memory_allocated",
                "peak_bytes": torch.cuda.max_memory_allocated(self.device),
                "peak_reserved_bytes": torch.cuda.max_memory_reserved(self.device),
            }
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
        return {"device": str(self.device), "peak_kind": "rss", "peak_bytes": rss}


def trainer_precision(model: Any, device: Any) -> dict[str, bool]:
    """``TrainingArguments`` precision flags: autocast in the base's dtype on a GPU.

    On CUDA a bf16 (fp16) base trains under bf16 (fp16) autocast, the QLoRA recipe:
    LoRA weights and optimizer state stay fp32. On the CPU nothing is set (no
    autocast; the compute dtype is float32 unless the CPU has native bf16).
    Read before ``prepare_model_for_kbit_training`` upcasts the norms to fp32.
    """
    import torch

    if torch.device(device).type != "cuda":
        return {}
    dtype = getattr(model, "dtype", None)
    if dtype == torch.bfloat16:
        return {"bf16": True}
    if dtype == torch.float16:
        return {"fp16": True}
    return {}


def activation_bytes(
    config: Any, rows: int, width: int, *, gradient_checkpointing: bool, compute_bytes: int
) -> int:
    """A rough count of the activations autograd keeps for one batch of ``rows x width`` tokens.

    Per token and decoder layer: ``15h + 3kv + 5i`` values (norm inputs and
    outputs, the LoRA dropout copies of each projection's input, q/k/v and the
    attention output, and four ``i``-wide MLP tensors; SDPA keeps no score
    matrix). With gradient checkpointing only each layer's input (``h``) is kept,
    plus one layer recomputed at a time. The logits add ``V`` values in the compute
    dtype and two fp32 copies (the loss's upcast and its gradient).
    """
    h = int(getattr(config, "hidden_size", 0) or 0)
    i = int(getattr(config, "intermediate_size", 0) or 4 * h)
    layers = int(getattr(config, "num_hidden_layers", 0) or 0)
    heads = int(getattr(config, "num_attention_heads", 0) or 1)
    kv = int(getattr(config, "num_key_value_heads", 0) or heads) * (h // heads)
    vocab = int(getattr(config, "vocab_size", 0) or 0)
    tokens = rows * width
    per_layer = tokens * (15 * h + 3 * kv + 5 * i) * compute_bytes
    if gradient_checkpointing:
        layer_total = layers * tokens * h * compute_bytes + per_layer
    else:
        layer_total = layers * per_layer
    return int(layer_total + tokens * vocab * (compute_bytes + 8))


def qlora_estimate(
    account: dict[str, Any],
    *,
    config: Any,
    batch_shape: tuple[int, int],
    gradient_checkpointing: bool,
    compute_bytes: int,
    state_bits: int,
) -> dict[str, Any]:
    """What a QLoRA run should need, part by part, from a :func:`memory_account`.

    4-bit weights (packed bytes + quantization state) + the layers kept in full
    precision + LoRA weights and gradients + optimizer state (two moments per
    trainable parameter: 4 bytes each, or 1 for 8-bit state) + activations
    (:func:`activation_bytes` for the largest batch, ``batch_shape`` = rows x width).
    """
    trainable = account["trainable_params"]
    parts = {
        "weights_4bit_bytes": account["packed_weight_bytes"] + account["quant_state_bytes"],
        "other_base_bytes": account["other_base_bytes"],
        "lora_bytes": 2 * account["trainable_bytes"],  # weights + gradients
        "optimizer_bytes": trainable * 2 * (1 if state_bits == 8 else 4),
        "activation_bytes": activation_bytes(
            config,
            *batch_shape,
            gradient_checkpointing=gradient_checkpointing,
            compute_bytes=compute_bytes,
        ),
    }
    total = sum(parts.values())
    out: dict[str, Any] = {**parts, "total_bytes": total, "batch_shape": list(batch_shape)}
    peak = account.get("peak_bytes")
    if peak:
        out["peak_over_estimate"] = round(peak / total, 3) if total else None
    return out
