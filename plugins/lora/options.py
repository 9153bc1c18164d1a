"""Options of the ``lora`` adapter method, checked all at once before anything is built."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from hub.errors import ValidationError

ALL_LINEAR = "all-linear"


@dataclass(frozen=True)
class LoraOptions:
    """What ``lora`` attaches: PEFT ``LoraConfig`` fields plus frozen-A settings.

    Args:
        r: rank (> 0).
        alpha: ``lora_alpha``; the update is scaled by ``alpha / r`` (``alpha / sqrt(r)`` with rsLoRA).
        dropout: dropout on the adapter input.
        target_modules: ``"all-linear"`` (every linear layer but the output head, as in the
            QLoRA paper) or a comma-separated list / list of module names (``q_proj,v_proj``).
        use_rslora: rank-stabilised scaling.
        use_dora: weight-decomposed LoRA (DoRA).
        freeze_a: initialise every ``lora_A`` from ``a_seed`` and never train it; only ``B``
            learns. Teams that share the seed share ``A`` byte for byte, so averaging their
            ``B`` matrices is an exact merge (federated ``ffa`` mode).
        a_seed: seed of the frozen ``A`` matrices.
        gradient_checkpointing: recompute activations in backward (less memory, slower).
    """

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str | tuple[str, ...] = ALL_LINEAR
    use_rslora: bool = False
    use_dora: bool = False
    freeze_a: bool = False
    a_seed: int = 0
    gradient_checkpointing: bool = False

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any] | None) -> LoraOptions:
        """Build from a mapping, ignoring keys that belong to other parts of training."""
        options = dict(options or {})
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in options.items() if k in known and v is not None}
        tm = kwargs.get("target_modules")
        if isinstance(tm, str) and tm != ALL_LINEAR:
            kwargs["target_modules"] = tuple(t.strip() for t in tm.split(",") if t.strip())
        elif isinstance(tm, list | tuple):
            kwargs["target_modules"] = tuple(tm)
        opts = cls(**kwargs)
        opts.validate()
        return opts

    def validate(self) -> None:
        """Raise one :class:`ValidationError` listing every problem."""
        problems = []
        if not isinstance(self.r, int) or self.r <= 0:
            problems.append(f"r must be a positive integer, got {self.r!r}")
        if self.alpha <= 0:
            problems.append(f"alpha must be positive, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.use_dora and self.freeze_a:
            problems.append(
                "use_dora and freeze_a cannot be combined (DoRA also trains magnitudes)"
            )
        if not self.target_modules:
            problems.append("target_modules is empty: use all-linear or name modules")
        if problems:
            raise ValidationError("invalid LoRA options: " + "; ".join(problems))
