"""The key holder's last step: decrypt the aggregate and build the merged PEFT adapter."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

from hub.errors import IntegrityError, ValidationError
from hub.fed.contribute import check_layout, check_weight
from hub.fed.fedfile import FedFile, Verifier
from hub.fed.modes import decode_merged
from hub.fed.round import AGGREGATE, Round
from hub.types import AdapterPayload

if TYPE_CHECKING:
    import numpy as np


def check_inputs(rnd: Round, aggregate_meta: dict[str, Any], verify: Verifier) -> dict[str, Any]:
    """Re-check each contribution the aggregate claims to include; return their signed weights.

    The key holder does not trust the aggregator to have used every team:
    each listed input must be the signed header of that team's contribution
    still on shared storage, and every team of the round must be listed. The
    weights come from those signed headers, not from the aggregator's list.
    """
    inputs = aggregate_meta.get("inputs") or {}
    if sorted(inputs) != sorted(rnd.teams):
        raise IntegrityError(
            f"the aggregate of round {rnd.id} covers {sorted(inputs)}, not every team "
            f"{sorted(rnd.teams)}: aggregate again"
        )
    weights = {}
    for team, digest in inputs.items():
        with FedFile(rnd.contribution_path(team)) as ff:
            weights[team] = ff.meta.get("weight")
            ff.verify(team, verify)
            if ff.meta.get("start_sha256") != (rnd.start or {}).get("sha256"):
                raise IntegrityError(
                    f"team {team!r}'s contribution to round {rnd.id} was not trained from the "
                    "adapter the round starts from: that team contributes again"
                )
            if hashlib.sha256(ff.signed_bytes()).hexdigest() != digest:
                raise IntegrityError(
                    f"the aggregate of round {rnd.id} does not match team {team!r}'s signed "
                    "contribution: aggregate again"
                )
    return weights


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
            meta["weights"] = check_inputs(rnd, meta, verify)
        if not isinstance(meta.get("weights"), dict):
            raise ValidationError(f"{path} lists no weights: aggregate again")
        check_layout(meta, params.slots, f"the aggregate of round {rnd.id}")
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
    raw_sum: bool = False,
    progress: bool = False,
) -> AdapterPayload:
    """Decrypt the round's aggregate, divide by the sum of the weights, round to bf16.

    Args:
        rnd: the round.
        codec: the aggregator's codec.
        secret: the key holder's secret context (empty for ``plain``).
        name: adapter name of the result.
        rank: target rank for ``dense`` (default: the teams' ``r``).
        verify: when given, contributions' signatures and the aggregate's
            claimed inputs are re-checked (see :func:`check_inputs`).
        raw_sum: keep the weighted sum ``sum_k w_k x_k`` instead of the
            FedAvg weighted mean ``sum_k w_k x_k / sum_k w_k``.
        progress: show a progress bar.

    Returns:
        The merged adapter; ``manifest["fed"]`` holds the round, teams,
        weights, their sum, each team's share, what the round started from
        and the mode's report (``energy_kept`` for dense).
    """
    import torch
    from safetensors.torch import save

    meta, vector, frozen = decrypt_aggregate(rnd, codec, secret, verify=verify, progress=progress)
    weights = {t: check_weight(meta["weights"].get(t), t) for t in rnd.teams}
    total = float(sum(weights.values()))
    if not raw_sum:
        vector /= total  # FedAvg: the weighted mean of the updates
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
        weights=weights,
        weight_sum=total,
        shares={t: w / total for t, w in weights.items()},
        combine="sum" if raw_sum else "mean",
        start=rnd.start,
        parameters=int(sum(t.numel() for t in tensors.values())),
    )
    files = {
        AdapterPayload.CONFIG: json.dumps(config, indent=2, sort_keys=True).encode(),
        AdapterPayload.WEIGHTS: save(tensors, metadata={"format": "pt"}),
    }
    return AdapterPayload(name=name, files=files, manifest={"fed": report})
