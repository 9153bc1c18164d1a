"""Loading the served base: once, 4-bit, with the gathered-LoRA bank wrapped around it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from hub.models import LoadedBase, is_checkpoint, load_base, model_device, resolve_device

if TYPE_CHECKING:
    from hub.plugins import Hub


def load_served_base(hub: Hub, source: str | Path, device: Any = None) -> LoadedBase:
    """Load ``source`` (pre-quantized checkpoint or Hugging Face directory) for serving.

    Uses :func:`hub.models.load_base` (the ``nf4`` quantizer plugin). When no
    ``nf4`` quantizer is registered and ``source`` is a Hugging Face directory,
    falls back to transformers' bitsandbytes NF4 + double quantization directly.

    Args:
        device: ``auto`` (``None``), ``cpu``, ``cuda`` or ``cuda:N``
            (:func:`hub.models.resolve_device`); everything the engine allocates
            follows the model there (``LoadedBase.device``).
    """
    target = resolve_device(device)
    if is_checkpoint(source) or "nf4" in hub.quantizers:
        loaded = load_base(hub, source, device=target)
    else:
        loaded = _load_nf4_directly(source, target)
    loaded.model.eval()
    loaded.model.requires_grad_(False)
    return loaded


def _load_nf4_directly(source: str | Path, device: Any) -> LoadedBase:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    from hub.base import fingerprint
    from hub.models import default_compute_dtype

    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=getattr(torch, default_compute_dtype(device)),
    )
    model = AutoModelForCausalLM.from_pretrained(
        str(source),
        quantization_config=quant,
        device_map={"": device.index if device.type == "cuda" else "cpu"},
    )
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    return LoadedBase(
        model=model,
        tokenizer=tokenizer,
        fingerprint=fingerprint(Path(source)),
        method="nf4",
        source=str(source),
        device=model_device(model),
    )


def compute_dtype(model: Any) -> Any:
    """The dtype activations flow in (the input embedding's dtype)."""
    return model.get_input_embeddings().weight.dtype
