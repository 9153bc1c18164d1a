"""A team's step: encrypt its weighted update chunk by chunk into a signed contribution file."""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hub.errors import ValidationError
from hub.types import AdapterPayload
from plugins.ckks.fedfile import Signer, write_fed_file
from plugins.ckks.modes import encode_update, frozen_digest, shared_config
from plugins.ckks.round import Round, check_name

FORMAT = "qlora-hub-fed-contribution/1"


def check_weight(weight: float) -> float:
    """A team's weight p_k must be a finite positive number."""
    if not (isinstance(weight, int | float) and math.isfinite(weight) and weight > 0):
        raise ValidationError(f"weight {weight!r} is not a positive number: pass e.g. --weight 0.5")
    return float(weight)


def write_contribution(
    rnd: Round,
    codec: Any,
    *,
    team: str,
    adapter: AdapterPayload,
    weight: float,
    sign: Signer | None,
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
