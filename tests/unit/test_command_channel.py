"""The command channel's machinery, without a kernel.

The channel is given a fake socket: it keeps what the channel sends (parsed
back with the codec) and hands out the datagrams a test queues as the
kernel's answers; the loop watches a pipe that never becomes readable, and
the test calls the channel's reader callback itself.  The same behaviours are
checked against the real kernel in ``tests/integration/test_commands.py``.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import struct
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mptcpd.errors import ConnectionClosed, KernelError, NotReady, QueueFull
from mptcpd.netlink import constants as c
from mptcpd.netlink import genl_commands
from mptcpd.netlink import pm_codec as p
from mptcpd.netlink.genl_commands import CommandChannel
from mptcpd.netlink.pm_codec import AddrInfo, Limits
from mptcpd.types import SockAddr
from tests.unit.test_commands_encode import DUMP_REPLY, GET_ADDR_REPLY, LIMITS_REPLY, nlmsg, tlv

FAMILY = 0x1C
LOGGER = "mptcpd.netlink.genl_commands"
A4 = SockAddr(ipaddress.ip_address("192.0.2.1"))
R4 = SockAddr(ipaddress.ip_address("198.51.100.2"), 5201)
TOKEN = 0x12345678


class FakeSocket:
    """Stands for the netlink socket: records datagrams, serves answers."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        self.datagrams: list[bytes] = []
        self.answers: list[bytes | BaseException] = []
        self.fail_send: BaseException | None = None
        self.fail_when: Any = None  # predicate on one message's bytes
        self.closed = False

    # -- the socket API the channel uses --
    def fileno(self) -> int:
        return self.read_fd

    def _accept(self, data: bytes) -> None:
        if self.fail_send is not None:
            raise self.fail_send
        if self.fail_when is not None:
            for msg in p.messages(data):
                if self.fail_when(data[msg.start - 16:msg.end]):
                    raise OSError(errno.EMSGSIZE, "Message too long")
        self.datagrams.append(data)

    def send(self, data: bytes) -> int:
        self._accept(bytes(data))
        return len(data)

    def sendmsg(self, buffers: list[bytes]) -> int:
        data = b"".join(buffers)
        self._accept(data)
        return len(data)

    def recv_into(self, buf: bytearray, size: int, flags: int = 0) -> int:
        if not self.answers:
            raise BlockingIOError(errno.EAGAIN, "no data")
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        buf[:len(answer)] = answer
        return len(answer)

    def close(self) -> None:
        self.closed = True
        os.close(self.read_fd)
        os.close(self.write_fd)

    # -- for the tests --
    def requests(self) -> list[p.Message]:
        return [m for d in self.datagrams for m in p.messages(d)]

    def seqs(self) -> list[int]:
        return [m.seq for m in self.requests()]

    def asks(self) -> list[bool]:
        """Whether each request sent asks for an answer (``NLM_F_ACK``)."""
        return [bool(m.flags & p.NLM_F_ACK) for m in self.requests()]

    def cmds(self) -> list[int]:
        out = []
        for data in self.datagrams:
            for m in p.messages(data):
                out.append(data[m.start])
        return out

    def ack(self, seq: int, code: int = 0, extack: str | None = None) -> None:
        flags = p.NLM_F_CAPPED
        payload = struct.pack("=i", -code) + b"\0" * 16
        if extack:
            flags |= p.NLM_F_ACK_TLVS
            payload += tlv(p.NLMSGERR_ATTR_MSG, extack.encode() + b"\0")
        self.answers.append(nlmsg(p.NLMSG_ERROR, flags, seq, payload))

    def data(self, seq: int, captured: bytes) -> None:
        self.answers.append(with_seq(captured, seq))

    def done(self, seq: int, code: int = 0) -> None:
        self.answers.append(nlmsg(p.NLMSG_DONE, p.NLM_F_MULTI, seq, struct.pack("=i", -code)))


def with_seq(captured: bytes, seq: int) -> bytes:
    return captured[:8] + struct.pack("=I", seq) + captured[12:]


@pytest.fixture
async def fake() -> AsyncIterator[tuple[CommandChannel, FakeSocket]]:
    sock = FakeSocket()
    ch = CommandChannel(request_timeout=None, send_in_thread="never")
    ch._attach(asyncio.get_running_loop(), sock, FAMILY)
    yield ch, sock
    await ch.close()


def make(**kwargs: Any) -> tuple[CommandChannel, FakeSocket]:
    """A channel on a fake socket; the loop writes every datagram unless
    ``send_in_thread`` says otherwise."""
    sock = kwargs.pop("sock", None) or FakeSocket()
    kwargs.setdefault("send_in_thread", "never")
    ch = CommandChannel(**kwargs)
    ch._attach(asyncio.get_running_loop(), sock, FAMILY)
    return ch, sock


async def turn() -> None:
    """Let the loop run the channel's flush (scheduled with call_soon)."""
    await asyncio.sleep(0)


async def wait_until(condition: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == LOGGER and r.levelno >= logging.ERROR]


# -- batching, pipelining, order ------------------------------------------------


async def test_commands_of_one_iteration_leave_in_one_datagram_and_resolve_in_order(
        fake: tuple[CommandChannel, FakeSocket]) -> None:
    ch, sock = fake
    futures = [ch.submit("kpm_set_limits", (Limits(subflows=i),)) for i in range(5)]
    futures.append(ch.submit("kpm_get_limits"))
    await turn()
    assert len(sock.datagrams) == 1
    seqs = sock.seqs()
    assert len(seqs) == 6 and seqs == sorted(seqs)
    assert sock.cmds() == [c.MPTCP_PM_CMD_SET_LIMITS] * 5 + [c.MPTCP_PM_CMD_GET_LIMITS]
    # As the kernel answers: nothing for the five that ask for no ACK.
    sock.data(seqs[5], with_seq(LIMITS_REPLY, seqs[5]))
    sock.ack(seqs[5])
    done: list[int] = []
    for i, f in enumerate(futures):
        f.add_done_callback(lambda _f, i=i: done.append(i))
    ch._on_readable()
    assert [f.result() for f in futures] == [None] * 5 + [Limits(3, 5)]
    await turn()
    assert done == list(range(6))


