"""``qlora-hub adapters ...``: the core's commands over whichever backend ``hub.storage`` names.

Every command goes through :mod:`hub.adapters` (names, validation, policy
hooks, lifecycle hooks, the acting team), so they work the same with any
backend, and say only what the backend declares it does (``capabilities``):
no "encrypted", "verified" or "re-encrypted" for a backend that is none of
those. The acting team comes from ``--team`` or ``$QLORA_HUB_TEAM`` (setting
``hub.team``); a protected key file's passphrase from
``$QLORA_HUB_PASSPHRASE`` or a prompt.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import click

from hub.cli import CliState, pass_state
from hub.errors import ConfigError, UnknownNameError
from hub.team_commands import passphrase_source
from hub.types import AdapterRef

team_option = click.option(
    "--team", default=None, metavar="TEAM", help="Acting team [env QLORA_HUB_TEAM]."
)
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
base_option = click.option(
    "--base",
    default=None,
    metavar="DIR|FINGERPRINT",
    help="Base model (directory, checkpoint or fingerprint) the adapter was trained on; "
    "recorded so the server refuses it on another base [default: the trainer's manifest].",
)


def open_for(state: CliState, team: str | None) -> Any:
    """The core's adapter lifecycle over the configured backend, acting as ``team``."""
    from hub.store import open_store

    state.writable_home()
    team = team or state.settings.get("hub.team") or None
    return open_store(state.hub, state.settings, team=team, passphrase=passphrase_source(team))


