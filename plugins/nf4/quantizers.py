"""The bitsandbytes quantizers: ``nf4`` (default), ``fp4``, ``int8`` and ``none`` (bf16).

All four go through transformers' ``BitsAndBytesConfig``. Loading records
its provenance on the model (``model.qlora_hub_quant``: method, options,
source, base fingerprint, layers kept in full precision) so :meth:`save`
can write a complete manifest.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hub.errors import ValidationError
from hub.models import resolve_device
from plugins.nf4.checkpoint import ensure_empty_dir, verify_checkpoint, write_checkpoint
from plugins.nf4.direct import load_direct
from plugins.nf4.footprint import model_footprint
from plugins.nf4.options import QuantOptions, parse_options
from plugins.nf4.source import (
    LayerPlan,
    ModelSource,
    plain_linear,
    plan_layers,
    quiet_bitsandbytes,
    resolve_source,
)

PROVENANCE_ATTR = "qlora_hub_quant"
"""Attribute set on every model this plugin loads: where it came from and how it was quantized."""


class SkippedLayersWarning(UserWarning):
    """Some linear layers stay in full precision because the CPU 4-bit kernels cannot take them."""


class BnbQuantizer:
    """One bitsandbytes quantization method; see the module docstring for the four instances.

    Args:
        name: registry name.
        description: one line for ``qlora-hub plugins``.
        quant_type: ``"nf4"`` or ``"fp4"`` for 4-bit, ``"int8"`` for LLM.int8(), ``None`` for bf16.
        defaults: option defaults that differ from :class:`QuantOptions`.
    """

    def __init__(
        self, name: str, description: str, quant_type: str | None, **defaults: Any
    ) -> None:
        self.name = name
        self.description = description
        self.quant_type = quant_type
        self.defaults = defaults

    def __repr__(self) -> str:
        return f"<quantizer {self.name}>"

    @property
    def four_bit(self) -> bool:
        """True for the 4-bit methods (nf4, fp4)."""
        return self.quant_type in ("nf4", "fp4")

    @property
    def supported_options(self) -> tuple[str, ...]:
        """Option names this method accepts."""
        if self.four_bit:
            return (
                "double_quant",
                "compute_dtype",
                "quant_storage",
                "skip_modules",
                "allow_pickle",
            )
        return ("compute_dtype", "skip_modules", "allow_pickle")

    def options(self, options: Mapping[str, Any] | None = None, device: Any = None) -> QuantOptions:
        """Validated options with this method's defaults filled in (``auto`` dtype for ``device``)."""
        merged = {
            **self.defaults,
            **{k: v for k, v in dict(options or {}).items() if v is not None},
        }
        return parse_options(self.name, merged, supported=self.supported_options, device=device)

    def bnb_config(self, opts: QuantOptions, skip_modules: list[str]) -> Any:
        """The ``BitsAndBytesConfig`` for these options, or ``None`` for ``none``."""
        from transformers import BitsAndBytesConfig

        if self.four_bit:
            return BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type=self.quant_type,
                bnb_4bit_use_double_quant=opts.double_quant,
                bnb_4bit_compute_dtype=opts.torch_dtype(),
                bnb_4bit_quant_storage=opts.torch_dtype(opts.quant_storage),
                llm_int8_skip_modules=skip_modules,
            )
        if self.quant_type == "int8":
            return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip_modules)
        return None

    def plan(self, src: ModelSource, opts: QuantOptions) -> LayerPlan:
        """Which layers this method quantizes; warns naming any the CPU kernels cannot take."""
        plan = plan_layers(src, skip_modules=list(opts.skip_modules), four_bit=self.four_bit)
        if plan.unsupported:
            detail = ", ".join(f"{n} ({why})" for n, why in sorted(plan.unsupported.items()))
            warnings.warn(
                f"{len(plan.unsupported)} layer(s) kept in {opts.compute_dtype}, not quantized: "
                f"the bitsandbytes CPU 4-bit kernels cannot take their shape: {detail}",
                SkippedLayersWarning,
                stacklevel=3,
            )
        return plan

    def load(
        self, source: str | Path, options: Mapping[str, Any] | None = None, device: Any = None
    ) -> Any:
        """Load ``source`` (hub id or local directory) quantized with this method.

        Args:
            source: Hugging Face model id or directory (safetensors; pickle only
                with ``allow_pickle``).
            options: see :class:`plugins.nf4.options.QuantOptions`.
            device: where the model goes (:func:`hub.models.resolve_device`; ``None``:
                ``auto``). bitsandbytes quantizes each weight as it moves there.

        Returns:
            A ``PreTrainedModel`` with bitsandbytes linear layers (``none``: bf16),
            in eval mode, with ``model.qlora_hub_quant`` provenance.
        """
        target = resolve_device(device)
        opts = self.options(options, target)
        src = resolve_source(source, allow_pickle=opts.allow_pickle)
        plan = self.plan(src, opts)
        quiet_bitsandbytes()
        from transformers import AutoModelForCausalLM

        kwargs: dict[str, Any] = {"dtype": opts.torch_dtype(), "device_map": device_map(target)}
        config = self.bnb_config(opts, plan.skip_modules)
        if config is not None:
            kwargs["quantization_config"] = config
        if src.pickle:
            kwargs.update(use_safetensors=False, weights_only=True)
        else:
            kwargs["use_safetensors"] = True
        linear_classes = plan.linear_classes if config is not None else []
        with plain_linear(linear_classes):  # FalconLinear & co. quantize like nn.Linear
            model = AutoModelForCausalLM.from_pretrained(src.path, **kwargs)
        model.eval()
        setattr(
            model,
            PROVENANCE_ATTR,
            {
                "method": self.name,
                "options": opts.to_dict(),
                "source": src.given,
                "source_path": str(src.path),
                "base_fingerprint": src.fingerprint(),
                "quantized_modules": plan.quantized if config is not None else [],
                "kept_modules": plan.kept if config is not None else sorted(plan.shapes),
                "unsupported_modules": plan.unsupported,
                "linear_classes": linear_classes,
            },
        )
        return model

    def save(self, model: Any, out_dir: Path, manifest: Mapping[str, Any] | None = None) -> dict:
        """Write ``model`` as a pre-quantized checkpoint into ``out_dir`` (absent or empty).

        Written to a temporary sibling directory and renamed, so ``out_dir``
        is either complete or absent. The manifest records method, options,
        base fingerprint and source from the model's provenance (``manifest``
        entries override or add to them), the sha256 of every file, and
        library versions.

        Returns:
            The manifest as written.
        """
        provenance = dict(getattr(model, PROVENANCE_ATTR, None) or {})
        fields = {**provenance, **dict(manifest or {})}
        missing = [k for k in ("method", "options", "base_fingerprint") if k not in fields]
        if missing:
            raise ValidationError(
                f"cannot save: the model was not loaded by a qlora-hub quantizer and the manifest "
                f"lacks {', '.join(missing)}; load it with Quantizer.load first"
            )
        ensure_empty_dir(Path(out_dir))
        if _packed_for_cpu(model):
            raise ValidationError(
                "cannot save: the model already ran a CPU forward pass, which repacks its 4-bit "
                "weights lossily; save it right after Quantizer.load"
            )
        source_path = fields.pop("source_path", None) or fields.get("source")
        tokenizer_from = Path(source_path) if source_path and Path(source_path).is_dir() else None
        return write_checkpoint(
            Path(out_dir),
            lambda d: model.save_pretrained(d),
            tokenizer_from=tokenizer_from,
            manifest=fields,
        )

    def load_quantized(self, checkpoint: Path, device: Any = None) -> Any:
        """Verify ``checkpoint`` against its manifest and load it, already quantized, on ``device``.

        Only safetensors are read; the 4-bit/8-bit weights go straight into the
        bitsandbytes layers, so the full-precision model never exists in memory.
        A 4-bit checkpoint is loaded by :func:`plugins.nf4.direct.load_direct`
        (without ``from_pretrained``'s fixed cost); anything it does not fit,
        and int8/none, by ``from_pretrained`` with ``device_map={"": device}``.
        ``model.qlora_hub_quant["loader"]`` says which.

        Raises:
            IntegrityError: a file is missing, modified, or not in the manifest (named).
            ValidationError: the checkpoint was written by another method.
        """
        checkpoint = Path(checkpoint)
        target = resolve_device(device)
        manifest = verify_checkpoint(checkpoint)
        if manifest["method"] != self.name:
            raise ValidationError(
                f"{checkpoint} was quantized with {manifest['method']!r}, not {self.name!r}: "
                f"load it with hub.models.load_base or the {manifest['method']!r} quantizer"
            )
        opts = QuantOptions(
            **{k: (tuple(v) if k == "skip_modules" else v) for k, v in manifest["options"].items()}
        )
        quiet_bitsandbytes()
        classes = manifest.get("linear_classes") or []
        classes = [c for c in classes if isinstance(c, str) and c.isidentifier()]
        with plain_linear([c for c in classes if c.endswith("Linear")]):
            model = load_direct(checkpoint, target) if self.four_bit else None
            loader = "direct"
            if model is None:
                from transformers import AutoModelForCausalLM

                loader = "from_pretrained"
                model = AutoModelForCausalLM.from_pretrained(
                    checkpoint,
                    dtype=opts.torch_dtype(),
                    use_safetensors=True,
                    device_map=device_map(target),
                )
        model.eval()
        provenance = {k: manifest.get(k) for k in ("method", "options", "base_fingerprint")}
        setattr(
            model,
            PROVENANCE_ATTR,
            {**provenance, "checkpoint": str(checkpoint), "loader": loader},
        )
        return model

    def footprint(self, model: Any) -> dict[str, Any]:
        """Bytes and bits/param (quantized linear weights alone and whole model).

        See :func:`plugins.nf4.footprint.model_footprint` for the keys.
        """
        return model_footprint(model)


def device_map(device: Any) -> dict[str, Any]:
    """``from_pretrained``'s ``device_map`` putting the whole model on one ``torch.device``.

    The GPU is named by its index, the form accelerate and transformers' bitsandbytes
    quantizer expect for a single device.
    """
    return {"": device.index if device.type == "cuda" else device.type}


def _packed_for_cpu(model: Any) -> bool:
    """True when a 4-bit layer was repacked by bitsandbytes' CPU inference path."""
    for module in model.modules():
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        if getattr(state, "packing_format_for_cpu", False):
            return True
    return False


def builtin_quantizers() -> list[BnbQuantizer]:
    """The quantizers this plugin registers, default first."""
    return [
        BnbQuantizer(
            "nf4",
            "NF4 4-bit with double quantization, bf16 compute (QLoRA; default)",
            "nf4",
        ),
        BnbQuantizer("fp4", "FP4 4-bit (bitsandbytes), double quantization, bf16 compute", "fp4"),
        BnbQuantizer("int8", "LLM.int8() 8-bit weights with outlier decomposition", "int8"),
        BnbQuantizer("none", "No quantization: bf16 weights, for comparison", None),
    ]
