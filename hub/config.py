"""Settings: defaults < ``qlora-hub.toml`` < environment < command-line flags.

The file is ``<home>/qlora-hub.toml`` unless ``--config FILE`` names another.
Every key has an environment variable: ``QLORA_HUB_<KEY>`` for keys of the
``[hub]`` table, ``QLORA_HUB_<TABLE>_<KEY>`` for the others (``serve.port``
is ``QLORA_HUB_SERVE_PORT``). Unknown tables or keys are an error naming the
key and the file, so a typo never silently falls back to a default.

Plugins declare their own tables with the ``register_settings`` hook; pass
the :class:`hub.plugins.Hub` to :func:`load_settings` so those tables are
known (the CLI always does).
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
        "device": ("auto", str),  # auto, cpu, cuda, cuda:N (hub.models.resolve_device)
    },
    "adapters": {
        "max_bytes": (2 << 30, int),  # push, import and pull refuse larger adapters
        "max_abs_weight": (1000.0, float),  # largest |weight| accepted; 0 switches it off
    },
    "quantize": {
        "method": ("nf4", str),
        "double_quant": (True, bool),
        "compute_dtype": ("auto", str),  # bfloat16 on GPUs and bf16 CPUs, else float32
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
        "engine": ("hf", str),  # the execution engine (register_engines): "hf", "vllm"
        "max_resident": (8, int),
        "max_resident_bytes": (1 << 30, int),
        "max_batch": (32, int),
        "max_queue": (256, int),
        "max_tokens_cap": (512, int),
        "request_timeout_s": (120.0, float),
        "rate_limit_per_minute": (600, int),
        "list_ttl_s": (2.0, float),
        "max_body_bytes": (1 << 20, int),
        "limit_concurrency": (2048, int),  # open connections + requests; beyond: 503
        "header_timeout_s": (10.0, float),  # a request's headers must arrive within this
        "keep_alive_timeout_s": (5.0, float),
        "max_header_bytes": (16384, int),
        "graceful_shutdown_s": (30.0, float),
        "switch_interval_ms": (5.0, float),  # the serving process's GIL switch interval
        "gc_threshold": (50_000, int),  # young objects between two collections while serving
        "metrics_max_label_values": (100, int),
        "unknown_fields": ("reject", str),  # request fields no OpenAI field: "reject" or "ignore"
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
    schema: dict[str, dict[str, tuple[Any, type]]] = field(default_factory=lambda: SCHEMA)

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
        typ = self.schema[table][key][1]
        self.values[table][key] = _coerce(value, typ, "command line", dotted)
        self.sources[dotted] = "flag"


def plugin_schema(hub: Any) -> dict[str, dict[str, tuple[Any, type]]]:
    """The settings tables plugins declare through ``register_settings``.

    A table must be a new identifier (no core table, no other plugin's); each
    key maps to ``(default, type)`` with ``type`` one of bool, int, float,
    str, list. A mistake is a :class:`PluginError` naming the plugin.
    """
    from hub.errors import PluginError

    out: dict[str, dict[str, tuple[Any, type]]] = {}
    owners: dict[str, str] = {}
    for impl in hub.pm.hook.register_settings.get_hookimpls():

        def register(table: str, keys: Any, _p: str = impl.plugin_name) -> None:
            if not isinstance(table, str) or not table.isidentifier() or table in SCHEMA:
                raise PluginError(
                    f"plugin {_p!r} declared settings table {table!r}: use a new identifier, "
                    f"not a core table ({', '.join(SCHEMA)})"
                )
            if table in out:
                raise PluginError(
                    f"settings table [{table}] is declared by both plugins {owners[table]!r} "
                    f"and {_p!r}: switch one off with --disable-plugin"
                )
            schema = {}
            for key, spec in dict(keys).items():
                ok = isinstance(spec, tuple) and len(spec) == 2 and spec[1] in _TYPES
                if not (ok and isinstance(key, str) and key.isidentifier()):
                    raise PluginError(
                        f"plugin {_p!r} declared setting {table}.{key} as {spec!r}: use "
                        "KEY=(default, type) with type bool, int, float, str or list"
                    )
                schema[key] = (
                    _coerce(spec[0], spec[1], f"plugin {_p!r}", f"{table}.{key}"),
                    spec[1],
                )
            out[table], owners[table] = schema, _p

        try:
            impl.function(register=register)
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(
                f"plugin {impl.plugin_name!r} failed in register_settings: "
                f"{type(exc).__name__}: {exc}; switch it off with --disable-plugin "
                f"{impl.plugin_name}"
            ) from exc
    return out


_TYPES = (bool, int, float, str, list)


def load_settings(
    home: Path | None = None, config_file: Path | None = None, hub: Any = None
) -> Settings:
    """Build settings from defaults, the TOML file, and the environment.

    Args:
        home: data directory (default :func:`default_home`).
        config_file: explicit file (``--config``); must exist. Default:
            ``<home>/qlora-hub.toml`` if present.
        hub: the plugin host; its plugins' ``register_settings`` tables become
            known tables (without it, only the core's are).
    """
    home = Path(home) if home else default_home()
    settings = Settings(home=home, config_file=None)
    schema = {**SCHEMA, **(plugin_schema(hub) if hub is not None else {})}
    settings.schema = schema
    for table, keys in schema.items():
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
            if table not in schema:
                raise ConfigError(
                    f"{path}: unknown table [{table}]; known tables are {', '.join(schema)}"
                )
            if not isinstance(body, dict):
                raise ConfigError(f"{path}: {table} must be a table ([{table}])")
            for key, value in body.items():
                if key not in schema[table]:
                    raise ConfigError(
                        f"{path}: unknown key '{table}.{key}'; known keys in [{table}] are "
                        f"{', '.join(schema[table])}"
                    )
                typ = schema[table][key][1]
                settings.values[table][key] = _coerce(value, typ, str(path), f"{table}.{key}")
                settings.sources[f"{table}.{key}"] = str(path)

    for table, keys in schema.items():
        for key, (_, typ) in keys.items():
            name = env_name(table, key)
            if name in os.environ:
                settings.values[table][key] = _coerce(os.environ[name], typ, name, f"{table}.{key}")
                settings.sources[f"{table}.{key}"] = f"${name}"
    return settings
