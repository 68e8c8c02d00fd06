"""NetlinkSocket's reader: a stream of datagrams through a real socket (a
Unix datagram pair standing in for the netlink socket: the reader only
reads, so the family does not matter)."""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from mptcpd.netlink import rtnl_monitor
from mptcpd.netlink.rtnl_monitor import NetlinkSocket


class Socket:
    """The receiving end of a socket pair as NetlinkSocket uses it; an error
    queued in ``errors`` is raised by the ``recv`` after that many datagrams."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.received = 0
        self.errors: dict[int, OSError] = {}

    def getsockname(self) -> tuple[int, int]:
        return 4242, 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def recv(self, size: int) -> bytes:
        error = self.errors.pop(self.received, None)
        if error is not None:
            raise error
        data = self.sock.recv(size)
        self.received += 1
        return data

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, Socket]]:
    sender, receiver = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.setblocking(False)
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    yield sender, Socket(receiver)
    sender.close()
    receiver.close()


def count_watch_calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How often the running loop is asked to watch and unwatch a socket."""
    loop = asyncio.get_running_loop()
    calls = {"add_reader": 0, "remove_reader": 0}
    for name in calls:
        real = getattr(loop, name)

        def counted(*args: Any, _real: Any = real, _name: str = name) -> Any:
            calls[_name] += 1
            return _real(*args)

        monkeypatch.setattr(loop, name, counted)
    return calls


async def test_a_stream_of_datagrams_is_read_with_one_watch(
        pair: tuple[socket.socket, Socket], monkeypatch: pytest.MonkeyPatch) -> None:
    """One datagram at a time, each sent while the reader waits: all read,
    in order, and the socket is watched once (not once per datagram)."""
    sender, receiver = pair
    calls = count_watch_calls(monkeypatch)
    nl = NetlinkSocket(receiver)  # type: ignore[arg-type]
    got = []
    for n in range(50):
        reading = asyncio.ensure_future(nl.recv())
        await asyncio.sleep(0)  # it waits
        sender.send(b"datagram %d" % n)
        got.append(await asyncio.wait_for(reading, 10))
    assert got == [b"datagram %d" % n for n in range(50)]
    assert calls == {"add_reader": 1, "remove_reader": 0}
    nl.close()
    assert calls == {"add_reader": 1, "remove_reader": 1}
    with pytest.raises(OSError) as raised:
        await nl.recv()
    assert raised.value.errno == errno.EBADF


async def reading_after_a_first_datagram(sender: socket.socket,
                                         receiver: Socket) -> NetlinkSocket:
    """A NetlinkSocket on ``receiver`` that waited for and got a datagram."""
    nl = NetlinkSocket(receiver)  # type: ignore[arg-type]
    reading = asyncio.ensure_future(nl.recv())
    await asyncio.sleep(0)
    sender.send(b"first")
    assert await asyncio.wait_for(reading, 10) == b"first"
    return nl


async def test_a_burst_is_read_without_yielding(
        pair: tuple[socket.socket, Socket]) -> None:
    """What the socket holds is handed out before anything else runs (the
    daemon handles a burst of address changes before the events that
    follow it)."""
    sender, receiver = pair
    nl = await reading_after_a_first_datagram(sender, receiver)
    for n in range(10):
        sender.send(b"%d" % n)
    ran: list[str] = []

    async def burst() -> list[tuple[bytes, int]]:
        return [(await nl.recv(), len(ran)) for _ in range(10)]

    task = asyncio.ensure_future(burst())
    asyncio.get_running_loop().call_soon(ran.append, "other")  # after its first step
    got = await asyncio.wait_for(task, 10)
    assert got == [(b"%d" % n, 0) for n in range(10)]
    nl.close()


async def test_a_receive_error_comes_in_its_place(
        pair: tuple[socket.socket, Socket]) -> None:
    """An overrun (ENOBUFS) read by the reader callback is raised after the
    datagrams read before it, and the datagrams after it follow."""
    sender, receiver = pair
    nl = NetlinkSocket(receiver)  # type: ignore[arg-type]
    reading = asyncio.ensure_future(nl.recv())
    await asyncio.sleep(0)
    receiver.errors[2] = OSError(errno.ENOBUFS, "No buffer space available")
    for n in range(4):
        sender.send(b"%d" % n)
    assert await asyncio.wait_for(reading, 10) == b"0"
    assert await nl.recv() == b"1"
    with pytest.raises(OSError) as raised:
        await nl.recv()
    assert raised.value.errno == errno.ENOBUFS
    assert [await asyncio.wait_for(nl.recv(), 10) for _ in range(2)] == [b"2", b"3"]
    nl.close()


