"""Run records: the manifest's library versions, atomic JSON writes, and the --resume check."""

from __future__ import annotations

import json
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from hub.errors import ValidationError
from plugins.trainer.options import RESUMABLE

LIBRARIES = (
    "qlora-hub",
    "torch",
    "transformers",
    "peft",
    "bitsandbytes",
    "accelerate",
    "safetensors",
)


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries a run depends on."""
    out = {}
    for lib in LIBRARIES:
        try:
            out[lib] = version(lib)
        except PackageNotFoundError:
            out[lib] = "not installed"
    return out


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temporary sibling, fsync, rename: the file is whole or absent."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True, default=str)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def read_run_info(path: Path) -> dict[str, Any]:
    """The ``run.json`` of an earlier run (refused clearly when there is none)."""
    path = Path(path)
    if not path.is_file():
        raise ValidationError(
            f"cannot resume: {path.parent} is not a training run ({path.name} missing)"
        )
    return json.loads(path.read_text())


def _short(value: Any) -> str:
    text = str(value)
    return text[:12] if len(text) == 64 else text


def check_resumable(previous: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse a resume whose base, data or (non-bookkeeping) options differ, naming each difference."""
    diffs = []
    checked = (
        ("base_fingerprint", "base"),
        ("data_sha256", "data"),
        ("init_adapter_sha256", "--init-adapter"),
    )
    for key, label in checked:
        if previous.get(key) != current.get(key):
            diffs.append(f"{label} ({_short(previous.get(key))} vs {_short(current.get(key))})")
    old, new = previous.get("options", {}), current.get("options", {})
    for key in sorted(set(old) | set(new)):
        if key not in RESUMABLE and old.get(key) != new.get(key):
            diffs.append(f"{key} ({old.get(key)!r} vs {new.get(key)!r})")
    if diffs:
        raise ValidationError(
            "cannot resume: the checkpoint was trained with a different "
            + ", ".join(diffs)
            + "; start a new run without --resume"
        )
