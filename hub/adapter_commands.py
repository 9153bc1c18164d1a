"""``qlora-hub adapters ...`` and ``qlora-hub audit verify``.

They work with whichever backend ``hub.storage`` names (``vault`` by default).
The acting team comes from ``--team`` or ``$QLORA_HUB_TEAM`` (setting
``hub.team``); a protected key file's passphrase from ``$QLORA_HUB_PASSPHRASE``
or a prompt.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import click

from hub.cli import CliState, pass_state
from hub.errors import ConfigError, UnknownNameError, ValidationError
from hub.types import AdapterPayload, AdapterRef
from plugins.vault.names import check_name
from plugins.vault.team_commands import passphrase_source
from plugins.vault.validation import refuse_pickles

METADATA_FILE = "training_metadata.json"

team_option = click.option(
    "--team", default=None, metavar="TEAM", help="Acting team [env QLORA_HUB_TEAM]."
)
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def open_for(state: CliState, team: str | None) -> Any:
    """Open the configured storage backend acting as ``team``."""
    from hub.store import open_store

    state.writable_home()
    team = team or state.settings.get("hub.team") or None
    return open_store(state.hub, state.settings, team=team, passphrase=passphrase_source(team))


def read_adapter_dir(directory: Path, name: str) -> tuple[AdapterPayload, dict[str, Any]]:
    """A PEFT directory as a payload (pickles refused) plus its optional training metadata."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ValidationError(f"{directory} is not a directory: pass a PEFT adapter directory")
    refuse_pickles(directory)
    payload = AdapterPayload.from_dir(directory, check_name(name))
    meta: dict[str, Any] = {}
    if (directory / METADATA_FILE).is_file():
        try:
            meta = json.loads((directory / METADATA_FILE).read_bytes())
        except ValueError as exc:
            raise ValidationError(f"{directory / METADATA_FILE} is not JSON ({exc})") from None
    return payload, meta


