"""The aggregator's step: check every contribution, then sum ciphertexts chunk by chunk.

It needs only the public context. Contributions are read, never written:
each is opened read-only and streamed, so at any moment memory holds one
chunk per team plus the running sum.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hub.errors import ValidationError
from hub.fed.contribute import check_layout, check_weight
from hub.fed.fedfile import FedFile, Verifier, write_fed_file
from hub.fed.round import AGGREGATE, CONTRIBUTIONS, Round

FORMAT = "qlora-hub-fed-aggregate/1"


def check_contribution(rnd: Round, ff: FedFile, scheme: str, verify: Verifier | None) -> str:
    """Validate one contribution against the round; return its team.

    Order matters for the message a user sees: the file's claimed team must
    take part, its signature must verify, and only then are the signed
    bindings (round, context, parameters, mode) compared.
    """
    meta, name = ff.meta, ff.path.name
    if meta.get("kind") != "contribution":
        raise ValidationError(f"{name} is not a contribution file")
    team = str(meta.get("team"))
    rnd.require_team(team)
    if verify is not None:
        ff.verify(team, verify)
    if meta.get("round") != rnd.id:
        raise ValidationError(
            f"contribution {name} from team {team!r} is for round {meta.get('round')}, not "
            f"{rnd.id}: contribute again to round {rnd.id}"
        )
    if meta.get("context_sha256") != rnd.context_sha256:
        raise ValidationError(
            f"contribution {name} from team {team!r} was encrypted with another round's "
            f"public context: contribute again with round {rnd.id}'s public.context"
        )
    if meta.get("params_sha256") != rnd.params.digest() or meta.get("params") != rnd.meta["params"]:
        raise ValidationError(
            f"contribution {name} from team {team!r} uses CKKS scale/parameters "
            f"{meta.get('params')} but round {rnd.id} uses {rnd.meta['params']}: contribute again"
        )
    if meta.get("mode") != rnd.mode or meta.get("aggregator") != scheme:
        raise ValidationError(
            f"contribution {name} from team {team!r} is for {meta.get('aggregator')}/"
            f"{meta.get('mode')}, round {rnd.id} is {scheme}/{rnd.mode}: contribute again"
        )
    want_start = rnd.start["sha256"] if rnd.start else None
    if meta.get("start_sha256") != want_start:
        raise ValidationError(
            f"contribution {name} from team {team!r} was not trained from the adapter round "
            f"{rnd.id} starts from ({rnd.start['ref'] if rnd.start else 'none'}): contribute again"
        )
    check_weight(meta.get("weight"), team)
    check_layout(meta, rnd.params.slots, f"contribution {name} from team {team!r}")
    return team


def check_compatible(first: FedFile, other: FedFile) -> None:
    """Same tensor names and shapes, same shared LoRA config, same frozen A."""
    a, b, who = first.meta, other.meta, f"team {other.meta['team']!r}"
    if a["layout"] != b["layout"] or a["n_values"] != b["n_values"]:
        diff = next(
            (
                f"{x['name']} {x['shape']} vs {y['name']} {y['shape']}"
                for x, y in zip(a["layout"], b["layout"], strict=False)
                if x != y
            ),
            f"{len(a['layout'])} vs {len(b['layout'])} tensors",
        )
        raise ValidationError(
            f"shape mismatch: {who}'s tensors differ from team {a['team']!r}'s ({diff}): "
            "every team must train the same target modules and rank on the same base"
        )
    if a["shared_config"] != b["shared_config"]:
        raise ValidationError(
            f"LoRA scale mismatch: {who} has {b['shared_config']}, team {a['team']!r} has "
            f"{a['shared_config']}: train every team with the same r, lora_alpha and targets"
        )
    if a["frozen_sha256"] != b["frozen_sha256"]:
        raise ValidationError(
            f"frozen A differs: {who}'s lora_A is not byte-identical to team {a['team']!r}'s: "
            "train every team with freeze-A at the same seed (or use --mode dense)"
        )


def aggregate_round(
    rnd: Round, codec: Any, *, verify: Verifier | None, progress: bool = False
) -> Path:
    """Sum every team's contribution into ``aggregate.fedc``; inputs are only read.

    Raises:
        ValidationError / IntegrityError / UnknownNameError: any contribution
        is missing, duplicated, from an unknown team, unsigned or badly
        signed, for another round or context, or incompatible in shape or scale.
    """
    from rich.console import Console
    from rich.progress import track

    if rnd.meta["aggregator"] != codec.scheme:
        raise ValidationError(
            f"round {rnd.id} uses the {rnd.meta['aggregator']} aggregator, not {codec.scheme}"
        )
    out = rnd.dir / AGGREGATE
    if out.exists():
        raise ValidationError(f"round {rnd.id} is already aggregated: {out} exists")
    params = rnd.params
    ctx = codec.open(rnd.public_context())
    with ExitStack() as stack:
        files: dict[str, FedFile] = {}
        for path in sorted((rnd.dir / CONTRIBUTIONS).glob("*.fedc")):
            ff = stack.enter_context(FedFile(path))
            team = check_contribution(rnd, ff, codec.scheme, verify)
            if team in files:
                raise ValidationError(
                    f"duplicate contribution from team {team!r} in round {rnd.id} "
                    f"({files[team].path.name} and {path.name}): remove the one it did not send"
                )
            if path.stem != team:
                raise ValidationError(
                    f"{path.name} holds team {team!r}'s contribution: name it {team}.fedc"
                )
            files[team] = ff
        missing = [t for t in rnd.teams if t not in files]
        if missing:
            raise ValidationError(
                f"round {rnd.id} is missing contributions from {', '.join(missing)}: "
                "each team runs 'qlora-hub fed contribute' first"
            )
        ordered = [files[t] for t in rnd.teams]
        for ff in ordered[1:]:
            check_compatible(ordered[0], ff)
        first = ordered[0].meta
        streams = [ff.sections() for ff in ordered]

        def sections() -> Iterator[bytes]:
            if first["frozen_sha256"]:
                frozen = [next(s) for s in streams]
                yield frozen[0]  # identical by the signed frozen_sha256 checked above
            for _ in track(
                range(first["n_chunks"]),
                description="aggregate",
                disable=not progress,
                transient=True,
                console=Console(stderr=True),
            ):
                yield codec.add(ctx, [next(s) for s in streams], params)
            for s in streams:  # reaching the end runs the trailing-bytes check
                if next(s, None) is not None:
                    raise ValidationError("a contribution holds more chunks than it declares")

        meta = {
            "format": FORMAT,
            "kind": "aggregate",
            "round": rnd.id,
            "mode": rnd.mode,
            "aggregator": codec.scheme,
            "params": rnd.meta["params"],
            "context_sha256": rnd.context_sha256,
            "teams": rnd.teams,
            "weights": {t: files[t].meta["weight"] for t in rnd.teams},
            "inputs": {t: hashlib.sha256(files[t].signed_bytes()).hexdigest() for t in rnd.teams},
            "config": first["config"],
            "layout": first["layout"],
            "n_values": first["n_values"],
            "n_chunks": first["n_chunks"],
            "frozen_sha256": first["frozen_sha256"],
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        write_fed_file(out, meta, sections(), sign=None)
    return out
