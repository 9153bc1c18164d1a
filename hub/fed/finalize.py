"""The key holder's last step: decrypt the aggregate and build the merged PEFT adapter."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

from hub.errors import IntegrityError, ValidationError
from hub.types import AdapterPayload
from plugins.ckks.fedfile import FedFile, Verifier
from plugins.ckks.modes import decode_merged
from plugins.ckks.round import AGGREGATE, Round

if TYPE_CHECKING:
    import numpy as np


def check_inputs(rnd: Round, aggregate_meta: dict[str, Any], verify: Verifier) -> None:
    """Re-check each contribution the aggregate claims to include.

    The key holder does not trust the aggregator to have used every team:
    each listed input must be the signed header of that team's contribution
    still on shared storage, and every team of the round must be listed.
    """
    inputs = aggregate_meta.get("inputs") or {}
    if sorted(inputs) != sorted(rnd.teams):
        raise IntegrityError(
            f"the aggregate of round {rnd.id} covers {sorted(inputs)}, not every team "
            f"{sorted(rnd.teams)}: aggregate again"
        )
    for team, digest in inputs.items():
        with FedFile(rnd.contribution_path(team)) as ff:
            ff.verify(team, verify)
            if hashlib.sha256(ff.signed_bytes()).hexdigest() != digest:
                raise IntegrityError(
                    f"the aggregate of round {rnd.id} does not match team {team!r}'s signed "
                    "contribution: aggregate again"
                )


def decrypt_aggregate(
    rnd: Round,
    codec: Any,
    secret: bytes,
    *,
    verify: Verifier | None = None,
    progress: bool = False,
) -> tuple[dict[str, Any], np.ndarray, dict[str, Any]]:
    """Decrypt the round's aggregate chunk by chunk.

    Returns:
        ``(meta, vector, frozen)``: the aggregate's metadata, the decrypted
        float64 sum (before any rounding) and the shared frozen A tensors (ffa).
    """
    import numpy as np
    from rich.console import Console
    from rich.progress import track
    from safetensors.torch import load

    path = rnd.dir / AGGREGATE
    if not path.is_file():
        raise ValidationError(
            f"round {rnd.id} is not aggregated yet: run 'qlora-hub fed aggregate'"
        )
    ctx = codec.open(secret, secret=True)
    params = rnd.params
    with FedFile(path) as ff:
        meta = ff.meta
        if meta.get("kind") != "aggregate" or meta.get("round") != rnd.id:
            raise ValidationError(f"{path} is not round {rnd.id}'s aggregate: aggregate again")
        if meta.get("context_sha256") != rnd.context_sha256:
            raise ValidationError(f"{path} was made under another round's context: aggregate again")
        if verify is not None:
            check_inputs(rnd, meta, verify)
        sections = ff.sections()
        frozen = load(next(sections)) if meta["frozen_sha256"] else {}
        vector = np.empty(meta["n_values"], dtype=np.float64)
        slots = params.slots
        for i in track(
            range(meta["n_chunks"]),
            description="decrypt",
            disable=not progress,
            transient=True,
            console=Console(stderr=True),
        ):
            part = vector[i * slots : (i + 1) * slots]
            part[:] = codec.decrypt(ctx, next(sections), part.size, params)
    return meta, vector, frozen


def finalize_round(
    rnd: Round,
    codec: Any,
    secret: bytes,
    *,
    name: str,
    rank: int | None = None,
    verify: Verifier | None = None,
    progress: bool = False,
) -> AdapterPayload:
    """Decrypt the round's aggregate, round to bf16, and return the merged adapter.

    Args:
        rnd: the round.
        codec: the aggregator's codec.
        secret: the key holder's secret context (empty for ``plain``).
        name: adapter name of the result.
        rank: target rank for ``dense`` (default: the teams' ``r``).
        verify: when given, contributions' signatures and the aggregate's
            claimed inputs are re-checked (see :func:`check_inputs`).
        progress: show a progress bar.

    Returns:
        The merged adapter; ``manifest["fed"]`` holds the round, teams,
        weights and the mode's report (``energy_kept`` for dense).
    """
    import torch
    from safetensors.torch import save

    meta, vector, frozen = decrypt_aggregate(rnd, codec, secret, verify=verify, progress=progress)
    tensors, config, report = decode_merged(
        rnd.mode, meta["layout"], vector, frozen, meta["config"], rank=rank
    )
    # Published aggregates are rounded to bf16: the low mantissa bits of a sum
    # are where CKKS noise lives, and bf16 is what the base computes in anyway.
    tensors = {k: v.to(torch.bfloat16).contiguous() for k, v in tensors.items()}
    config["inference_mode"] = True
    report.update(
        round=rnd.id,
        aggregator=codec.scheme,
        teams=meta["teams"],
        weights=meta["weights"],
        weight_sum=float(sum(meta["weights"].values())),
        parameters=int(sum(t.numel() for t in tensors.values())),
    )
    files = {
        AdapterPayload.CONFIG: json.dumps(config, indent=2, sort_keys=True).encode(),
        AdapterPayload.WEIGHTS: save(tensors, metadata={"format": "pt"}),
    }
    return AdapterPayload(name=name, files=files, manifest={"fed": report})
