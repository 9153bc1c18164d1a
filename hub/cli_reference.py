"""Generate docs/cli.md from the CLI itself: ``python -m hub.cli_reference > docs/cli.md``.

A test regenerates it and compares, so the reference cannot drift from the code.
"""

from __future__ import annotations

import click

from hub.cli import make_cli
from hub.plugins import Hub


def _walk(
    cmd: click.Command, path: list[str], parent: click.Context | None = None
) -> list[tuple[list[str], click.Command, click.Context]]:
    # a real parent chain, so subcommands inherit the root's context settings (-h/--help)
    ctx = click.Context(
        cmd,
        info_name=path[-1],
        parent=parent,
        terminal_width=100,
        **({} if parent else cmd.context_settings),
    )
    out = [(path, cmd, ctx)]
    if isinstance(cmd, click.Group):
        for name in sorted(cmd.commands):
            out.extend(_walk(cmd.commands[name], [*path, name], ctx))
    return out


def render(hub: Hub | None = None) -> str:
    """The Markdown CLI reference for the built-in plugins (third-party plugins left out)."""
    hub = hub or Hub(entry_points=False)
    root = make_cli(hub)
    lines = [
        "# CLI reference",
        "",
        "Generated from the CLI by `python -m hub.cli_reference > docs/cli.md`; "
        "a test fails when this page is out of date.",
        "",
    ]
    for path, cmd, ctx in _walk(root, ["qlora-hub"]):
        lines += [f"## {' '.join(path)}", "", "```text", cmd.get_help(ctx).rstrip(), "```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(render(), end="")
