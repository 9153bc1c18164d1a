"""Merging an adapter into its base for tools without adapter support.

The adapter was trained against the *dequantized* NF4 weights, so those are
what it is merged into: the 4-bit base is dequantized to bf16
(transformers' ``dequantize``), the adapter is added and folded in with PEFT's
``merge_and_unload``, and the result is saved as an ordinary Hugging Face
model in safetensors. Merging into the 4-bit weights directly would re-quantize
the sum and lose most of the adapter, so it is never done.

Layers a checkpoint stores as transformers ``Conv1D`` (GPT-2: weight
``(in, out)``) come back from dequantizing as ``nn.Linear`` and are turned back
into ``Conv1D`` before saving. The output appears only complete and checked:
written to a temporary sibling, reloaded and compared, then renamed.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from hub.atomic import fsync_dir
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
    """``(max |logits_a - logits_b|, max |logits_b|)`` over ``texts`` (fp32, no padding).

    Non-finite logits give NaN (never hidden by the maximum).
    """
    import torch

    from hub.models import model_device

    diffs, scales = [], []
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt")["input_ids"]
            la = a(input_ids=ids.to(model_device(a))).logits.float().cpu()
            lb = b(input_ids=ids.to(model_device(b))).logits.float().cpu()
            diffs.append((la - lb).abs().max())
            scales.append(lb.abs().max())
    return torch.stack(diffs).max().item(), torch.stack(scales).max().item()


MAX_RELATIVE_DIFF = 0.25
"""A merge whose logits differ from base + adapter by more than this share of the logit
scale (or are not finite) is refused; bf16 rounding alone measures about 0.05."""


def merge_adapter(
    hub: Any, base: str, payload: AdapterPayload, out_dir: Path, device: Any = None
) -> dict[str, Any]:
    """Write ``base`` + ``payload`` merged in bf16 to ``out_dir``; compare its logits.

    ``device`` (``auto``, ``cpu``, ``cuda[:N]``; :func:`hub.models.resolve_device`) is
    where the base is loaded, dequantized, merged and checked; the files are the same.

    The model is written to a temporary sibling directory, reloaded from there
    and compared with the 4-bit base plus the adapter (the way it was trained);
    only then is it renamed to ``out_dir``. On any failure nothing is left
    behind: ``out_dir`` is untouched and the temporary directory removed.

    Returns ``{"out", "parameters", "samples", "max_abs_diff", "logit_scale"}``.

    Raises:
        ValidationError: ``out_dir`` is not empty, or the saved model does not
            reproduce base + adapter (non-finite logits, or a difference above
            :data:`MAX_RELATIVE_DIFF` of the logit scale).
    """
    import torch

    from hub.models import load_base, resolve_device

    out_dir = Path(out_dir)
    target = resolve_device(device)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ValidationError(f"{out_dir} is not empty: choose a new output directory")
    method = hub.adapters[(payload.manifest or {}).get("adapter_method", "lora")]

    loaded = load_base(hub, base, device=target)
    bf16 = loaded.model
    if getattr(bf16, "hf_quantizer", None) is not None:
        bf16 = bf16.dequantize(dtype=torch.bfloat16)
    bf16 = bf16.to(torch.bfloat16)
    merged = method.load(bf16, payload, "default").merge_and_unload()
    merged.config.quantization_config = None
    if hasattr(merged.config, "quantization_config"):
        del merged.config.quantization_config
    restore_conv1d(merged)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        merged.save_pretrained(str(tmp), safe_serialization=True)
        loaded.tokenizer.save_pretrained(str(tmp))
        report = _check(hub, base, payload, method, tmp, loaded.tokenizer, target)
        fsync_dir(tmp)
        if out_dir.exists():
            out_dir.rmdir()
        tmp.rename(out_dir)
        fsync_dir(out_dir.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"out": str(out_dir), **report}


def _check(
    hub: Any, base: str, payload: AdapterPayload, method: Any, saved: Path, tok: Any, device: Any
) -> dict:
    """Reload the saved model on ``device`` and compare it with the 4-bit base plus the adapter."""
    import math

    import torch
    from transformers import AutoModelForCausalLM

    from hub.models import load_base

    reference = method.load(load_base(hub, base, device=device).model, payload, "default")
    standalone = AutoModelForCausalLM.from_pretrained(
        str(saved), dtype=torch.bfloat16, device_map={"": str(device)}
    )
    standalone.eval()
    texts = sample_inputs(tok, payload)
    diff, scale = max_logit_diff(standalone, reference, tok, texts)
    if not (math.isfinite(diff) and math.isfinite(scale) and diff <= MAX_RELATIVE_DIFF * scale):
        raise ValidationError(
            f"merging {payload.name} gives a model that does not reproduce base + adapter "
            f"(max |logit difference| {diff:.4g}, logit scale {scale:.3g}); nothing was written"
        )
    return {
        "parameters": sum(p.numel() for p in standalone.parameters()),
        "samples": len(texts),
        "max_abs_diff": diff,
        "logit_scale": scale,
    }


def restore_conv1d(model: Any) -> list[str]:
    """Turn layers the architecture defines as ``Conv1D`` (GPT-2) back into ``Conv1D``.

    Dequantizing replaces every 4-bit layer with an ``nn.Linear`` (weight
    ``(out, in)``), but a GPT-2 checkpoint stores these weights as ``(in, out)``:
    saved as they are, the model would load transposed. Returns the names changed.
    """
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(model.config)
    names = [n for n, m in skeleton.named_modules() if isinstance(m, Conv1D)]
    changed = []
    for name in names:
        linear = model.get_submodule(name)
        if not isinstance(linear, torch.nn.Linear):
            continue
        conv = Conv1D(linear.out_features, linear.in_features)
        weight = linear.weight.detach().t().contiguous()
        bias = (
            linear.bias.detach() if linear.bias is not None else weight.new_zeros(weight.shape[1])
        )
        conv.weight = torch.nn.Parameter(weight, requires_grad=False)
        conv.bias = torch.nn.Parameter(bias, requires_grad=False)
        model.set_submodule(name, conv)
        changed.append(name)
    return changed
