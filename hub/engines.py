"""Execution engines: what the server needs from whatever runs the base model.

The server (``qlora-hub serve``) owns the API, the teams' access, the vault and the
adapter cache; an *engine* owns the model. Plugins register engines with the
``register_engines`` hook as ``register(name, factory)``; ``serve --engine NAME``
(setting ``serve.engine``, default ``hf``) picks one and the server builds it with
``factory(hub, settings, source)``.

This module is the whole contract, so an engine plugin imports ``hub`` only:
:class:`Engine` (the protocol), :class:`GenRequest` (one generation request, with the
stop-string and streaming logic every engine shares), :class:`QueueFullError` and
:class:`AdapterRefused`. Nothing heavy is imported here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from hub.errors import PluginError, UnknownNameError

if TYPE_CHECKING:
    import torch

EngineFactory = Callable[[Any, Any, Any], "Engine"]
"""``factory(hub, settings, source) -> Engine`` (see :class:`Engine`)."""


class QueueFullError(Exception):
    """The engine's queue is at ``max_queue``: the caller should retry later (HTTP 429)."""


class AdapterRefused(Exception):
    """The engine cannot serve this adapter (a rank above its maximum, a module it cannot
    target). The message is the reason; the server refuses the adapter with it (404 to
    callers, 422 with the reason to an admin's load, one log line), it never crashes."""


@dataclass
class GenRequest:
    """One generation request as an engine sees it.

    The engine calls ``on_event`` from its own thread: ``("delta", text, tokens)``
    (``tokens``: how many tokens were generated when ``text`` was sent; send text through
    :meth:`emit`, which applies stop strings), then exactly once ``("done", reason, usage)``
    (``reason``: ``stop``, ``length`` or ``cancelled``) or ``("error", message, usage)``
    (``usage`` may be ``None``); ``usage`` is ``{"prompt_tokens", "completion_tokens",
    "total_tokens"}``. After the last event the engine calls ``release()``.

    ``slot`` is ``0`` for the bare base, otherwise a handle from
    :meth:`Engine.add_adapter`. The sampling fields follow the OpenAI API; an engine that
    fills ``generated``, ``first_token_at``, ``joined_at`` and ``last_token_at`` gets
    exact metrics, and ``token_logprobs`` (one entry per token, see
    ``server.sampling.Sampled``) when ``logprobs`` is set.
    """

    prompt_ids: list[int]
    slot: int
    max_tokens: int
    on_event: Callable[[tuple[Any, ...]], None]
    temperature: float = 0.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    logprobs: int | None = None  # None: none; k: each token's logprob and the top k
    timeout_s: float = 120.0
    release: Callable[[], None] = lambda: None
    request_id: str = "-"
    adapter: str = "base"
    team: str = ""
    cancelled: threading.Event = field(default_factory=threading.Event)
    generated: list[int] = field(default_factory=list)
    sent: int = 0
    submitted: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    joined_at: float | None = None
    last_token_at: float | None = None
    generator: torch.Generator | None = None
    token_logprobs: list[Any] = field(default_factory=list)  # when ``logprobs`` is set

    def cancel(self) -> None:
        """Ask the engine to drop this request at its next step (client went away)."""
        self.cancelled.set()

    def emit(self, text: str, reason: str | None) -> str | None:
        """Send the part of ``text`` (all generated so far) that can no longer change.

        Cuts at a stop string (reason ``stop``); holds back an unfinished UTF-8 character
        and a possible start of a stop string. Returns the finish reason, if any.
        """
        end = len(text)
        for s in self.stop:
            at = text.find(s, max(0, self.sent - len(s)))
            if at != -1 and at < end:
                end, reason = at, "stop"
        if reason is None:
            # hold back an unfinished UTF-8 character and a possible start of a stop string
            while end > self.sent and text[end - 1] == "\ufffd":
                end -= 1
            hold = 0
            for s in self.stop:
                for k in range(min(len(s) - 1, end - self.sent), 0, -1):
                    if text[end - k : end] == s[:k]:
                        hold = max(hold, k)
                        break
            end -= hold
        if end > self.sent and reason not in ("cancelled", "timeout"):
            self.on_event(("delta", text[self.sent : end], len(self.generated)))
            self.sent = end
        return reason


