"""The path-manager API plugins call: validation, readiness, listeners.

Validation lives here and only here: a bad argument raises ``ValueError``
and nothing reaches the command channel.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
from typing import Any

import pytest

from mptcpd.errors import KernelError, NotReady
from mptcpd.netlink.pm_codec import COMMANDS, Limits
from mptcpd.pm.path_manager import PathManager
from mptcpd.types import AddrFlags, SockAddr

A4 = SockAddr(ipaddress.ip_address("127.0.0.1"))
R4 = SockAddr(ipaddress.ip_address("203.0.113.1"), 5201)
TOKEN = 0x12345678


class FakeChannel:
    """Records each command submitted and answers with a future the test resolves."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.tokens: list[int | None] = []
        self.futures: list[asyncio.Future[Any]] = []

    def submit(self, name: str, args: tuple[Any, ...] = (),
               token: int | None = None) -> asyncio.Future[Any]:
        assert name in COMMANDS
        COMMANDS[name].encode(0x1C, 1, COMMANDS[name].flags, *args)  # encodable
        self.calls.append((name, args))
        self.tokens.append(token)
        future = asyncio.get_running_loop().create_future()
        self.futures.append(future)
        return future


class FakeListeners:
    def __init__(self) -> None:
        self.open: dict[SockAddr, int] = {}

    def listen(self, sa: SockAddr) -> SockAddr:
        bound = sa if sa.port else sa.with_port(40000 + len(self.open))
        self.open[bound] = self.open.get(bound, 0) + 1
        return bound

    def close(self, sa: SockAddr) -> None:
        if sa not in self.open:
            raise OSError(errno.EINVAL, "Invalid argument")
        self.open[sa] -= 1
        if not self.open[sa]:
            del self.open[sa]


def manager(ready: bool = True) -> tuple[PathManager, FakeChannel, FakeListeners]:
    kernel, listeners = FakeChannel(), FakeListeners()
    pm = PathManager(kernel, listener_manager=listeners)  # type: ignore[arg-type]
    pm.set_ready(ready)
    return pm, kernel, listeners


BAD_CALLS = [
    lambda pm: pm.add_addr(None, 1, TOKEN),
    lambda pm: pm.add_addr("127.0.0.1", 1, TOKEN),
    lambda pm: pm.add_addr(A4, 0, TOKEN),
    lambda pm: pm.add_addr(A4, 256, TOKEN),
    lambda pm: pm.add_addr(A4, True, TOKEN),
    lambda pm: pm.add_addr(A4, 1, -1),
    lambda pm: pm.add_addr(A4, 1, 1 << 32),
    lambda pm: pm.add_addr(A4, 1, "1"),
    lambda pm: pm.add_addr_no_listener(A4, 0, TOKEN),
    lambda pm: pm.add_addr_no_listener(A4, 1, 1 << 32),
    lambda pm: pm.remove_addr(A4, 0, TOKEN),
    lambda pm: pm.remove_addr("x", 1, TOKEN),
    lambda pm: pm.remove_addr(None, 1, 1 << 32),
    lambda pm: pm.add_subflow(TOKEN, 1, 2, A4, None),
    lambda pm: pm.add_subflow(TOKEN, 1, 2, None, R4),  # C crashes here (defect 21)
    lambda pm: pm.add_subflow(TOKEN, 256, 2, A4, R4),
    lambda pm: pm.add_subflow(TOKEN, 1, -1, A4, R4),
    lambda pm: pm.add_subflow(1 << 32, 1, 2, A4, R4),
    lambda pm: pm.add_subflow(TOKEN, 1, 2, A4, R4, "yes"),
    lambda pm: pm.set_backup(TOKEN, None, R4, True),
    lambda pm: pm.set_backup(TOKEN, A4, None, True),
    lambda pm: pm.set_backup(-1, A4, R4, True),
    lambda pm: pm.set_backup(TOKEN, A4, R4, None),
    lambda pm: pm.remove_subflow(TOKEN, A4, None),
    lambda pm: pm.remove_subflow(2.5, A4, R4),
    lambda pm: pm.kpm_add_addr(None, 1),
    lambda pm: pm.kpm_add_addr(A4, 0),
    lambda pm: pm.kpm_add_addr(A4, 256),
    lambda pm: pm.kpm_add_addr(A4, 1.0),
    lambda pm: pm.kpm_add_addr(A4, 1, 1 << 32),
    lambda pm: pm.kpm_add_addr(A4, 1, -1),
    lambda pm: pm.kpm_add_addr(A4, 1, 0x40),  # not a known flag
    lambda pm: pm.kpm_add_addr(A4, 1, 0x80000000),
    lambda pm: pm.kpm_add_addr(A4, 1, "subflow"),
    lambda pm: pm.kpm_add_addr(A4, 1, 0, "eth0"),
    lambda pm: pm.kpm_add_addr(A4, 1, 0, 2.0),
    lambda pm: pm.kpm_add_addr(A4, 1, 0, 1 << 31),
    lambda pm: pm.kpm_add_addr(A4, 1, 0, -(1 << 31) - 1),
    lambda pm: pm.kpm_remove_addr(0),
    lambda pm: pm.kpm_remove_addr(256),
    lambda pm: pm.kpm_get_addr(0),
    lambda pm: pm.kpm_get_addr("1"),
    lambda pm: pm.kpm_set_limits(Limits()),
    lambda pm: pm.kpm_set_limits(Limits(subflows=-1)),
    lambda pm: pm.kpm_set_limits(Limits(rcv_add_addrs=1 << 32)),
    lambda pm: pm.kpm_set_limits(Limits(subflows="2")),  # type: ignore[arg-type]
    lambda pm: pm.kpm_set_limits([(1, 2)]),
    lambda pm: pm.kpm_set_limits({1: 2}),
    lambda pm: pm.kpm_set_flags(None, 4),
    lambda pm: pm.kpm_set_flags(A4, 1 << 32),
    lambda pm: pm.kpm_set_flags(A4, 0x100),
]


