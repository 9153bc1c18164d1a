"""Finding an adapter the user named: a PEFT directory, a training run, or ``name@version`` in storage."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hub.errors import ConfigError
from hub.types import AdapterPayload, AdapterRef


def resolve_adapter(
    text: str,
    *,
    hub: Any = None,
    settings: Any = None,
    team: str | None = None,
    storage: str | None = None,
) -> AdapterPayload:
    """The adapter ``text`` names, in memory, with its manifest when one is known.

    ``text`` is a PEFT directory, a run directory written by ``qlora-hub train``
    (its ``adapter/`` and ``manifest.json``), or ``NAME[@VERSION]`` pulled from
    the storage backend as ``team``.
    """
    path = Path(text)
    if path.is_dir():
        if (path / AdapterPayload.CONFIG).is_file():
            payload = AdapterPayload.from_dir(path, path.name)
            manifest = path.parent / "manifest.json"
        else:
            payload = AdapterPayload.from_dir(path / "adapter", path.name)
            manifest = path / "manifest.json"
        if manifest.is_file():
            payload.manifest = json.loads(manifest.read_text())
            payload.name = payload.manifest.get("name", payload.name)
        return payload
    from hub.store import open_store

    team = team or (settings.get("hub.team") if settings is not None else None)
    if not team:
        raise ConfigError(
            f"{text!r} is not a directory, and no team is set to pull it from storage: "
            "pass --team or set QLORA_HUB_TEAM"
        )
    store = open_store(hub, settings, storage, team=team)
    return store.pull(AdapterRef.parse(text), team=team)  # the core fires adapter_loaded


def base_of(payload: AdapterPayload, given: str | None) -> str:
    """The base to use with ``payload``: ``given``, else the one its manifest names."""
    if given:
        return given
    base = (payload.manifest or {}).get("base")
    if not base:
        raise ConfigError(f"adapter {payload.name} has no manifest naming its base: pass --base")
    return base
