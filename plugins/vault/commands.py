"""``qlora-hub audit verify|show``: the vault's hash-chained audit log.

The ``adapters`` and ``team`` commands belong to the core (:mod:`hub.adapter_commands`,
:mod:`hub.team_commands`) and work with any backend; only the audit log is the vault's own.
"""

from __future__ import annotations

import json
from typing import Any

import click

from hub.cli import CliState, pass_state


def _vault(state: CliState) -> Any:
    from hub.store import open_backend

    return open_backend(state.hub, state.settings, backend="vault")


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
    """Create the ``audit`` group."""
    audit = click.Group(name="audit", help="The vault's hash-chained audit log.")
    audit.add_command(audit_verify)
    audit.add_command(audit_show)
    cli.add_command(audit)
