"""The registry's containment of plugin faults: every exception class, slow
hooks, repeated failures, and hooks that are not plain functions."""

from __future__ import annotations

import asyncio
import logging
import types
from collections.abc import Callable
from typing import Any

import pytest

from mptcpd import hookspecs

from mptcpd.plugin import PluginInfo, hookimpl
from mptcpd.plugins import registry as reg
from mptcpd.plugins.registry import Failed, PluginError, PluginRegistry

PM = object()


def module(name: str, **hooks: Callable[..., Any]) -> types.ModuleType:
    mod = types.ModuleType(name)
    for hook, function in hooks.items():
        setattr(mod, hook, hookimpl(function))
    return mod


def register(registry: PluginRegistry, name: str, priority: int = 0,
             **hooks: Callable[..., Any]) -> reg.Plugin:
    return registry.register(module(name, **hooks), PluginInfo(name, priority=priority),
                             f"<{name}>")


def raising(exc: BaseException) -> Callable[..., None]:
    def pm_ready(pm: object) -> None:
        raise exc
    return pm_ready


@pytest.mark.parametrize("exc", [
    ValueError("bad"),
    asyncio.CancelledError(),
    KeyboardInterrupt(),
    SystemExit(3),
    GeneratorExit(),
    RecursionError(),
], ids=lambda e: type(e).__name__)
def test_every_exception_class_is_contained(exc: BaseException,
                                            caplog: pytest.LogCaptureFixture) -> None:
    registry = PluginRegistry()
    seen: list[str] = []
    register(registry, "bad", priority=-1, pm_ready=raising(exc))
    register(registry, "good", pm_ready=lambda pm: seen.append("good"))
    bad = registry.get("bad")
    assert bad is not None
    assert registry.call(bad, hookspecs.pm_ready, pm=PM) is Failed
    registry.broadcast(hookspecs.pm_ready, pm=PM)  # the next plugin still runs
    assert seen == ["good"]
    assert 'Plugin "bad"' in caplog.text and "pm_ready" in caplog.text
    record = next(r for r in caplog.records if r.levelno == logging.ERROR)
    assert record.exc_info is not None and record.exc_info[1] is exc


def test_cancelled_error_says_cancelled(caplog: pytest.LogCaptureFixture) -> None:
    registry = PluginRegistry()
    plugin = register(registry, "p", pm_ready=raising(asyncio.CancelledError()))
    registry.call(plugin, hookspecs.pm_ready, pm=PM)
    assert 'Plugin "p" was cancelled in hook pm_ready' in caplog.text


def test_repeated_failures_are_counted_not_logged(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    now = [1000.0]
    monkeypatch.setattr(reg.time, "monotonic", lambda: now[0])
    registry = PluginRegistry()
    plugin = register(registry, "p", pm_ready=raising(RuntimeError("always")))
    for _ in range(100):
        assert registry.call(plugin, hookspecs.pm_ready, pm=PM) is Failed
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    now[0] += reg.REPEAT_WINDOW_SECONDS + 1
    registry.call(plugin, hookspecs.pm_ready, pm=PM)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2
    assert "repeated 99 time(s)" in errors[1].getMessage()
    # A different failure of the same hook is not held back by the first.
    other = register(registry, "q", pm_ready=raising(RuntimeError("other")))
    registry.call(other, hookspecs.pm_ready, pm=PM)
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 3


def test_slow_hook_is_logged(monkeypatch: pytest.MonkeyPatch,
                             caplog: pytest.LogCaptureFixture) -> None:
    ticks = iter([10.0, 12.5])  # the call takes 2.5 s by the registry's clock
    monkeypatch.setattr(reg.time, "perf_counter", lambda: next(ticks))
    registry = PluginRegistry()
    plugin = register(registry, "slow", pm_ready=lambda pm: None)
    registry.call(plugin, hookspecs.pm_ready, pm=PM)
    assert 'Plugin "slow" took 2.500 s in hook pm_ready' in caplog.text


def test_fast_hook_is_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    registry = PluginRegistry()
    plugin = register(registry, "fast", pm_ready=lambda pm: None)
    with caplog.at_level(logging.DEBUG):
        registry.call(plugin, hookspecs.pm_ready, pm=PM)
    assert caplog.records == []


async def _coroutine(pm: object) -> None:
    pass


async def _async_generator(pm: object) -> Any:
    yield pm


def _generator(pm: object) -> Any:
    yield pm


class _Klass:
    def __init__(self, pm: object) -> None:
        pass


@pytest.mark.parametrize("function, kind", [
    (_coroutine, "is a coroutine function"),
    (_async_generator, "is an asynchronous generator function"),
    (_generator, "is a generator function"),
    (_Klass, "is a class"),
])
def test_hooks_that_are_not_plain_functions_are_refused(function: Any, kind: str) -> None:
    registry = PluginRegistry()
    with pytest.raises(PluginError, match=kind):
        register(registry, "odd", pm_ready=function)
    assert "odd" not in registry and len(registry) == 0


def test_a_hook_is_named_by_its_specification_not_a_string() -> None:
    """A misspelled hook fails where it is written: ``hookspecs.pm_redy`` is
    an AttributeError, a string or another function a TypeError."""
    registry = PluginRegistry()
    plugin = register(registry, "one", pm_ready=lambda pm: None)
    for wrong in ("pm_ready", lambda pm: None, print):
        with pytest.raises(TypeError, match="not a hook specification"):
            registry.call(plugin, wrong, pm=PM)  # type: ignore[arg-type]
    with pytest.raises(AttributeError):
        getattr(hookspecs, "pm_redy")
