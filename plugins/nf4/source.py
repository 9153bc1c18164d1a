"""Where a base model comes from, and which of its layers get quantized.

:func:`resolve_source` turns a hub id or a directory into a local model
directory (refusing things that are not models, and pickle-only weights
unless allowed). :func:`plan_layers` builds the model on the meta device
(no weights read) and decides, per linear layer, whether it is quantized or
kept in full precision, and why.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hub.base import fingerprint, weight_files
from hub.digest import sha256_file
from hub.errors import ValidationError

PICKLE_PATTERNS = ("pytorch_model*.bin", "*.pt", "*.pth")
"""Weight files that are Python pickles; loaded only with ``allow_pickle`` and ``weights_only=True``."""

DOWNLOAD_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
"""Files fetched for a hub id: config, safetensors weights, tokenizer."""


@dataclass(frozen=True)
class ModelSource:
    """A local Hugging Face model directory, resolved from what the user passed."""

    given: str
    path: Path
    pickle: bool
    """True when the weights are ``pytorch_model*.bin`` pickles (no safetensors)."""

    def pickle_files(self) -> list[Path]:
        """The pickle weight files of this directory, sorted."""
        return sorted(p for pat in PICKLE_PATTERNS for p in self.path.glob(pat))

    def fingerprint(self) -> str:
        """:func:`hub.base.fingerprint`; pickle weights are hashed in through ``extra``."""
        if not self.pickle:
            return fingerprint(self.path)
        extra = {"pickle_weights": {p.name: sha256_file(p) for p in self.pickle_files()}}
        return fingerprint(self.path, extra=extra)


def _looks_local(text: str) -> bool:
    """A path rather than a hub id (``org/name``): absolute, relative-dotted, or deeper."""
    return text.startswith(("/", ".", "~")) or text.count("/") > 1 or "\\" in text


def _download(repo_id: str, allow_pickle: bool) -> Path:
    """Fetch a hub model's config, weights and tokenizer into the local cache."""
    from huggingface_hub import snapshot_download

    patterns = DOWNLOAD_PATTERNS + (["*.bin"] if allow_pickle else [])
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as exc:  # offline, missing repo, gated repo: all the same to the user
        raise ValidationError(
            f"{repo_id} is neither a local model directory nor a reachable Hugging Face model "
            f"({type(exc).__name__}): check the path or the model id"
        ) from None


def resolve_source(source: str | Path, *, allow_pickle: bool = False) -> ModelSource:
    """Resolve ``source`` (directory or hub id) to a checked local model directory.

    Raises:
        ValidationError: not a directory with ``config.json`` and weights, or
            pickle-only weights without ``allow_pickle``.
    """
    text = str(source)
    path = Path(text).expanduser()
    if path.is_file():
        raise ValidationError(f"{text} is a file, not a model: pass a Hugging Face model directory")
    if not path.exists():
        if _looks_local(text) or not text.strip():
            raise ValidationError(f"{text} does not exist: pass a model directory or hub id")
        path = _download(text, allow_pickle)
    if not (path / "config.json").is_file():
        raise ValidationError(
            f"{text} is not a model: config.json is missing; pass a Hugging Face model directory"
        )
    src = ModelSource(given=text, path=path, pickle=False)
    if weight_files(path):
        return src
    src = ModelSource(given=text, path=path, pickle=True)
    if not src.pickle_files():
        raise ValidationError(
            f"{text} is not a model: it has config.json but no *.safetensors weights"
        )
    if not allow_pickle:
        names = ", ".join(p.name for p in src.pickle_files())
        raise ValidationError(
            f"{text} has only pickle weights ({names}) and no safetensors: convert it to "
            "safetensors, or pass --allow-pickle to load it with torch weights_only=True"
        )
    return src


def quiet_bitsandbytes() -> None:
    """Silence bitsandbytes' import-time notice about the optional ``kernels`` package."""
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


def cpu_pack_block() -> int:
    """Rows per block of the bitsandbytes CPU 4-bit packing (``out_features`` must divide by it).

    Read from the installed bitsandbytes: ``_convert_weight_packed_for_cpu``
    asserts ``N % block_n == 0`` before the first CPU forward pass.
    """
    quiet_bitsandbytes()
    from bitsandbytes.functional import _convert_weight_packed_for_cpu

    return inspect.signature(_convert_weight_packed_for_cpu).parameters["block_n"].default


def cpu_unsupported(out_features: int, in_features: int, blocksize: int = 64) -> str | None:
    """Why the bitsandbytes CPU 4-bit kernels cannot take a layer of this shape, or ``None``.

    The CPU path packs rows in blocks of :func:`cpu_pack_block` (``out_features``
    must be a multiple) and reshapes the per-block scales to
    ``(out_features, in_features // blocksize)`` (``in_features`` must be a
    multiple of the 4-bit block size, 64).
    """
    block_n = cpu_pack_block()
    problems = []
    if out_features % block_n:
        problems.append(f"out_features {out_features} is not a multiple of {block_n}")
    if in_features % blocksize:
        problems.append(f"in_features {in_features} is not a multiple of {blocksize}")
    return "; ".join(problems) or None


