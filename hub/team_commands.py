"""``qlora-hub team create|export-public|trust|list``: the core's team commands (any backend)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from hub import teams
from hub.atomic import atomic_write
from hub.cli import CliState, pass_state
from hub.errors import ConfigError

NO_PASSPHRASE_WARNING = (
    "WARNING: team {team}'s private keys are stored UNENCRYPTED in {path} (--no-passphrase).\n"
    "Anyone who can read that file can sign and decrypt as {team}. Use only for tests and demos."
)


def ask_new_passphrase(team: str) -> str:
    """A new passphrase from ``$QLORA_HUB_PASSPHRASE`` or an interactive prompt."""
    env = os.environ.get(teams.PASSPHRASE_ENV)
    if env:
        return env
    if not sys.stdin.isatty():
        raise ConfigError(
            f"no passphrase for team {team}: set {teams.PASSPHRASE_ENV}, run interactively, "
            "or pass --no-passphrase (tests and demos only)"
        )
    return click.prompt(
        f"new passphrase for team {team}", hide_input=True, confirmation_prompt=True
    )


def passphrase_source(team: str | None):
    """A callable prompting for ``team``'s passphrase (used only if a key file needs one)."""
    if not sys.stdin.isatty():
        return None
    return lambda: click.prompt(f"passphrase for team {team}", hide_input=True)


@click.command("create")
@click.argument("name")
@click.option(
    "--classical", is_flag=True, help="X25519/Ed25519 only (interop); default is the PQ hybrid."
)
@click.option(
    "--no-passphrase", is_flag=True, help="Store private keys unencrypted (tests/demos only)."
)
@pass_state
def team_create(state: CliState, name: str, classical: bool, no_passphrase: bool) -> None:
    """Create team NAME: signing and encryption key pairs, key file, trust of itself."""
    home = state.writable_home()
    passphrase = None if no_passphrase else ask_new_passphrase(name)
    pub = teams.create_team(
        home, name, passphrase=passphrase, suite="classical" if classical else "hybrid"
    )
    if no_passphrase:
        path = teams.team_dir(home, name) / "key.json"
        click.secho(NO_PASSPHRASE_WARNING.format(team=name, path=path), fg="red", err=True)
    click.echo(f"created team {name} ({pub.suite}), fingerprint {pub.fingerprint[:16]}")


@click.command("export-public")
@click.argument("name")
@click.option(
    "--out", type=click.Path(path_type=Path), default=None, help="File to write [default stdout]."
)
@pass_state
def team_export_public(state: CliState, name: str, out: Path | None) -> None:
    """Print (or write) team NAME's public identity, for other teams to trust."""
    data = teams.export_public(state.home, name)
    if out is None:
        click.echo(data.decode())
    else:
        atomic_write(out, data)
        click.echo(f"wrote {out}")


@click.command("trust")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@pass_state
def team_trust(state: CliState, file: Path) -> None:
    """Add the public identity in FILE to the trust store."""
    pub = teams.trust(state.writable_home(), file.read_bytes())
    click.echo(f"trusted team {pub.team} ({pub.suite}), fingerprint {pub.fingerprint[:16]}")


@click.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_state
def team_list(state: CliState, as_json: bool) -> None:
    """Teams in the trust store; 'local keys' marks teams whose private keys are here."""
    rows = teams.list_teams(state.home)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        mark = "local keys" if r["local_keys"] else "public only"
        click.echo(f"{r['team']:<20} {r['suite']:<10} {r['fingerprint']}  {mark}")


def add_to(cli: click.Group) -> None:
    """Attach the team commands to the core ``team`` group."""
    for cmd in (team_create, team_export_public, team_trust, team_list):
        cli.commands["team"].add_command(cmd)