@pytest.mark.parametrize("call", BAD_CALLS)
@pytest.mark.parametrize("ready", [False, True])
async def test_bad_arguments_raise_value_error_before_anything_is_sent(
        call: Any, ready: bool) -> None:
    pm, kernel, listeners = manager(ready=ready)
    with pytest.raises(ValueError):
        call(pm)
    assert kernel.calls == [] and listeners.open == {}


async def test_after_a_bad_argument_the_next_command_goes_through() -> None:
    pm, kernel, _ = manager()
    with pytest.raises(ValueError):
        pm.kpm_add_addr(A4, 256)
    pm.kpm_add_addr(A4, 255, AddrFlags.SUBFLOW | AddrFlags.LAMINAR, -1)
    assert kernel.calls == [("kpm_add_addr", (A4, 255, 0x22, -1))]


async def test_every_command_goes_to_the_channel_under_its_own_name() -> None:
    pm, kernel, _ = manager()
    pm.add_addr(A4, 5, TOKEN)
    pm.add_addr_no_listener(A4, 5, TOKEN)
    pm.remove_addr(None, 5, TOKEN)
    pm.add_subflow(TOKEN, 1, 2, A4, R4, True)
    pm.set_backup(TOKEN, A4, R4, 1)
    pm.remove_subflow(TOKEN, A4, R4)
    pm.kpm_add_addr(A4, 1, AddrFlags.SIGNAL, 3)
    pm.kpm_remove_addr(1)
    pm.kpm_get_addr(1)
    pm.kpm_dump_addrs()
    pm.kpm_flush_addrs()
    pm.kpm_set_limits(Limits(subflows=2))
    pm.kpm_get_limits()
    pm.kpm_set_flags(A4, AddrFlags.BACKUP)
    assert kernel.calls == [
        ("add_addr", (A4.with_port(40000), 5, TOKEN)),
        ("add_addr_no_listener", (A4, 5, TOKEN)),
        ("remove_addr", (None, 5, TOKEN)),
        ("add_subflow", (TOKEN, 1, 2, A4, R4, True)),
        ("set_backup", (TOKEN, A4, R4, True)),
        ("remove_subflow", (TOKEN, A4, R4)),
        ("kpm_add_addr", (A4, 1, 1, 3)),
        ("kpm_remove_addr", (1,)),
        ("kpm_get_addr", (1,)),
        ("kpm_dump_addrs", ()),
        ("kpm_flush_addrs", ()),
        ("kpm_set_limits", (Limits(None, 2),)),
        ("kpm_get_limits", ()),
        ("kpm_set_flags", (A4, 4)),
    ]
    assert {type(a) for _, args in kernel.calls for a in args if isinstance(a, int)} <= {
        int, bool}  # IntFlag and friends reach the codec as plain ints
    # the userspace commands are marked with their token, for forget()
    assert kernel.tokens == [TOKEN] * 6 + [None] * 8