@dataclass
class LayerPlan:
    """Which linear layers of a model get quantized."""

    quantized: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    """Left in full precision by default (``lm_head``, tied weights) or by ``skip_modules``."""
    unsupported: dict[str, str] = field(default_factory=dict)
    """Left in full precision because the CPU 4-bit kernels cannot take their shape (name -> why)."""
    shapes: dict[str, tuple[int, int]] = field(default_factory=dict)
    """name -> (out_features, in_features) of every linear layer."""
    linear_classes: list[str] = field(default_factory=list)
    """Names of ``nn.Linear`` subclasses (Falcon's ``FalconLinear``) built as plain
    ``nn.Linear`` while loading (:func:`plain_linear`), so bitsandbytes converts them."""

    @property
    def skip_modules(self) -> list[str]:
        """Names for ``BitsAndBytesConfig(llm_int8_skip_modules=...)``."""
        return sorted({*self.kept, *self.unsupported})


def meta_model(src: ModelSource) -> Any:
    """The model built from its config on the meta device: structure only, no weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(src.path)
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)
    except (ValueError, KeyError, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValidationError(
            f"{src.given} is not a causal language model transformers can build ({first})"
        ) from None


def plan_layers(
    src: ModelSource, *, skip_modules: list[str], four_bit: bool, blocksize: int = 64
) -> LayerPlan:
    """Decide which linear layers are quantized (see :class:`LayerPlan`).

    Raises:
        ValidationError: the model has no linear layer left to quantize.
    """
    from torch import nn
    from transformers.pytorch_utils import Conv1D
    from transformers.quantizers.base import get_keys_to_not_convert
    from transformers.quantizers.quantizers_utils import should_convert_module

    model = meta_model(src)
    defaults = get_keys_to_not_convert(model)
    plan = LayerPlan()
    for name, module in model.named_modules():
        if isinstance(module, Conv1D):  # GPT-2 style: weight is (in, out)
            shape = (module.weight.shape[1], module.weight.shape[0])
        elif isinstance(module, nn.Linear):  # subclasses count too (Falcon's FalconLinear)
            shape = (module.out_features, module.in_features)
        else:
            continue
        plan.shapes[name] = shape
        cls = type(module)
        subclass = isinstance(module, nn.Linear) and cls is not nn.Linear
        if not should_convert_module(name, [*defaults, *skip_modules]):
            plan.kept.append(name)
        elif subclass and not _plain_linear(cls):
            plan.unsupported[name] = (
                f"{cls.__name__} subclasses nn.Linear with its own forward, which bitsandbytes "
                "layers would not reproduce"
            )
        elif four_bit and (why := cpu_unsupported(*shape, blocksize)):
            plan.unsupported[name] = why
        else:
            plan.quantized.append(name)
            if subclass and cls.__name__ not in plan.linear_classes:
                plan.linear_classes.append(cls.__name__)
    if not plan.quantized:
        what = "has no linear layers" if not plan.shapes else "has no linear layers left"
        raise ValidationError(
            f"{src.given} {what} to quantize (besides {', '.join(plan.skip_modules) or 'none'}): "
            "use a transformer causal LM, or skip fewer modules"
        )
    return plan


PLAIN_LINEAR_CLASSES = ("FalconLinear",)
"""``nn.Linear`` subclasses whose forward is exactly ``x @ W.T + b`` (checked by a test)."""


def _plain_linear(cls: type) -> bool:
    """True when ``cls`` (an ``nn.Linear`` subclass) computes what ``nn.Linear`` computes."""
    from torch import nn

    return cls.forward is nn.Linear.forward or cls.__name__ in PLAIN_LINEAR_CLASSES


@contextmanager
def plain_linear(class_names: list[str]) -> Iterator[None]:
    """Build the named ``nn.Linear`` subclasses as ``nn.Linear`` inside this block.

    transformers' bitsandbytes integration replaces only layers whose type is
    exactly ``nn.Linear`` (or ``Conv1D``), so Falcon's ``FalconLinear`` would stay
    in full precision. Its forward is ``nn.Linear``'s, so building it as
    ``nn.Linear`` (transformers' ``register_patch_mapping``) changes nothing but
    lets it be quantized. The mapping is removed again on exit.
    """
    from torch import nn
    from transformers.monkey_patching import (
        get_patch_mapping,
        register_patch_mapping,
        unregister_patch_mapping,
    )

    mine = [n for n in class_names if n not in get_patch_mapping()]
    if mine:
        register_patch_mapping(dict.fromkeys(mine, nn.Linear))
    try:
        yield
    finally:
        if mine:
            unregister_patch_mapping(mine)
