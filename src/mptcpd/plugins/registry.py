"""The plugin registry: a typed facade over pluggy with our dispatch rules.

pluggy gives us hook specifications, argument validation and entry points.
It calls every implementation of a hook, in reverse registration order, and
one raising implementation aborts the whole call.  mptcpd needs something
else: connection events go to *one* plugin, broadcasts go in priority order,
and a raising plugin must never stop the others.  So the registry keeps
pluggy as the catalogue and calls the implementations itself.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import inspect
import logging
import time
from collections.abc import Callable
from typing import Any

import pluggy

from mptcpd import hookspecs
from mptcpd.plugin import PluginInfo

log = logging.getLogger(__name__)

#: A hook call that takes longer than this (seconds) is logged: hooks run on
#: the event loop, so a slow one delays every event, and shutdown, by as much.
SLOW_HOOK_SECONDS = 0.1
#: The same failure (plugin, hook, exception type and text) is logged in full
#: once per this many seconds; the repeats in between are counted.
REPEAT_WINDOW_SECONDS = 60.0

#: Every hook name, in hookspecs order.
HOOKS: tuple[str, ...] = tuple(
    name for name, obj in vars(hookspecs).items()
    if callable(obj) and hasattr(obj, f"{hookspecs.PROJECT}_spec")
)


class PluginError(Exception):
    """A plugin module cannot be registered; the message says why."""


@dataclasses.dataclass(frozen=True)
class Plugin:
    """A registered plugin."""

    info: PluginInfo
    module: object
    source: str  #: file path or entry point the plugin came from
    #: hook name -> (implementation, the parameter names it accepts)
    impls: dict[str, tuple[Callable[..., Any], tuple[str, ...]]]

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def sort_key(self) -> tuple[int, str]:
        return (self.info.priority, self.info.name)


#: The plugin whose hook is running (see :attr:`PluginRegistry.current`).
_running: contextvars.ContextVar[Plugin | None] = contextvars.ContextVar(
    "mptcpd_plugin", default=None)


class PluginRegistry:
    """Holds the loaded plugins in priority order and calls their hooks."""

    def __init__(self) -> None:
        self._pm = pluggy.PluginManager(hookspecs.PROJECT)
        self._pm.add_hookspecs(hookspecs)
        self._plugins: list[Plugin] = []
        self._by_name: dict[str, Plugin] = {}
        #: failure key -> [time it was last logged in full, repeats since]
        self._failures: dict[tuple[str, str, type, str], list[float]] = {}

    # -- registration ------------------------------------------------------

    def register(self, module: object, info: PluginInfo, source: str) -> Plugin:
        """Validate and register ``module`` as the plugin described by ``info``.

        Raises :class:`PluginError` (and leaves the registry unchanged) when a
        plugin of that name is registered already, when a hook implementation
        names no known hook or takes parameters the hook does not have, or
        when one is a coroutine function.
        """
        if info.name in self._by_name:
            raise PluginError(
                f'Plugin "{info.name}" from {source} ignored: a plugin of that name '
                f"was already loaded from {self._by_name[info.name].source}"
            )
        try:
            self._pm.register(module, name=info.name)
        except (pluggy.PluginValidationError, ValueError) as exc:
            raise PluginError(f"{source}: {exc}") from exc
        try:
            impls = self._collect(info.name, source)
        except PluginError:
            self._pm.unregister(name=info.name)
            raise
        plugin = Plugin(info, module, source, impls)
        self._plugins.append(plugin)
        self._plugins.sort(key=lambda p: p.sort_key)
        self._by_name[info.name] = plugin
        return plugin

    def _collect(
        self, name: str, source: str
    ) -> dict[str, tuple[Callable[..., Any], tuple[str, ...]]]:
        impls: dict[str, tuple[Callable[..., Any], tuple[str, ...]]] = {}
        plugin_obj = self._pm.get_plugin(name)
        for caller in self._pm.get_hookcallers(plugin_obj) or ():
            if not caller.has_spec():
                raise PluginError(
                    f"{source}: {caller.name!r} is not an mptcpd hook "
                    f"(known hooks: {', '.join(HOOKS)})"
                )
            for impl in caller.get_hookimpls():
                if impl.plugin_name != name:
                    continue
                kind = _not_a_plain_function(impl.function)
                if kind:
                    raise PluginError(
                        f"{source}: hook {caller.name!r} is {kind}; "
                        "mptcpd hooks must be plain functions that do not block "
                        "(kernel commands return futures)"
                    )
                impls[caller.name] = (impl.function, tuple(impl.argnames))
        # pluggy skips marked objects it cannot call as functions (classes,
        # for one): such a hook would silently never run.
        marker = f"{hookspecs.PROJECT}_impl"
        for attr, value in vars(plugin_obj).items() if hasattr(plugin_obj, "__dict__") else ():
            if attr not in impls and hasattr(value, marker):
                kind = _not_a_plain_function(value) or "not a function pluggy can call"
                raise PluginError(
                    f"{source}: hook {attr!r} is {kind}; mptcpd hooks must be plain "
                    "functions that do not block (kernel commands return futures)"
                )
        return impls

    # -- queries -----------------------------------------------------------

    @property
    def plugins(self) -> list[Plugin]:
        """The registered plugins, most favoured first (priority, then name)."""
        return list(self._plugins)

    def get(self, name: str) -> Plugin | None:
        return self._by_name.get(name)

    def __len__(self) -> int:
        return len(self._plugins)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    # -- calling -----------------------------------------------------------

    @property
    def current(self) -> Plugin | None:
        """The plugin on whose behalf the code now running acts: the plugin
        whose hook runs, or that added the done-callback that runs (asyncio
        runs a callback in the context it was added in); None otherwise.
        Who sent a command, for the control socket's endpoint owners."""
        return _running.get()

    def call(self, plugin: Plugin, hook: Callable[..., Any], **kwargs: Any) -> Any:
        """Call ``plugin``'s implementation of ``hook`` (a hook specification
        of :mod:`mptcpd.hookspecs`, ``hookspecs.pm_ready`` say: a misspelled
        hook fails where it is written, not silently), if it has one.

        Only the parameters the implementation declares are passed.  An
        exception is logged with the plugin and the hook and swallowed; the
        return value is then :data:`Failed` (which is false).
        """
        name = _hook_name(hook)
        entry = plugin.impls.get(name)
        if entry is None:
            return None
        function, argnames = entry
        return self._invoke(plugin, name, function, [kwargs[a] for a in argnames])

    def call_event(self, plugin: Plugin, event: Any, pm: object) -> Any:
        """Call ``plugin``'s hook for an ``event`` (kernel or network): the
        hook named by ``event.HOOK``, given the event's fields of the same
        names as its parameters, and ``pm``.  Contained as :meth:`call`."""
        hook = event.HOOK
        entry = plugin.impls.get(hook)
        if entry is None:
            return None
        function, argnames = entry
        return self._invoke(plugin, hook, function,
                            [pm if a == "pm" else getattr(event, a) for a in argnames])

    def _invoke(self, plugin: Plugin, hook: str, function: Callable[..., Any],
                args: list[Any]) -> Any:
        start = time.perf_counter()
        running = _running.set(plugin)
        try:
            return function(*args)
        except BaseException as exc:  # noqa: B036 - nothing a plugin raises may end a loop
            self._failed(plugin, hook, exc)
            return Failed
        finally:
            _running.reset(running)
            elapsed = time.perf_counter() - start
            if elapsed > SLOW_HOOK_SECONDS:
                log.warning('Plugin "%s" took %.3f s in hook %s; hooks must not block '
                            "(every event waits for them).", plugin.name, elapsed, hook)

    def _failed(self, plugin: Plugin, hook: str, exc: BaseException) -> None:
        """Log a hook's exception: in full the first time, then once per
        :data:`REPEAT_WINDOW_SECONDS` with the count of repeats."""
        key = (plugin.name, hook, type(exc), str(exc)[:200])
        now = time.monotonic()
        entry = self._failures.get(key)
        if entry is not None and now - entry[0] < REPEAT_WINDOW_SECONDS:
            entry[1] += 1
            return
        repeats = int(entry[1]) if entry is not None else 0
        if len(self._failures) > 1000:  # bounded: forget the old ones
            self._failures.clear()
        self._failures[key] = [now, 0]
        what = ("was cancelled" if isinstance(exc, asyncio.CancelledError)
                else "failed")
        if repeats:
            log.error('Plugin "%s" %s in hook %s (the same failure repeated %d '
                      "time(s) since it was last logged)", plugin.name, what, hook,
                      repeats, exc_info=exc)
        else:
            log.error('Plugin "%s" %s in hook %s', plugin.name, what, hook, exc_info=exc)

    def broadcast(self, hook: Callable[..., Any], reverse: bool = False,
                  **kwargs: Any) -> None:
        """Call ``hook`` on every plugin, in priority order (or its reverse)."""
        for plugin in (reversed(self._plugins) if reverse else list(self._plugins)):
            self.call(plugin, hook, **kwargs)

    # -- lifecycle ---------------------------------------------------------

    def init_all(self, pm: object) -> None:
        """Run ``plugin_init`` in priority order; a failure only warns."""
        for plugin in list(self._plugins):
            result = self.call(plugin, hookspecs.plugin_init, pm=pm)
            if result is Failed or result is False:
                log.warning('Plugin "%s" failed to initialize', plugin.name)

    def exit_all(self, pm: object) -> None:
        """Run ``plugin_exit`` in reverse priority order (least favoured first)."""
        self.broadcast(hookspecs.plugin_exit, reverse=True, pm=pm)

    def select_default(self, name: str | None) -> Plugin | None:
        """The default path manager: the plugin called ``name``, else the first.

        An unknown ``name`` is warned about (the C mptcpd stays silent).
        """
        if not self._plugins:
            return None
        if name:
            plugin = self._by_name.get(name)
            if plugin is not None:
                return plugin
            log.warning('Default path manager plugin "%s" does not exist; '
                        'using "%s".', name, self._plugins[0].name)
        return self._plugins[0]


def _hook_name(hook: Callable[..., Any]) -> str:
    """The name of the hook whose specification ``hook`` is."""
    name = getattr(hook, "__name__", "")
    if getattr(hookspecs, name, None) is not hook or name not in HOOKS:
        raise TypeError(f"{hook!r} is not a hook specification of mptcpd.hookspecs")
    return name


def _not_a_plain_function(function: object) -> str:
    """What makes ``function`` unusable as a hook ("" when it is usable)."""
    if inspect.isclass(function):
        return "a class"
    if inspect.iscoroutinefunction(function):
        return "a coroutine function"
    if inspect.isasyncgenfunction(function):
        return "an asynchronous generator function"
    if inspect.isgeneratorfunction(function):
        return "a generator function (its body would never run)"
    if not callable(function):
        return "not callable"
    return ""


class _Failed:
    """The result of a hook call that raised (see :meth:`PluginRegistry.call`)."""

    def __repr__(self) -> str:
        return "Failed"

    def __bool__(self) -> bool:
        return False


Failed = _Failed()