def _parse_meta(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for p in pairs:
        key, sep, value = p.partition("=")
        if not sep or not key:
            raise ConfigError(f"--meta {p!r}: use KEY=VALUE")
        out[key] = value
    return out


def _stored_as(store: Any) -> str:
    caps = store.capabilities
    done = [w for w, c in (("signed", "signed"), ("encrypted", "encrypted")) if c in caps]
    return " and ".join(done) if done else f"{store.name}: not signed or encrypted"


@click.command("push")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--name", required=True, help="Adapter name (ASCII letters, digits, . _ -).")
@click.option(
    "--share-with", multiple=True, metavar="TEAM", help="Also readable by TEAM (repeatable)."
)
@click.option("--meta", multiple=True, metavar="KEY=VALUE", help="Extra metadata (repeatable).")
@base_option
@team_option
@pass_state
def push(state, directory, name, share_with, meta, base, team) -> None:
    """Validate and store the adapter in DIRECTORY (or a training run) as a new version of NAME."""
    from hub.adapter_dirs import import_metadata, read_adapter_dir

    payload, found = read_adapter_dir(directory, name)
    store = open_for(state, team)
    metadata = import_metadata(found, base, _parse_meta(meta))
    ref = store.push(payload, team=team, metadata=metadata, share_with=share_with)
    click.echo(f"pushed {ref} ({payload.nbytes:,} bytes, {_stored_as(store)})")


@click.command("import")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--name", required=True, help="Adapter name to store it under.")
@base_option
@team_option
@pass_state
def import_cmd(state, directory, name, base, team) -> None:
    """Import a plain PEFT directory (safetensors + JSON; pickle files are refused)."""
    store = open_for(state, team)
    ref = store.import_dir(
        directory, name, team=team, base=base, metadata={"imported_from": Path(directory).name}
    )
    click.echo(f"imported {directory} as {ref}")


@click.command("pull")
@click.argument("ref")
@team_option
@json_option
@pass_state
def pull(state, ref, team, as_json) -> None:
    """Fetch REF (NAME, NAME@N, NAME@latest), check and validate it in memory; print a summary."""
    store = open_for(state, team)
    p = store.pull(AdapterRef.parse(ref), team=team)
    info = {
        "ref": str(p.ref),
        "publisher": p.manifest.get("publisher"),
        "files": {n: hashlib.sha256(b).hexdigest() for n, b in sorted(p.files.items())},
        "bytes": p.nbytes,
        "signed": "signed" in store.capabilities,
    }
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        checked = "verified" if info["signed"] else "hashes checked (not signed)"
        click.echo(f"{info['ref']} by {info['publisher']}: {p.nbytes:,} bytes, {checked}")
        for n, h in info["files"].items():
            click.echo(f"  {n}  sha256 {h[:16]}")


@click.command("list")
@team_option
@json_option
@pass_state
def list_cmd(state, team, as_json) -> None:
    """Adapter versions the acting team can read."""
    records = open_for(state, team).list(team=team)
    rows = [
        {
            "ref": f"{r.name}@{r.version}",
            "publisher": r.team,
            "created": r.created,
            "bytes": r.size,
            "readers": list(r.shared_with),
        }
        for r in records
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no adapters visible to this team")
    for r in rows:
        click.echo(
            f"{r['ref']:<30} {r['publisher']:<12} {r['bytes']:>12,}  {r['created']}  "
            f"readers: {', '.join(r['readers'])}"
        )


@click.command("show")
@click.argument("ref")
@team_option
@pass_state
def show(state, ref, team) -> None:
    """Print the stored manifest of REF and who can read it (JSON)."""
    store = open_for(state, team)
    click.echo(json.dumps(store.show(AdapterRef.parse(ref), team=team), indent=2))


@click.command("share")
@click.argument("ref")
@click.option("--with", "with_team", required=True, metavar="TEAM", help="Team to share with.")
@team_option
@pass_state
def share(state, ref, with_team, team) -> None:
    """Let TEAM read REF (every version when no @N)."""
    out = open_for(state, team).share(AdapterRef.parse(ref), team=team, with_team=with_team)
    click.echo(f"shared {AdapterRef.parse(ref)} with {with_team} (latest shared: {out})")


@click.command("revoke")
@click.argument("ref")
@click.option("--from", "from_team", required=True, metavar="TEAM", help="Team to cut off.")
@team_option
@pass_state
def revoke(state, ref, from_team, team) -> None:
    """Stop TEAM reading NAME from now on (re-encrypted as a new version where the backend can)."""
    store = open_for(state, team)
    out = store.revoke(AdapterRef.parse(ref), team=team, from_team=from_team)
    name = AdapterRef.parse(ref).name
    if "revoke_reencrypts" in store.capabilities:
        click.echo(f"revoked {from_team} from {name}; re-encrypted as {out}")
    else:
        click.echo(
            f"revoked {from_team} from {name} (latest {out}); backend {store.name} does not "
            f"re-encrypt: copies {from_team} already pulled stay readable to it"
        )


@click.command("delete")
@click.argument("ref")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@team_option
@pass_state
def delete(state, ref, yes, team) -> None:
    """Delete REF (every version when no @N). Version numbers are never reused."""
    parsed = AdapterRef.parse(ref)
    if not yes:
        click.confirm(f"delete {parsed}{'' if parsed.version else ' (all versions)'}?", abort=True)
    open_for(state, team).delete(parsed, team=team)
    click.echo(f"deleted {parsed}")


@click.command("export")
@click.argument("ref")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="New directory.")
@team_option
@pass_state
def export(state, ref, out, team) -> None:
    """Write REF as a plain PEFT directory (validated first; the only way plaintext reaches disk)."""
    p = open_for(state, team).export(AdapterRef.parse(ref), out, team=team)
    click.echo(f"exported {p.ref} to {out}")


@click.command("verify")
@click.argument("ref", required=False)
@team_option
@json_option
@pass_state
def verify(state, ref, team, as_json) -> None:
    """Check REF (default: all visible) as a pull does: hashes, validation, and signatures
    and trust where the backend signs."""
    store = open_for(state, team)
    refs = (
        [AdapterRef.parse(ref)]
        if ref
        else [AdapterRef(r.name, r.version) for r in store.list(team=team)]
    )
    if not refs:
        raise UnknownNameError("nothing to verify: no adapters are visible to this team")
    results = [store.verify(r, team=team) for r in refs]
    if as_json:
        click.echo(json.dumps(results, indent=2))
    else:
        what = "signed, verified" if "signed" in store.capabilities else "hashes checked, unsigned"
        for res in results:
            click.echo(f"ok  {res['ref']}  ({res['bytes']:,} bytes, {what})")


@click.command("reindex")
@team_option
@json_option
@pass_state
def reindex(state, team, as_json) -> None:
    """Rebuild the backend's index (a cache) from its signed records; no keys needed."""
    from hub.store import open_backend

    backend = open_backend(state.hub, state.settings, team=team)
    if not hasattr(backend, "reindex"):
        raise ConfigError(f"storage backend {backend.name!r} keeps no index to rebuild")
    out = backend.reindex(team=team)
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    click.echo(f"reindexed {out['names']} names, {out['versions']} versions from signed records")
    for name, why in sorted(out["skipped"].items()):
        click.echo(f"skipped {name}: {why}")


COMMANDS = (push, import_cmd, pull, list_cmd, show, share, revoke, delete, export, verify, reindex)


def add_to(cli: click.Group) -> None:
    """Attach the adapters commands to the core ``adapters`` group."""
    for cmd in COMMANDS:
        cli.commands["adapters"].add_command(cmd)
