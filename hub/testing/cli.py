"""Running the real ``qlora-hub`` CLI in a test, isolated from other installed plugins."""

from __future__ import annotations

import io
from collections.abc import Iterable
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CliResult:
    """What one CLI run did: its exit status and everything it printed."""

    exit_code: int
    out: str
    err: str


def run_cli(*args: str, plugins: Iterable[Any] = (), builtins: bool = True) -> CliResult:
    """Run ``qlora-hub ARGS`` in process, exactly as the console script does.

    Only the built-in plugins (unless ``builtins=False``) and ``plugins`` are
    loaded (modules, objects, or ``(name, plugin)`` pairs): no other installed
    distribution's entry points, so a test sees its own plugin's behaviour.
    ``--disable-plugin`` and ``QLORA_HUB_DISABLE_PLUGINS`` apply as usual.
    User errors come back as ``exit_code`` 2 and ``error: ...`` in ``err``.
    """
    from hub.cli import run
    from hub.plugins import Hub

    extra = [p if isinstance(p, tuple) else (getattr(p, "__name__", repr(p)), p) for p in plugins]

    def make_hub(disabled: list[str]) -> Hub:
        return Hub(disable=disabled, builtins=builtins, entry_points=False, extra=extra)

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = run(list(args), make_hub)
    return CliResult(code, out.getvalue(), err.getvalue())
