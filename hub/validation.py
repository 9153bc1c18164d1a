"""Checks on an adapter before it is stored: file set, JSON, safetensors, shapes, values.

Only safetensors and JSON are ever parsed; pickle formats are refused by
name before anything is read. Every problem is collected, then one
ValidationError lists them all.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from hub.errors import ValidationError
from hub.types import AdapterPayload

ALLOWED_FILES = frozenset({AdapterPayload.CONFIG, AdapterPayload.WEIGHTS})
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy")
MAX_CONFIG_BYTES = 1 << 20
MAX_TENSORS = 20_000
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<part>A|B)(?:\.(?P<adapter>[^.]+))?\.weight$")


def refuse_pickles(directory: Path) -> None:
    """Raise if ``directory`` holds any pickle-format file (we never read those)."""
    bad = sorted(p.name for p in Path(directory).iterdir() if p.name.endswith(PICKLE_SUFFIXES))
    if bad:
        raise ValidationError(
            f"refusing pickle-format file(s) {', '.join(bad)} in {directory}: "
            "re-save the adapter with safetensors (PEFT: save_pretrained(safe_serialization=True))"
        )


def _tensor_facts(weights: bytes) -> dict[str, tuple[tuple[int, ...], bool]]:
    """name -> (shape, all values finite). numpy first (fast, no torch); torch for bf16."""
    try:
        import numpy as np
        from safetensors.numpy import load

        arrays = load(weights)
        return {
            k: (
                tuple(a.shape),
                not np.issubdtype(a.dtype, np.floating) or bool(np.isfinite(a).all()),
            )
            for k, a in arrays.items()
        }
    except Exception:  # bf16 has no numpy dtype; a malformed header fails again below
        import torch
        from safetensors.torch import load as torch_load

        tensors = torch_load(weights)
        return {
            k: (tuple(t.shape), not t.is_floating_point() or bool(torch.isfinite(t).all()))
            for k, t in tensors.items()
        }


def _tensor_problems(config: dict[str, Any], weights: bytes) -> list[str]:
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
    for key, (_, finite) in tensors.items():
        if not finite:
            problems.append(f"tensor {key} contains NaN or Inf")
        m = _LORA_KEY.match(key)
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


def check_adapter(adapter: AdapterPayload, *, max_bytes: int) -> None:
    """Validate ``adapter`` (files, JSON, safetensors, LoRA shapes, finite values, sizes).

    Raises:
        ValidationError: listing every problem found.
    """
    problems: list[str] = []
    names = set(adapter.files)
    if names != ALLOWED_FILES:
        extra = sorted(names - ALLOWED_FILES)
        missing = sorted(ALLOWED_FILES - names)
        problems += [f"file {n!r} is not allowed" for n in extra]
        problems += [f"file {n!r} is missing" for n in missing]
    if adapter.nbytes > max_bytes:
        problems.append(
            f"adapter is {adapter.nbytes} bytes, over vault.max_adapter_bytes={max_bytes}"
        )
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
        problems += _tensor_problems(config, weights)
    if problems:
        raise ValidationError(f"adapter {adapter.name!r} refused: " + "; ".join(problems))


def run_policy_hooks(hub: Any, adapter: AdapterPayload) -> None:
    """Call every ``validate_adapter`` hook; any problem vetoes the adapter."""
    if hub is None:
        return
    problems = [p for res in hub.pm.hook.validate_adapter(adapter=adapter) or [] for p in res or []]
    if problems:
        raise ValidationError(f"adapter {adapter.name!r} vetoed by policy: " + "; ".join(problems))
