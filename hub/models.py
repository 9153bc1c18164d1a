"""Loading a base model for training or serving, whatever form it is in.

A base is either a Hugging Face model (hub id or directory), quantized on
load by a quantizer, or a pre-quantized checkpoint written by
``qlora-hub quantize``, recognised by its manifest file
(:data:`CHECKPOINT_MANIFEST`) and loaded without materialising full precision.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hub.base import fingerprint
from hub.errors import IntegrityError

if TYPE_CHECKING:
    from hub.plugins import Hub

CHECKPOINT_MANIFEST = "qlora-hub-quant.json"
"""Manifest of a pre-quantized checkpoint: method, options, base fingerprint, file hashes."""


@dataclass
class LoadedBase:
    """A base model ready for adapters."""

    model: Any
    tokenizer: Any
    fingerprint: str
    """sha256 of the *source* weights: the same for a model and its pre-quantized checkpoint."""
    method: str
    source: str


def is_checkpoint(source: str | Path) -> bool:
    """True when ``source`` is a directory holding a pre-quantized checkpoint manifest."""
    return (Path(source) / CHECKPOINT_MANIFEST).is_file()


def read_checkpoint_manifest(source: str | Path) -> dict[str, Any]:
    """The parsed manifest of a pre-quantized checkpoint; a malformed one is an IntegrityError."""
    path = Path(source) / CHECKPOINT_MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        manifest = None
    if not isinstance(manifest, dict) or "method" not in manifest:
        raise IntegrityError(
            f"{path} is not a valid checkpoint manifest: re-run qlora-hub quantize"
        )
    return manifest


_NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def default_compute_dtype() -> str:
    """``bfloat16`` where it is fast (a GPU, or a CPU with native bf16), else ``float32``.

    CPUs with only AVX2 run a bf16 matmul about 35x slower than float32 (measured
    on a 2-core AVX2 machine: 112 ms vs 3.3 ms for 512x256 @ 256x256), which made
    training on the embedded base take hours instead of a minute; the packed 4-bit
    weights are the same either way. Setting ``quantize.compute_dtype`` (``auto``
    by default) or an explicit option overrides it.
    """
    import torch

    if torch.cuda.is_available():
        return "bfloat16"
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            flags = next((line for line in fh if line.startswith("flags")), "").split()
    except OSError:
        return "bfloat16"  # not Linux: keep the QLoRA default
    return "bfloat16" if any(f in flags for f in _NATIVE_BF16_FLAGS) else "float32"


def load_base(
    hub: Hub, source: str | Path, method: str | None = None, options: dict[str, Any] | None = None
) -> LoadedBase:
    """Load ``source`` as a quantized base.

    Args:
        hub: the plugin host (its quantizer registry is used).
        source: pre-quantized checkpoint directory, Hugging Face model directory, or hub id.
        method: quantizer name for a non-checkpoint source (default ``nf4``); ignored for
            checkpoints, whose manifest names the method.
        options: quantizer options for a non-checkpoint source.
    """
    from transformers import AutoTokenizer

    if is_checkpoint(source):
        manifest = read_checkpoint_manifest(source)
        quantizer = hub.quantizers[manifest["method"]]
        model = quantizer.load_quantized(Path(source))
        fp = manifest["base_fingerprint"]
        method = manifest["method"]
    else:
        method = method or "nf4"
        quantizer = hub.quantizers[method]
        options = dict(options or {})
        if "compute_dtype" in getattr(quantizer, "supported_options", ()):
            options.setdefault("compute_dtype", default_compute_dtype())
        model = quantizer.load(source, options)
        # A quantizer may record the fingerprint it computed (pickle weights, hub ids).
        fp = (getattr(model, "qlora_hub_quant", None) or {}).get("base_fingerprint") or (
            fingerprint(Path(source)) if Path(source).is_dir() else f"hf:{source}"
        )
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    return LoadedBase(
        model=model, tokenizer=tokenizer, fingerprint=fp, method=method, source=str(source)
    )
