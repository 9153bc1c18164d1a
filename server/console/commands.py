"""``qlora-hub ui``: the web console for one team (registered by the ``server`` plugin).

Only click is imported here; Litestar, uvicorn and the pages load when the command runs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from hub.cli import CliState, pass_state

API_KEY_ENV = "QLORA_HUB_API_KEY"


def unlock(home: Path, team: str, hub: Any) -> Any:
    """Check ``team``'s keys open now; the passphrase source for the store (asked at most once).

    The passphrase comes from ``$QLORA_HUB_PASSPHRASE`` or a prompt, stays in this process
    and is never sent to the browser. A wrong passphrase fails here, before the console starts.
    """
    from hub import teams

    held: dict[str, str] = {}

    def ask() -> str:
        if "p" not in held:
            held["p"] = os.environ.get(teams.PASSPHRASE_ENV) or click.prompt(
                f"passphrase for team {team}", hide_input=True
            )
        return held["p"]

    if (teams.team_dir(home, team) / "key.json").is_file():
        teams.load_identity(home, team, hub=hub, passphrase=ask)
    return ask


def build_console(state: CliState, options: dict[str, Any]) -> tuple[Any, Any]:
    """The console app and its state for the ``ui`` command's ``options``."""
    from hub.errors import ConfigError
    from hub.store import open_store
    from server.console.app import create_console_app
    from server.console.security import allowed_hosts
    from server.console.state import ConsoleState

    settings = state.settings
    settings.override("hub.storage", options["storage"])
    home = state.writable_home()
    team = options["team"] or settings.get("hub.team") or os.environ.get("QLORA_HUB_TEAM")
    if not team:
        raise ConfigError("no acting team: pass --team NAME or set QLORA_HUB_TEAM")
    passphrase = unlock(home, team, state.hub)
    store = open_store(state.hub, settings, team=team, passphrase=passphrase)
    store.list()  # keys and storage fail now, not on the first page
    console = ConsoleState(
        hub=state.hub,
        store=store,
        team=team,
        home=home,
        runs_dir=options["runs"],
        rounds_dir=options["rounds"],
        base=options["base"],
        serve_url=options["serve_url"],
        serve_key=os.environ.get(API_KEY_ENV) or None,
        allowed_hosts=allowed_hosts(options["host"], options["port"]),
    )
    return create_console_app(console), console


def _dir() -> Any:
    return click.Path(path_type=Path, exists=True, file_okay=False)


@click.command("ui")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", type=int, default=8080, show_default=True, help="TCP port.")
@click.option("--team", default=None, metavar="TEAM", help="Acting team [env QLORA_HUB_TEAM].")
@click.option("--runs", type=_dir(), default=None, help="Directory of training runs.")
@click.option("--rounds", type=_dir(), default=None, help="Directory of fed rounds.")
@click.option(
    "--base",
    type=click.Path(path_type=Path, exists=True),
    default=None,
    help="Base (checkpoint or model directory) for the playground's local generation.",
)
@click.option(
    "--serve-url",
    default=None,
    metavar="URL",
    help=f"A `qlora-hub serve` URL for the playground (API key from ${API_KEY_ENV}).",
)
@click.option("--storage", default=None, help="Storage backend [hub.storage].")
@pass_state
def ui(state: CliState, **options: Any) -> None:
    """Web console for one team: adapters, sharing, audit log, runs, rounds, playground.

    Prints a login URL with a token made for this launch; binds to loopback by default.
    """
    import uvicorn

    app, console = build_console(state, options)
    host, port = options["host"], options["port"]
    if console.allowed_hosts is None:
        click.secho(
            f"warning: listening on {host}, not loopback: anyone who can reach it and has "
            "the token acts as team " + console.team,
            fg="red",
            err=True,
        )
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"qlora-hub console for team {console.team} on http://{shown}:{port}/", err=True)
    click.echo("open this URL to log in (the token is valid until the console stops):", err=True)
    click.echo(f"http://{shown}:{port}/login?token={console.sessions.token}")
    # no access log: the login URL carries the token in its query string
    uvicorn.Server(uvicorn.Config(app, host=host, port=port, access_log=False)).run()