@pytest.mark.parametrize(("call", "function"), [
    (lambda pm: pm.add_addr(A4, 1, TOKEN), "do_pm_add_addr"),
    (lambda pm: pm.add_addr_no_listener(A4, 1, TOKEN), "do_pm_add_addr"),
    (lambda pm: pm.remove_addr(A4, 1, TOKEN), "mptcpd_pm_remove_addr"),
    (lambda pm: pm.add_subflow(TOKEN, 1, 2, A4, R4), "mptcpd_pm_add_subflow"),
    (lambda pm: pm.set_backup(TOKEN, A4, R4, True), "mptcpd_pm_set_backup"),
    (lambda pm: pm.remove_subflow(TOKEN, A4, R4), "mptcpd_pm_remove_subflow"),
    (lambda pm: pm.kpm_add_addr(A4, 1), "mptcpd_kpm_add_addr"),
    (lambda pm: pm.kpm_remove_addr(1), "mptcpd_kpm_remove_addr"),
    (lambda pm: pm.kpm_get_addr(1), "mptcpd_kpm_get_addr"),
    (lambda pm: pm.kpm_dump_addrs(), "mptcpd_kpm_dump_addrs"),
    (lambda pm: pm.kpm_flush_addrs(), "mptcpd_kpm_flush_addrs"),
    (lambda pm: pm.kpm_set_limits(Limits(subflows=2)), "mptcpd_kpm_set_limits"),
    (lambda pm: pm.kpm_get_limits(), "mptcpd_kpm_get_limits"),
    (lambda pm: pm.kpm_set_flags(A4, 4), "mptcpd_kpm_set_flags"),
])
async def test_commands_before_the_family_appears_raise_not_ready(
    call: Any, function: str, caplog: pytest.LogCaptureFixture
) -> None:
    pm, kernel, listeners = manager(ready=False)
    with pytest.raises(NotReady) as exc:
        call(pm)
    assert exc.value.errno == errno.EAGAIN
    assert f"{function}: MPTCP family is not yet available" in caplog.text
    assert kernel.calls == [] and listeners.open == {}


async def test_add_addr_listens_first_and_announces_the_chosen_port() -> None:
    pm, kernel, listeners = manager()
    future = pm.add_addr(A4, 5, TOKEN)
    bound = A4.with_port(40000)
    assert kernel.calls == [("add_addr", (bound, 5, TOKEN))]
    assert kernel.tokens == [TOKEN]
    assert listeners.open == {bound: 1}
    kernel.futures[0].set_result(None)
    assert await future == bound


async def test_a_refused_announcement_releases_its_listener() -> None:
    pm, kernel, listeners = manager()
    future = pm.add_addr(A4, 5, TOKEN)
    kernel.futures[0].set_exception(KernelError("announce", errno.EINVAL, "bad"))
    with pytest.raises(KernelError):
        await future
    assert listeners.open == {}


async def test_add_addr_no_listener_opens_nothing() -> None:
    pm, kernel, listeners = manager()
    pm.add_addr_no_listener(A4, 5, TOKEN)
    assert kernel.calls == [("add_addr_no_listener", (A4, 5, TOKEN))]
    assert listeners.open == {}


async def test_remove_addr_releases_the_listener_once_the_kernel_agrees() -> None:
    pm, kernel, listeners = manager()
    pm.add_addr(R4, 5, TOKEN)
    kernel.futures[0].set_result(None)
    future = pm.remove_addr(R4, 5, TOKEN)
    assert listeners.open == {R4: 1}
    kernel.futures[1].set_result(None)
    await future
    await asyncio.sleep(0)
    assert listeners.open == {}


async def test_limits_are_one_value() -> None:
    pm, kernel, _ = manager()
    pm.kpm_set_limits(Limits(subflows=3, rcv_add_addrs=2))
    pm.kpm_set_limits(Limits(rcv_add_addrs=4))
    assert [args for _, args in kernel.calls] == [(Limits(2, 3),), (Limits(4, None),)]


async def test_an_ignored_failed_future_is_not_reported_as_unretrieved(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pm, kernel, _ = manager()
    pm.add_addr_no_listener(A4, 5, TOKEN)
    kernel.futures[0].set_exception(KernelError("announce", errno.EINVAL))
    await asyncio.sleep(0)
    import gc
    gc.collect()
    await asyncio.sleep(0)
    assert "exception was never retrieved" not in caplog.text


async def test_the_observer_is_told_of_each_subflow_creation_queued() -> None:
    """The daemon's dispatcher follows each creation (to tell a plugin of
    one whose failure was lost in an overrun): it is told of every creation
    queued, with the channel's future, and of nothing else."""
    pm, kernel, _ = manager()
    seen: list[tuple[Any, ...]] = []
    pm.observe_creations(lambda *args: seen.append(args))
    future = pm.add_subflow(TOKEN, 1, 2, A4, R4)
    pm.remove_subflow(TOKEN, A4, R4)
    pm.add_addr_no_listener(A4, 1, TOKEN)
    with pytest.raises(ValueError):
        pm.add_subflow(TOKEN, 256, 2, A4, R4)
    assert seen == [(TOKEN, A4, R4, 1, 2, kernel.futures[0])]
    assert future is kernel.futures[0]
    pm.observe_creations(None)
    pm.add_subflow(TOKEN, 1, 2, A4, R4)
    assert len(seen) == 1
