"""``qlora-hub fed init|contribute|aggregate|finalize``: one command per role.

Each role can run on its own machine with its own home; they meet in the
round directory (``--round-dir``, or ``<fed.rounds_dir>/<round>``, default
``<home>/fed/rounds/<round>``), which may be any shared mount.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from hub.cli import CliState, pass_state
from hub.errors import ValidationError
from hub.fed.rounddir import RoundDirParam, staged_round_dir

ROUND = click.option("--round", "round_id", required=True, help="Round id (e.g. 2026-11-r1).")
ROUND_DIR = click.option(
    "--round-dir",
    type=RoundDirParam(),
    default=None,
    help="Shared round directory or URL (s3://...) [default <fed.rounds_dir>/<round>].",
)


def resolve_round_dir(state: CliState, round_id: str, explicit: Path | None) -> Path:
    """The round's shared directory: the flag, else ``fed.rounds_dir``, else under the home."""
    from hub.fed.round import check_name

    if explicit:
        return explicit
    base = state.settings.get("fed.rounds_dir")
    root = Path(base) if base else state.writable_home() / "fed" / "rounds"
    return root / check_name("round id", round_id)


def key_dir(state: CliState, round_id: str) -> Path:
    """Where the key holder keeps a round's secret context (never shared)."""
    return state.writable_home() / "fed" / "keys" / round_id


def aggregator(state: CliState, name: str | None) -> Any:
    """The aggregator object, with TenSEAL threads from ``fed.threads``."""
    agg = state.hub.aggregators[name or state.settings.get("fed.aggregator")]
    if hasattr(agg.codec, "threads") and state.settings.get("fed.threads"):
        agg.codec.threads = state.settings.get("fed.threads")
    return agg


def acting_team(state: CliState, team: str | None, role: str) -> str:
    """``--team`` or the ``hub.team`` setting."""
    team = team or state.settings.get("hub.team")
    if not team:
        raise ValidationError(f"no team given for {role}: pass --team NAME or set hub.team")
    return team


def round_aggregator(state: CliState, rdir: Path, key_holder: str | None = None) -> Any:
    """The aggregator a round was started for, read from its manifest once the key holder's
    signature on it verified against this home's trust store (and, given ``key_holder``,
    once the signer is that team)."""
    from hub.fed.round import open_round
    from hub.fed.signing import trust_store_verifier

    rnd = open_round(rdir, verify=trust_store_verifier(state.home), key_holder=key_holder)
    return aggregator(state, rnd.meta["aggregator"])


def adapter_digest(payload: Any) -> str:
    """sha256 of an adapter's weights file: what chained rounds and ``--init-adapter`` name."""
    import hashlib

    return hashlib.sha256(payload.files[payload.WEIGHTS]).hexdigest()


@click.command("init")
@ROUND
@click.option("--teams", required=True, help="Participating teams, comma-separated.")
@click.option(
    "--mode",
    type=click.Choice(["ffa", "fedavg", "dense"]),
    default="ffa",
    show_default=True,
    help="Merge mode (docs/federated.md).",
)
@click.option("--team", default=None, help="Key-holder team that signs the round [hub.team].")
@click.option("--aggregator", "agg_name", default=None, help="ckks or plain [fed.aggregator].")
@click.option(
    "--start",
    "start_spec",
    default=None,
    help="Merged adapter NAME@VERSION (or directory) every team must train from (chained rounds).",
)
@click.option(
    "--poly-modulus-degree", type=int, default=None, help="CKKS N [fed.poly_modulus_degree]."
)
@click.option("--coeff-bits", default=None, help="e.g. 60,40,40,60 [fed.coeff_mod_bit_sizes].")
@click.option("--scale-bits", type=int, default=None, help="log2 scale [fed.global_scale_bits].")
@ROUND_DIR
@pass_state
@staged_round_dir("init")
def fed_init(
    state: CliState,
    round_id: str,
    teams: str,
    mode: str,
    team: str | None,
    agg_name: str | None,
    start_spec: str | None,
    poly_modulus_degree: int | None,
    coeff_bits: str | None,
    scale_bits: int | None,
    round_dir: Path | None,
) -> None:
    """Key holder: create the round's CKKS keys; publish the public context only."""
    from hub.fed.params import CkksParams, check_params
    from hub.fed.signing import team_signer

    s = state.settings
    s.override("fed.poly_modulus_degree", poly_modulus_degree)
    s.override("fed.coeff_mod_bit_sizes", coeff_bits)
    s.override("fed.global_scale_bits", scale_bits)
    params = {
        "poly_modulus_degree": s.get("fed.poly_modulus_degree"),
        "coeff_mod_bit_sizes": s.get("fed.coeff_mod_bit_sizes"),
        "global_scale_bits": s.get("fed.global_scale_bits"),
    }
    check_params(CkksParams.from_json(params))  # before any key is touched
    holder = acting_team(state, team, "fed init")
    rdir = resolve_round_dir(state, round_id, round_dir)
    start = None
    if start_spec:
        first = load_adapter(state, start_spec, holder)
        start = {"ref": str(first.ref or start_spec), "sha256": adapter_digest(first)}
    meta = aggregator(state, agg_name).init_round(
        rdir,
        round_id=round_id,
        teams=[t.strip() for t in teams.split(",") if t.strip()],
        mode=mode,
        key_dir=key_dir(state, round_id),
        params=params,
        key_holder=holder,
        sign=team_signer(state.home, holder, hub=state.hub),
        start=start,
    )
    chained = f"; starts from {start['ref']}" if start else ""
    click.echo(
        f"round {round_id}: {meta['aggregator']}/{mode}, teams {', '.join(meta['teams'])}, "
        f"N={params['poly_modulus_degree']}, key holder {holder}{chained}; "
        f"public context in {rdir}"
    )