class AnsweringSocket(FakeSocket):
    """Answers the requests that ask for it (``NLM_F_ACK``) inside the send
    that carries them, as the kernel does."""

    def _accept(self, data: bytes) -> None:
        super()._accept(data)
        for msg in p.messages(data):
            if msg.flags & p.NLM_F_ACK:
                self.ack(msg.seq)


# -- one answer per datagram ------------------------------------------------------


async def test_only_the_last_request_of_a_datagram_asks_for_an_ack_and_it_settles_all(
        fake: tuple[CommandChannel, FakeSocket], caplog: pytest.LogCaptureFixture) -> None:
    """The kernel answers errors whatever the flags and handles a datagram
    in order: the last request's ACK says the others succeeded."""
    ch, sock = fake
    local, remote = SockAddr(ipaddress.ip_address("192.0.2.1")), SockAddr(
        ipaddress.ip_address("198.51.100.1"), 80)
    futures = [ch.submit("add_subflow", (TOKEN, 1, 0, local, remote), token=TOKEN),
               ch.submit("kpm_get_limits"),
               ch.submit("kpm_set_limits", (Limits(subflows=2),)),
               ch.submit("remove_subflow", (TOKEN, local.with_port(1), remote),
                         token=TOKEN)]
    await turn()
    assert len(sock.datagrams) == 1
    # A command with a data answer asks anyway; of the others, the last.
    assert sock.asks() == [False, True, False, True]
    seqs = sock.seqs()
    order: list[int] = []
    for i, f in enumerate(futures):
        f.add_done_callback(lambda _f, i=i: order.append(i))
    sock.data(seqs[1], with_seq(LIMITS_REPLY, seqs[1]))
    sock.ack(seqs[1])
    ch._on_readable()
    assert futures[0].result() is None and futures[1].result() == Limits(3, 5)
    assert not futures[2].done() and not futures[3].done()
    sock.ack(seqs[3])
    ch._on_readable()
    assert [f.result() for f in futures[2:]] == [None, None]
    assert ch.in_flight == 0 and not errors(caplog)
    await turn()
    assert order == [0, 1, 2, 3]


async def test_an_error_answer_inside_a_datagram_fails_that_request_only(
        fake: tuple[CommandChannel, FakeSocket], caplog: pytest.LogCaptureFixture) -> None:
    ch, sock = fake
    futures = [ch.submit("kpm_set_limits", (Limits(subflows=i),)) for i in range(4)]
    await turn()
    assert sock.asks() == [False, False, False, True]
    seqs = sock.seqs()
    sock.ack(seqs[1], errno.EINVAL, "limit greater than maximum")
    sock.ack(seqs[3])
    ch._on_readable()
    exc = futures[1].exception()
    assert isinstance(exc, KernelError) and exc.errno == errno.EINVAL
    assert [futures[i].result() for i in (0, 2, 3)] == [None] * 3
    assert errors(caplog) == ["set_limits: limit greater than maximum: Invalid argument"]


async def test_after_an_overrun_a_request_without_its_own_answer_fails_not_succeeds(
        fake: tuple[CommandChannel, FakeSocket], caplog: pytest.LogCaptureFixture) -> None:
    """The overrun may have taken its error answer."""
    ch, sock = fake
    futures = [ch.submit("kpm_set_limits", (Limits(subflows=i),)) for i in range(3)]
    await turn()
    sock.answers.append(OSError(errno.ENOBUFS, "No buffer space available"))
    sock.ack(sock.seqs()[2])
    ch._on_readable()
    assert [f.exception().errno for f in futures[:2]] == [errno.ENOBUFS] * 2  # type: ignore[union-attr]
    assert futures[2].result() is None
    assert ch.in_flight == 0


async def test_answers_made_inside_the_send_are_read_in_the_same_turn() -> None:
    """No loop turn (nor epoll wake-up) between a request and its answer;
    the answers free room, and what waited for it leaves at once."""
    ch, sock = make(sock=AnsweringSocket(), max_in_flight=2)
    futures = [ch.submit("kpm_flush_addrs") for _ in range(5)]
    await turn()  # the flush: nothing reported the socket readable
    assert all(f.done() for f in futures) and [f.result() for f in futures] == [None] * 5
    assert len(sock.datagrams) == 3 and ch.in_flight == 0 and ch.queued == 0
    await ch.close()


