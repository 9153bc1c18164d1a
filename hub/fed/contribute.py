"""A team's step: encrypt its weighted update chunk by chunk into a signed contribution file."""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hub.errors import ValidationError
from hub.fed.fedfile import Signer, write_fed_file
from hub.fed.modes import encode_update, frozen_digest, shared_config
from hub.fed.round import Round, check_name
from hub.types import AdapterPayload

FORMAT = "qlora-hub-fed-contribution/1"
MAX_WEIGHT = 1e9
"""Largest relative weight (a billion training examples): beyond it a typo is likelier."""


def check_weight(weight: Any, team: str | None = None) -> float:
    """A team's relative weight must be a finite number in (0, :data:`MAX_WEIGHT`]."""
    ok = isinstance(weight, int | float) and not isinstance(weight, bool)
    if not (ok and math.isfinite(weight) and 0 < weight <= MAX_WEIGHT):
        who = f"team {team!r}'s " if team else ""
        raise ValidationError(
            f"{who}weight {weight!r} is not a number in (0, {MAX_WEIGHT:.0e}]: pass a relative "
            "weight such as the team's number of training examples (--weight 2000)"
        )
    return float(weight)


def default_weight(adapter: AdapterPayload) -> tuple[float, str]:
    """``(weight, source)``: the training examples its training metadata records, else 1."""
    manifest = adapter.manifest or {}
    for record in (manifest, manifest.get("metadata") or {}):
        data = record.get("data") if isinstance(record, dict) else None
        rows = data.get("train_rows") if isinstance(data, dict) else None
        if isinstance(rows, int) and not isinstance(rows, bool) and rows > 0:
            return float(rows), "training examples"
    return 1.0, "default"


def trained_from(adapter: AdapterPayload) -> str | None:
    """sha256 of the adapter weights ``adapter`` was trained from (its training metadata)."""
    manifest = adapter.manifest or {}
    for record in (manifest, manifest.get("metadata") or {}):
        init = record.get("init_adapter") if isinstance(record, dict) else None
        if isinstance(init, dict) and isinstance(init.get("sha256"), str):
            return init["sha256"]
    return None


def check_chained(rnd: Round, team: str, start_sha256: str | None) -> None:
    """A round that starts from a merged adapter takes only updates trained from it."""
    if rnd.start is None or start_sha256 == rnd.start["sha256"]:
        return
    got = f"from adapter weights {start_sha256[:12]}" if start_sha256 else "from scratch"
    raise ValidationError(
        f"team {team!r}'s adapter was trained {got}, but round {rnd.id} starts from "
        f"{rnd.start['ref']} ({rnd.start['sha256'][:12]}): train again with "
        f"'qlora-hub train --init-adapter {rnd.start['ref']}'"
    )


def check_layout(meta: dict[str, Any], slots: int, name: str) -> None:
    """The counts a signed header declares must agree with each other and its sections.

    ``n_values`` is the sum of the layout's shapes, ``n_chunks`` is
    ``ceil(n_values / slots)``, and the file lists one section per chunk
    (plus the frozen A in ffa). A short file is refused here, in one line,
    before any chunk is read.
    """
    try:
        n_values = sum(math.prod(int(d) for d in e["shape"]) for e in meta["layout"])
        n_chunks, hashes = int(meta["n_chunks"]), meta["section_sha256"]
        extra = 1 if meta.get("frozen_sha256") else 0
        ok = n_values == int(meta["n_values"]) > 0 and isinstance(hashes, list)
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise ValidationError(f"{name} has a malformed header (layout, n_values, n_chunks)")
    if n_chunks != -(-n_values // slots):
        raise ValidationError(
            f"{name} declares {n_chunks} chunks for {n_values} values, not "
            f"{-(-n_values // slots)}: the file is malformed; contribute again"
        )
    if len(hashes) != n_chunks + extra:
        raise ValidationError(
            f"{name} lists {len(hashes)} sections but declares {n_chunks} chunks"
            f"{' plus the frozen A' if extra else ''}: the file is short or malformed; "
            "contribute again"
        )


def write_contribution(
    rnd: Round,
    codec: Any,
    *,
    team: str,
    adapter: AdapterPayload,
    weight: float,
    sign: Signer | None,
    start_sha256: str | None = None,
    progress: bool = False,
) -> Path:
    """Encrypt ``weight`` x the adapter's update for ``rnd.mode`` and write it, signed.

    The metadata binds the round id, team, mode, tensor names and shapes, the
    CKKS parameters (hash) and the public context (hash); the signature covers
    it and, through per-section hashes, every ciphertext. Memory holds the
    plaintext update plus one ciphertext at a time.

    Returns:
        Path of the contribution file in the round directory.
    """
    from rich.console import Console
    from rich.progress import track
    from safetensors.torch import save

    check_name("team name", team)
    rnd.require_team(team)
    weight = check_weight(weight)
    check_chained(rnd, team, start_sha256)
    path = rnd.contribution_path(team)
    if path.exists():
        raise ValidationError(
            f"team {team!r} already contributed to round {rnd.id}: each team contributes once "
            f"(delete {path} to replace it)"
        )
    config = adapter.config()
    layout, vector, frozen = encode_update(rnd.mode, adapter.tensors(), config, weight)
    params = rnd.params
    ctx = codec.open(rnd.public_context())
    slots = params.slots
    n_chunks = -(-vector.size // slots)
    meta = {
        "format": FORMAT,
        "kind": "contribution",
        "round": rnd.id,
        "team": team,
        "mode": rnd.mode,
        "aggregator": codec.scheme,
        "params": params.to_json(),
        "params_sha256": params.digest(),
        "context_sha256": rnd.context_sha256,
        "weight": weight,
        "start_sha256": rnd.start["sha256"] if rnd.start else None,
        "adapter": adapter.name,
        "config": config,
        "shared_config": shared_config(config, rnd.mode),
        "layout": layout,
        "n_values": int(vector.size),
        "n_chunks": n_chunks,
        "frozen_sha256": frozen_digest(frozen) if frozen else None,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }

    def sections() -> Iterator[bytes]:
        if frozen:
            yield save({k: v.contiguous() for k, v in frozen.items()})
        for i in track(
            range(n_chunks),
            description=f"encrypt {team}",
            disable=not progress,
            transient=True,
            console=Console(stderr=True),
        ):
            yield codec.encrypt(ctx, vector[i * slots : (i + 1) * slots])

    write_fed_file(path, meta, sections(), sign)
    return path
