"""Every hook: its name, its parameters, and that it reaches a plugin.

Meta-tests (datasette's discipline): the hook names are the C
``mptcpd_plugin_ops`` fields plus the lifecycle and carrier hooks; every hook
has a ``test_hook_<name>`` here; every kernel event class feeds exactly one
hook.  The guide's coverage of every hook is checked in test_docs.py.
"""

from __future__ import annotations

import dataclasses
import inspect
import ipaddress
import sys
import typing
from collections.abc import Iterator

import pytest

from mptcpd import events as ev
from mptcpd import hookspecs
from mptcpd.daemon.dispatch import Dispatcher
from mptcpd.netlink import constants as C
from mptcpd.plugin import PluginInfo, hookimpl
from mptcpd.plugins.registry import HOOKS, PluginRegistry
from mptcpd.types import SockAddr
from tests.plugins import recording

C_PLUGIN_OPS = (
    "new_connection", "connection_established", "connection_closed", "new_address",
    "address_removed", "new_subflow", "subflow_closed", "subflow_priority",
    "listener_created", "listener_closed", "new_interface", "update_interface",
    "delete_interface", "new_local_address", "delete_local_address",
)
LIFECYCLE = ("plugin_init", "plugin_exit", "pm_ready", "pm_not_ready")
CARRIER = ("link_down", "link_up")
RELOAD = ("policy_changed",)  # issue 13

TOKEN = 0x12345678
LADDR = SockAddr(ipaddress.ip_address("192.0.2.1"), 40000)
RADDR = SockAddr(ipaddress.ip_address("203.0.113.1"), 5201)
PM = object()
IFACE = object()


def test_hook_names_are_the_c_ops_plus_lifecycle_and_carrier_hooks() -> None:
    assert set(HOOKS) == set(C_PLUGIN_OPS + LIFECYCLE + CARRIER + RELOAD)
    assert len(HOOKS) == len(set(HOOKS))


def test_every_hook_has_a_test() -> None:
    module = sys.modules[__name__]
    missing = [h for h in HOOKS if not callable(getattr(module, f"test_hook_{h}", None))]
    assert missing == []


def test_every_hook_takes_pm_last_and_is_documented() -> None:
    for name in HOOKS:
        spec = getattr(hookspecs, name)
        params = list(inspect.signature(spec).parameters)
        assert params[-1] == "pm", name
        doc = inspect.getdoc(spec) or ""
        for param in params:
            assert f":param {param}:" in doc, (name, param)
        assert "**Dispatch:**" in doc and "**C:**" in doc, name


#: Every kernel event class, read off the ``Event`` union.
KERNEL_EVENTS = typing.get_args(ev.Event)
#: Every network-monitor event class, read off the ``NetworkEvent`` union.
NETWORK_EVENTS = typing.get_args(ev.NetworkEvent)
EVENT_CLASSES = KERNEL_EVENTS + NETWORK_EVENTS


def test_every_event_class_feeds_exactly_one_hook() -> None:
    assert len(KERNEL_EVENTS) == len(C.MptcpEvent) == 10
    hooks = [cls.HOOK for cls in EVENT_CLASSES]
    assert len(set(hooks)) == len(EVENT_CLASSES)
    assert set(hooks) <= set(HOOKS)


def test_every_hook_but_the_lifecycle_is_fed_by_an_event_class() -> None:
    """One list of hooks (the hookspecs): each is an event class's or a
    lifecycle hook the daemon calls itself."""
    fed = {cls.HOOK for cls in EVENT_CLASSES}
    assert set(HOOKS) - fed == set(LIFECYCLE + RELOAD)
    assert set(ev.__all__) >= {cls.__name__ for cls in EVENT_CLASSES}


@pytest.mark.parametrize("cls", EVENT_CLASSES, ids=lambda c: c.__name__)
def test_event_fields_carry_the_hook_parameters(cls: type) -> None:
    """The dispatcher passes ``HOOK_ARGS`` by name: they are exactly the
    hook's parameters (``pm`` aside), and fields of the event."""
    params = list(inspect.signature(getattr(hookspecs, cls.HOOK)).parameters)
    assert list(cls.HOOK_ARGS) + ["pm"] == params  # type: ignore[attr-defined]
    fields = {f.name for f in dataclasses.fields(cls)}
    assert set(cls.HOOK_ARGS) <= fields  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def fresh_recording() -> Iterator[None]:
    recording.CALLS.clear()
    yield
    recording.CALLS.clear()


class Recorder:
    PLUGIN = PluginInfo(name="recorder")

    def __init__(self) -> None:
        vars(self).update(recording.make_recorder(self.PLUGIN.name))


@pytest.fixture
def d() -> Dispatcher:
    registry = PluginRegistry()
    plugin = Recorder()
    registry.register(plugin, plugin.PLUGIN, "test")
    dispatcher = Dispatcher(registry, PM, registry.select_default(None))
    dispatcher.dispatch(ev.ConnectionCreated(TOKEN, LADDR, RADDR))
    recording.CALLS.clear()
    return dispatcher


def calls() -> list[tuple[str, dict[str, object]]]:
    return [(hook, args) for _, hook, args in recording.CALLS]


def test_hook_plugin_init(d: Dispatcher) -> None:
    d.registry.init_all(PM)
    assert calls() == [("plugin_init", {})]


def test_hook_plugin_exit(d: Dispatcher) -> None:
    d.registry.exit_all(PM)
    assert calls() == [("plugin_exit", {})]


def test_hook_pm_ready(d: Dispatcher) -> None:
    d.pm_ready()
    assert calls() == [("pm_ready", {})]


