"""The ``qlora-hub`` command line.

The core defines the root group, the shared groups (``base``, ``bench``,
``team``, ``adapters``, ``fed``, ``data``) and the ``plugins`` / ``config``
commands; every other command comes from a plugin's ``register_commands``
hook, built-ins included. User errors (:class:`hub.errors.HubError`) print
one line and exit 2; ``--verbose`` shows the traceback.
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import click

from hub import __version__
from hub.config import Settings, default_home, ensure_home, load_settings
from hub.errors import HubError, PluginError
from hub.plugins import Hub, disabled_from_env


@dataclass
class CliState:
    """What every command gets through ``click.pass_obj``."""

    hub: Hub
    home: Path
    config_file: Path | None = None
    verbose: bool = False
    _settings: Settings | None = field(default=None, repr=False)

    @property
    def settings(self) -> Settings:
        """Effective settings (loaded on first use, so ``--help`` reads no file)."""
        if self._settings is None:
            self._settings = load_settings(self.home, self.config_file, self.hub)
        return self._settings

    def device(self, flag: str | None = None) -> str:
        """The device a command runs on: ``--device`` if given, else setting ``hub.device``."""
        return flag or self.settings.get("hub.device")

    def writable_home(self) -> Path:
        """The home directory, created and checked writable."""
        return ensure_home(self.home)


pass_state = click.make_pass_decorator(CliState)


def device_option(fn: Callable) -> Callable:
    """The ``--device`` option of every command that loads a model (read with ``CliState.device``)."""
    return click.option(
        "--device",
        default=None,
        metavar="auto|cpu|cuda[:N]",
        help="Where the model runs [setting hub.device; auto: cuda:0 if visible, else cpu].",
    )(fn)


_GROUPS = {
    "base": "The embedded base model (random weights, built locally, no downloads).",
    "bench": "Benchmarks: JSON out, ratios against a baseline measured in the same run.",
    "team": "Teams, their keys, and the trust store.",
    "adapters": "Store, share and fetch adapter versions.",
    "fed": "Federated aggregation of adapters across teams.",
    "data": "Datasets for training and evaluation.",
}
"""Shared groups the core creates; plugins add commands to them."""


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--home",
    type=click.Path(path_type=Path),
    default=None,
    help="Data directory [env QLORA_HUB_HOME; default ~/.qlora-hub].",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path),
    default=None,
    help="Settings file [default <home>/qlora-hub.toml].",
)
@click.option(
    "--disable-plugin",
    "disabled",
    multiple=True,
    metavar="NAME",
    help="Switch a plugin off (repeatable) [env QLORA_HUB_DISABLE_PLUGINS=a,b].",
)
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks for errors.")
@click.version_option(__version__, prog_name="qlora-hub")
@click.pass_context
def _root(
    ctx: click.Context,
    home: Path | None,
    config_file: Path | None,
    disabled: tuple[str, ...],
    verbose: bool,
) -> None:
    """qlora-hub: fine-tune, store, share, merge and serve QLoRA adapters."""
    hub = ctx.obj if isinstance(ctx.obj, Hub) else Hub(disable=[*disabled_from_env(), *disabled])
    ctx.obj = CliState(
        hub=hub,
        home=Path(home or default_home()).expanduser().absolute(),
        config_file=config_file,
        verbose=verbose,
    )


@click.command("init")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Output directory [default <home>/base].",
)
@click.option("--force", is_flag=True, help="Overwrite a non-empty output directory.")
@click.option(
    "--shape",
    default="embedded",
    show_default=True,
    help="embedded (3.6M parameters), or 103m / 1b: larger random bases for benchmarks.",
)
@pass_state
def base_init(state: CliState, out: Path | None, force: bool, shape: str) -> None:
    """Build the embedded Llama-architecture base in Hugging Face format."""
    from hub.base import build_base

    out = out or state.writable_home() / "base"
    info = build_base(out, force=force, shape=shape)
    click.echo(f"wrote {info['parameters']:,} parameters to {out} (sha256 {info['sha256'][:16]})")


@click.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_state
def plugins_cmd(state: CliState, as_json: bool) -> None:
    """List plugins, their versions, hooks and what each registered."""
    rows = state.hub.summary()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="qlora-hub plugins")
    for col in ("plugin", "distribution", "version", "hooks", "registered"):
        table.add_column(col)
    for row in rows:
        registered = "; ".join(f"{k}: {', '.join(v)}" for k, v in row["registered"].items())
        table.add_row(
            row["name"], row["distribution"], row["version"], ", ".join(row["hooks"]), registered
        )
    Console().print(table)


@click.command("config")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_state
def config_cmd(state: CliState, as_json: bool) -> None:
    """Show effective settings and where each value came from."""
    s = state.settings
    rows = [
        {"key": f"{t}.{k}", "value": v, "source": s.sources[f"{t}.{k}"]}
        for t, keys in s.values.items()
        for k, v in keys.items()
    ]
    if as_json:
        click.echo(json.dumps({"home": str(s.home), "settings": rows}, indent=2))
    else:
        click.echo(f"home: {s.home}\nconfig file: {s.config_file or '(none)'}")
        for r in rows:
            click.echo(f"{r['key']} = {r['value']!r}  ({r['source']})")


def _early_disabled(argv: list[str]) -> list[str]:
    """``--disable-plugin`` values, read before click parses (they decide which commands exist)."""
    out = []
    for i, arg in enumerate(argv):
        if arg == "--disable-plugin" and i + 1 < len(argv):
            out.append(argv[i + 1])
        elif arg.startswith("--disable-plugin="):
            out.append(arg.split("=", 1)[1])
    return out


def _demo_command() -> click.Command:
    from hub.demo import demo_cmd

    return demo_cmd


def _core_commands(root: click.Group) -> None:
    from hub import adapter_commands, team_commands
    from hub.gpubench import bench_gpu_cmd

    team_commands.add_to(root)
    adapter_commands.add_to(root)
    root.commands["bench"].add_command(bench_gpu_cmd)


def make_cli(hub: Hub) -> click.Group:
    """A fresh root group with the core commands and every plugin's commands."""
    root = click.Group(
        name="qlora-hub",
        callback=_root.callback,
        params=list(_root.params),
        help=_root.help,
        context_settings=_root.context_settings,
    )
    for name, help_text in _GROUPS.items():
        root.add_command(click.Group(name=name, help=help_text))
    root.commands["base"].add_command(base_init)
    _core_commands(root)
    root.add_command(plugins_cmd)
    root.add_command(config_cmd)
    root.add_command(_demo_command())
    for impl in hub.pm.hook.register_commands.get_hookimpls():
        try:
            impl.function(cli=root)
        except Exception as exc:  # a broken plugin must not take the whole CLI down anonymously
            raise PluginError(
                f"plugin {impl.plugin_name!r} failed to add its commands: "
                f"{type(exc).__name__}: {exc}; switch it off with --disable-plugin {impl.plugin_name}"
            ) from exc
    return root


