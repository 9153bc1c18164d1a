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
from hub.errors import ConfigError, IntegrityError

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
    device: Any = None
    """The ``torch.device`` the model's parameters are on (:func:`model_device`)."""


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


DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"
"""What ``--device`` (setting ``hub.device``) accepts, for messages."""


def resolve_device(value: Any = "auto") -> Any:
    """The ``torch.device`` that ``--device VALUE`` (setting ``hub.device``) names.

    Args:
        value: ``auto`` (or ``None``/empty: the first GPU when CUDA is available,
            else the CPU), ``cpu``, ``cuda``, ``cuda:N``, or a ``torch.device``.

    Raises:
        ConfigError: a value of another form, or a CUDA device that is not visible
            (one line naming the flag and the fix).
    """
    import torch

    if isinstance(value, torch.device):
        value = str(value)
    text = "auto" if value is None else str(value).strip().lower()
    if text in ("", "auto"):
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    kind, sep, index = text.partition(":")
    if kind != "cuda" or (sep and not index.isdigit()):
        raise ConfigError(f"--device {value}: not a device; use {DEVICE_CHOICES}")
    if not torch.cuda.is_available():
        raise ConfigError(
            f"--device {text}: no CUDA device is visible (torch.cuda.is_available() is False); "
            "use --device cpu"
        )
    n = int(index) if sep else 0
    count = torch.cuda.device_count()
    if n >= count:
        raise ConfigError(
            f"--device {text}: only {count} CUDA device(s) are visible (cuda:0 to "
            f"cuda:{count - 1}); pick one of them or use --device cpu"
        )
    return torch.device("cuda", n)


def model_device(model: Any) -> Any:
    """The device of ``model``'s first parameter (or buffer; the CPU for an empty model)."""
    import torch

    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _device_type(value: Any) -> str:
    """``cpu`` or ``cuda`` for a device value, without requiring a named GPU to be visible."""
    text = "" if value is None else str(value).strip().lower()
    if text == "cpu" or text == "cuda" or (text.startswith("cuda:") and text[5:].isdigit()):
        return text.partition(":")[0]
    return resolve_device(value).type  # auto (a GPU if visible) or a bad value's error


_NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def default_compute_dtype(device: Any = None) -> str:
    """``bfloat16`` where it is fast on ``device`` (a GPU, or a CPU with native bf16), else ``float32``.

    CPUs with only AVX2 run a bf16 matmul about 35x slower than float32 (measured
    on a 2-core AVX2 machine: 112 ms vs 3.3 ms for 512x256 @ 256x256), which made
    training on the embedded base take hours instead of a minute; the packed 4-bit
    weights are the same either way. Setting ``quantize.compute_dtype`` (``auto``
    by default) or an explicit option overrides it.

    Args:
        device: where the model computes: anything :func:`resolve_device` takes
            (``None``: ``auto``). ``cpu`` picks by the CPU's flags even when a GPU is
            visible; ``cuda[:N]`` is bf16 whether or not one is visible here.
    """
    if _device_type(device) == "cuda":
        return "bfloat16"
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            flags = next((line for line in fh if line.startswith("flags")), "").split()
    except OSError:
        return "bfloat16"  # not Linux: keep the QLoRA default
    return "bfloat16" if any(f in flags for f in _NATIVE_BF16_FLAGS) else "float32"


def _takes_device(fn: Any) -> bool:
    """True when a quantizer's ``load``/``load_quantized`` accepts a ``device`` keyword."""
    import inspect

    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "device" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def load_on_device(load: Any, *args: Any, device: Any = None) -> Any:
    """``load(*args)`` (a quantizer's ``load`` or ``load_quantized``) with the model on ``device``.

    A quantizer that takes a ``device`` keyword loads there itself; the model another
    one returns is moved with ``.to``.
    """
    target = resolve_device(device)
    if _takes_device(load):
        return load(*args, device=target)
    model = load(*args)
    return model if model_device(model) == target else model.to(target)


def options_for_device(
    quantizer: Any, options: dict[str, Any] | None, device: Any
) -> dict[str, Any]:
    """``options`` with ``compute_dtype`` unset or ``auto`` resolved for ``device``."""
    options = dict(options or {})
    supported = getattr(quantizer, "supported_options", ())
    if "compute_dtype" in supported and options.get("compute_dtype") in (None, "auto"):
        options["compute_dtype"] = default_compute_dtype(device)
    return options


def load_base(
    hub: Hub,
    source: str | Path,
    method: str | None = None,
    options: dict[str, Any] | None = None,
    device: Any = None,
) -> LoadedBase:
    """Load ``source`` as a quantized base on ``device``.

    Args:
        hub: the plugin host (its quantizer registry is used).
        source: pre-quantized checkpoint directory, Hugging Face model directory, or hub id.
        method: quantizer name for a non-checkpoint source (default ``nf4``); ignored for
            checkpoints, whose manifest names the method.
        options: quantizer options for a non-checkpoint source.
        device: ``auto`` (``None``), ``cpu``, ``cuda`` or ``cuda:N`` (:func:`resolve_device`).
            A quantizer whose ``load``/``load_quantized`` takes a ``device`` keyword
            loads there; another one loads as it likes and is then moved with ``.to``.

    Raises:
        ConfigError: a bad or unavailable ``device`` (before anything is read).
    """
    from transformers import AutoTokenizer

    target = resolve_device(device)
    if is_checkpoint(source):
        manifest = read_checkpoint_manifest(source)
        quantizer = hub.quantizers[manifest["method"]]
        load, args = quantizer.load_quantized, (Path(source),)
        fp = manifest["base_fingerprint"]
        method = manifest["method"]
    else:
        method = method or "nf4"
        quantizer = hub.quantizers[method]
        load, args = quantizer.load, (source, options_for_device(quantizer, options, target))
        fp = None
    model = load_on_device(load, *args, device=target)
    if fp is None:
        # A quantizer may record the fingerprint it computed (pickle weights, hub ids).
        fp = (getattr(model, "qlora_hub_quant", None) or {}).get("base_fingerprint") or (
            fingerprint(Path(source)) if Path(source).is_dir() else f"hf:{source}"
        )
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    return LoadedBase(
        model=model,
        tokenizer=tokenizer,
        fingerprint=fp,
        method=method,
        source=str(source),
        device=model_device(model),
    )