async def test_what_nobody_reads_stays_bounded_and_in_order(
        pair: tuple[socket.socket, Socket], monkeypatch: pytest.MonkeyPatch) -> None:
    """Datagrams that arrive while nobody waits are read ahead (one a turn
    of the loop) up to the inbox limit only; the rest stays in the kernel's
    buffer, and every one is handed out in order."""
    monkeypatch.setattr(rtnl_monitor, "INBOX_LIMIT", 8)
    sender, receiver = pair
    nl = await reading_after_a_first_datagram(sender, receiver)
    for n in range(30):  # nobody waits for these
        sender.send(b"%d" % n)
    for _ in range(20):
        await asyncio.sleep(0)
    assert receiver.received == 1 + 8  # one a turn, then it stopped
    got = [await asyncio.wait_for(nl.recv(), 10) for _ in range(30)]
    assert got == [b"%d" % n for n in range(30)]
    nl.close()


async def test_follow_hands_every_datagram_over_from_the_reader_callback(
        pair: tuple[socket.socket, Socket], monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon's stream: what a request left unread first (backlog, then
    the inbox), then what each wake-up reads, from the loop's reader
    callback itself, in order, with one watch; a receive error ends its
    list and the watch."""
    sender, receiver = pair
    nl = await reading_after_a_first_datagram(sender, receiver)
    nl.backlog.append(b"backlog")
    sender.send(b"inbox")
    await asyncio.sleep(0.01)  # the watching reader puts it in the inbox
    calls = count_watch_calls(monkeypatch)
    got: list[list[bytes | OSError]] = []
    stack: list[str] = []

    def consume(items: list[bytes | OSError]) -> None:
        got.append(list(items))
        # called from the reader callback, not from a task
        stack.append("task" if asyncio.current_task() is not None else "callback")

    nl.follow(consume)  # what waits is handed over at once
    assert got == [[b"backlog", b"inbox"]]
    for n in range(3):
        sender.send(b"%d" % n)
    await wait_for(lambda: sum(map(len, got)) == 5)
    assert [d for items in got[1:] for d in items] == [b"0", b"1", b"2"]
    assert set(stack[1:]) == {"callback"}
    assert calls == {"add_reader": 1, "remove_reader": 0}
    receiver.errors[receiver.received] = OSError(errno.ENOBUFS, "No buffer space available")
    sender.send(b"after the error")
    await wait_for(lambda: isinstance(got[-1][-1], OSError))
    assert got[-1][-1].errno == errno.ENOBUFS  # type: ignore[union-attr]
    assert calls == {"add_reader": 1, "remove_reader": 1}  # the watch ended
    seen = len(got)
    await asyncio.sleep(0.01)
    assert len(got) == seen  # nothing more handed over
    nl.close()


async def test_unfollow_stops_the_stream(pair: tuple[socket.socket, Socket]) -> None:
    sender, receiver = pair
    nl = NetlinkSocket(receiver)  # type: ignore[arg-type]
    got: list[list[bytes | OSError]] = []
    nl.follow(got.append)
    sender.send(b"1")
    await wait_for(lambda: got == [[b"1"]])
    nl.unfollow()
    sender.send(b"2")
    await asyncio.sleep(0.01)
    assert got == [[b"1"]]
    nl.close()


async def wait_for(condition: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.001)


async def test_follow_reads_a_burst_in_one_wake_up_up_to_a_bound(
        pair: tuple[socket.socket, Socket], monkeypatch: pytest.MonkeyPatch) -> None:
    """A wake-up hands over what the socket holds, READS_PER_WAKEUP at most,
    in one list (a burst costs no loop turn per datagram, and its consumer
    gets it as one batch; other callbacks still run between wake-ups)."""
    monkeypatch.setattr(rtnl_monitor, "READS_PER_WAKEUP", 4)
    sender, receiver = pair
    nl = NetlinkSocket(receiver)  # type: ignore[arg-type]
    got: list[list[bytes | OSError]] = []
    nl.follow(got.append)
    for n in range(6):
        sender.send(b"%d" % n)
    nl._on_datagrams()  # one wake-up
    assert got == [[b"0", b"1", b"2", b"3"]]
    nl._on_datagrams()
    assert got[1:] == [[b"4", b"5"]]
    nl._on_datagrams()  # nothing there: nothing handed over
    assert len(got) == 2
    nl.close()