def run(argv: list[str], make_hub: Callable[[list[str]], Hub] | None = None) -> int:
    """Run the CLI on ``argv`` and return its exit status (errors printed as ``error: ...``).

    ``make_hub(disabled)`` builds the plugin host from the plugin names to switch
    off (default: built-ins and installed entry points); :func:`hub.testing.run_cli`
    passes one holding only the plugins a test names.
    """
    verbose = "-v" in argv or "--verbose" in argv
    disabled = [*disabled_from_env(), *_early_disabled(argv)]
    try:
        hub = make_hub(disabled) if make_hub else Hub(disable=disabled)
        make_cli(hub).main(argv, prog_name="qlora-hub", standalone_mode=False, obj=hub)
    except HubError as exc:
        if verbose:
            traceback.print_exc()
        click.echo(f"error: {exc}", err=True)
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    return 0


def quiet_libraries(verbose: bool) -> None:
    """Keep library noise off the terminal unless ``--verbose``.

    Silences bitsandbytes' kernel notice ("Failed to load CPU gemm_4bit_forward from
    kernels-community", a logging warning), transformers' and PEFT's warnings and progress
    bars, and FutureWarning/DeprecationWarning from any library. Set before they import.
    """
    if verbose:
        return
    import logging
    import os
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for name in ("bitsandbytes", "transformers", "peft", "accelerate", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``qlora-hub`` script and ``python -m hub``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    quiet_libraries("-v" in argv or "--verbose" in argv)
    sys.exit(run(argv))
