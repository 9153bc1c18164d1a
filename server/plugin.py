"""Built-in plugin `server`: the ``serve``, ``team api-key create`` and ``bench serve`` commands.

Nothing heavy is imported here: torch, transformers and Litestar load inside the commands.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from hub import hookimpl
from hub.cli import CliState, device_option, pass_state


@click.command("serve")
@click.option(
    "--base",
    "base",
    required=True,
    type=click.Path(path_type=Path, exists=True),
    help="Pre-quantized checkpoint (qlora-hub quantize) or Hugging Face model directory.",
)
@click.option("--host", default=None, help="Interface to listen on [serve.host].")
@click.option("--port", type=int, default=None, help="TCP port [serve.port].")
@click.option("--identity", default=None, help="The server's team in storage [serve.identity].")
@click.option(
    "--storage", default=None, help="Storage backend to read adapters from [hub.storage]."
)
@click.option("--engine", default=None, help="Execution engine, e.g. hf or vllm [serve.engine].")
@device_option
@pass_state
def serve(
    state: CliState,
    base: Path,
    host: str | None,
    port: int | None,
    identity: str | None,
    storage: str | None,
    engine: str | None,
    device: str | None,
) -> None:
    """Serve every adapter shared with the server over an OpenAI-compatible API."""
    import logging

    import uvicorn

    from hub.models import resolve_device
    from hub.store import open_store
    from server.app import build_state, create_app
    from server.collector import Collector
    from server.http import switch_interval_s, uvicorn_config

    settings = state.settings
    settings.override("serve.host", host)
    settings.override("serve.port", port)
    settings.override("serve.identity", identity)
    settings.override("hub.storage", storage)
    settings.override("serve.engine", engine)
    settings.override("hub.device", device)
    state.hub.engines[settings.get("serve.engine")]  # an unknown engine fails before any load
    resolve_device(settings.get("hub.device"))  # so does a bad or missing --device
    Collector(settings.get("serve.gc_threshold"))  # and a bad collector threshold
    switch_interval_s(settings)  # or switch interval
    state.writable_home()
    ident = settings.get("serve.identity")
    store = open_store(state.hub, settings, team=ident)
    if state.verbose:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    else:  # the server's own lines (access log, adapter events); libraries stay quiet
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logging.getLogger("qlora_hub").addHandler(handler)
        logging.getLogger("qlora_hub").setLevel(logging.INFO)
    click.echo(f"loading base {base} with engine {settings.get('serve.engine')} ...", err=True)
    srv = build_state(state.hub, settings, base, store, identity=ident)
    app = create_app(srv, state.hub, max_body_bytes=settings.get("serve.max_body_bytes"))
    click.echo(
        f"serving base {srv.base_fingerprint[:12]} as team {ident} from storage "
        f"{settings.get('hub.storage')} on http://{settings.get('serve.host')}:{settings.get('serve.port')}",
        err=True,
    )
    uvicorn.Server(uvicorn_config(app, settings)).run()


@click.command("create")
@click.argument("team")
@click.option("--admin", is_flag=True, help="The key may also call the admin endpoints.")
@pass_state
def api_key_create(state: CliState, team: str, admin: bool) -> None:
    """Create an API key for TEAM; the key is printed once, on the last line."""
    from server.auth import KeyStore

    key_id, key = KeyStore(state.writable_home()).create(team, admin=admin)
    click.echo(
        f"created {'admin ' if admin else ''}API key {key_id} for team {team}; "
        "it is shown only once:"
    )
    click.echo(key)


@click.command("serve")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option(
    "--base",
    type=click.Path(path_type=Path, exists=True),
    default=None,
    help="Base to serve [default: the embedded base, built in a temp dir].",
)
@click.option("--requests", "n_requests", type=int, default=64, help="Requests per scenario.")
@click.option("--clients", type=int, default=32, help="Concurrent clients.")
@click.option("--max-tokens", type=int, default=16, help="Tokens per request.")
@click.option(
    "--repeats",
    type=int,
    default=5,
    help="Runs of mixed8 and single1, alternating (median kept).",
)
@click.option(
    "--burst", "burst", type=int, default=1000, help="Simultaneous requests (429 latency)."
)
@click.option(
    "--flood-requests", type=int, default=20, help="Completions timed quiet and under the flood."
)
@click.option(
    "--engines",
    default="hf",
    show_default=True,
    help="Comma-separated engines to run mixed8/single1 on, one after the other (hf,vllm).",
)
@pass_state
def bench_serve(
    state: CliState,
    as_json: bool,
    base: Path | None,
    n_requests: int,
    clients: int,
    max_tokens: int,
    repeats: int,
    burst: int,
    flood_requests: int,
    engines: str,
) -> None:
    """Mixed-adapter batching vs a naive set_adapter server, 8 adapters vs 1, latency, cold load."""
    from server.bench import run_bench

    names = tuple(dict.fromkeys(e.strip() for e in engines.split(",") if e.strip())) or ("hf",)
    for name in names:
        state.hub.engines[name]  # an unknown engine fails in one line before any work
    result = run_bench(
        state.hub,
        base=base,
        n_requests=n_requests,
        clients=clients,
        max_tokens=max_tokens,
        repeats=repeats,
        progress=not as_json,
        burst_requests=burst,
        flood_requests=flood_requests,
        engines=names,
    )
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        from server.bench import render

        render(result)


@hookimpl
def register_commands(cli: click.Group) -> None:
    """``serve``; ``ui``; ``team api-key create``; ``bench serve``."""
    from server.console.commands import ui

    cli.add_command(serve)
    cli.add_command(ui)
    team = cli.commands["team"]
    group = team.commands.get("api-key")
    if group is None:
        group = click.Group("api-key", help="API keys for the server (stored hashed).")
        team.add_command(group)
    group.add_command(api_key_create)
    cli.commands["bench"].add_command(bench_serve)


def hf_engine(hub, settings, source):
    """Factory of the built-in engine ``hf`` (imports torch and transformers when called)."""
    from server.hf_engine import build_hf_engine

    return build_hf_engine(hub, settings, source)


@hookimpl
def register_engines(register) -> None:
    """The built-in engine ``hf``: transformers + gathered LoRA + continuous batching."""
    register("hf", hf_engine)


@hookimpl
def register_routes(register) -> None:
    """The read-only operator page ``GET /ui`` (admin key) and its stylesheet."""
    from server.console.operator import ROUTES

    for handler in ROUTES:
        register(handler)