def test_hook_pm_not_ready(d: Dispatcher) -> None:
    d.pm_not_ready()
    assert calls() == [("pm_not_ready", {})]


def test_hook_policy_changed(d: Dispatcher) -> None:
    d.registry.broadcast(hookspecs.policy_changed, pm=PM)  # as Daemon.reload does
    assert calls() == [("policy_changed", {})]


def test_hook_new_connection(d: Dispatcher) -> None:
    d.dispatch(ev.ConnectionCreated(TOKEN + 1, LADDR, RADDR, server_side=True,
                                    deny_join_id0=True))
    assert calls() == [("new_connection", dict(token=TOKEN + 1, laddr=LADDR, raddr=RADDR,
                                                server_side=True, deny_join_id0=True))]


def test_hook_connection_established(d: Dispatcher) -> None:
    d.dispatch(ev.ConnectionEstablished(TOKEN, LADDR, RADDR, deny_join_id0=True))
    assert calls() == [("connection_established", dict(
        token=TOKEN, laddr=LADDR, raddr=RADDR, server_side=False, deny_join_id0=True))]


def test_hook_connection_closed(d: Dispatcher) -> None:
    d.dispatch(ev.ConnectionClosed(TOKEN))
    assert calls() == [("connection_closed", dict(token=TOKEN))]


def test_hook_new_address(d: Dispatcher) -> None:
    d.dispatch(ev.AddressAnnounced(TOKEN, 4, RADDR.with_port(0)))
    assert calls() == [("new_address", dict(token=TOKEN, addr_id=4, addr=RADDR.with_port(0)))]


def test_hook_address_removed(d: Dispatcher) -> None:
    d.dispatch(ev.AddressRemoved(TOKEN, 4))
    assert calls() == [("address_removed", dict(token=TOKEN, addr_id=4))]


@pytest.mark.parametrize("backup", [False, True])
def test_hook_new_subflow(d: Dispatcher, backup: bool) -> None:
    d.dispatch(ev.SubflowEstablished(TOKEN, LADDR, RADDR, backup=backup))
    assert calls() == [("new_subflow", dict(token=TOKEN, laddr=LADDR, raddr=RADDR,
                                             backup=backup))]


def test_hook_subflow_closed(d: Dispatcher) -> None:
    d.dispatch(ev.SubflowClosed(TOKEN, LADDR, RADDR, backup=False))
    assert calls() == [("subflow_closed", dict(token=TOKEN, laddr=LADDR, raddr=RADDR,
                                                backup=False))]


def test_hook_subflow_priority(d: Dispatcher) -> None:
    d.dispatch(ev.SubflowPriority(TOKEN, LADDR, RADDR, backup=True))
    assert calls() == [("subflow_priority", dict(token=TOKEN, laddr=LADDR, raddr=RADDR,
                                                  backup=True))]


def test_hook_listener_created(d: Dispatcher) -> None:
    d.dispatch(ev.ListenerCreated(RADDR))
    assert calls() == [("listener_created", dict(laddr=RADDR))]


def test_hook_listener_closed(d: Dispatcher) -> None:
    d.dispatch(ev.ListenerClosed(RADDR))
    assert calls() == [("listener_closed", dict(laddr=RADDR))]


def test_hook_new_interface(d: Dispatcher) -> None:
    d.broadcast(ev.InterfaceAdded(IFACE))
    assert calls() == [("new_interface", dict(interface=IFACE))]


def test_hook_update_interface(d: Dispatcher) -> None:
    d.broadcast(ev.InterfaceUpdated(IFACE))
    assert calls() == [("update_interface", dict(interface=IFACE))]


def test_hook_delete_interface(d: Dispatcher) -> None:
    d.broadcast(ev.InterfaceRemoved(IFACE))
    assert calls() == [("delete_interface", dict(interface=IFACE))]


def test_hook_new_local_address(d: Dispatcher) -> None:
    d.broadcast(ev.LocalAddressAdded(IFACE, LADDR.with_port(0)))
    assert calls() == [("new_local_address", dict(interface=IFACE, addr=LADDR.with_port(0)))]


def test_hook_delete_local_address(d: Dispatcher) -> None:
    d.broadcast(ev.LocalAddressRemoved(IFACE, LADDR.with_port(0)))
    assert calls() == [("delete_local_address",
                        dict(interface=IFACE, addr=LADDR.with_port(0)))]


def test_hook_link_down(d: Dispatcher) -> None:
    d.broadcast(ev.LinkDown(IFACE))
    assert calls() == [("link_down", dict(interface=IFACE))]


def test_hook_link_up(d: Dispatcher) -> None:
    d.broadcast(ev.LinkUp(IFACE))
    assert calls() == [("link_up", dict(interface=IFACE))]


def test_an_implementation_may_take_any_subset_of_the_parameters(d: Dispatcher) -> None:
    seen = []

    class Minimal:
        PLUGIN = PluginInfo(name="aaa_minimal", priority=-1)

        @hookimpl
        def new_subflow(self, backup):
            seen.append(backup)

        @hookimpl
        def new_local_address(self, addr):
            seen.append(addr)

    plugin = Minimal()
    d.registry.register(plugin, plugin.PLUGIN, "test")
    d.default = d.registry.select_default(None)
    d.dispatch(ev.ConnectionCreated(TOKEN + 2, LADDR, RADDR))
    d.dispatch(ev.SubflowEstablished(TOKEN + 2, LADDR, RADDR, backup=True))
    d.broadcast(ev.LocalAddressAdded(IFACE, LADDR))
    assert seen == [True, LADDR]
