"""What the userspace path managers share: ``keeper_hooks`` (a plugin built
on a SubflowKeeper gets every connection and network hook from one call,
each handing its event to the keeper) and the retry policy's rule."""

from __future__ import annotations

import asyncio
import inspect
import math
import random
import types
from typing import Any

from mptcpd import hookspecs
from mptcpd.plugin import PluginInfo, SockAddr, keeper_hooks
from mptcpd.plugins.registry import PluginRegistry

#: The hooks a plugin writes itself (its lifecycle, and what is not about
#: subflows).
OWN = {"plugin_init", "plugin_exit", "pm_ready", "pm_not_ready", "listener_created",
       "listener_closed", "update_interface", "policy_changed"}
#: hook -> the keeper method it calls.
ROUTES = {"link_down": "interface_lost", "delete_interface": "interface_lost",
          "link_up": "interface_back", "new_interface": "refill",
          "new_local_address": "address_back", "delete_local_address": "address_lost"}


class Recorder:
    """Stands for the keeper: records each method called and its arguments."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Any:
        return lambda *args: self.calls.append((name, args))


def test_every_subflow_hook_is_given_and_each_reaches_the_keeper() -> None:
    keeper = Recorder()
    current = {"keeper": keeper}
    hooks = keeper_hooks(lambda: current["keeper"])  # type: ignore[arg-type, return-value]
    specs = {name for name, obj in vars(hookspecs).items()
             if callable(obj) and hasattr(obj, f"{hookspecs.PROJECT}_spec")}
    assert set(hooks) == specs - OWN

    # A module with them registers: names and parameters match the hooks.
    module = types.ModuleType("kept")
    vars(module).update(hooks)
    module.PLUGIN = PluginInfo(name="kept")  # type: ignore[attr-defined]
    plugin = PluginRegistry().register(module, module.PLUGIN, "test")  # type: ignore[attr-defined]
    assert set(plugin.impls) == set(hooks)

    for name, hook in hooks.items():
        params = inspect.signature(hook).parameters
        assert set(params) <= set(inspect.signature(getattr(hookspecs, name)).parameters)
        args = [SockAddr("192.0.2.1", 1) if p in ("laddr", "raddr", "addr") else p
                for p in params]
        keeper.calls.clear()
        hook(*args)
        assert keeper.calls == [(ROUTES.get(name, name), tuple(args))], name

    # The keeper is looked up at each event: a new one takes over.
    current["keeper"] = other = Recorder()
    hooks["connection_closed"](7)
    assert other.calls == [("connection_closed", (7,))]


def test_the_retry_policy_after_a_failure() -> None:
    """The one backoff rule the keeper and sspi share: doubled up to the cap,
    given up after ``attempts`` retries, afresh after a long life."""
    from mptcpd.plugin import RetryPolicy

    policy = RetryPolicy(base=1.0, cap=3.0, attempts=3)
    failures, dues = 0, []
    for _ in range(4):
        failures, due = policy.after_failure(failures, 100.0)
        dues.append(due)
    assert (failures, dues) == (4, [101.0, 102.0, 103.0, math.inf])
    # A subflow that lived cap seconds or more: its loss is a first failure.
    assert policy.after_failure(3, 100.0, lived=3.0) == (1, 101.0)
    assert policy.after_failure(2, 100.0, lived=2.9) == (3, 103.0)


def test_the_retry_policy_after_a_refusal() -> None:
    """A command the daemon's full queue refused: the failures' backoff,
    stretched by 1 to 1.5 at random, and never given up."""
    from mptcpd.plugin import RetryPolicy

    policy = RetryPolicy(base=1.0, cap=3.0, attempts=1)
    for refusals, delay in ((1, 1.0), (2, 2.0), (3, 3.0), (50, 3.0)):
        dues = {policy.after_refusal(refusals, 100.0) for _ in range(50)}
        assert all(100.0 + delay <= due <= 100.0 + 1.5 * delay for due in dues)
        assert len(dues) > 1  # spread


def test_a_command_the_full_queue_refused_is_sent_again_while_wanted(
        monkeypatch: Any) -> None:
    """resend_refused: a command the full queue refused (its future failed
    with QueueFull as it is handed over) is sent again after the refusals'
    backoff (times 1.5 here), if it is still wanted then; one the queue
    took, whatever the kernel answers, is not; cancelling the timers stops
    it."""
    from mptcpd.errors import QueueFull
    from mptcpd.plugin import RetryPolicy, refused_by_queue, resend_refused
    from tests.unit.test_fullmesh import Clock

    monkeypatch.setattr(random, "uniform", lambda low, high: high)
    clock = Clock()
    loop = clock.loop
    try:
        sent: list[asyncio.Future[Any]] = []
        full = [True]

        def send() -> asyncio.Future[Any]:
            sent.append(loop.create_future())
            if full[0]:
                sent[-1].set_exception(QueueFull())
            return sent[-1]

        wanted = [True]
        timers: set[asyncio.TimerHandle] = set()
        policy = RetryPolicy(base=0.1, cap=0.3, attempts=1)
        resend_refused(send(), send, lambda: wanted[0], policy, timers)
        assert refused_by_queue(sent[0])
        assert clock.timers() == [0.15] and len(timers) == 1
        clock.advance(0.15)
        assert len(sent) == 2 and clock.timers() == [0.3] and len(timers) == 1
        wanted[0] = False  # what it was about went meanwhile
        clock.advance(0.3)
        assert len(sent) == 2 and not timers and clock.timers() == []
        # Taken: nothing more, whatever the answer.
        full[0] = False
        resend_refused(send(), send, lambda: True, policy, timers)
        assert not refused_by_queue(sent[2])
        sent[2].set_exception(OSError(22, "Invalid argument"))
        sent[2].exception()  # read, as the daemon's channel marks its failures
        clock.advance(1)
        assert len(sent) == 3 and not timers
        # Cancelled with what it was about (the connection closed).
        full[0] = True
        resend_refused(send(), send, lambda: True, policy, timers)
        for timer in timers:
            timer.cancel()
        clock.advance(1)
        assert len(sent) == 4
    finally:
        loop.close()
