"""pytest plugin for qlora-hub plugin authors (entry point ``pytest11: qlora_hub``).

Fixtures:

- ``hub_factory``: build a :class:`hub.plugins.Hub` with exactly the plugins you give it.
- ``embedded_base``: path of the embedded base model, built once per test session.
- ``qlora_home``: a fresh, empty data directory, also exported as ``QLORA_HUB_HOME``.
- ``qlora_cli``: run the real CLI in ``qlora_home`` with only the built-ins and the
  plugins you name (:func:`hub.testing.cli.run_cli`).

Contract suites (subclass one and provide its fixture to inherit the conformance tests):
:class:`QuantizerContract`, :class:`AdapterMethodContract`,
:class:`OptimizerFactoryContract`, :class:`StorageBackendContract`,
:class:`AggregatorContract`, :class:`EngineContract`. See docs/testing-plugins.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hub.plugins import Hub
from hub.testing.adapter import AdapterMethodContract
from hub.testing.aggregator import AggregatorContract
from hub.testing.cli import CliResult, run_cli
from hub.testing.engine import EngineContract
from hub.testing.optimizer import OptimizerFactoryContract
from hub.testing.quantizer import QuantizerContract
from hub.testing.storage import StorageBackendContract

__all__ = [
    "AdapterMethodContract",
    "AggregatorContract",
    "CliResult",
    "EngineContract",
    "OptimizerFactoryContract",
    "QuantizerContract",
    "StorageBackendContract",
    "run_cli",
]


@pytest.fixture
def hub_factory() -> Iterator[Callable[..., Hub]]:
    """Build hubs with chosen plugins; their plugins are unregistered after the test.

    ``hub_factory(plugin, ..., builtins=False, entry_points=False, disable=())``:
    each positional ``plugin`` is a module or object with hook implementations,
    registered under its ``__name__`` (or a ``(name, plugin)`` pair).
    """
    made: list[Hub] = []

    def make(
        *plugins: Any,
        builtins: bool = False,
        entry_points: bool = False,
        disable: tuple[str, ...] = (),
    ) -> Hub:
        extra = [
            p if isinstance(p, tuple) else (getattr(p, "__name__", repr(p)), p) for p in plugins
        ]
        h = Hub(builtins=builtins, entry_points=entry_points, extra=extra, disable=disable)
        made.append(h)
        return h

    yield make
    for h in made:
        for _, plugin in list(h.pm.list_name_plugin()):
            h.pm.unregister(plugin)


@pytest.fixture(scope="session")
def embedded_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded base model directory (Hugging Face format), built once per session."""
    from hub.base import build_base

    out = tmp_path_factory.mktemp("embedded") / "base"
    build_base(out)
    return out


@pytest.fixture
def qlora_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty data directory, exported as ``QLORA_HUB_HOME`` for the test."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("QLORA_HUB_HOME", str(home))
    return home


@pytest.fixture
def qlora_cli(qlora_home: Path) -> Callable[..., CliResult]:
    """``qlora_cli(*args, plugins=(), builtins=True)``: the real CLI with ``--home qlora_home``,
    isolated from other installed plugins (see :func:`hub.testing.cli.run_cli`)."""

    def call(*args: str, plugins: Any = (), builtins: bool = True) -> CliResult:
        return run_cli("--home", str(qlora_home), *args, plugins=plugins, builtins=builtins)

    return call
