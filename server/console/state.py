"""What the console's handlers share: the team's adapter store, where runs and rounds live,
the playground's targets and the sessions."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.console.security import Sessions


@dataclass
class ConsoleState:
    """One console launch, acting as one team.

    Args:
        hub: the plugin host.
        store: :class:`hub.adapters.Adapters` acting as ``team`` (every action goes through it,
            so the same checks and audit entries happen as in the CLI).
        team: the acting team.
        home: the data directory (trust store for round signatures).
        runs_dir: directory whose subdirectories are training runs (``None``: no runs page).
        rounds_dir: directory whose subdirectories are federated rounds.
        base: base model directory or checkpoint for the local playground (``None``: none).
        serve_url: a ``qlora-hub serve`` URL for the playground (``None``: none).
        serve_key: API key sent to ``serve_url``; never rendered.
        sessions: the login token and sessions.
        allowed_hosts: ``Host`` header values accepted (``None``: any).
    """

    hub: Any
    store: Any
    team: str
    home: Path | None = None
    runs_dir: Path | None = None
    rounds_dir: Path | None = None
    base: Path | None = None
    serve_url: str | None = None
    serve_key: str | None = field(default=None, repr=False)
    sessions: Sessions = field(default_factory=Sessions)
    allowed_hosts: frozenset[str] | None = None
    verified: dict[str, str] = field(default_factory=dict)  # "name@v" -> last verify result
    lock: threading.Lock = field(default_factory=threading.Lock)  # one store action at a time
    models: dict[str, Any] = field(default_factory=dict)  # playground: the loaded base
    model_lock: threading.Lock = field(default_factory=threading.Lock)  # one generation at a time

    def act(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Call ``fn`` (a method of :attr:`store`) holding the store lock."""
        with self.lock:
            return fn(*args, **kwargs)
