"""Training options: defaults from the ``[train]`` settings table, a ``train.toml``, then flags.

Every problem with the options is collected and reported in one error.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from hub.errors import ConfigError, ValidationError

SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup")

# Options that may change between a run and its --resume (bookkeeping, not the model or data).
RESUMABLE = frozenset(
    {"max_steps", "epochs", "eval_steps", "save_steps", "logging_steps", "threads", "progress"}
)


@dataclass
class TrainOptions:
    """Everything ``qlora-hub train`` can be told. See docs/training.md for each field."""

    adapter_method: str = "lora"
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str = "all-linear"
    use_rslora: bool = False
    use_dora: bool = False
    freeze_a: bool = False
    a_seed: int = 0
    optimizer: str = "paged_adamw_32bit"
    learning_rate: float = 2e-4
    weight_decay: float = 0.0
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.03
    max_grad_norm: float = 1.0
    batch_size: int = 16
    grad_accum: int = 1
    gradient_checkpointing: bool = False
    max_steps: int = -1
    epochs: float = 1.0
    max_length: int = 256
    packing: bool = False
    completion_only: bool = True
    strict: bool = False
    eval_fraction: float = 0.05
    eval_steps: int = 0
    save_steps: int = 0
    logging_steps: int = 10
    seed: int = 0
    threads: int = 0
    progress: bool = True

    @classmethod
    def names(cls) -> list[str]:
        """Every option name."""
        return [f.name for f in fields(cls)]

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-ready)."""
        return asdict(self)

    def lora_options(self) -> dict[str, Any]:
        """What the adapter method's ``attach`` receives."""
        keys = (
            "r",
            "alpha",
            "dropout",
            "target_modules",
            "use_rslora",
            "use_dora",
            "freeze_a",
            "a_seed",
            "gradient_checkpointing",
        )
        return {k: getattr(self, k) for k in keys}

    def validate(self) -> None:
        """Raise one :class:`ValidationError` listing every problem."""
        p = []
        if self.r <= 0:
            p.append(f"r must be > 0, got {self.r}")
        if self.learning_rate <= 0:
            p.append(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.batch_size <= 0 or self.grad_accum <= 0:
            p.append("batch_size and grad_accum must be > 0")
        if self.max_steps <= 0 and self.epochs <= 0:
            p.append("set max_steps > 0 or epochs > 0")
        if self.max_length < 2:
            p.append(f"max_length must be >= 2, got {self.max_length}")
        if self.lr_scheduler not in SCHEDULERS:
            p.append(
                f"lr_scheduler must be one of {', '.join(SCHEDULERS)}, got {self.lr_scheduler!r}"
            )
        if not 0 <= self.warmup_ratio < 1:
            p.append(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if not 0 <= self.eval_fraction < 1:
            p.append(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if min(self.eval_steps, self.save_steps, self.logging_steps) < 0:
            p.append("eval_steps, save_steps and logging_steps must be >= 0")
        if p:
            raise ValidationError("invalid training options: " + "; ".join(p))


def _coerce(name: str, value: Any, where: str) -> Any:
    typ = type(getattr(TrainOptions, name))
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is str and isinstance(value, list):
        return ",".join(map(str, value))
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: {name} must be {typ.__name__}, got {value!r}")
    return value


def read_train_toml(path: Path) -> dict[str, Any]:
    """Options from a TOML file: keys at top level or in a ``[train]`` table."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"training config {path} does not exist: check the --config path")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    body = data.get("train", data)
    known = TrainOptions.names()
    out = {}
    for key, value in body.items():
        if key not in known:
            raise ConfigError(f"{path}: unknown training option {key!r}; known: {', '.join(known)}")
        out[key] = _coerce(key, value, str(path))
    return out


def build_options(
    settings_train: Mapping[str, Any] | None = None,
    toml_file: Path | None = None,
    flags: Mapping[str, Any] | None = None,
) -> TrainOptions:
    """Defaults < ``[train]`` settings < ``toml_file`` < ``flags`` (``None`` flags are ignored)."""
    values: dict[str, Any] = {}
    known = set(TrainOptions.names())
    for key, value in dict(settings_train or {}).items():
        if key in known:
            values[key] = _coerce(key, value, "settings [train]")
    if toml_file is not None:
        values.update(read_train_toml(toml_file))
    for key, value in dict(flags or {}).items():
        if value is None:
            continue
        if key not in known:
            raise ConfigError(f"unknown training option {key!r}; known: {', '.join(sorted(known))}")
        values[key] = _coerce(key, value, "command line")
    opts = TrainOptions(**values)
    opts.validate()
    return opts
