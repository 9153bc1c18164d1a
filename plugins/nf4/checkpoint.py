"""Pre-quantized checkpoints on disk: written atomically, verified before loading.

A checkpoint directory holds what ``save_pretrained`` writes for the
quantized model (``config.json`` with its ``quantization_config``,
``model.safetensors``), the tokenizer files copied from the source, and the
manifest :data:`hub.models.CHECKPOINT_MANIFEST` with the sha256 of every
other file in the directory.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from hub.atomic import fsync_dir
from hub.digest import sha256_file
from hub.errors import IntegrityError, ValidationError
from hub.models import CHECKPOINT_MANIFEST
from plugins.nf4.source import PICKLE_PATTERNS

FORMAT_VERSION = 1

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
"""Files copied from the source so the checkpoint loads its tokenizer on its own."""

LIBRARIES = ("torch", "transformers", "bitsandbytes", "accelerate", "safetensors", "qlora-hub")


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that shape the checkpoint bytes."""
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def ensure_empty_dir(out_dir: Path) -> None:
    """Refuse an output directory that exists and holds anything."""
    out_dir = Path(out_dir)
    if out_dir.is_file() or (out_dir.is_dir() and any(out_dir.iterdir())):
        raise ValidationError(
            f"output directory {out_dir} is not empty: choose a new or empty --out (nothing was written)"
        )


def write_checkpoint(
    out_dir: Path,
    write_model: Callable[[Path], None],
    *,
    tokenizer_from: Path | None,
    manifest: Mapping[str, Any],
) -> dict[str, Any]:
    """Write a checkpoint into a temporary sibling directory, then rename it to ``out_dir``.

    Args:
        out_dir: final directory; must be absent or empty.
        write_model: writes the model files into the directory it is given.
        tokenizer_from: directory to copy :data:`TOKENIZER_FILES` from (if present).
        manifest: fields recorded in the manifest; ``files``, ``format`` and
            ``versions`` are added here.

    Returns:
        The manifest as written.
    """
    out_dir = Path(out_dir)
    ensure_empty_dir(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        write_model(tmp)
        for name in TOKENIZER_FILES if tokenizer_from else ():
            src = Path(tokenizer_from) / name
            if src.is_file() and not (tmp / name).exists():
                shutil.copyfile(src, tmp / name)
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        full = {
            "format": FORMAT_VERSION,
            **manifest,
            "files": files,
            "versions": library_versions(),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        with (tmp / CHECKPOINT_MANIFEST).open("w") as f:
            json.dump(full, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(tmp)
        if out_dir.is_dir():
            out_dir.rmdir()  # empty (checked above); rename needs it gone
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return full


def read_manifest(checkpoint: Path) -> dict[str, Any]:
    """The parsed manifest of ``checkpoint``; refuses a missing or malformed one."""
    path = Path(checkpoint) / CHECKPOINT_MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValidationError(
            f"{checkpoint} is not a pre-quantized checkpoint: {CHECKPOINT_MANIFEST} is missing"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise IntegrityError(
            f"{path} is not valid JSON: the checkpoint is corrupted; re-run qlora-hub quantize"
        ) from None
    keys = ("method", "options", "base_fingerprint", "files")
    if not isinstance(manifest, dict) or any(k not in manifest for k in keys):
        raise IntegrityError(
            f"{path} lacks {', '.join(keys)}: the checkpoint is corrupted; re-run qlora-hub quantize"
        )
    return manifest


def verify_checkpoint(checkpoint: Path) -> dict[str, Any]:
    """Check every file of ``checkpoint`` against its manifest hash; return the manifest.

    Raises:
        IntegrityError: naming the first file that is missing, modified, or
            a weight file the manifest does not list.
    """
    checkpoint = Path(checkpoint)
    manifest = read_manifest(checkpoint)
    files = manifest["files"]
    for name, expected in sorted(files.items()):
        if Path(name).name != name or name in ("", ".", ".."):
            raise IntegrityError(
                f"checkpoint {checkpoint}: manifest lists a bad file name {name!r}"
            )
        path = checkpoint / name
        if not path.is_file():
            raise IntegrityError(
                f"checkpoint {checkpoint}: {name} is missing; re-run qlora-hub quantize"
            )
        actual = sha256_file(path)
        if actual != expected:
            raise IntegrityError(
                f"checkpoint {checkpoint}: {name} does not match its manifest hash "
                f"(sha256 {actual[:12]}…, expected {expected[:12]}…): the file was modified "
                "or corrupted; re-run qlora-hub quantize"
            )
    patterns = ("*.safetensors", *PICKLE_PATTERNS)
    extra = sorted(p.name for pat in patterns for p in checkpoint.glob(pat) if p.name not in files)
    if extra:
        raise IntegrityError(
            f"checkpoint {checkpoint}: weight file {extra[0]} is not in the manifest; "
            "remove it or re-run qlora-hub quantize"
        )
    return manifest