def load_adapter(state: CliState, spec: str, team: str) -> Any:
    """A PEFT directory path, or an adapter reference pulled from storage as ``team``."""
    from hub.store import open_store
    from hub.types import AdapterPayload, AdapterRef

    path = Path(spec)
    if path.is_dir():  # a PEFT directory, or a training run (its adapter/ and manifest.json)
        peft = path if (path / AdapterPayload.CONFIG).is_file() else path / "adapter"
        payload = AdapterPayload.from_dir(peft, name=path.name)
        manifest = peft.parent / "manifest.json"
        if manifest.is_file() and not manifest.is_symlink():
            payload.manifest = json.loads(manifest.read_text())
        return payload
    store = open_store(state.hub, state.settings, team=team)
    return store.pull(AdapterRef.parse(spec), team=team, where="fed")


@click.command("contribute")
@ROUND
@click.option("--team", default=None, help="Contributing team [hub.team].")
@click.option(
    "--adapter",
    "adapter_spec",
    required=True,
    help="Adapter NAME[@VERSION] in storage, or a PEFT directory.",
)
@click.option(
    "--key-holder",
    required=True,
    help="The team you expect to have signed the round; any other signer is refused.",
)
@click.option(
    "--weight",
    type=float,
    default=None,
    help="Relative weight [the adapter's training examples, else 1]; finalize divides by the sum.",
)
@click.option(
    "--allow-plain", is_flag=True, help="Accept a round whose aggregator does not encrypt."
)
@ROUND_DIR
@pass_state
@staged_round_dir("contribute")
def fed_contribute(
    state: CliState,
    round_id: str,
    team: str | None,
    adapter_spec: str,
    key_holder: str,
    weight: float | None,
    allow_plain: bool,
    round_dir: Path | None,
) -> None:
    """A team: encrypt its weighted update and sign it into the round directory."""
    from hub.fed.contribute import default_weight, trained_from
    from hub.fed.signing import team_signer, trust_store_verifier

    team = acting_team(state, team, "fed contribute")
    rdir = round_dir_for(state, round_id, round_dir)
    agg = round_aggregator(state, rdir, key_holder)
    if not (agg.codec.encrypted or allow_plain):
        raise ValidationError(
            f"round {round_id} uses the {agg.name!r} aggregator, which sends your update "
            "unencrypted: refuse it, or pass --allow-plain if that is intended"
        )
    adapter = load_adapter(state, adapter_spec, team)
    source = "--weight"
    if weight is None:
        weight, source = default_weight(adapter)
    path = agg.contribute(
        rdir,
        team=team,
        adapter=adapter,
        weight=weight,
        sign=team_signer(state.home, team, hub=state.hub),
        verify=trust_store_verifier(state.home),
        key_holder=key_holder,
        start_sha256=trained_from(adapter),
        progress=True,
    )
    click.echo(
        f"team {team}: wrote {path} ({path.stat().st_size:,} bytes), weight {weight:g} ({source})"
    )


