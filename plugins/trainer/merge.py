"""Merging an adapter into its base for tools without adapter support.

The adapter was trained against the *dequantized* NF4 weights, so those are
what it is merged into: the 4-bit base is dequantized to bf16
(transformers' ``dequantize``), the adapter is added and folded in with PEFT's
``merge_and_unload``, and the result is saved as an ordinary Hugging Face
model in safetensors. Merging into the 4-bit weights directly would re-quantize
the sum and lose most of the adapter, so it is never done.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from hub.errors import ValidationError
from hub.types import AdapterPayload

SAMPLE_TEXTS = ("hello:", "qlora hub", "The quick brown fox", "abc:")
"""Inputs the merged model is checked on when the adapter has no data of its own."""


def sample_inputs(tokenizer: Any, payload: AdapterPayload) -> list[str]:
    """A few prompts to compare logits on: from the training data when it is readable."""
    import json

    path = (payload.manifest or {}).get("data", {}).get("path")
    texts: list[str] = []
    if path and Path(path).is_file():
        for line in Path(path).read_text(encoding="utf-8").splitlines()[:4]:
            row = json.loads(line)
            texts.append(row.get("prompt") or row.get("text") or "")
    return [t for t in texts if t] or list(SAMPLE_TEXTS)


def max_logit_diff(a: Any, b: Any, tokenizer: Any, texts: list[str]) -> tuple[float, float]:
    """``(max |logits_a - logits_b|, max |logits_b|)`` over ``texts`` (fp32, no padding)."""
    import torch

    worst = scale = 0.0
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt")["input_ids"]
            la = a(input_ids=ids).logits.float()
            lb = b(input_ids=ids).logits.float()
            worst = max(worst, (la - lb).abs().max().item())
            scale = max(scale, lb.abs().max().item())
    return worst, scale


def merge_adapter(hub: Any, base: str, payload: AdapterPayload, out_dir: Path) -> dict[str, Any]:
    """Write ``base`` + ``payload`` merged in bf16 to ``out_dir``; compare its logits.

    Returns ``{"out", "parameters", "samples", "max_abs_diff", "logit_scale"}``: the
    saved model is reloaded from disk and compared with the 4-bit base plus the
    adapter (the way it was trained).
    """
    import torch
    from transformers import AutoModelForCausalLM

    from hub.models import load_base

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ValidationError(f"{out_dir} is not empty: choose a new output directory")
    method = hub.adapters[(payload.manifest or {}).get("adapter_method", "lora")]

    loaded = load_base(hub, base)
    bf16 = loaded.model
    if getattr(bf16, "hf_quantizer", None) is not None:
        bf16 = bf16.dequantize(dtype=torch.bfloat16)
    bf16 = bf16.to(torch.bfloat16)
    merged = method.load(bf16, payload, "default").merge_and_unload()
    merged.config.quantization_config = None
    if hasattr(merged.config, "quantization_config"):
        del merged.config.quantization_config
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(str(tmp), safe_serialization=True)
    loaded.tokenizer.save_pretrained(str(tmp))
    if out_dir.exists():
        out_dir.rmdir()
    tmp.rename(out_dir)

    reference = method.load(load_base(hub, base).model, payload, "default")
    standalone = AutoModelForCausalLM.from_pretrained(str(out_dir), dtype=torch.bfloat16)
    standalone.eval()
    texts = sample_inputs(loaded.tokenizer, payload)
    diff, scale = max_logit_diff(standalone, reference, loaded.tokenizer, texts)
    return {
        "out": str(out_dir),
        "parameters": sum(p.numel() for p in standalone.parameters()),
        "samples": len(texts),
        "max_abs_diff": diff,
        "logit_scale": scale,
    }
