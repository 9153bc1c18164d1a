"""Checks on an adapter before it is stored and after it is loaded.

File set, JSON, safetensors, LoRA shapes, finite values, a bound on the
largest weight, sizes; then every plugin's ``validate_adapter`` policy.
Only safetensors and JSON are ever parsed; pickle formats are refused by
name before anything is read. Every problem is collected, then one
ValidationError lists them all. :mod:`hub.adapters` runs these on every
push, import, pull and export, whatever the backend.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hub.errors import PluginError, ValidationError
from hub.types import AdapterPayload

ALLOWED_FILES = frozenset({AdapterPayload.CONFIG, AdapterPayload.WEIGHTS})
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy")
MAX_CONFIG_BYTES = 1 << 20
MAX_TENSORS = 20_000
_LORA_KEY = re.compile(r"(?P<module>.+)\.lora_(?P<part>A|B)(?:\.(?P<adapter>[^.]+))?\.weight")
DEFAULT_MAX_BYTES = 2 << 30
DEFAULT_MAX_ABS_WEIGHT = 1000.0
"""Trained LoRA weights stay within a few units (A starts near 1/sqrt(fan_in), B at
zero); 1000 is far outside any trained adapter yet rejects weights scaled to blow up
the activations of every request batched beside them."""


@dataclass(frozen=True)
class Limits:
    """Bounds every adapter must respect (settings ``adapters.max_bytes``,
    ``adapters.max_abs_weight``; ``max_abs_weight <= 0`` switches the bound off)."""

    max_bytes: int = DEFAULT_MAX_BYTES
    max_abs_weight: float = DEFAULT_MAX_ABS_WEIGHT


def refuse_pickles(directory: Path) -> None:
    """Raise if ``directory`` holds any pickle-format file (we never read those)."""
    bad = sorted(p.name for p in Path(directory).iterdir() if p.name.endswith(PICKLE_SUFFIXES))
    if bad:
        raise ValidationError(
            f"refusing pickle-format file(s) {', '.join(bad)} in {directory}: "
            "re-save the adapter with safetensors (PEFT: save_pretrained(safe_serialization=True))"
        )


def _tensor_facts(weights: bytes) -> dict[str, tuple[tuple[int, ...], bool, float]]:
    """name -> (shape, all values finite, largest finite |value|).

    numpy first (fast, no torch); torch for bf16, which numpy cannot hold.
    """
    try:
        import numpy as np
        from safetensors.numpy import load

        arrays = load(weights)
        out = {}
        for k, a in arrays.items():
            floating = np.issubdtype(a.dtype, np.floating)
            finite = not floating or bool(np.isfinite(a).all())
            big = float(np.abs(a).max()) if floating and finite and a.size else 0.0
            out[k] = (tuple(a.shape), finite, big)
        return out
    except Exception:  # bf16 has no numpy dtype; a malformed header fails again below
        import torch
        from safetensors.torch import load as torch_load

        out = {}
        for k, t in torch_load(weights).items():
            floating = t.is_floating_point()
            finite = not floating or bool(torch.isfinite(t).all())
            big = float(t.abs().max()) if floating and finite and t.numel() else 0.0
            out[k] = (tuple(t.shape), finite, big)
        return out


def _tensor_problems(config: dict[str, Any], weights: bytes, limits: Limits) -> list[str]:
    try:
        tensors = _tensor_facts(weights)
    except Exception as exc:  # safetensors raises SafetensorError for malformed headers
        return [f"{AdapterPayload.WEIGHTS} is not valid safetensors ({exc})"]
    problems = []
    if not tensors:
        problems.append(f"{AdapterPayload.WEIGHTS} holds no tensors")
    if len(tensors) > MAX_TENSORS:
        problems.append(f"{len(tensors)} tensors is over the cap of {MAX_TENSORS}")
    r = config.get("r")
    targets = config.get("target_modules")
    rank_pattern = config.get("rank_pattern") or {}
    pairs: dict[str, dict[str, Any]] = {}
    for key, (_, finite, big) in tensors.items():
        if not finite:
            problems.append(f"tensor {key} contains NaN or Inf")
        elif limits.max_abs_weight > 0 and big > limits.max_abs_weight:
            problems.append(
                f"tensor {key} holds |w| = {big:.3g}, over adapters.max_abs_weight="
                f"{limits.max_abs_weight:g} (no trained adapter comes close; raise the "
                "setting only for an adapter you trust)"
            )
        m = _LORA_KEY.fullmatch(key)
        if not m:
            continue
        module = m.group("module")
        pairs.setdefault(module, {})[m.group("part")] = tensors[key][0]
        if isinstance(targets, list) and not any(
            module == tgt or module.endswith("." + tgt) for tgt in targets
        ):
            problems.append(f"tensor {key} is on a module not in target_modules")
    for module, parts in pairs.items():
        if set(parts) != {"A", "B"}:
            problems.append(f"module {module} has lora_{''.join(parts)} without its pair")
            continue
        a, b = parts["A"], parts["B"]
        rank = next((v for k, v in rank_pattern.items() if module.endswith(k)), r)
        if len(a) != 2 or len(b) != 2 or a[0] != b[1]:
            problems.append(f"module {module}: lora_A {a} and lora_B {b} do not chain")
        elif isinstance(rank, int) and a[0] != rank:
            problems.append(f"module {module}: rank {a[0]} but adapter_config says r={rank}")
    return problems


def check_adapter(adapter: AdapterPayload, limits: Limits = Limits()) -> None:
    """Validate ``adapter`` (files, JSON, safetensors, LoRA shapes, finite and bounded
    values, sizes).

    Raises:
        ValidationError: listing every problem found.
    """
    max_bytes = limits.max_bytes
    problems: list[str] = []
    names = set(adapter.files)
    if names != ALLOWED_FILES:
        extra = sorted(names - ALLOWED_FILES)
        missing = sorted(ALLOWED_FILES - names)
        problems += [f"file {n!r} is not allowed" for n in extra]
        problems += [f"file {n!r} is missing" for n in missing]
    if adapter.nbytes > max_bytes:
        problems.append(f"adapter is {adapter.nbytes} bytes, over adapters.max_bytes={max_bytes}")
    config: dict[str, Any] = {}
    raw = adapter.files.get(AdapterPayload.CONFIG)
    if raw is not None:
        if len(raw) > MAX_CONFIG_BYTES:
            problems.append(f"{AdapterPayload.CONFIG} is over {MAX_CONFIG_BYTES} bytes")
        else:
            try:
                config = json.loads(raw)
                if not isinstance(config, dict):
                    raise ValueError("not an object")
            except ValueError as exc:
                problems.append(f"{AdapterPayload.CONFIG} is not a JSON object ({exc})")
                config = {}
    if config and not isinstance(config.get("r"), int):
        problems.append(f"{AdapterPayload.CONFIG} has no integer 'r'")
    weights = adapter.files.get(AdapterPayload.WEIGHTS)
    if weights is not None and config and not problems:
        problems += _tensor_problems(config, weights, limits)
    if problems:
        raise ValidationError(f"adapter {adapter.name!r} refused: " + "; ".join(problems))


def run_policy_hooks(hub: Any, adapter: AdapterPayload) -> None:
    """Call every ``validate_adapter`` hook; any problem vetoes the adapter.

    A hook must return ``None`` or a list of strings. One that raises, or
    returns anything else (a bare string included), is a :class:`PluginError`
    naming the plugin, so a broken policy never passes an adapter silently.
    """
    if hub is None:
        return
    problems: list[str] = []
    for impl in reversed(hub.pm.hook.validate_adapter.get_hookimpls()):  # pluggy's call order
        args = {"adapter": adapter}
        try:
            result = impl.function(**{a: args[a] for a in impl.argnames})
        except Exception as exc:
            raise PluginError(
                f"plugin {impl.plugin_name!r} failed in validate_adapter: "
                f"{type(exc).__name__}: {exc}; fix it or switch it off with "
                f"--disable-plugin {impl.plugin_name}"
            ) from exc
        if result is None:
            continue
        if not isinstance(result, (list, tuple)) or not all(isinstance(p, str) for p in result):
            raise PluginError(
                f"plugin {impl.plugin_name!r} returned {type(result).__name__} "
                f"{str(result)[:80]!r} from validate_adapter: return None or a list of strings"
            )
        problems += result
    if problems:
        raise ValidationError(f"adapter {adapter.name!r} vetoed by policy: " + "; ".join(problems))
