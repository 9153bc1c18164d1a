"""The plugin manager: built-ins and entry-point plugins, loaded the same way.

Built-in plugins are a tuple of module names; third-party plugins are entry
points in the ``qlora_hub`` group. Both go through :func:`Hub._add`, which
imports the module (naming the plugin and its distribution if that fails)
and registers it with pluggy. Heavy libraries are imported by plugin objects
only when they are used, so loading every plugin is cheap.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import pluggy

from hub import PROJECT_NAME, __version__, hookspecs
from hub.engines import EngineFactories
from hub.errors import PluginError
from hub.registry import Registry
from hub.types import PROTOCOLS

BUILTIN_PLUGINS: tuple[str, ...] = (
    "plugins.nf4",
    "plugins.lora",
    "plugins.paged",
    "plugins.trainer",
    "plugins.local",
    "plugins.vault",
    "plugins.s3",
    "plugins.ckks",
    "plugins.plain",
    "plugins.vllm",
    "server.plugin",
)
"""Modules of the built-in plugins, registered exactly like third-party ones."""

ENTRY_POINT_GROUP = PROJECT_NAME
DISABLE_ENV = "QLORA_HUB_DISABLE_PLUGINS"

REGISTRATION_HOOKS: dict[str, str] = {
    "quantizer": "register_quantizers",
    "adapter": "register_adapters",
    "optimizer": "register_optimizers",
    "storage": "register_storage",
    "aggregator": "register_aggregators",
}
"""Registry kind -> the hook that fills it."""


def builtin_name(module: str) -> str:
    """Short plugin name of a built-in module: ``plugins.nf4`` -> ``nf4``, ``server.plugin`` -> ``server``."""
    parts = module.split(".")
    return parts[0] if parts[0] == "server" else parts[-1]


def disabled_from_env() -> list[str]:
    """Plugin names listed in ``QLORA_HUB_DISABLE_PLUGINS`` (comma separated)."""
    return [n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()]


@dataclass
class PluginInfo:
    """What ``qlora-hub plugins`` shows about one plugin."""

    name: str
    module: str
    distribution: str
    version: str
    builtin: bool
    hooks: list[str] = field(default_factory=list)


class Hub:
    """A pluggy plugin manager with the typed registries its hooks fill.

    Args:
        disable: plugin names to switch off; an unknown name is an error.
        builtins: load the built-in plugins.
        entry_points: load plugins from the ``qlora_hub`` entry-point group.
        extra: ``(name, plugin)`` pairs registered after the others (tests, embedding).
    """

    def __init__(
        self,
        *,
        disable: Iterable[str] = (),
        builtins: bool = True,
        entry_points: bool = True,
        extra: Iterable[tuple[str, Any]] = (),
    ) -> None:
        self.pm = pluggy.PluginManager(PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        self._registries: dict[str, Registry] = {}
        self._routes: list[Any] | None = None
        self._engines: EngineFactories | None = None

        candidates: list[tuple[str, Callable[[], Any], str, str, bool, str]] = []
        if builtins:
            for module in BUILTIN_PLUGINS:
                candidates.append(
                    (
                        builtin_name(module),
                        _importer(module),
                        "qlora-hub",
                        __version__,
                        True,
                        module,
                    )
                )
        if entry_points:
            for ep in _entry_points():
                dist = ep.dist.name if ep.dist else "unknown"
                ver = ep.dist.version if ep.dist else "unknown"
                candidates.append((ep.name, ep.load, dist, ver, False, ep.value))
        extras = list(extra)
        known = {c[0] for c in candidates} | {name for name, _ in extras}

        disabled = set(disable)
        unknown = sorted(disabled - known)
        if unknown:
            raise PluginError(
                f"cannot disable unknown plugin {', '.join(map(repr, unknown))}: "
                f"known plugins are {', '.join(sorted(known))}"
            )
        for name, load, dist, ver, builtin, module in candidates:
            if name in disabled:
                self.pm.set_blocked(name)
                continue
            self._add(name, load, dist, ver, builtin, module)
        for name, plugin in extras:
            if name not in disabled:
                self._add(
                    name,
                    lambda p=plugin: p,
                    "(registered in process)",
                    "",
                    False,
                    getattr(plugin, "__name__", repr(plugin)),
                )
        self._check_pending()

    def _add(
        self,
        name: str,
        load: Callable[[], Any],
        dist: str,
        version: str,
        builtin: bool,
        module: str,
    ) -> None:
        """Import one plugin and register it with pluggy (the one path for every plugin)."""
        if name in self.infos:
            raise PluginError(
                f"two plugins are named {name!r} ({self.infos[name].distribution} and {dist}): "
                "rename one entry point or disable one"
            )
        try:
            plugin = load()
        except Exception as exc:
            raise PluginError(
                f"plugin {name!r} (distribution {dist} {version}) failed to import: "
                f"{type(exc).__name__}: {exc}; switch it off with --disable-plugin {name} "
                f"or {DISABLE_ENV}={name}"
            ) from exc
        try:
            self.pm.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"plugin {name!r} (distribution {dist}) is invalid: {exc}") from exc
        hooks = sorted(c.name for c in self.pm.get_hookcallers(plugin) or [])
        self.infos[name] = PluginInfo(name, module, dist, version, builtin, hooks)

    def _check_pending(self) -> None:
        """Refuse hook implementations that match no hookspec (usually a typo)."""
        for hook_name, caller in vars(self.pm.hook).items():
            if isinstance(caller, pluggy.HookCaller) and not caller.has_spec():
                for impl in caller.get_hookimpls():
                    if not impl.opts.get("optionalhook"):
                        raise PluginError(
                            f"plugin {impl.plugin_name!r} implements unknown hook {hook_name!r}: "
                            "check the spelling against docs/hooks.md"
                        )
        self.pm.check_pending()

    def registry(self, kind: str) -> Registry:
        """The registry of ``kind`` (``quantizer``, ``adapter``, ``optimizer``, ``storage``, ``aggregator``),
        filled on first use by calling each plugin's registration hook."""
        if kind not in self._registries:
            reg = Registry(kind, PROTOCOLS[kind], classes=kind == "storage")
            self._call_each(
                REGISTRATION_HOOKS[kind],
                lambda plugin: lambda obj: reg.register(obj, plugin=plugin),
                order=list,  # registration order, so duplicates name the first owner first
            )
            self._registries[kind] = reg
        return self._registries[kind]

    @property
    def quantizers(self) -> Registry:
        return self.registry("quantizer")

    @property
    def adapters(self) -> Registry:
        return self.registry("adapter")

    @property
    def optimizers(self) -> Registry:
        return self.registry("optimizer")

    @property
    def storage(self) -> Registry:
        return self.registry("storage")

    @property
    def aggregators(self) -> Registry:
        return self.registry("aggregator")

    @property
    def engines(self) -> EngineFactories:
        """Engine name -> factory, filled on first use by every ``register_engines``."""
        if self._engines is None:
            found = EngineFactories()
            self._call_each(
                "register_engines",
                lambda plugin: lambda name, factory: found.register(name, factory, plugin=plugin),
                order=list,
            )
            self._engines = found
        return self._engines

    def routes(self) -> list[Any]:
        """Route handlers plugins add to the server, in registration order."""
        if self._routes is None:
            self._routes = []
            self._call_each("register_routes", lambda plugin: self._routes.append)
        return list(self._routes)

    def _call_each(
        self, hook: str, register_for: Callable[[str], Any], order: Any = reversed
    ) -> None:
        """Call every plugin's registration ``hook`` with ``register_for(plugin_name)``.

        Any exception but a :class:`PluginError` becomes one line naming the plugin.
        ``order=reversed`` is pluggy's own call order (newest plugin first).
        """
        for impl in order(getattr(self.pm.hook, hook).get_hookimpls()):
            try:
                impl.function(register=register_for(impl.plugin_name))
            except PluginError:
                raise
            except Exception as exc:  # one line naming the plugin, not a traceback
                raise PluginError(
                    f"plugin {impl.plugin_name!r} failed in {hook}: {type(exc).__name__}: "
                    f"{exc}; switch it off with --disable-plugin {impl.plugin_name}"
                ) from exc

    def summary(self) -> list[dict[str, Any]]:
        """One dict per plugin: name, distribution, version, hooks, and what it registered."""
        for kind in REGISTRATION_HOOKS:
            self.registry(kind)
        rows = []
        for info in self.infos.values():
            registered = {
                kind: reg.by_plugin(info.name)
                for kind, reg in self._registries.items()
                if reg.by_plugin(info.name)
            }
            if self.engines.by_plugin(info.name):
                registered["engine"] = self.engines.by_plugin(info.name)
            rows.append(
                {
                    "name": info.name,
                    "module": info.module,
                    "distribution": info.distribution,
                    "version": info.version,
                    "builtin": info.builtin,
                    "hooks": info.hooks,
                    "registered": registered,
                }
            )
        return rows


def _importer(module: str) -> Callable[[], Any]:
    return lambda: importlib.import_module(module)


def _entry_points() -> list[Any]:
    # one entry per name: an editable install plus a site-packages copy can list a plugin twice
    seen: dict[str, Any] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        seen.setdefault(ep.name, ep)
    return list(seen.values())