@runtime_checkable
class Engine(Protocol):
    """A running base model that serves many adapters; built by ``factory(hub, settings, source)``.

    ``source`` is the base to serve: a pre-quantized checkpoint or Hugging Face model
    directory (``str`` or ``Path``), or a :class:`hub.models.LoadedBase` already loaded
    (an engine that cannot use it loads ``source.source`` itself). ``settings`` are the
    hub's :class:`hub.config.Settings` (``serve.*``, and the engine's own table declared
    with ``register_settings``). A factory raises a :class:`hub.errors.HubError` with one
    line naming the setting to change when the engine cannot start.

    Attributes:
        name: the registered engine name (``"hf"``, ``"vllm"``).
        tokenizer: the base's Hugging Face tokenizer (the server tokenizes prompts).
        eos_ids: token ids that end a completion.
        max_queue: most waiting requests; :meth:`submit` raises :class:`QueueFullError` beyond.
        context: the most positions (prompt + completion) a request may use.
        base_fingerprint: :func:`hub.base.fingerprint` of the served base (adapters trained
            on another base are refused).
        info: what ``/v1/models`` shows about the engine, JSON-able: at least ``engine``
            (the name), ``format`` (``"nf4"``, ``"bf16"``...), ``device`` and ``dtype``.
        on_step: set by the server before :meth:`start`: call ``on_step(rows)`` after each
            forward pass (``None``: don't).
        on_finish: set by the server before :meth:`start`: call ``on_finish(req, reason)``
            once per request that leaves (``stop``, ``length``, ``cancelled``, ``timeout``,
            ``error``).
    """

    name: str
    tokenizer: Any
    eos_ids: set[int]
    max_queue: int
    context: int
    base_fingerprint: str
    info: dict[str, Any]
    on_step: Callable[[int], None] | None
    on_finish: Callable[[GenRequest, str], None]

    @property
    def queue_depth(self) -> int:
        """Requests waiting to start."""

    @property
    def active(self) -> int:
        """Requests generating now."""

    @property
    def alive(self) -> bool:
        """Started and able to take requests (``/ready`` reports it)."""

    def start(self) -> Any:
        """Start generating (idempotent); called by the server's start-up."""

    def stop(self) -> None:
        """Stop; every waiting and running request gets an ``error`` event."""

    def adapter_shapes(self) -> dict[str, tuple[int, int]] | None:
        """``module -> (in_features, out_features)`` of the layers adapters may target; the
        server checks an adapter's tensor shapes against it before :meth:`add_adapter`.
        ``None``: the engine checks shapes itself (and raises :class:`AdapterRefused`)."""

    def add_adapter(self, key: str, config: dict[str, Any], tensors: dict[str, Any]) -> int:
        """Make an adapter version servable; returns its handle (an ``int > 0``) for
        :attr:`GenRequest.slot`.

        Args:
            key: ``"name@version"``; a new version is a new key (never reuse a handle).
            config: the adapter's ``adapter_config.json``.
            tensors: PEFT-named ``lora_A``/``lora_B`` tensors (``torch.Tensor``), already
                decrypted, verified and validated by the server. Plaintext weights must not
                reach persistent disk.

        Raises:
            AdapterRefused: the engine cannot serve it; the message says why.
        """

    def remove_adapter(self, handle: int) -> None:
        """Forget ``handle``; the server calls it only when no request uses it."""

    def submit(self, req: GenRequest) -> None:
        """Queue ``req`` and return at once; events follow from the engine's thread.

        Raises:
            QueueFullError: ``max_queue`` requests wait already.
            ValueError: a field the engine cannot honour (message shown to the caller, 400).
        """


class EngineFactories:
    """Engine name -> ``factory(hub, settings, source)``, from every ``register_engines``."""

    def __init__(self) -> None:
        self._factories: dict[str, EngineFactory] = {}
        self._owners: dict[str, str] = {}

    def register(self, name: str, factory: EngineFactory, *, plugin: str) -> None:
        """Add ``factory`` under ``name``; refuse a bad name, a non-callable or a duplicate."""
        if not isinstance(name, str) or not name.isidentifier():
            raise PluginError(
                f"plugin {plugin!r} registered an engine named {name!r}: "
                "names must be Python identifiers (letters, digits, underscore)"
            )
        if not callable(factory):
            raise PluginError(
                f"plugin {plugin!r} registered engine {name!r} with a non-callable: "
                "pass factory(hub, settings, source) -> Engine"
            )
        if name in self._factories:
            raise PluginError(
                f"engine {name!r} is registered by both plugins {self._owners[name]!r} "
                f"and {plugin!r}: switch one off with --disable-plugin"
            )
        self._factories[name] = factory
        self._owners[name] = plugin

    def __getitem__(self, name: str) -> EngineFactory:
        try:
            return self._factories[name]
        except KeyError:
            known = ", ".join(sorted(self._factories)) or "none"
            raise UnknownNameError(
                f"unknown engine {name!r}: registered engines are {known} "
                "(pick one with serve --engine or the setting serve.engine)"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._factories

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._factories))

    def __len__(self) -> int:
        return len(self._factories)

    def owner(self, name: str) -> str:
        """Name of the plugin that registered ``name``."""
        return self._owners[name]

    def by_plugin(self, plugin: str) -> list[str]:
        """Names registered by ``plugin``."""
        return sorted(n for n, p in self._owners.items() if p == plugin)


def open_engine(hub: Any, settings: Any, source: Any, name: str | None = None) -> Engine:
    """Build the engine ``name`` (default: the setting ``serve.engine``) for ``source``.

    Raises :class:`hub.errors.UnknownNameError` listing the registered engines, and
    :class:`hub.errors.PluginError` when the factory returns something that is no
    :class:`Engine`.
    """
    name = name or settings.get("serve.engine")
    engine = hub.engines[name](hub, settings, source)
    missing = missing_members(engine)
    if missing:
        raise PluginError(
            f"engine {name!r} (plugin {hub.engines.owner(name)!r}) built {type(engine).__name__}, "
            f"which lacks {', '.join(missing)}: implement hub.engines.Engine"
        )
    return engine


def missing_members(engine: Any) -> list[str]:
    """Members of :class:`Engine` that ``engine`` lacks."""
    names = set(Engine.__annotations__) | {k for k in vars(Engine) if not k.startswith("_")}
    return sorted(n for n in names if not hasattr(engine, n))
