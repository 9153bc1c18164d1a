"""The ``lora`` adapter method: PEFT LoRA on a k-bit (or full-precision) base."""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hub.errors import ValidationError
from hub.types import AdapterPayload
from plugins.lora.frozen_a import freeze_a
from plugins.lora.modules import linear_module_names
from plugins.lora.options import ALL_LINEAR, LoraOptions


def is_quantized(model: Any) -> bool:
    """True for a base loaded in 4 or 8 bits by bitsandbytes."""
    return bool(
        getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)
    )


class LoraMethod:
    """PEFT LoRA/QLoRA with rsLoRA, DoRA, and seeded frozen-A (see :class:`LoraOptions`)."""

    name = "lora"
    description = "PEFT LoRA on a k-bit base (all linear layers by default; rsLoRA, DoRA, frozen-A)"

    def lora_config(self, opts: LoraOptions) -> Any:
        """The ``peft.LoraConfig`` for ``opts``."""
        from peft import LoraConfig

        targets = ALL_LINEAR if opts.target_modules == ALL_LINEAR else list(opts.target_modules)
        return LoraConfig(
            r=opts.r,
            lora_alpha=opts.alpha,
            lora_dropout=opts.dropout,
            target_modules=targets,
            use_rslora=opts.use_rslora,
            use_dora=opts.use_dora,
            bias="none",
            task_type="CAUSAL_LM",
        )

    def attach(self, model: Any, options: Mapping[str, Any]) -> Any:
        """Wrap ``model`` in a ``PeftModel`` with a fresh trainable adapter named ``default``.

        A quantized base goes through ``prepare_model_for_kbit_training`` first
        (norms in fp32, input grads for checkpointing). Gradient checkpointing,
        when asked for, is the non-reentrant kind (``use_reentrant=False``: it
        needs no input that requires grad, and works with frozen 4-bit layers
        and autocast). Unknown target modules
        are refused with the list of the model's linear modules. On CPU the
        LoRA dropout is :class:`plugins.lora.dropout.LoraDropout` (the same
        Bernoulli mask as ``nn.Dropout``, with far fewer random draws).
        """
        from peft import get_peft_model, prepare_model_for_kbit_training

        from plugins.lora.dropout import use_lora_dropout

        opts = LoraOptions.from_mapping(options)
        if opts.target_modules != ALL_LINEAR:
            linear = linear_module_names(model)
            unknown = [t for t in opts.target_modules if t not in linear]
            if unknown:
                raise ValidationError(
                    f"unknown target modules {', '.join(unknown)}: this model's linear modules "
                    f"are {', '.join(linear)} (or use all-linear)"
                )
        checkpointing = {"use_reentrant": False}
        if is_quantized(model):
            model = prepare_model_for_kbit_training(
                model,
                use_gradient_checkpointing=opts.gradient_checkpointing,
                gradient_checkpointing_kwargs=checkpointing,
            )
        elif opts.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing)
            model.enable_input_require_grads()
        with _quiet_peft_init():
            peft_model = get_peft_model(model, self.lora_config(opts))
        if opts.freeze_a:
            freeze_a(peft_model, opts.a_seed)
        use_lora_dropout(peft_model)
        return peft_model

    def load(self, model: Any, adapter: AdapterPayload, adapter_name: str) -> Any:
        """Attach ``adapter`` (bytes in memory, nothing read from disk) as ``adapter_name``.

        ``model`` is a base model or a ``PeftModel`` that already holds other
        adapters. Tensor names and shapes must be exactly those the config
        produces on this base; otherwise nothing is attached and a
        :class:`ValidationError` says what differs. Returns the ``PeftModel``.
        """
        from peft import LoraConfig, PeftModel
        from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

        raw = adapter.config()
        if raw.get("peft_type") != "LORA":
            raise ValidationError(
                f"adapter {adapter.ref} is not a LoRA adapter (peft_type {raw.get('peft_type')!r})"
            )
        known = set(LoraConfig.__dataclass_fields__)
        config = LoraConfig(**{k: v for k, v in raw.items() if k in known})
        config.inference_mode = True
        tensors = adapter.tensors()

        fresh = not isinstance(model, PeftModel)
        if fresh:
            with _quiet_peft_init():
                peft_model = PeftModel(model, config, adapter_name=adapter_name)
        else:
            if adapter_name in model.peft_config:
                raise ValidationError(f"adapter name {adapter_name!r} is already loaded")
            model.add_adapter(adapter_name, config)
            peft_model = model
        expected = get_peft_model_state_dict(peft_model, adapter_name=adapter_name)
        problem = _mismatch(expected, tensors)
        if problem:
            if fresh:
                peft_model.unload()  # take the injected layers out of the caller's base again
            else:
                peft_model.delete_adapter(adapter_name)
            raise ValidationError(f"adapter {adapter.ref} does not fit this base: {problem}")
        set_peft_model_state_dict(peft_model, tensors, adapter_name=adapter_name)
        peft_model.eval()
        return peft_model

    def save(self, model: Any, out_dir: Path) -> None:
        """Write ``adapter_config.json`` + ``adapter_model.safetensors`` atomically to ``out_dir``."""
        out_dir = Path(out_dir)
        if out_dir.exists() and any(out_dir.iterdir()):
            raise ValidationError(f"{out_dir} is not empty: choose a new adapter directory")
        tmp = out_dir.with_name(out_dir.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(str(tmp), safe_serialization=True)
        # PEFT writes a README model card too; an adapter directory holds only the two files
        for extra in tmp.iterdir():
            if extra.name not in (AdapterPayload.CONFIG, AdapterPayload.WEIGHTS):
                extra.unlink()
        if out_dir.exists():
            out_dir.rmdir()
        tmp.rename(out_dir)


def _mismatch(expected: Mapping[str, Any], given: Mapping[str, Any]) -> str:
    """A one-line description of how ``given`` differs from ``expected`` ("" when equal)."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    shapes = [
        f"{k} is {tuple(given[k].shape)}, expected {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(given))
        if tuple(given[k].shape) != tuple(expected[k].shape)
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} tensor(s) missing (first {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected tensor(s) (first {unexpected[0]})")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatch(es) (first {shapes[0]})")
    return "; ".join(parts)


@contextmanager
def _quiet_peft_init() -> Iterator[None]:
    """Hide the FutureWarning ``PeftModel.__init__`` triggers in transformers 5.

    PEFT 0.21 reads transformers' deprecated ``is_gradient_checkpointing``:
    a warning about library internals the user can do nothing about.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*is_gradient_checkpointing", FutureWarning)
        yield