def round_dir_for(state: CliState, round_id: str, explicit: Path | None) -> Path:
    """:func:`resolve_round_dir`, then check the manifest there is for ``round_id``."""
    from hub.fed.round import open_round

    rdir = resolve_round_dir(state, round_id, explicit)
    found = open_round(rdir).id
    if found != round_id:
        raise ValidationError(f"{rdir} holds round {found}, not {round_id}: check --round-dir")
    return rdir


@click.command("aggregate")
@ROUND
@click.option("--key-holder", default=None, help="Refuse the round unless this team signed it.")
@ROUND_DIR
@pass_state
@staged_round_dir("aggregate")
def fed_aggregate(
    state: CliState, round_id: str, key_holder: str | None, round_dir: Path | None
) -> None:
    """Aggregator: check every contribution and sum the ciphertexts (public context only).

    The round must carry a valid key-holder signature from a team in this
    home's trust store."""
    from hub.fed.signing import trust_store_verifier

    rdir = round_dir_for(state, round_id, round_dir)
    out = round_aggregator(state, rdir, key_holder).aggregate(
        rdir, verify=trust_store_verifier(state.home), progress=True
    )
    click.echo(f"round {round_id}: wrote {out} ({out.stat().st_size:,} bytes)")


@click.command("finalize")
@ROUND
@click.option("--name", required=True, help="Name of the merged adapter.")
@click.option("--team", default=None, help="Key-holder team that publishes it [hub.team].")
@click.option("--rank", type=int, default=None, help="dense mode: rank of the SVD factors [r].")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write the merged PEFT directory here.",
)
@click.option("--storage", default=None, help="Storage backend to push to [hub.storage].")
@click.option("--no-push", is_flag=True, help="Do not push to storage (needs --out).")
@click.option(
    "--raw-sum",
    is_flag=True,
    help="Publish the weighted sum of the updates instead of their weighted mean.",
)
@ROUND_DIR
@pass_state
@staged_round_dir("finalize")
def fed_finalize(
    state: CliState,
    round_id: str,
    name: str,
    team: str | None,
    rank: int | None,
    out: Path | None,
    storage: str | None,
    no_push: bool,
    raw_sum: bool,
    round_dir: Path | None,
) -> None:
    """Key holder: decrypt, divide by the sum of the weights, round to bf16, build the PEFT
    adapter, push it shared with the teams."""
    from hub.fed.signing import trust_store_verifier

    if no_push and not out:
        raise ValidationError("--no-push keeps the result nowhere: add --out DIR")
    holder = acting_team(state, team, "fed finalize")
    rdir = round_dir_for(state, round_id, round_dir)
    payload = round_aggregator(state, rdir, holder).finalize(
        rdir,
        key_dir=key_dir(state, round_id),
        name=name,
        rank=rank,
        verify=trust_store_verifier(state.home),
        key_holder=holder,
        raw_sum=raw_sum,
        progress=True,
    )
    report = dict(payload.manifest["fed"])
    if out:
        write_peft_dir(payload, out)
        report["out"] = str(out)
    if not no_push:
        report.update(push_shared(state, payload, holder, report["teams"], storage))
    click.echo(json.dumps(report, indent=2, sort_keys=True))


def write_peft_dir(payload: Any, out: Path) -> None:
    """Write the adapter's files to ``out`` (created; each file written atomically)."""
    from hub.atomic import atomic_write

    out.mkdir(parents=True, exist_ok=True)
    for fname, data in payload.files.items():
        atomic_write(out / fname, data)


def push_shared(
    state: CliState, payload: Any, holder: str, teams: list[str], backend: str | None
) -> dict[str, Any]:
    """Push the merged adapter as ``holder``, readable by every participating team."""
    from hub.store import open_store

    store = open_store(state.hub, state.settings, backend, team=holder)
    shared = [t for t in teams if t != holder]
    ref = store.push(
        payload, team=holder, metadata={"fed": payload.manifest["fed"]}, share_with=shared
    )
    return {"pushed": str(ref), "shared_with": shared}


def add_fed_commands(cli: click.Group) -> None:
    """Attach the four role commands to ``fed`` and ``fed`` to ``bench``."""
    fed = cli.commands["fed"]
    for cmd in (fed_init, fed_contribute, fed_aggregate, fed_finalize):
        fed.add_command(cmd)
    from plugins.ckks.bench import bench_fed

    cli.commands["bench"].add_command(bench_fed)
