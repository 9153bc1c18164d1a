"""Typed registries: the ``register`` callback handed to registration hooks."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from hub.errors import PluginError, UnknownNameError


def protocol_members(protocol: type) -> list[str]:
    """Public attribute and method names a protocol requires."""
    names = set(getattr(protocol, "__annotations__", {}))
    names.update(k for k, v in vars(protocol).items() if not k.startswith("_") and callable(v))
    return sorted(names)


def _a(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


class Registry:
    """Objects of one kind (quantizers, storage backends, ...) keyed by their ``name``.

    Args:
        kind: human name of the kind, used in messages ("quantizer").
        protocol: the ``typing.Protocol`` every object must satisfy.
    """

    def __init__(self, kind: str, protocol: type, *, classes: bool = False) -> None:
        self.kind = kind
        self.protocol = protocol
        self.classes = classes  # storage backends are registered as classes, the rest as objects
        self._objects: dict[str, Any] = {}
        self._owners: dict[str, str] = {}

    def register(self, obj: Any, *, plugin: str) -> None:
        """Validate ``obj`` and add it under ``obj.name``; ``plugin`` is who registered it."""
        shown = getattr(obj, "__name__", None) or type(obj).__name__
        if self.classes and not isinstance(obj, type):
            raise PluginError(
                f"plugin {plugin!r} registered an instance of {type(obj).__name__} as {_a(self.kind)}: "
                f"register the class itself, register({type(obj).__name__})"
            )
        if not self.classes and isinstance(obj, type):
            raise PluginError(
                f"plugin {plugin!r} registered the class {shown} as {_a(self.kind)}: "
                f"register an instance, register({shown}())"
            )
        missing = [m for m in protocol_members(self.protocol) if not hasattr(obj, m)]
        if missing:
            raise PluginError(
                f"plugin {plugin!r} registered {_a(self.kind)} {obj!r} that lacks "
                f"{', '.join(missing)}: implement hub.types.{self.protocol.__name__}"
            )
        name = obj.name
        if not isinstance(name, str) or not name.isidentifier():
            raise PluginError(
                f"plugin {plugin!r} registered {_a(self.kind)} named {name!r}: "
                "names must be Python identifiers (letters, digits, underscore)"
            )
        if name in self._objects:
            raise PluginError(
                f"{self.kind} {name!r} is registered by both plugins {self._owners[name]!r} "
                f"and {plugin!r}: switch one off with --disable-plugin"
            )
        self._objects[name] = obj
        self._owners[name] = plugin

    def __getitem__(self, name: str) -> Any:
        try:
            return self._objects[name]
        except KeyError:
            known = ", ".join(sorted(self._objects)) or "none"
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}: known {self.kind}s are {known}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._objects

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._objects))

    def __len__(self) -> int:
        return len(self._objects)

    def owner(self, name: str) -> str:
        """Name of the plugin that registered ``name``."""
        return self._owners[name]

    def by_plugin(self, plugin: str) -> list[str]:
        """Names registered by ``plugin``."""
        return sorted(n for n, p in self._owners.items() if p == plugin)
