"""Settings: defaults < ``qlora-hub.toml`` < environment < command-line flags.

The file is ``<home>/qlora-hub.toml`` unless ``--config FILE`` names another.
Every key has an environment variable: ``QLORA_HUB_<KEY>`` for keys of the
``[hub]`` table, ``QLORA_HUB_<TABLE>_<KEY>`` for the others (``serve.port``
is ``QLORA_HUB_SERVE_PORT``). Unknown tables or keys are an error naming the
key and the file, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hub.errors import ConfigError

HOME_ENV = "QLORA_HUB_HOME"
CONFIG_NAME = "qlora-hub.toml"

# table -> key -> (default, type). Each later feature adds its own table.
SCHEMA: dict[str, dict[str, tuple[Any, type]]] = {
    "hub": {
        "storage": ("vault", str),
        "team": ("", str),
        "quantizer": ("nf4", str),
    },
    "quantize": {
        "method": ("nf4", str),
        "double_quant": (True, bool),
        "compute_dtype": ("bfloat16", str),
        "quant_storage": ("uint8", str),
    },
    "train": {
        "adapter_method": ("lora", str),
        "optimizer": ("paged_adamw_32bit", str),
        "r": (16, int),
        "alpha": (32, int),
        "dropout": (0.05, float),
        "learning_rate": (2e-4, float),
        "batch_size": (16, int),
        "max_steps": (-1, int),
        "epochs": (1.0, float),
        "max_length": (256, int),
        "seed": (0, int),
        "target_modules": ("all-linear", str),
        "use_rslora": (False, bool),
        "use_dora": (False, bool),
        "freeze_a": (False, bool),
        "a_seed": (0, int),
        "weight_decay": (0.0, float),
        "lr_scheduler": ("cosine", str),
        "warmup_ratio": (0.03, float),
        "grad_accum": (1, int),
        "gradient_checkpointing": (False, bool),
        "packing": (False, bool),
        "eval_fraction": (0.05, float),
        "eval_steps": (0, int),
        "save_steps": (0, int),
        "logging_steps": (10, int),
    },
    "vault": {
        "chunk_size": (1 << 20, int),
        "max_adapter_bytes": (2 << 30, int),
        "blob_url": ("", str),
        "root": ("", str),  # shared vault directory (index, audit); "" means <home>/storage/vault
    },
    "serve": {
        "host": ("127.0.0.1", str),
        "port": (8000, int),
        "identity": ("server", str),
        "max_resident": (8, int),
        "max_resident_bytes": (1 << 30, int),
        "max_batch": (32, int),
        "max_queue": (256, int),
        "max_tokens_cap": (512, int),
        "request_timeout_s": (120.0, float),
        "rate_limit_per_minute": (600, int),
        "list_ttl_s": (2.0, float),
        "max_body_bytes": (1 << 20, int),
    },
    "fed": {
        "poly_modulus_degree": (8192, int),
        "coeff_mod_bit_sizes": ([60, 40, 40, 60], list),
        "global_scale_bits": (40, int),
        "aggregator": ("ckks", str),
        "rounds_dir": ("", str),  # shared round directories; "" means <home>/fed/rounds
        "threads": (0, int),  # TenSEAL threads; 0 means one per CPU core
    },
}


def env_name(table: str, key: str) -> str:
    """Environment variable that sets ``table.key``."""
    return "QLORA_HUB_" + (key if table == "hub" else f"{table}_{key}").upper()


def default_home() -> Path:
    """``$QLORA_HUB_HOME`` or ``~/.qlora-hub``."""
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".qlora-hub")


def ensure_home(home: Path) -> Path:
    """Create ``home`` if needed and check it is writable."""
    try:
        home.mkdir(parents=True, exist_ok=True)
        probe = home / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(
            f"home directory {home} is not writable ({exc.strerror}): "
            f"choose another with --home or {HOME_ENV}"
        ) from None
    return home


def _coerce(value: Any, typ: type, where: str, key: str) -> Any:
    if typ is bool and isinstance(value, str):
        low = value.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
    elif typ in (int, float) and isinstance(value, str):
        try:
            return typ(value)
        except ValueError:
            pass
    elif typ is list and isinstance(value, str):
        try:
            return [int(v) for v in value.split(",")]
        except ValueError:
            pass
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, typ) and not (typ is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{where}: {key} must be {typ.__name__}, got {value!r}")


@dataclass
class Settings:
    """Effective settings and where each value came from."""

    home: Path
    config_file: Path | None
    values: dict[str, dict[str, Any]] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)

    def get(self, dotted: str) -> Any:
        """Value of ``table.key``."""
        table, _, key = dotted.partition(".")
        try:
            return self.values[table][key]
        except KeyError:
            raise ConfigError(f"unknown setting {dotted!r}") from None

    def override(self, dotted: str, value: Any) -> None:
        """Apply a command-line flag (highest precedence); ``None`` leaves the value alone."""
        if value is None:
            return
        table, _, key = dotted.partition(".")
        typ = SCHEMA[table][key][1]
        self.values[table][key] = _coerce(value, typ, "command line", dotted)
        self.sources[dotted] = "flag"


def load_settings(home: Path | None = None, config_file: Path | None = None) -> Settings:
    """Build settings from defaults, the TOML file, and the environment.

    Args:
        home: data directory (default :func:`default_home`).
        config_file: explicit file (``--config``); must exist. Default:
            ``<home>/qlora-hub.toml`` if present.
    """
    home = Path(home) if home else default_home()
    settings = Settings(home=home, config_file=None)
    for table, keys in SCHEMA.items():
        settings.values[table] = {k: d for k, (d, _) in keys.items()}
        settings.sources.update({f"{table}.{k}": "default" for k in keys})

    path = Path(config_file) if config_file else home / CONFIG_NAME
    if config_file and not path.is_file():
        raise ConfigError(f"config file {path} does not exist: check the --config path")
    if path.is_file():
        settings.config_file = path
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from None
        for table, body in data.items():
            if table not in SCHEMA:
                raise ConfigError(
                    f"{path}: unknown table [{table}]; known tables are {', '.join(SCHEMA)}"
                )
            if not isinstance(body, dict):
                raise ConfigError(f"{path}: {table} must be a table ([{table}])")
            for key, value in body.items():
                if key not in SCHEMA[table]:
                    raise ConfigError(
                        f"{path}: unknown key '{table}.{key}'; known keys in [{table}] are "
                        f"{', '.join(SCHEMA[table])}"
                    )
                typ = SCHEMA[table][key][1]
                settings.values[table][key] = _coerce(value, typ, str(path), f"{table}.{key}")
                settings.sources[f"{table}.{key}"] = str(path)

    for table, keys in SCHEMA.items():
        for key, (_, typ) in keys.items():
            name = env_name(table, key)
            if name in os.environ:
                settings.values[table][key] = _coerce(os.environ[name], typ, name, f"{table}.{key}")
                settings.sources[f"{table}.{key}"] = f"${name}"
    return settings
