"""Which linear layers a model has, by the short names LoRA targets use."""

from __future__ import annotations

from typing import Any


def linear_module_names(model: Any) -> list[str]:
    """Sorted short names (``q_proj``, ``down_proj``, ...) of the model's linear layers.

    bitsandbytes' ``Linear4bit``/``Linear8bitLt`` subclass ``torch.nn.Linear``, so
    quantized layers count. The output head is left out, as PEFT's ``all-linear`` does.
    """
    import torch

    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = set()
    for full, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and module is not output:
            names.add(full.rsplit(".", 1)[-1])
    # a PEFT-wrapped model names its LoRA sub-layers too; they are never targets
    return sorted(n for n in names if n not in {"base_layer", "default"} and "lora" not in n)