class CountingSocket(AnsweringSocket):
    """Counts the ``recv_into`` calls, and those that found nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = self.empty_reads = 0

    def recv_into(self, buf: bytearray, size: int, flags: int = 0) -> int:
        self.reads += 1
        if not self.answers:
            self.empty_reads += 1
        return super().recv_into(buf, size, flags)


async def test_what_is_submitted_during_a_hold_leaves_together_when_it_is_released() -> None:
    """The network feed holds the channel while a datagram's records are
    applied: what plugins submit meanwhile leaves in one datagram at the
    release, answered there and then, with no loop turn in between; holds
    nest, and a command submitted before the hold leaves with them."""
    ch, sock = make(sock=CountingSocket())
    before = ch.submit("kpm_get_limits")
    ch.hold()
    ch.hold()
    held = [ch.submit("kpm_set_limits", (Limits(subflows=2),)),
            ch.submit("kpm_add_addr", (A4, 1, 0, 0))]
    ch.release()
    assert sock.datagrams == []  # still held
    ch.release()
    assert len(sock.datagrams) == 1
    assert sock.cmds() == [c.MPTCP_PM_CMD_GET_LIMITS, c.MPTCP_PM_CMD_SET_LIMITS,
                           c.MPTCP_PM_CMD_ADD_ADDR]
    assert before.done() and all(f.done() for f in held) and ch.in_flight == 0
    # the answers were read without a recv that found the socket empty:
    # GET_LIMITS's, and the ACK of the datagram's last request
    assert sock.asks() == [True, False, True]
    assert sock.reads == 2 and sock.empty_reads == 0
    await turn()
    assert len(sock.datagrams) == 1  # the flush scheduled before the hold sent nothing
    # released, the channel flushes on the next turn again
    after = ch.submit("kpm_get_limits")
    assert len(sock.datagrams) == 1
    await turn()
    assert len(sock.datagrams) == 2 and after.done()
    ch.hold()
    ch.release()  # nothing waits: nothing written
    assert len(sock.datagrams) == 2
    await ch.close()


async def test_the_reader_stops_once_nothing_waits_for_an_answer() -> None:
    """A wake-up reads a stray message (nothing in flight) and no more: no
    recv to learn that the socket is empty; the socket stays watched, so
    whatever else it holds wakes the reader again."""
    ch, sock = make(sock=CountingSocket())
    sock.ack(4242)
    sock.ack(4243)
    ch._on_readable()
    assert sock.reads == 1 and len(sock.answers) == 1
    ch._on_readable()
    assert sock.reads == 2 and not sock.answers and sock.empty_reads == 0
    await ch.close()


async def test_without_batching_each_request_is_its_own_send() -> None:
    ch, sock = make(batch=False)
    for _ in range(4):
        ch.submit("kpm_flush_addrs")
    await turn()
    assert len(sock.datagrams) == 4
    await ch.close()


async def test_max_in_flight_holds_and_answers_free_the_slots() -> None:
    ch, sock = make(max_in_flight=3)
    futures = [ch.submit("kpm_flush_addrs") for _ in range(10)]
    await turn()
    assert len(sock.seqs()) == 3 and ch.in_flight == 3 and ch.queued == 7
    for seq in sock.seqs():
        sock.ack(seq)
    ch._on_readable()  # answers read, then the next requests leave at once
    assert len(sock.seqs()) == 6 and ch.in_flight == 3
    assert all(f.done() for f in futures[:3]) and not futures[3].done()
    await ch.close()
    assert all(isinstance(f.exception(), NotReady) for f in futures[3:])


async def test_a_dump_is_sent_alone_and_nothing_follows_it_before_its_end(
        fake: tuple[CommandChannel, FakeSocket]) -> None:
    ch, sock = fake
    first = ch.submit("kpm_get_limits")
    dump = ch.submit("kpm_dump_addrs")
    after = ch.submit("kpm_flush_addrs")
    await turn()
    assert len(sock.seqs()) == 1  # the dump waits for the request before it
    s1 = sock.seqs()[0]
    sock.ack(s1)
    ch._on_readable()
    assert first.result() == Limits()  # an ACK without data
    assert len(sock.seqs()) == 2
    s2 = sock.seqs()[1]
    assert sock.requests()[1].flags == p.DUMP_REQUEST
    parts = b"".join(with_seq(d, s2) for d in DUMP_REPLY)
    sock.answers.append(parts)
    ch._on_readable()
    assert len(sock.seqs()) == 2 and not dump.done()  # still running
    sock.done(s2)
    ch._on_readable()
    assert [i.id for i in dump.result()] == [1, 2, 3]
    assert len(sock.seqs()) == 3
    sock.ack(sock.seqs()[2])
    ch._on_readable()
    assert after.result() is None


async def test_get_addr_resolves_with_the_reply_then_ack(
        fake: tuple[CommandChannel, FakeSocket]) -> None:
    ch, sock = fake
    future = ch.submit("kpm_get_addr", (1,))
    await turn()
    (seq,) = sock.seqs()
    sock.data(seq, with_seq(GET_ADDR_REPLY, seq))
    ch._on_readable()
    assert not future.done()  # the ACK ends the request
    sock.ack(seq)
    ch._on_readable()
    assert future.result() == AddrInfo(SockAddr(ipaddress.ip_address("192.0.2.1"), 8080),
                                       1, 5, 2)


# -- failures of one request ----------------------------------------------------


async def test_kernel_errors_are_logged_with_the_operation_and_extack(
        fake: tuple[CommandChannel, FakeSocket], caplog: pytest.LogCaptureFixture) -> None:
    ch, sock = fake
    bad = ch.submit("add_addr", (A4, 1, TOKEN), TOKEN)
    plain = ch.submit("kpm_remove_addr", (9,))
    await turn()
    s1, s2 = sock.seqs()
    sock.ack(s1, errno.EINVAL, "invalid token")
    sock.ack(s2, errno.ENOENT)
    ch._on_readable()
    assert isinstance(bad.exception(), KernelError)
    assert errors(caplog) == ["announce: invalid token: Invalid argument",
                              "remove_addr: No such file or directory"]
    exc = plain.exception()
    assert isinstance(exc, KernelError) and exc.errno == errno.ENOENT and exc.extack is None


async def test_an_encoding_error_fails_that_request_only(
        fake: tuple[CommandChannel, FakeSocket], caplog: pytest.LogCaptureFixture) -> None:
    ch, sock = fake
    before = ch.submit("kpm_flush_addrs")
    bad = ch.submit("kpm_remove_addr", (256,))  # PathManager would refuse it
    worse = ch.submit("kpm_add_addr", ("not an address", 1))
    after = ch.submit("kpm_get_limits")
    await turn()
    assert isinstance(bad.exception(), struct.error)
    assert isinstance(worse.exception(), AttributeError)
    assert sock.cmds() == [c.MPTCP_PM_CMD_FLUSH_ADDRS, c.MPTCP_PM_CMD_GET_LIMITS]
    for seq in sock.seqs():
        sock.ack(seq)
    ch._on_readable()
    assert before.result() is None and after.result() == Limits()
    assert errors(caplog)[0].startswith("remove_addr: cannot encode the request")
    assert ch.is_open


async def test_a_refused_datagram_is_resent_one_request_at_a_time(
        fake: tuple[CommandChannel, FakeSocket], caplog: pytest.LogCaptureFixture) -> None:
    ch, sock = fake
    delete = p.COMMANDS["kpm_remove_addr"].encode(FAMILY, 0, p.REQUEST, 3)[16:]
    sock.fail_when = lambda msg: msg[16:] == delete
    futures = [ch.submit("kpm_flush_addrs"), ch.submit("kpm_remove_addr", (3,)),
               ch.submit("kpm_get_limits")]
    await turn()
    assert len(sock.datagrams) == 2  # the two others, one by one
    assert sock.asks() == [True, True]  # each the last of its datagram
    exc = futures[1].exception()
    assert isinstance(exc, KernelError) and exc.errno == errno.EMSGSIZE
    for seq in sock.seqs():
        sock.ack(seq)
    ch._on_readable()
    assert futures[0].result() is None and futures[2].result() == Limits()
    assert errors(caplog) == ["remove_addr: Message too long"]


async def test_a_request_cancelled_before_it_leaves_is_not_sent(
        fake: tuple[CommandChannel, FakeSocket]) -> None:
    ch, sock = fake
    cancelled = ch.submit("kpm_flush_addrs")
    kept = ch.submit("kpm_get_limits")
    cancelled.cancel()
    await turn()
    assert sock.cmds() == [c.MPTCP_PM_CMD_GET_LIMITS]
    assert not kept.done()


async def test_timeouts_then_late_answers_are_ignored(caplog: pytest.LogCaptureFixture) -> None:
    ch, sock = make(request_timeout=0.05)
    slow = [ch.submit("kpm_get_limits") for _ in range(3)]
    await wait_until(lambda: all(f.done() for f in slow))
    assert [f.exception().errno for f in slow] == [errno.ETIMEDOUT] * 3  # type: ignore[union-attr]
    assert errors(caplog) == ["get_limits: Connection timed out"] * 3
    for seq in sock.seqs():
        sock.ack(seq)  # too late
    later = ch.submit("kpm_flush_addrs")
    await turn()
    sock.ack(sock.seqs()[-1])
    ch._on_readable()
    assert later.result() is None
    await ch.close()


async def test_an_answer_skipping_a_request_that_asked_for_one_means_it_lost_its_answer(
        fake: tuple[CommandChannel, FakeSocket], caplog: pytest.LogCaptureFixture) -> None:
    ch, sock = fake
    lost = ch.submit("kpm_flush_addrs")
    await turn()
    answered = ch.submit("kpm_flush_addrs")
    await turn()
    assert len(sock.datagrams) == 2  # each the last of its datagram: both ask
    sock.ack(sock.seqs()[1])
    ch._on_readable()
    assert isinstance(lost.exception(), KernelError) and lost.exception().errno == errno.ENOBUFS  # type: ignore[union-attr]
    assert answered.result() is None


async def test_an_overrun_fails_what_is_left_unanswered_once_the_socket_is_drained(
        fake: tuple[CommandChannel, FakeSocket], caplog: pytest.LogCaptureFixture) -> None:
    ch, sock = fake
    futures = [ch.submit("kpm_flush_addrs") for _ in range(4)]
    await turn()
    s = sock.seqs()
    sock.ack(s[0])
    sock.answers.append(OSError(errno.ENOBUFS, "No buffer space available"))
    sock.ack(s[1])
    ch._on_readable()
    assert futures[0].result() is None and futures[1].result() is None
    assert [f.exception().errno for f in futures[2:]] == [errno.ENOBUFS] * 2  # type: ignore[union-attr]
    assert "mptcp_pm command socket overrun: replies were lost" in caplog.text
    assert ch.is_open and ch.in_flight == 0


async def test_messages_for_no_request_and_malformed_datagrams_are_ignored(
        fake: tuple[CommandChannel, FakeSocket], caplog: pytest.LogCaptureFixture) -> None:
    ch, sock = fake
    future = ch.submit("kpm_get_limits")
    await turn()
    (seq,) = sock.seqs()
    sock.ack(seq + 100)
    sock.answers.append(b"\x05\x00")
    sock.answers.append(struct.pack("=IHHII", 400, 2, 0, seq, 0))
    ch._on_readable()
    assert not future.done() and ch.is_open
    sock.ack(seq)
    ch._on_readable()
    assert future.result() == Limits()


# -- bounds ------------------------------------------------------------------------


async def test_the_queue_is_bounded_and_drops_are_counted_and_rate_limited(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(genl_commands, "QUEUE_FULL_WARNING_INTERVAL", 0.2)
    caplog.set_level(logging.WARNING, LOGGER)
    ch, sock = make(max_queue=5, max_in_flight=1)
    accepted = [ch.submit("kpm_flush_addrs") for _ in range(5)]
    refused = [ch.submit("kpm_get_limits") for _ in range(3)]
    assert ch.queued == 5 and ch.dropped == 3
    assert all(isinstance(f.exception(), QueueFull) for f in refused)
    assert str(refused[0].exception()) == (
        "get_limits: command queue full (5 waiting); command dropped")

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]

    assert warnings() == ["Command queue full (5 commands waiting): 1 command(s) dropped "
                          "since the last warning."]
    await wait_until(lambda: len(warnings()) == 2)
    assert warnings()[1].endswith(": 2 command(s) dropped since the last warning.")
    # draining makes room again
    await turn()
    assert ch.in_flight == 1 and ch.queued == 4
    sock.ack(sock.seqs()[0])
    ch._on_readable()
    assert accepted[0].result() is None and ch.queued == 3
    ch.submit("kpm_get_limits")
    assert ch.dropped == 3
    await ch.close()
    assert len(warnings()) == 2


async def test_forget_drops_the_queued_commands_of_a_token_only(
        fake: tuple[CommandChannel, FakeSocket]) -> None:
    ch, sock = fake
    sent = ch.submit("add_subflow", (TOKEN, 1, 0, A4, R4, False), TOKEN)
    await turn()
    assert len(sock.seqs()) == 1
    mine = [ch.submit("add_subflow", (TOKEN, 2, 0, A4, R4, False), TOKEN),
            ch.submit("remove_subflow", (TOKEN, A4, R4), TOKEN)]
    other = ch.submit("remove_subflow", (TOKEN + 1, A4, R4), TOKEN + 1)
    plain = ch.submit("kpm_get_limits")
    assert ch.forget(TOKEN) == 2
    assert ch.forget(TOKEN) == 0
    assert ch.queued == 2
    exc = mine[0].exception()
    assert isinstance(exc, ConnectionClosed) and exc.errno == errno.ENOTCONN
    assert str(exc) == "add_subflow: connection 0x12345678 closed; command not sent"
    assert not sent.done()  # already with the kernel
    await turn()
    assert sock.cmds() == [c.MPTCP_PM_CMD_SUBFLOW_CREATE, c.MPTCP_PM_CMD_SUBFLOW_DESTROY,
                          c.MPTCP_PM_CMD_GET_LIMITS]  # the other token's is sent
    again = ch.submit("remove_subflow", (TOKEN, A4, R4), TOKEN)  # after forget: sent
    for seq in sock.seqs():
        sock.ack(seq)
    ch._on_readable()
    await turn()
    assert sent.result() is None and other.result() is None and plain.result() == Limits()
    assert sock.cmds()[-1] == c.MPTCP_PM_CMD_SUBFLOW_DESTROY and not again.done()


async def test_commands_of_connections_the_kernel_closed_are_not_sent(
        fake: tuple[CommandChannel, FakeSocket]) -> None:
    """The writer asks ``closed_tokens`` before a datagram: commands of a
    connection whose CLOSED the reader holds are dropped, the rest leave."""
    ch, sock = fake
    closed: set[int] = set()
    asked: list[int] = []

    def closed_tokens() -> set[int]:
        asked.append(1)
        return closed

    ch.closed_tokens = closed_tokens
    closed.add(TOKEN)
    gone = ch.submit("add_subflow", (TOKEN, 1, 0, A4, R4, False), TOKEN)
    live = ch.submit("add_subflow", (TOKEN + 1, 1, 0, A4, R4, False), TOKEN + 1)
    plain = ch.submit("kpm_get_limits")
    await turn()
    assert asked == [1]  # once for the datagram, not once per command
    assert sock.cmds() == [c.MPTCP_PM_CMD_SUBFLOW_CREATE, c.MPTCP_PM_CMD_GET_LIMITS]
    exc = gone.exception()
    assert isinstance(exc, ConnectionClosed)
    assert not live.done() and not plain.done() and ch.queued == 0
    # Commands of no connection (endpoints, limits) leave without asking: the
    # question reads the event socket.
    for seq in sock.seqs():
        sock.ack(seq)
    ch._on_readable()
    later = [ch.submit("kpm_get_limits"), ch.submit("kpm_remove_addr", (3,))]
    await turn()
    assert asked == [1] and len(sock.datagrams) == 2 and not any(f.done() for f in later)


# -- supervision -----------------------------------------------------------------


async def test_the_channel_dying_is_reported_and_settles_everything(
        caplog: pytest.LogCaptureFixture) -> None:
    reasons: list[str] = []
    ch, sock = make(on_failure=reasons.append)
    sent = ch.submit("kpm_get_limits")
    await turn()
    queued = ch.submit("kpm_flush_addrs")
    sock.answers.append(OSError(errno.EBADF, "Bad file descriptor"))
    ch._on_readable()
    assert not ch.is_open and sock.closed
    assert ch.failed is not None and ch.failed.done()
    assert reasons == [ch.failed.result()] and "Bad file descriptor" in reasons[0]
    assert isinstance(sent.exception(), NotReady) and isinstance(queued.exception(), NotReady)
    assert any("mptcp_pm command channel failed" in m for m in errors(caplog))
    with pytest.raises(NotReady):
        ch.submit("kpm_get_limits")


async def test_a_bug_in_the_writer_is_fatal_not_silent(
        monkeypatch: pytest.MonkeyPatch) -> None:
    reasons: list[str] = []
    ch, sock = make(on_failure=reasons.append)

    def broken(*args: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(ch, "_send", broken)
    future = ch.submit("kpm_get_limits")
    await turn()
    assert reasons and "RuntimeError('boom')" in reasons[0]
    assert isinstance(future.exception(), NotReady)


async def test_close_settles_every_future_and_cancels_failed() -> None:
    ch, sock = make()
    sent = ch.submit("kpm_get_limits")
    await turn()
    queued = ch.submit("kpm_get_limits")
    await ch.close()
    assert isinstance(sent.exception(), NotReady) and isinstance(queued.exception(), NotReady)
    assert ch.failed is not None and ch.failed.cancelled()
    with pytest.raises(NotReady):
        ch.submit("kpm_get_limits")


async def test_submit_before_open_is_not_ready_and_names_are_checked() -> None:
    ch = CommandChannel()
    with pytest.raises(NotReady, match="get_limits: MPTCP family is not yet available"):
        ch.submit("kpm_get_limits")
    with pytest.raises(KeyError):
        ch.submit("announce")
    with pytest.raises(ValueError):
        CommandChannel(max_queue=0)
    with pytest.raises(ValueError):
        CommandChannel(max_in_flight=0)


# -- slow commands: written by the worker thread -------------------------------


class GatedSocket(FakeSocket):
    """A fake socket whose ``send`` of a datagram holding one of ``blocking``
    (command numbers; None: every datagram) waits until the test opens
    ``gate``, as the kernel's DEL_ADDR keeps the sender waiting; the
    datagram counts as sent from the moment it entered (the kernel answers
    before the call returns).  It records which thread wrote each one."""

    def __init__(self, blocking: set[int] | None = None) -> None:
        super().__init__()
        self.blocking = blocking
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.returned = threading.Event()
        self.writers: list[str] = []

    def _accept(self, data: bytes) -> None:
        self.writers.append(threading.current_thread().name)
        cmds = {data[m.start] for m in p.messages(data)}
        if self.blocking is not None and not cmds & self.blocking:
            super()._accept(data)
            return
        self.entered.set()
        try:
            if self.fail_send is None and self.fail_when is None:
                self.datagrams.append(data)
            if not self.gate.wait(10):
                raise TimeoutError("the test never opened the gate")
            if self.fail_send is not None or self.fail_when is not None:
                super()._accept(data)
        finally:
            self.returned.set()


SLOW = {c.MPTCP_PM_CMD_DEL_ADDR, c.MPTCP_PM_CMD_FLUSH_ADDRS}
MAIN = threading.current_thread().name
WORKER = genl_commands.SENDER_THREAD


async def test_a_datagram_with_a_slow_command_is_written_by_the_thread_the_loop_runs_on(
        ) -> None:
    sock = GatedSocket(SLOW)
    ch, _ = make(sock=sock, send_in_thread="slow", request_timeout=None)
    first = [ch.submit("kpm_set_limits", (Limits(subflows=1),)),
             ch.submit("kpm_remove_addr", (3,)),
             ch.submit("kpm_get_limits")]
    await wait_until(sock.entered.is_set)
    # the loop is free: it runs callbacks, takes commands, reads answers
    ticks: list[int] = []
    for _ in range(3):
        asyncio.get_running_loop().call_soon(ticks.append, 1)
        await turn()
    assert len(ticks) == 3
    # What came before the slow command left from the loop, the rest from
    # the thread, in order.
    assert sock.writers == [MAIN, WORKER] and len(sock.datagrams) == 2
    assert ch.queued == 0 and ch.in_flight == 3  # handed over: no longer queued
    later = [ch.submit("kpm_set_limits", (Limits(subflows=2),)), ch.submit("kpm_get_limits")]
    await turn()
    assert ch.queued == 2 and len(sock.writers) == 2  # nothing else is written meanwhile
    s1, s2, s3 = sock.seqs()
    sock.ack(s1)
    sock.ack(s2)
    ch._on_readable()  # answers read before the thread's send returned
    assert first[0].result() is None and first[1].result() is None
    assert not first[2].done() and ch.in_flight == 1 and len(sock.datagrams) == 2
    # the last request's answer: the kernel is done with the datagram, so
    # the next one leaves (from the loop: no slow command in it) at once
    sock.ack(s3)
    ch._on_readable()
    assert first[2].result() == Limits()
    assert len(sock.datagrams) == 3 and sock.writers == [MAIN, WORKER, MAIN]
    sock.gate.set()
    await wait_until(sock.returned.is_set)
    assert sock.cmds() == [c.MPTCP_PM_CMD_SET_LIMITS, c.MPTCP_PM_CMD_DEL_ADDR,
                          c.MPTCP_PM_CMD_GET_LIMITS, c.MPTCP_PM_CMD_SET_LIMITS,
                          c.MPTCP_PM_CMD_GET_LIMITS]
    seqs = sock.seqs()
    assert seqs == sorted(seqs)
    for seq in seqs[3:]:
        sock.ack(seq)
    done: list[int] = []
    for i, f in enumerate(later):
        f.add_done_callback(lambda _f, i=i: done.append(i))
    ch._on_readable()
    assert [f.result() for f in first + later] == [None, None, Limits(), None, Limits()]
    await turn()
    assert done == [0, 1]
    await ch.close()


async def test_every_datagram_goes_through_the_thread_in_mode_all_in_order() -> None:
    sock = GatedSocket(None)
    sock.gate.set()
    ch, _ = make(sock=sock, send_in_thread="all", request_timeout=None, max_in_flight=2)
    futures = [ch.submit("kpm_set_limits", (Limits(subflows=i),)) for i in range(5)]
    for n in (1, 2, 3):
        await wait_until(lambda: len(sock.datagrams) == n and sock.returned.is_set())
        sock.returned.clear()
        for seq in p.messages(sock.datagrams[-1]):
            sock.ack(seq.seq)
        ch._on_readable()
    assert [f.result() for f in futures] == [None] * 5
    assert set(sock.writers) == {WORKER} and len(sock.datagrams) == 3  # 2 + 2 + 1
    assert sock.seqs() == sorted(sock.seqs())
    await ch.close()


async def test_commands_handed_to_the_thread_are_not_forgotten_the_queued_ones_are(
        ) -> None:
    sock = GatedSocket(SLOW)
    ch, _ = make(sock=sock, send_in_thread="slow", request_timeout=None)
    sent = [ch.submit("remove_subflow", (TOKEN, A4, R4), TOKEN),
            ch.submit("kpm_flush_addrs")]
    await wait_until(sock.entered.is_set)
    queued = ch.submit("add_subflow", (TOKEN, 2, 0, A4, R4, False), TOKEN)
    assert ch.forget(TOKEN) == 1
    assert isinstance(queued.exception(), ConnectionClosed)
    sock.gate.set()
    await wait_until(sock.returned.is_set)
    for seq in sock.seqs():
        sock.ack(seq)
    ch._on_readable()
    assert [f.result() for f in sent] == [None, None]
    assert sock.cmds() == [c.MPTCP_PM_CMD_SUBFLOW_DESTROY, c.MPTCP_PM_CMD_FLUSH_ADDRS]
    await ch.close()


async def test_close_during_a_slow_send_returns_at_once_and_the_thread_ends() -> None:
    sock = GatedSocket(SLOW)
    ch, _ = make(sock=sock, send_in_thread="slow", request_timeout=None)
    sending = ch.submit("kpm_remove_addr", (1,))
    await wait_until(sock.entered.is_set)
    queued = ch.submit("kpm_get_limits")
    sender = ch._sender
    assert sender is not None
    async with asyncio.timeout(5):
        await ch.close()  # the gate is still shut: close does not wait for it
    assert isinstance(sending.exception(), NotReady)
    assert isinstance(queued.exception(), NotReady)
    assert ch.failed is not None and ch.failed.cancelled() and not ch.is_open
    assert not sock.closed  # the thread is still inside send on it
    with pytest.raises(NotReady):
        ch.submit("kpm_get_limits")
    sock.gate.set()
    await wait_until(lambda: sock.closed)  # closed by the thread once send returned
    threads = [sender.thread]
    for thread in threads:
        thread.join(5)
    assert threads and not any(t.is_alive() for t in threads)
    assert len(sock.datagrams) == 1


async def test_a_datagram_refused_in_the_thread_is_resent_one_request_at_a_time(
        caplog: pytest.LogCaptureFixture) -> None:
    sock = GatedSocket(None)
    sock.gate.set()
    ch, _ = make(sock=sock, send_in_thread="all", request_timeout=None)
    delete = p.COMMANDS["kpm_remove_addr"].encode(FAMILY, 0, p.REQUEST, 3)[16:]
    sock.fail_when = lambda msg: msg[16:] == delete
    futures = [ch.submit("kpm_flush_addrs"), ch.submit("kpm_remove_addr", (3,)),
               ch.submit("kpm_get_limits")]
    await wait_until(lambda: len(sock.datagrams) == 1)  # then one by one: the flush
    sock.ack(sock.seqs()[0])
    ch._on_readable()  # answered: the refused one next, then the third
    await wait_until(lambda: futures[1].done() and len(sock.datagrams) == 2)
    assert len(sock.writers) == 4 and set(sock.writers) == {WORKER}
    exc = futures[1].exception()
    assert isinstance(exc, KernelError) and exc.errno == errno.EMSGSIZE
    assert sock.cmds() == [c.MPTCP_PM_CMD_FLUSH_ADDRS, c.MPTCP_PM_CMD_GET_LIMITS]
    sock.ack(sock.seqs()[1])
    ch._on_readable()
    assert futures[0].result() is None and futures[2].result() == Limits()
    assert errors(caplog) == ["remove_addr: Message too long"]
    await ch.close()


async def test_a_request_times_out_while_its_slow_send_lasts(
        caplog: pytest.LogCaptureFixture) -> None:
    sock = GatedSocket(SLOW)
    ch, _ = make(sock=sock, send_in_thread="slow", request_timeout=0.05)
    slow = ch.submit("kpm_remove_addr", (1,))
    await wait_until(slow.done)
    assert slow.exception().errno == errno.ETIMEDOUT  # type: ignore[union-attr]
    sock.gate.set()
    await wait_until(lambda: ch._sending is None)
    sock.ack(sock.seqs()[0])  # too late
    after = ch.submit("kpm_get_limits")
    await turn()
    sock.ack(sock.seqs()[-1])
    ch._on_readable()
    assert after.result() == Limits()
    assert errors(caplog) == ["remove_addr: Connection timed out"]
    await ch.close()


async def test_an_overrun_during_a_slow_send_waits_for_it_before_failing_its_requests(
        caplog: pytest.LogCaptureFixture) -> None:
    sock = GatedSocket(SLOW)
    ch, _ = make(sock=sock, send_in_thread="slow", request_timeout=None)
    futures = [ch.submit("kpm_remove_addr", (1,)), ch.submit("kpm_remove_addr", (2,)),
               ch.submit("kpm_remove_addr", (3,))]
    await wait_until(sock.entered.is_set)
    s1, s2, s3 = sock.seqs()
    sock.ack(s1)
    sock.answers.append(OSError(errno.ENOBUFS, "No buffer space available"))
    ch._on_readable()
    assert futures[0].result() is None
    assert not futures[1].done() and not futures[2].done()  # maybe still to come
    sock.ack(s3)  # the kernel answered s3 after the overrun; s2's answer was lost
    sock.gate.set()
    await wait_until(futures[2].done)
    assert futures[2].result() is None
    assert futures[1].exception().errno == errno.ENOBUFS  # type: ignore[union-attr]
    assert ch.is_open and ch.in_flight == 0
    await ch.close()


async def test_a_bug_in_the_thread_send_is_fatal_not_silent() -> None:
    reasons: list[str] = []
    sock = GatedSocket(SLOW)
    sock.gate.set()
    sock.fail_send = RuntimeError("boom")
    ch, _ = make(sock=sock, send_in_thread="slow", on_failure=reasons.append)
    future = ch.submit("kpm_flush_addrs")
    await wait_until(lambda: bool(reasons))
    assert "RuntimeError('boom')" in reasons[0]
    assert isinstance(future.exception(), NotReady) and not ch.is_open


def test_the_worker_thread_writes_jobs_in_order_and_survives_their_failures(
        caplog: pytest.LogCaptureFixture) -> None:
    """One plain thread for every slow datagram: a job's ``sendmsg`` that
    raises reports it (before the job counts as done), a callback that
    raises is logged, and the thread goes on with the next job; a callback
    asked for after the send returned runs at once."""
    sock = GatedSocket(None)
    sender = genl_commands._Sender()
    events: list[str] = []
    try:
        first = genl_commands._Job(sock, [b"one"], lambda exc: events.append("error"))
        first.when_done(lambda: events.append("first done"))
        first.when_done(lambda: 1 / 0)
        sock.fail_send = OSError(errno.EMSGSIZE, "Message too long")
        sender.submit(first)
        assert sock.entered.wait(5) and not first.done
        second = genl_commands._Job(sock, [b"two"], lambda exc: events.append("error 2"))
        second.when_done(lambda: events.append("second done"))
        sender.submit(second)
        sock.gate.set()
        deadline = time.monotonic() + 5
        while not second.done and time.monotonic() < deadline:
            time.sleep(0.001)
        assert first.done and second.done
        assert events == ["error", "first done", "error 2", "second done"]
        assert "ZeroDivisionError" in caplog.text
        second.when_done(lambda: events.append("at once"))
        assert events[-1] == "at once"
        assert sock.writers == [WORKER, WORKER]
    finally:
        sender.shutdown()
        sender.thread.join(5)
    assert not sender.thread.is_alive()


def test_send_in_thread_modes_are_checked() -> None:
    with pytest.raises(ValueError):
        CommandChannel(send_in_thread="sometimes")  # type: ignore[arg-type]


# -- random answers -------------------------------------------------------------

FUZZ = settings(deadline=None, database=None, max_examples=300,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@FUZZ
@given(st.lists(st.binary(max_size=80), max_size=6), st.integers(0, 6))
def test_random_answers_never_break_the_channel(answers: list[bytes], which: int) -> None:
    async def body() -> None:
        ch, sock = make(request_timeout=None)
        futures = [ch.submit(name) for name in
                   ("kpm_get_limits", "kpm_flush_addrs", "kpm_dump_addrs", "kpm_get_limits")]
        await turn()
        seqs = sock.seqs()
        for data in answers:
            if len(data) >= 16 and seqs:  # aim some at a real request
                data = data[:8] + struct.pack("=I", seqs[which % len(seqs)]) + data[12:]
            sock.answers.append(data)
        ch._on_readable()
        assert ch.is_open
        for f in futures:
            if f.done() and not f.cancelled():
                assert f.exception() is None or isinstance(f.exception(), KernelError)
        await ch.close()
        assert all(f.done() for f in futures)

    logging.disable(logging.CRITICAL)
    try:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(body())
        finally:
            loop.close()
    finally:
        logging.disable(logging.NOTSET)


async def test_repeated_refusals_are_counted_when_their_window_ends(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """The error lines of the channel: ERROR_REPEATS of a text one by one,
    the rest counted and told when the window's timer ends it; the next
    refusal then starts a window of its own."""
    monkeypatch.setattr(genl_commands, "ERROR_WINDOW", 0.05)
    caplog.set_level(logging.ERROR, genl_commands.log.name)
    errors = genl_commands._Errors()
    loop = asyncio.get_running_loop()
    for _ in range(genl_commands.ERROR_REPEATS + 3):
        errors.log("announce: invalid token: Invalid argument", loop)
    errors.log("get_addr: address not found: Invalid argument", loop)
    assert len(caplog.records) == genl_commands.ERROR_REPEATS + 1
    await asyncio.sleep(0.2)
    assert caplog.records[-1].getMessage() == (
        "announce: invalid token: Invalid argument (3 more time(s) within 0.05 s)")
    caplog.clear()
    errors.log("announce: invalid token: Invalid argument", loop)
    errors.flush()
    assert [r.getMessage() for r in caplog.records] == [
        "announce: invalid token: Invalid argument"]


async def test_a_window_of_too_many_texts_ends_early_and_the_next_has_its_timer(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past MAX_ERROR_TEXTS distinct texts the window ends at once (its
    counts told), and the window the next text starts ends by its timer."""
    monkeypatch.setattr(genl_commands, "ERROR_WINDOW", 0.05)
    monkeypatch.setattr(genl_commands, "MAX_ERROR_TEXTS", 2)
    caplog.set_level(logging.ERROR, genl_commands.log.name)
    errors = genl_commands._Errors()
    loop = asyncio.get_running_loop()
    for text in ("a", "b", "c"):
        for _ in range(genl_commands.ERROR_REPEATS + 1):
            errors.log(text, loop)
    assert [r.getMessage() for r in caplog.records if "more" in r.getMessage()] == [
        "a (1 more time(s) within 0.05 s)", "b (1 more time(s) within 0.05 s)"]
    await asyncio.sleep(0.2)
    assert caplog.records[-1].getMessage() == "c (1 more time(s) within 0.05 s)"
