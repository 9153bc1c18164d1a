"""Options of the bitsandbytes quantizers, checked all at once.

Every problem with the options is collected and reported in one error (as
litgpt's ``validate_args`` does), so a user fixes them in one go.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from hub.errors import ValidationError

DTYPES = ("bfloat16", "float16", "float32")
STORAGE_DTYPES = ("uint8", "bfloat16", "float16", "float32")


@dataclass(frozen=True)
class QuantOptions:
    """Options of one quantizer run; ``to_dict`` is what the manifest records."""

    double_quant: bool = True
    """Quantize the per-block absmax scales to 8 bits (blocks of 256) as QLoRA does."""
    compute_dtype: str = "bfloat16"
    """dtype of the matmul inputs and of every layer left unquantized (``auto``:
    :func:`hub.models.default_compute_dtype`)."""
    quant_storage: str = "uint8"
    """dtype the packed 4-bit weights are stored as (``bfloat16`` for FSDP-QLoRA)."""
    skip_modules: tuple[str, ...] = field(default_factory=tuple)
    """Module names (or suffixes / regexes) to keep in full precision."""
    allow_pickle: bool = False
    """Accept ``pytorch_model.bin`` weights (loaded with ``weights_only=True``)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready options (what the checkpoint manifest records)."""
        d = asdict(self)
        d["skip_modules"] = list(self.skip_modules)
        return d

    def torch_dtype(self, name: str | None = None) -> Any:
        """``torch.<compute_dtype>`` (or of ``name``)."""
        import torch

        return getattr(torch, name or self.compute_dtype)


def parse_options(
    method: str,
    options: Mapping[str, Any] | None,
    *,
    supported: tuple[str, ...],
    device: Any = None,
) -> QuantOptions:
    """Check ``options`` for quantizer ``method`` and return them with defaults filled in.

    Args:
        method: quantizer name, for messages.
        options: user options; ``None`` values mean "default".
        supported: option names this quantizer understands.
        device: where the model computes; ``compute_dtype="auto"`` resolves for it
            (:func:`hub.models.default_compute_dtype`).

    Raises:
        ValidationError: one message listing every problem found.
    """
    given = {k: v for k, v in dict(options or {}).items() if v is not None}
    if given.get("compute_dtype") == "auto":  # the setting's default
        from hub.models import default_compute_dtype

        given["compute_dtype"] = default_compute_dtype(device)
    problems = []
    for key in sorted(set(given) - set(supported)):
        problems.append(f"unknown option {key!r} (known: {', '.join(supported)})")
    for key in ("double_quant", "allow_pickle"):
        if key in given and not isinstance(given[key], bool):
            problems.append(f"{key} must be true or false, got {given[key]!r}")
    if given.get("compute_dtype", DTYPES[0]) not in DTYPES:
        problems.append(f"compute_dtype must be one of {', '.join(DTYPES)}")
    if given.get("quant_storage", STORAGE_DTYPES[0]) not in STORAGE_DTYPES:
        problems.append(f"quant_storage must be one of {', '.join(STORAGE_DTYPES)}")
    skip = given.get("skip_modules", ())
    if isinstance(skip, str):
        skip = [s for s in skip.split(",") if s]
    if not all(isinstance(s, str) and s for s in skip):
        problems.append("skip_modules must be a list of module names")
    if problems:
        raise ValidationError(f"quantizer {method!r}: " + "; ".join(problems))
    given["skip_modules"] = tuple(skip)
    return QuantOptions(**{k: v for k, v in given.items() if k in supported})
