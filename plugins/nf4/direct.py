"""Direct load of a verified 4-bit checkpoint: build the skeleton, put the packed weights in.

``from_pretrained`` is general: it resolves files, plans dtypes and devices,
runs weight-conversion rules and a loading report for every architecture and
quantizer. On a small checkpoint that fixed cost is most of the load (about
40 ms of a 55 ms load on the embedded base). A checkpoint that
``qlora-hub quantize`` wrote and :func:`plugins.nf4.checkpoint.verify_checkpoint`
has just checked needs much less, so this module uses transformers' own
pieces directly:

1. the architecture class from the checkpoint's config, built with its
   parameters on the meta device (buffers such as rotary frequencies are
   computed for real), no random init and no tying yet;
2. transformers' bitsandbytes quantizer swaps the linear layers for
   ``Linear4bit`` (``preprocess_model``), exactly as ``from_pretrained`` does;
3. every tensor of the safetensors files goes into its parameter, the packed
   4-bit ones through ``Params4bit.from_prequantized`` with their stats;
4. weights are tied and the quantizer's ``postprocess_model`` marks the
   model (``is_loaded_in_4bit``, ``hf_quantizer``), so PEFT and the Trainer
   see the same model ``from_pretrained`` returns.

The file's keys must match the skeleton's parameters one to one; when they do
not (an architecture whose checkpoint keys ``from_pretrained`` renames or
fuses, a persistent buffer the skeleton lacks), :func:`load_direct` returns
``None`` before touching any weight and the caller uses ``from_pretrained``.
Only 4-bit checkpoints take this path. On a GPU every tensor is copied to
the device as it is put in (the packed weights and their quantization state
through ``Params4bit.from_prequantized(device=...)``, which builds the
``QuantState`` there), and the buffers the skeleton computed on the CPU
follow; nothing is quantized again. If this transformers lacks one of the
internals used here, :func:`load_direct` returns ``None`` and the caller
uses ``from_pretrained``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from hub.base import weight_files


def _read_tensors(files: list[Path]) -> Iterator[tuple[str, Any]]:
    from safetensors import safe_open

    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a Mapping)
                yield key, f.get_tensor(key)


def _skeleton(config: Any, quantizer: Any, device_map: dict[str, Any]) -> Any:
    """The architecture with meta parameters, real (CPU) buffers and ``Linear4bit`` layers."""
    from accelerate import init_empty_weights
    from transformers import initialization as init
    from transformers.modeling_utils import local_torch_dtype
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING
    from transformers.monkey_patching import apply_patches, patch_output_recorders

    cls = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    dtype = quantizer.quantization_config.bnb_4bit_compute_dtype
    with ExitStack() as stack:
        for context in (
            init_empty_weights(include_buffers=False),
            init.no_init_weights(),
            init.no_tie_weights(),
            local_torch_dtype(dtype, cls.__name__),
            apply_patches(),
        ):
            stack.enter_context(context)
        model = cls(config)
        patch_output_recorders(model)
        quantizer.preprocess_model(
            model=model, dtype=dtype, device_map=device_map, checkpoint_files=[]
        )
    return model


def _to_load(model: Any) -> set[str]:
    """Names the checkpoint must provide: meta parameters and persistent buffers, less tied copies."""
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
    names = {n for n, p in model.named_parameters(remove_duplicate=False) if p.is_meta}
    non_persistent = {n for n, _ in model.named_non_persistent_buffers()}
    names |= {n for n, _ in model.named_buffers() if n not in non_persistent}
    return names - tied


def load_direct(checkpoint: Path, device: Any = None) -> Any | None:
    """Load a verified 4-bit checkpoint without ``from_pretrained``; ``None`` if it does not fit.

    Args:
        checkpoint: a directory :func:`plugins.nf4.checkpoint.verify_checkpoint`
            accepted, written for a 4-bit method (nf4, fp4).
        device: a ``torch.device`` (``None``: the CPU); every parameter and buffer ends there.

    Returns:
        The model in eval mode, or ``None`` when the checkpoint's keys are not
        exactly the skeleton's (see the module docstring); nothing is loaded then.
    """
    import bitsandbytes as bnb
    import torch
    from transformers import AutoConfig, GenerationConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING
    from transformers.quantizers import AutoHfQuantizer

    device = torch.device("cpu") if device is None else torch.device(device)
    checkpoint = Path(checkpoint)
    config = AutoConfig.from_pretrained(checkpoint)
    qconfig = getattr(config, "quantization_config", None)
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING or qconfig is None:
        return None
    quantizer = AutoHfQuantizer.from_config(qconfig, pre_quantized=True)
    if not getattr(quantizer.quantization_config, "load_in_4bit", False):
        return None
    config.name_or_path = str(checkpoint)
    try:
        model = _skeleton(config, quantizer, {"": device.index if device.type == "cuda" else "cpu"})
    except ImportError:  # an older transformers without these internals
        return None

    # Group each packed weight with its quantization stats ("<module>.weight.absmax", ...).
    plain: dict[str, Any] = {}
    stats: dict[str, dict[str, Any]] = {}
    # verify_checkpoint refused any safetensors file the manifest does not list
    for key, tensor in _read_tensors(weight_files(checkpoint)):
        module, sep, stat = key.partition(".weight.")
        if sep:
            stats.setdefault(module, {})[stat] = tensor
        else:
            plain[key] = tensor
    packed = {f"{m}.weight" for m in stats}
    if set(plain) != _to_load(model) or not packed <= set(plain):
        return None
    if not all(isinstance(model.get_submodule(m), bnb.nn.Linear4bit) for m in stats):
        return None

    for key, tensor in plain.items():
        module_name, _, name = key.rpartition(".")
        module = model.get_submodule(module_name)
        if key in packed:
            module._parameters[name] = bnb.nn.Params4bit.from_prequantized(
                data=tensor, quantized_stats=stats[module_name], device=device, module=module,
            )  # fmt: skip
        elif name in module._buffers:
            module._buffers[name] = tensor.to(device)
        else:
            old = module._parameters[name]
            module._parameters[name] = torch.nn.Parameter(
                tensor.to(device), requires_grad=old.requires_grad
            )
    for module in model.modules():  # buffers the skeleton computed (rotary frequencies)
        for name, buffer in module._buffers.items():
            if buffer is not None and buffer.device != device:
                module._buffers[name] = buffer.to(device)
    model.tie_weights()
    if device.type == "cuda":  # what from_pretrained records for device_map={"": N}
        model.hf_device_map = {"": device.index}
    model.hf_quantizer = quantizer
    quantizer.postprocess_model(model)
    if (checkpoint / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(checkpoint)
    model.eval()
    return model