def _parse_meta(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for p in pairs:
        key, sep, value = p.partition("=")
        if not sep or not key:
            raise ConfigError(f"--meta {p!r}: use KEY=VALUE")
        out[key] = value
    return out


@click.command("push")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--name", required=True, help="Adapter name (ASCII letters, digits, . _ -).")
@click.option(
    "--share-with", multiple=True, metavar="TEAM", help="Also readable by TEAM (repeatable)."
)
@click.option(
    "--meta", multiple=True, metavar="KEY=VALUE", help="Extra signed metadata (repeatable)."
)
@team_option
@pass_state
def push(state, directory, name, share_with, meta, team) -> None:
    """Validate, sign, encrypt and store the adapter in DIRECTORY as a new version of NAME."""
    payload, metadata = read_adapter_dir(directory, name)
    store = open_for(state, team)
    ref = store.push(
        payload,
        team=team,
        metadata=metadata | _parse_meta(meta),
        share_with=share_with,
    )
    click.echo(f"pushed {ref} ({payload.nbytes:,} bytes)")


@click.command("import")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--name", required=True, help="Adapter name to store it under.")
@team_option
@pass_state
def import_cmd(state, directory, name, team) -> None:
    """Import a plain PEFT directory (safetensors + JSON; pickle files are refused)."""
    payload, metadata = read_adapter_dir(directory, name)
    store = open_for(state, team)
    ref = store.push(
        payload, team=team, metadata=metadata | {"imported_from": Path(directory).name}
    )
    click.echo(f"imported {directory} as {ref}")


@click.command("pull")
@click.argument("ref")
@team_option
@json_option
@pass_state
def pull(state, ref, team, as_json) -> None:
    """Fetch REF (NAME, NAME@N, NAME@latest), verify and decrypt it in memory; print a summary."""
    store = open_for(state, team)
    p = store.pull(AdapterRef.parse(ref), team=team)
    info = {
        "ref": str(p.ref),
        "publisher": p.manifest.get("publisher"),
        "files": {n: hashlib.sha256(b).hexdigest() for n, b in sorted(p.files.items())},
        "bytes": p.nbytes,
    }
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        click.echo(f"{info['ref']} by {info['publisher']}: {p.nbytes:,} bytes, verified")
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
    """Print the verified, signed manifest of REF and who can read it (JSON)."""
    store = open_for(state, team)
    if not hasattr(store, "show"):
        raise ConfigError(f"storage backend {store.name!r} has no manifests to show")
    click.echo(json.dumps(store.show(AdapterRef.parse(ref), team=team), indent=2))


@click.command("share")
@click.argument("ref")
@click.option("--with", "with_team", required=True, metavar="TEAM", help="Team to share with.")
@team_option
@pass_state
def share(state, ref, with_team, team) -> None:
    """Let TEAM read REF (every version when no @N); the payload is not re-encrypted."""
    out = open_for(state, team).share(AdapterRef.parse(ref), team=team, with_team=with_team)
    click.echo(f"shared {AdapterRef.parse(ref)} with {with_team} (latest shared: {out})")


@click.command("revoke")
@click.argument("ref")
@click.option("--from", "from_team", required=True, metavar="TEAM", help="Team to cut off.")
@team_option
@pass_state
def revoke(state, ref, from_team, team) -> None:
    """Stop TEAM reading NAME: re-encrypt for the remaining teams as a new version."""
    out = open_for(state, team).revoke(AdapterRef.parse(ref), team=team, from_team=from_team)
    click.echo(f"revoked {from_team} from {AdapterRef.parse(ref).name}; re-encrypted as {out}")


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
    """Write REF as a plain PEFT directory (the only way plaintext reaches disk)."""
    if out.exists() and any(out.iterdir()):
        raise ValidationError(f"{out} exists and is not empty: choose a new directory")
    p = open_for(state, team).pull(AdapterRef.parse(ref), team=team)
    write_dir_atomically(out, p.files)
    click.echo(f"exported {p.ref} to {out}")


def write_dir_atomically(out: Path, files: dict[str, bytes]) -> None:
    """Write ``files`` into a temp directory beside ``out``, fsync, then rename into place."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.mkdir(mode=0o700)
    try:
        for fname, data in files.items():
            with open(tmp / fname, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@click.command("verify")
@click.argument("ref", required=False)
@team_option
@json_option
@pass_state
def verify(state, ref, team, as_json) -> None:
    """Verify signature, trust, every chunk and every hash of REF (default: all visible)."""
    store = open_for(state, team)
    refs = (
        [AdapterRef.parse(ref)]
        if ref
        else [AdapterRef(r.name, r.version) for r in store.list(team=team)]
    )
    if not refs:
        raise UnknownNameError("nothing to verify: no adapters are visible to this team")
    results = []
    for r in refs:
        if hasattr(store, "verify"):
            results.append(store.verify(r, team=team))
        else:
            p = store.pull(r, team=team)
            results.append({"ref": str(p.ref), "ok": True, "bytes": p.nbytes})
    if as_json:
        click.echo(json.dumps(results, indent=2))
    else:
        for res in results:
            click.echo(f"ok  {res['ref']}  ({res['bytes']:,} bytes)")


def _vault(state: CliState) -> Any:
    from hub.store import open_store

    return open_store(state.hub, state.settings, backend="vault")


@click.command("verify")
@pass_state
def audit_verify(state) -> None:
    """Check the audit log's hash chain; fails if an entry was edited or deleted."""
    n = _vault(state).audit.verify()
    click.echo(f"audit log ok: {n} entries, chain intact")


@click.command("show")
@click.option("--last", default=20, show_default=True, help="How many entries.")
@pass_state
def audit_show(state, last) -> None:
    """Print the last entries of the audit log (JSON lines)."""
    for e in _vault(state).audit.entries()[-last:]:
        click.echo(json.dumps(e, sort_keys=True))


def add_to(cli: click.Group) -> None:
    """Attach the adapters commands and create the ``audit`` group."""
    group = cli.commands["adapters"]
    for cmd in (push, import_cmd, pull, list_cmd, show, share, revoke, delete, export, verify):
        group.add_command(cmd)
    audit = click.Group(name="audit", help="The vault's hash-chained audit log.")
    audit.add_command(audit_verify)
    audit.add_command(audit_show)
    cli.add_command(audit)
