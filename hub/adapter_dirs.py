"""Adapter directories on disk: reading one for import/push, writing one for export.

Reads take regular files only, opened without following symlinks, from
inside the given directory, each length checked before it is read; pickle
files are refused by name. Writes go to a temp directory that is renamed
into place, so an export is complete or absent.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any

from hub.errors import ValidationError
from hub.names import check_name
from hub.types import AdapterPayload
from hub.validation import MAX_CONFIG_BYTES, refuse_pickles

METADATA_FILE = "training_metadata.json"
"""Optional JSON beside a PEFT adapter whose keys become the version's metadata."""
RUN_MANIFEST = "manifest.json"
"""The trainer's run manifest (``<run>/manifest.json`` beside ``<run>/adapter/``)."""
MAX_METADATA_FILE = 1 << 20
MAX_WEIGHTS_FILE = 16 << 30


def read_regular(path: Path, max_bytes: int) -> bytes:
    """The bytes of ``path``: a regular file, not a symlink, at most ``max_bytes`` long."""
    # O_NONBLOCK: opening a FIFO planted in the directory must not hang the import
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise ValidationError(
            f"cannot read {path} ({exc.strerror}): adapter files must be regular files, "
            "not symlinks"
        ) from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ValidationError(f"{path} is not a regular file")
        if st.st_size > max_bytes:
            raise ValidationError(f"{path} is {st.st_size} bytes, over the cap of {max_bytes}")
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValidationError(f"{path} grew past {max_bytes} bytes while being read")
    return data


def _json_object(path: Path) -> dict[str, Any]:
    raw = read_regular(path, MAX_METADATA_FILE)
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ValidationError(f"{path} is not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValidationError(f"{path} must hold a JSON object")
    return data


def read_adapter_dir(directory: Path, name: str) -> tuple[AdapterPayload, dict[str, Any]]:
    """A PEFT directory, or a training run holding one, as a payload plus its metadata.

    ``directory`` holds ``adapter_config.json`` and ``adapter_model.safetensors``
    (metadata from an optional ``training_metadata.json`` there), or is a run
    directory written by ``qlora-hub train`` (``adapter/`` and ``manifest.json``,
    whose base fingerprint is recorded). Nothing outside ``directory`` is read.
    """
    directory = Path(directory)
    if directory.is_symlink() or not directory.is_dir():
        raise ValidationError(f"{directory} is not a directory: pass a PEFT adapter directory")
    check_name(name)
    meta: dict[str, Any] = {}
    peft = directory
    if not (directory / AdapterPayload.CONFIG).exists() and (directory / "adapter").is_dir():
        peft = directory / "adapter"
        if peft.is_symlink():
            raise ValidationError(f"{peft} is a symlink: pass the run directory itself")
        if (directory / RUN_MANIFEST).exists():
            meta = _json_object(directory / RUN_MANIFEST)
    refuse_pickles(peft)
    files = {}
    for fname, cap in (
        (AdapterPayload.CONFIG, MAX_CONFIG_BYTES),
        (AdapterPayload.WEIGHTS, MAX_WEIGHTS_FILE),
    ):
        if not (peft / fname).exists() and not (peft / fname).is_symlink():
            raise ValidationError(f"{peft} is not a PEFT adapter directory: {fname} is missing")
        files[fname] = read_regular(peft / fname, cap)
    if (peft / METADATA_FILE).exists() or (peft / METADATA_FILE).is_symlink():
        meta = _json_object(peft / METADATA_FILE)
    return AdapterPayload(name=name, files=files), meta


def base_fingerprint_of(base: str) -> str:
    """The fingerprint ``--base`` names: a base or checkpoint directory, or a fingerprint."""
    path = Path(base)
    if path.is_dir():
        from hub.base import fingerprint
        from hub.models import CHECKPOINT_MANIFEST

        manifest = path / CHECKPOINT_MANIFEST
        if manifest.is_file():  # a pre-quantized checkpoint records its base's fingerprint
            fp = _json_object(manifest).get("base_fingerprint")
            if isinstance(fp, str):
                return fp
        return fingerprint(path)
    return base.strip().lower() if len(base.strip()) == 64 else base


def import_metadata(
    found: dict[str, Any], base: str | None, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Metadata of an imported adapter: what its directory held, ``extra``, and the
    base fingerprint from ``base`` (``--base``) over the one the directory recorded."""
    meta = {**found, **dict(extra or {})}
    if base:
        meta["base_fingerprint"] = base_fingerprint_of(base)
    return meta


def write_dir_atomically(out: Path, files: dict[str, bytes]) -> None:
    """Write ``files`` into a temp directory beside ``out``, fsync, then rename into place."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.mkdir(mode=0o700)
    try:
        for fname, data in files.items():
            if os.sep in fname or fname in ("", ".", ".."):
                raise ValidationError(f"refusing to write file name {fname!r}")
            fd = os.open(tmp / fname, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
