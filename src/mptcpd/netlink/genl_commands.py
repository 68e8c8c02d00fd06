"""The ``mptcp_pm`` command channel: requests in, futures out.

:class:`CommandChannel` owns one plain generic netlink socket (stdlib
:mod:`socket`, read through the loop's reader callback) and never joins a
multicast group; events have their own socket.  Requests are encoded and
replies decoded by :mod:`mptcpd.netlink.pm_codec`.

``submit(name, args, token=None)`` queues one command, named after the
path-manager call that sends it (:data:`~mptcpd.netlink.pm_codec.COMMANDS`;
the public :class:`~mptcpd.pm.path_manager.PathManager` validates the
arguments first) and returns an :class:`asyncio.Future` resolved when the
kernel answered:

* with ``None`` for an ACK,
* with an :class:`~mptcpd.netlink.pm_codec.AddrInfo` (or None) for
  ``kpm_get_addr``, a list of them for ``kpm_dump_addrs``,
* with :class:`~mptcpd.netlink.pm_codec.Limits` for ``kpm_get_limits``,
* or failed with :class:`~mptcpd.errors.KernelError` (the kernel's errno and
  extended-ACK text), logged at ERROR as ``<op>: <extack>: <strerror>``
  (``<op>: <strerror>`` without extack), ``op`` being the C daemon's
  operation name.  A request without an answer after ``request_timeout``
  fails with ``ETIMEDOUT``.

Callers may ignore the future: a failure is logged once and never reported
as "exception never retrieved".

Flow: commands queued during one loop iteration leave together in one
``sendmsg`` (the kernel handles the messages of a datagram in order) on the
next, or, submitted during a :meth:`~CommandChannel.hold` (the network feed
holds the channel while it applies a datagram's records), at its
:meth:`~CommandChannel.release`, in the same loop turn; up to
``max_in_flight`` requests awaiting their answer.  The kernel answers a
socket's requests in the order it received them, so replies are matched by
sequence number and futures resolve in submission order; a dump (the kernel
runs one per socket at a time) is sent alone and nothing follows it until
its end.  The kernel answers a request inside the ``sendmsg`` that carries
it: the answers to what the loop wrote are read right after, in the same
loop turn.  A request whose encoding or sending raises fails alone.

One answer per datagram: a command answered with a bare ACK asks for one
(``NLM_F_ACK``) only as the last message of its datagram.  The kernel
answers an error whatever the flags, and handles a datagram's messages in
order, so once the last one's ACK is read, every earlier request of it
with no error answer succeeded (and resolves then, in order).  A request
that lost its answer, or whose datagram's replies met a receive overrun,
fails with ``ENOBUFS`` as before: an overrun may have taken an error.

Slow commands: the kernel handles a request inside the ``sendmsg`` that
carries it, and it waits for an RCU grace period (several milliseconds of
wall time, almost no CPU) on deleting or flushing endpoints.  A datagram
holding such a command (:data:`SLOW_COMMANDS`; the requests queued before
it leave first, from the loop) is written by a worker
thread while the loop goes on reading events and answers; the channel
writes nothing else until the kernel is done with that datagram (the answer
to its last request is read, or the ``sendmsg`` returned), so order,
batching and the bounds are the same.  ``send_in_thread="all"`` sends every
datagram that way (a hand-off costs far more than a fast request),
``"never"`` none.

Bounds: at most ``max_queue`` commands wait to be sent (default
:data:`DEFAULT_MAX_QUEUE`); beyond, ``submit`` returns a future failed with
:class:`~mptcpd.errors.QueueFull`, and a warning counting the commands
dropped is logged at most once per second.  :meth:`forget` drops the queued
commands of a closed connection before they are sent.

Supervision: if the channel's own reader or writer ever raises, it logs why,
fails every pending command, closes, resolves :attr:`failed` with the reason
and calls ``on_failure(reason)``: the daemon then exits non-zero rather than
running on deaf.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import functools
import logging
import socket
import struct
import threading
from collections.abc import Callable, Collection
from queue import SimpleQueue
from typing import Any, Literal

from mptcpd.errors import ConnectionClosed, KernelError, NotReady, QueueFull
from mptcpd.netlink import pm_codec
from mptcpd.netlink.constants import MPTCP_PM_NAME
from mptcpd.netlink.nlsock import (
    NETLINK_CAP_ACK,
    NETLINK_EXT_ACK,
    NETLINK_GENERIC,
    SOL_NETLINK,
    lookup_family,
    netlink_socket,
    set_rcvbuf,
)
from mptcpd.netlink.pm_codec import (
    COMMANDS,
    NLM_F_ACK,
    NLMSG_DONE,
    NLMSG_ERROR,
    Command,
    decode_addr,
    decode_done,
    decode_error,
    decode_limits,
    messages,
)

log = logging.getLogger(__name__)

#: How long one request may wait for its answer before it fails (seconds).
DEFAULT_REQUEST_TIMEOUT = 10.0
#: Commands that may wait to be sent; more are refused (``max_queue``).
DEFAULT_MAX_QUEUE = 4096
#: Requests sent and not yet answered (``max_in_flight``): 64 gives about
#: twice the one-at-a-time throughput on kernel 6.18, and its answers fit
#: the receive buffer with room to spare.
DEFAULT_MAX_IN_FLIGHT = 64
#: Seconds between two "command queue full" warnings.
QUEUE_FULL_WARNING_INTERVAL = 1.0
#: The kernel's refusals of one text (``announce: invalid token: Invalid
#: argument``) logged one by one within :data:`ERROR_WINDOW` seconds; the
#: repeats past them are counted and told in one line when it ends (a flood
#: of connections closed unseen made thousands of the same line).
ERROR_REPEATS = 10
ERROR_WINDOW = 10.0
#: Texts one window counts at most: past them, it ends early.
MAX_ERROR_TEXTS = 256
#: Commands whose ``sendmsg`` blocks for milliseconds (kernel 6.18: DEL_ADDR
#: and a non-empty FLUSH_ADDRS, 8-30 ms each; every other command returns in
#: under 0.2 ms): sent from a worker thread, never from the loop.
SLOW_COMMANDS = frozenset({"kpm_remove_addr", "kpm_flush_addrs"})

SendInThread = Literal["slow", "all", "never"]

_MAX_BATCH_BYTES = 32768  # well below the socket's send buffer
_READS_PER_WAKEUP = 64  # datagrams read before the loop gets its turn back
_RECV_SIZE = 65536  # the kernel's dump datagrams are at most 32 KiB
_RCVBUF = 1 << 20  # room for the answers of max_in_flight requests
_FLAGS = struct.Struct("=H")  # nlmsghdr's flags, at offset 6


class _Request:
    __slots__ = ("command", "args", "token", "future", "seq", "deadline", "result", "dead",
                 "slow", "sending", "asks_answer")

    def __init__(self, command: Command, args: tuple[Any, ...], token: int | None,
                 future: asyncio.Future[Any], slow: bool) -> None:
        self.command = command
        self.slow = slow
        self.sending = False  # its datagram is being written by the worker thread
        self.args = args
        self.token = token
        self.future = future
        self.seq = 0
        self.deadline = 0.0
        self.result: Any = [] if command.kind == "dump" else None
        self.dead = False
        #: Its message asks for an answer: every command but one answered
        #: with a bare ACK that is not its datagram's last (see the module
        #: docstring).
        self.asks_answer = command.kind != "ack"


def _any_slow(reqs: list[_Request]) -> bool:
    """Whether one of ``reqs`` is slow (a loop: ``any`` over a generator
    costs a generator step per request)."""
    for req in reqs:
        if req.slow:
            return True
    return False


def _settle_exception(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
        future.exception()  # retrieved: logged already, or the caller's to read




def _asking_ack(data: bytes) -> bytes:
    """One request's message with ``NLM_F_ACK`` set in its header's flags."""
    flags = _FLAGS.unpack_from(data, 6)[0] | NLM_F_ACK
    return data[:6] + _FLAGS.pack(flags) + data[8:]


def _send_datagram(sock: socket.socket, datas: list[bytes]) -> None:
    if len(datas) == 1:
        sock.send(datas[0])
    else:
        sock.sendmsg(datas)


#: The name of the worker thread that writes slow commands.
SENDER_THREAD = "mptcp_pm-send"


class _Job:
    """One datagram for the worker thread; :attr:`done` once its
    ``sendmsg`` returned (``on_error`` called first if it raised)."""

    __slots__ = ("sock", "datas", "on_error", "done", "_then", "_lock")

    def __init__(self, sock: socket.socket, datas: list[bytes],
                 on_error: Callable[[BaseException], object]) -> None:
        self.sock, self.datas, self.on_error = sock, datas, on_error
        self.done = False
        self._then: list[Callable[[], object]] = []
        self._lock = threading.Lock()

    def run(self) -> None:
        """In the worker thread."""
        try:
            _send_datagram(self.sock, self.datas)
        except BaseException as exc:
            _call_safely(functools.partial(self.on_error, exc))
        with self._lock:
            self.done = True
            then, self._then = self._then, []
        for call in then:
            _call_safely(call)

    def when_done(self, call: Callable[[], object]) -> None:
        """Have ``call()`` run once the ``sendmsg`` returned: by the worker
        thread then, or here and now if it has already."""
        with self._lock:
            if not self.done:
                self._then.append(call)
                return
        call()


def _call_safely(call: Callable[[], object]) -> None:
    try:
        call()
    except Exception:
        log.exception("mptcp_pm worker thread: %r failed", call)


class _Sender:
    """The worker thread: writes the jobs handed to it, one at a time, in
    order.  A queue and a plain thread: a ``ThreadPoolExecutor`` (a future,
    a work item and two semaphores per datagram) cost about twice the CPU
    per hand-off."""

    def __init__(self) -> None:
        self._jobs: SimpleQueue[_Job | None] = SimpleQueue()
        self.thread = threading.Thread(target=self._run, name=SENDER_THREAD, daemon=True)
        self.thread.start()

    def submit(self, job: _Job) -> None:
        self._jobs.put(job)

    def shutdown(self) -> None:
        """The thread ends after the job it is writing, if any."""
        self._jobs.put(None)

    def _run(self) -> None:
        jobs = self._jobs
        while True:
            job = jobs.get()
            if job is None:
                return
            job.run()


def open_socket(netns: str | None = None) -> socket.socket:
    """A bound, non-blocking generic netlink socket with extended and capped
    ACKs, in ``netns`` if given (see :mod:`mptcpd.netlink.nlsock`)."""
    sock = netlink_socket(NETLINK_GENERIC, netns)
    try:
        sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
        sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        set_rcvbuf(sock, _RCVBUF)
        sock.bind((0, 0))
    except BaseException:
        sock.close()
        raise
    return sock


class _Errors:
    """The channel's error lines: each text at most :data:`ERROR_REPEATS`
    times in a window of :data:`ERROR_WINDOW` seconds, then counted; the
    count is told when the window ends (:meth:`flush`), and the next
    refusal starts a new window."""

    def __init__(self) -> None:
        #: text -> [logged one by one, held back], in the window under way
        self._window: dict[str, list[int]] = {}
        self._timer: asyncio.TimerHandle | None = None

    def log(self, text: str, loop: asyncio.AbstractEventLoop | None) -> None:
        counts = self._window.get(text)
        if counts is None:
            if len(self._window) >= MAX_ERROR_TEXTS:  # bounded, whatever the texts
                self.flush()
            if not self._window and loop is not None:  # a window starts
                self._timer = loop.call_later(ERROR_WINDOW, self.flush)
            counts = self._window[text] = [0, 0]
        if counts[0] < ERROR_REPEATS:
            counts[0] += 1
            log.error("%s", text)
        else:
            counts[1] += 1

    def flush(self) -> None:
        """End the window: one line per text with repeats held back."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        window, self._window = self._window, {}
        for text, (_logged, held) in window.items():
            if held:
                log.error("%s (%d more time(s) within %g s)", text, held, ERROR_WINDOW)


class CommandChannel:
    """Asynchronous ``mptcp_pm`` command socket; see the module docstring.

    :param netns: network namespace whose kernel receives the commands; None
        for the caller's (the daemon runs inside its namespace).
    :param max_in_flight: requests sent and not yet answered (1 = mptcpd's
        one-at-a-time behaviour).
    :param batch: send the requests queued in one loop iteration in one
        ``sendmsg`` (False: one ``send`` per request).
    :param max_queue: commands that may wait to be sent.
    :param request_timeout: seconds a request may wait for its answer (None:
        forever).
    :param send_in_thread: which datagrams a worker thread writes:
        ``"slow"`` those holding one of :data:`SLOW_COMMANDS`, ``"all"``,
        or ``"never"`` (the loop writes them all).
    :param family: generic netlink family name (tests only).
    :param on_failure: called with the reason if the channel dies.

    :attr:`closed_tokens`, when set, returns the connections the kernel has
    already reported closed (the event reader's view, refreshed when
    called); the writer asks it before each datagram and drops the commands
    of those connections instead of sending them.

    Use ``async with CommandChannel(...) as ch:`` or :meth:`open` /
    :meth:`close`, from one loop.
    """

    def __init__(
        self,
        netns: str | None = None,
        *,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        batch: bool = True,
        max_queue: int = DEFAULT_MAX_QUEUE,
        request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
        send_in_thread: SendInThread = "slow",
        family: str = MPTCP_PM_NAME,
        on_failure: Callable[[str], object] | None = None,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        if send_in_thread not in ("slow", "all", "never"):
            raise ValueError(f"send_in_thread: unknown mode {send_in_thread!r}")
        self.netns = netns
        self.max_in_flight = max_in_flight
        self.batch = batch
        self.max_queue = max_queue
        self.request_timeout = request_timeout
        self.send_in_thread = send_in_thread
        self._slow_names = (SLOW_COMMANDS if send_in_thread == "slow" else frozenset())
        self.family = family
        self.on_failure = on_failure
        #: See the class docstring; None: no check.
        self.closed_tokens: Callable[[], Collection[int]] | None = None
        #: Commands refused because the queue was full, since creation.
        self.dropped = 0
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._family_id = 0
        self._seq = 0
        self._queue: collections.deque[_Request] = collections.deque()
        self._dead = 0  # forgotten requests still in _queue
        self._by_token: dict[int, list[_Request]] = {}
        self._inflight: collections.deque[_Request] = collections.deque()
        self._dump_seq: int | None = None
        self._flush_handle: asyncio.Handle | None = None
        self._held = 0  #: :meth:`hold` calls not yet released
        self._timer: asyncio.TimerHandle | None = None
        self._warn_handle: asyncio.TimerHandle | None = None
        self._errors = _Errors()
        self._unreported = 0
        self._next_warning = 0.0
        self._buf = bytearray(_RECV_SIZE)
        self._view = memoryview(self._buf)
        self._failed: asyncio.Future[str] | None = None
        self._overrun = False
        self._outgoing: list[_Request] = []
        self._sender: _Sender | None = None
        self._sending: list[_Request] | None = None  # handed to the worker thread
        self._send_done: _Job | None = None  # their datagram
        self._wake_asked = False
        #: The loop wrote a datagram whose answers are not read yet.
        self._answers_due = False
        self._resend: collections.deque[tuple[_Request, bytes]] = collections.deque()

    # -- lifecycle ---------------------------------------------------------

    async def open(self) -> None:
        """Open the socket and resolve the family.

        Raises :class:`~mptcpd.errors.NotReady` when the family is not
        registered, :class:`OSError` when the socket cannot be opened.
        """
        if self._sock is not None:
            return
        loop = asyncio.get_running_loop()
        sock = open_socket(self.netns)
        try:
            family_id, _ = await lookup_family(sock, self.family, self._next_seq())
        except BaseException:
            sock.close()
            raise
        self._attach(loop, sock, family_id)

    def _attach(self, loop: asyncio.AbstractEventLoop, sock: Any, family_id: int) -> None:
        """Start serving requests on an open socket (tests give their own)."""
        self._sock, self._loop, self._family_id = sock, loop, family_id
        self._failed = loop.create_future()
        loop.add_reader(sock.fileno(), self._on_readable)

    async def drain(self, timeout: float) -> bool:
        """Wait, at most ``timeout`` seconds, until every command submitted so
        far is answered or has failed; False when some are still pending (the
        daemon drains the commands of ``plugin_exit`` before it closes)."""
        pending = [r.future for r in (*self._queue, *self._inflight)
                   if not r.dead and not r.future.done()]
        if not pending or self._sock is None:
            return not pending
        _, left = await asyncio.wait(pending, timeout=timeout)
        return not left

    async def close(self) -> None:
        """Fail queued and unanswered requests with NotReady, close the socket."""
        self._shutdown(NotReady("command channel closed"))
        if self._failed is not None and not self._failed.done():
            self._failed.cancel()

    async def __aenter__(self) -> CommandChannel:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def is_open(self) -> bool:
        return self._sock is not None

    @property
    def family_id(self) -> int | None:
        """The generic netlink id of ``mptcp_pm`` (None when closed)."""
        return self._family_id if self._sock is not None else None

    @property
    def failed(self) -> asyncio.Future[str] | None:
        """Resolves with the reason if the channel died; cancelled by
        :meth:`close`; None before the first :meth:`open`."""
        return self._failed

    @property
    def queued(self) -> int:
        """Commands waiting to be sent."""
        return len(self._queue) - self._dead

    @property
    def in_flight(self) -> int:
        """Requests sent and not yet answered."""
        return len(self._inflight)

    def fileno(self) -> int:
        """The socket's file descriptor (-1 when closed)."""
        return self._sock.fileno() if self._sock is not None else -1

    def _next_seq(self) -> int:
        self._seq = self._seq % 0xFFFFFFFF + 1
        return self._seq

    # -- the queue ---------------------------------------------------------

    def submit(self, name: str, args: tuple[Any, ...] = (),
               token: int | None = None) -> asyncio.Future[Any]:
        """Queue the command ``name`` (a key of ``pm_codec.COMMANDS``) with
        the arguments of that path-manager call; see the module docstring.

        ``token`` marks a command of that connection for :meth:`forget`.
        Raises :class:`~mptcpd.errors.NotReady` when the channel is not open.
        """
        command = COMMANDS[name]
        loop = self._loop
        if self._sock is None or loop is None:
            raise NotReady(f"{command.op}: MPTCP family is not yet available")
        future: asyncio.Future[Any] = loop.create_future()
        if len(self._queue) - self._dead >= self.max_queue:
            self._refuse(future, command.op)
            return future
        req = _Request(command, args, token, future, name in self._slow_names)
        self._queue.append(req)
        if token is not None:
            same = self._by_token.get(token)
            if same is None:
                self._by_token[token] = [req]
            else:
                same.append(req)
        if self._flush_handle is None and not self._held:
            self._flush_handle = loop.call_soon(self._flush)
        return future

    def hold(self) -> None:
        """Keep what is submitted from now on until :meth:`release`, which
        sends it at once: a caller that knows when a batch of commands ends
        (the network feed, once a datagram's records are applied) has them
        leave in that loop turn, together, instead of the next one.  Holds
        nest."""
        self._held += 1

    def release(self) -> None:
        """End a :meth:`hold`; the last one writes what waits (and reads the
        answers, as every write from the loop does)."""
        self._held -= 1
        if self._held or not (self._queue or self._resend) or self._sock is None:
            return
        handle, self._flush_handle = self._flush_handle, None
        if handle is not None:
            handle.cancel()  # submitted before the hold: leaves now too
        self._flush()

    def forget(self, token: int) -> int:
        """Drop every queued, not yet sent command of connection ``token``.

        Their futures fail with :class:`~mptcpd.errors.ConnectionClosed`;
        requests already sent are left to the kernel.  Returns how many were
        dropped.
        """
        reqs = self._by_token.pop(token, None)
        if not reqs:
            return 0
        dropped = 0
        for req in reqs:
            req.dead = True
            self._dead += 1
            if not req.future.done():
                dropped += 1
                _settle_exception(req.future, ConnectionClosed(
                    f"{req.command.op}: connection {token:#010x} closed; command not sent"))
        if dropped:
            log.debug("connection %#010x closed: %d queued command(s) dropped",
                      token, dropped)
        return dropped

    def _refuse(self, future: asyncio.Future[Any], op: str) -> None:
        _settle_exception(future, QueueFull(
            f"{op}: command queue full ({self.max_queue} waiting); command dropped"))
        self.dropped += 1
        self._unreported += 1
        assert self._loop is not None
        if self._loop.time() >= self._next_warning:
            self._warn_dropped()
        elif self._warn_handle is None:
            self._warn_handle = self._loop.call_at(self._next_warning, self._warn_dropped)

    def _warn_dropped(self) -> None:
        self._warn_handle = None
        if not self._unreported or self._loop is None:
            return
        log.warning("Command queue full (%d commands waiting): %d command(s) dropped "
                    "since the last warning.", self.max_queue, self._unreported)
        self._unreported = 0
        self._next_warning = self._loop.time() + QUEUE_FULL_WARNING_INTERVAL

    # -- writing -----------------------------------------------------------

    def _flush(self) -> None:
        self._flush_handle = None
        try:
            self._write()
        except Exception as exc:
            self._die(f"the writer raised {exc!r}", exc)

    def _unqueue(self, req: _Request) -> None:
        if req.dead:
            self._dead -= 1
            return
        token = req.token
        if token is None:
            return
        same = self._by_token.get(token)
        if same is None:
            return
        if same[0] is req:
            del same[0]
        else:
            same.remove(req)
        if not same:
            del self._by_token[token]

    def _write(self) -> None:
        """Write what the queue and the bounds allow.  The kernel answers a
        request inside the ``sendmsg`` that carries it, so the answers to
        what the loop wrote are read at once, without waiting for the
        loop's next turn to report the socket readable (one wake-up, one
        loop turn less per datagram); what they free is written too."""
        self._write_queue()
        while self._answers_due:
            self._answers_due = False
            self._read(inline=True)
            if self._queue or self._resend:
                self._write_queue()

    def _write_queue(self) -> None:
        sock = self._sock
        if sock is None or self._dump_seq is not None or self._sending is not None:
            return
        queue, inflight = self._queue, self._inflight
        if self._resend and not self._write_resend(sock):
            return
        room = self.max_in_flight - len(inflight)
        family, batch = self._family_id, self.batch
        out = self._outgoing  # taken from the queue, not yet sent
        datas: list[bytes] = []
        size = 0
        # Asked once per write, at its first command of a connection
        # (asking reads the event socket: endpoint commands need not).
        closed_tokens, closed = self.closed_tokens, None
        while queue and room > 0:
            req = queue[0]
            token = req.token
            if token is not None and not req.future.done():
                if closed is None:
                    closed = closed_tokens() if closed_tokens is not None else ()
                if token in closed:
                    self.forget(token)  # its CLOSED is read but not yet handled
            if req.future.done():  # forgotten, or cancelled by its caller
                queue.popleft()
                self._unqueue(req)
                continue
            command = req.command
            dump = command.kind == "dump"
            if dump and (inflight or out):
                break
            if req.slow and out and not _any_slow(out):
                # What comes before it leaves from the loop first, its
                # answers read at once; the worker thread takes the rest.
                self._send(sock, out, datas)
                out.clear()
                datas, size = [], 0
            queue.popleft()
            out.append(req)
            self._unqueue(req)
            seq = self._next_seq()
            flags = command.flags if req.asks_answer else command.flags & ~NLM_F_ACK
            try:
                data = command.encode(family, seq, flags, *req.args)
            except Exception as exc:
                out.pop()
                log.error("%s: cannot encode the request: %r", command.op, exc)
                _settle_exception(req.future, exc)
                continue
            req.seq = seq
            datas.append(data)
            room -= 1
            size += len(data)
            if dump:
                break
            if not batch or size >= _MAX_BATCH_BYTES:
                self._send(sock, out, datas)
                out.clear()
                if self._sending is not None:
                    return
                datas, size = [], 0
        if out:
            self._send(sock, out, datas)
            out.clear()

    def _write_resend(self, sock: socket.socket) -> bool:
        """Send, one per datagram, the requests of a datagram the kernel
        refused; False while that leaves the channel busy or full."""
        resend, inflight = self._resend, self._inflight
        while resend:
            req, data = resend[0]
            if req.future.done():
                resend.popleft()
                continue
            if len(inflight) >= self.max_in_flight:
                return False
            resend.popleft()
            self._send(sock, [req], [data])
            if self._sending is not None:
                return False
        return True

    def _send(self, sock: socket.socket, reqs: list[_Request], datas: list[bytes]) -> None:
        last = reqs[-1]
        if not last.asks_answer:  # the datagram's last message asks for the answer
            datas[-1] = _asking_ack(datas[-1])
            last.asks_answer = True
        mode = self.send_in_thread
        if mode == "all" or (mode == "slow" and _any_slow(reqs)):
            self._send_in_thread(sock, reqs, datas)
            return
        try:
            _send_datagram(sock, datas)
        except OSError as exc:
            if len(reqs) > 1:  # nothing of the datagram was processed: one by one
                for req, data in zip(reqs, datas):
                    self._send(sock, [req], [data])
                return
            req = reqs[0]
            error = KernelError(req.command.op, exc.errno or errno.EIO)
            self._errors.log(str(error), self._loop)
            _settle_exception(req.future, error)
            return
        self._sent(reqs)
        self._answers_due = True

    def _sent(self, reqs: list[_Request]) -> None:
        """``reqs`` now wait for their answers."""
        assert self._loop is not None
        timeout = self.request_timeout
        deadline = self._loop.time() + timeout if timeout is not None else 0.0
        for req in reqs:
            req.deadline = deadline
        self._inflight.extend(reqs)
        if reqs[-1].command.kind == "dump":
            self._dump_seq = reqs[-1].seq
        if timeout is not None and self._timer is None:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _send_in_thread(self, sock: socket.socket, reqs: list[_Request],
                        datas: list[bytes]) -> None:
        """Have the worker thread write the datagram; nothing else is
        written until the kernel is done with it.  The requests wait for
        their answers at once: the kernel answers each inside that
        ``sendmsg``, in order, so the answer to the last one (read by the
        loop, perhaps before the thread returned) frees the channel without
        waking the loop twice.  The thread wakes the loop itself only if the
        ``sendmsg`` failed; :meth:`_await_send` asks it to when no answer
        will tell."""
        loop = self._loop
        assert loop is not None
        reqs, datas = list(reqs), list(datas)  # the writer reuses its lists
        sender = self._sender
        if sender is None:
            sender = self._sender = _Sender()
        for req in reqs:
            req.sending = True
        self._sent(reqs)
        self._sending = reqs
        self._wake_asked = False
        # The socket stays watched: each answer is read as the kernel makes
        # it (an epoll_ctl pair per datagram to read them in one go costs
        # more than the extra wake-ups).
        job = self._send_done = _Job(
            sock, datas, functools.partial(self._thread_failed, loop, reqs, datas))
        sender.submit(job)

    def _thread_failed(self, loop: asyncio.AbstractEventLoop, reqs: list[_Request],
                       datas: list[bytes], exc: BaseException) -> None:
        """In the worker thread, when its ``sendmsg`` raised: wakes the loop."""
        try:
            loop.call_soon_threadsafe(self._on_sent, reqs, datas, exc)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass

    def _await_send(self) -> None:
        """Have the loop run :meth:`_on_sent` once the thread's ``sendmsg``
        returned: the datagram's last request ended without its answer
        (timed out, or lost to an overrun)."""
        reqs, done, loop = self._sending, self._send_done, self._loop
        if reqs is None or done is None or loop is None or self._wake_asked:
            return
        self._wake_asked = True

        def wake() -> None:
            try:
                loop.call_soon_threadsafe(self._on_sent, reqs, [], None)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass

        done.when_done(wake)

    def _release(self) -> None:
        """The kernel is done with the thread's datagram: writing resumes."""
        reqs = self._sending
        if reqs is not None:
            for req in reqs:
                req.sending = False
            self._sending = None

    def _on_sent(self, reqs: list[_Request], datas: list[bytes],
                 exc: BaseException | None) -> None:
        """On the loop, after the thread's ``sendmsg`` returned (``exc``:
        what it raised)."""
        if self._sending is not reqs:  # freed by its answers, or closed
            return
        self._release()
        try:
            if exc is not None:
                if not isinstance(exc, OSError):
                    raise exc
                self._unsent(reqs, datas, exc)
            self._read(inline=True)  # the answers, all there now
            self._write()
        except Exception as error:
            self._die(f"the writer raised {error!r}", error)

    def _unsent(self, reqs: list[_Request], datas: list[bytes], exc: OSError) -> None:
        """The kernel refused the datagram the thread wrote: none of it was
        processed, so its requests leave the in-flight list; alone, it
        fails, else they are sent again one per datagram."""
        gone = {id(req) for req in reqs}
        self._inflight = collections.deque(r for r in self._inflight if id(r) not in gone)
        if self._dump_seq is not None and any(r.seq == self._dump_seq for r in reqs):
            self._dump_seq = None
        if len(reqs) > 1:
            self._resend.extend(zip(reqs, datas))
            return
        req = reqs[0]
        error = KernelError(req.command.op, exc.errno or errno.EIO)
        if not req.future.done():
            self._errors.log(str(error), self._loop)
        _settle_exception(req.future, error)

    def _on_timer(self) -> None:
        self._timer = None
        try:
            assert self._loop is not None
            now = self._loop.time()
            inflight = self._inflight
            while inflight and inflight[0].deadline <= now:
                self._fail_head(errno.ETIMEDOUT)
            if inflight:
                self._timer = self._loop.call_at(inflight[0].deadline, self._on_timer)
            if self._queue or self._resend:
                self._write()
        except Exception as exc:
            self._die(f"the request timer raised {exc!r}", exc)

    # -- reading -----------------------------------------------------------

    def _on_readable(self) -> None:
        try:
            self._read()
            if self._queue or self._resend:
                self._write()
        except Exception as exc:
            self._die(f"the reader raised {exc!r}", exc)

    def _read(self, inline: bool = False) -> None:
        """Read and handle answers until the socket is empty or nothing
        waits for one (no failed ``recv`` to learn it is empty then: stray
        messages wake the reader again); ``inline``: right after the loop's
        own write, which has nothing to read once its answers are in."""
        view, size = self._view, len(self._buf)
        for i in range(_READS_PER_WAKEUP):
            sock = self._sock
            if sock is None:
                return
            if (i or inline) and not self._inflight:
                self._overrun = False  # every request is answered or failed
                return
            try:
                n = sock.recv_into(self._buf, size, socket.MSG_TRUNC)
            except InterruptedError:
                continue
            except BlockingIOError:
                if self._overrun:
                    self._lost_answers()
                return
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    log.warning("mptcp_pm command socket overrun: replies were lost")
                    self._overrun = True
                    continue
                raise
            if n > size:
                log.warning("mptcp_pm reply of %d bytes truncated to %d: ignored", n, size)
                continue
            self._handle(view[:n])

    def _lost_answers(self) -> None:
        """After an overrun, once every queued answer is read: the kernel
        answers a request inside the ``send`` that carried it, so a request
        still unanswered now (but a dump, answered as it is read) lost its
        answer."""
        inflight = self._inflight
        while inflight and inflight[0].command.kind != "dump":
            if inflight[0].sending and not self._send_returned():
                # the kernel may not have answered it yet: look again
                self._await_send()  # once the thread's sendmsg returned
                return
            self._fail_head(errno.ENOBUFS)
        self._overrun = False

    def _send_returned(self) -> bool:
        done = self._send_done
        return done is None or done.done

    def _match(self, seq: int) -> _Request | None:
        inflight = self._inflight
        if inflight and inflight[0].seq == seq:
            return inflight[0]
        for req in inflight:
            if req.seq == seq:
                return req
        return None

    def _handle(self, data: Any) -> None:
        family = self._family_id
        for msg in messages(data):
            req = self._match(msg.seq)
            if req is None:
                log.debug("mptcp_pm: message of type %d for no pending request (seq %d)",
                          msg.type, msg.seq)
                continue
            kind = msg.type
            if kind == NLMSG_ERROR:
                self._finish(req, *decode_error(data, msg))
            elif kind == NLMSG_DONE:
                self._finish(req, *decode_done(data, msg))
            elif kind == family:
                command = req.command
                if command.kind == "dump":
                    info = decode_addr(data, msg, command.op)
                    if info is not None:
                        req.result.append(info)
                elif command.kind == "addr":
                    req.result = decode_addr(data, msg, command.op)
                elif command.kind == "limits":
                    req.result = decode_limits(data, msg)
                else:
                    log.debug("%s: unexpected reply of type %d", command.op, kind)
            else:
                log.debug("mptcp_pm: message of type %d ignored (seq %d)", kind, msg.seq)

    def _fail_head(self, code: int) -> None:
        req = self._inflight.popleft()
        if req.seq == self._dump_seq:
            self._dump_seq = None
        if req.sending and req is self._sending[-1]:  # type: ignore[index]
            if self._send_returned():
                self._release()
            else:
                self._await_send()
        error = KernelError(req.command.op, code)
        if not req.future.done():
            self._errors.log(str(error), self._loop)
            _settle_exception(req.future, error)

    def _finish(self, req: _Request, code: int, extack: str | None) -> None:
        inflight = self._inflight
        # Answers come in request order.  An older request that asked for
        # one lost it; one that did not succeeded, unless an overrun may
        # have taken its error.
        while inflight[0] is not req:
            head = inflight[0]
            if head.asks_answer or self._overrun:
                self._fail_head(errno.ENOBUFS)
            else:
                inflight.popleft()
                if not head.future.done():
                    head.future.set_result(None)
        inflight.popleft()
        if req.seq == self._dump_seq:
            self._dump_seq = None
        if req.sending and req is self._sending[-1]:  # type: ignore[index]
            self._release()  # the kernel has processed the whole datagram
        future = req.future
        if future.done():
            return
        if code:
            error = KernelError(req.command.op, code, extack)
            self._errors.log(str(error), self._loop)
            _settle_exception(future, error)
            return
        kind = req.command.kind
        if kind == "limits" and req.result is None:
            req.result = pm_codec.Limits()
        future.set_result(req.result)

    # -- ending --------------------------------------------------------------

    def _die(self, reason: str, exc: BaseException | None = None) -> None:
        if self._sock is None:
            return
        log.error("mptcp_pm command channel failed: %s", reason, exc_info=exc)
        self._shutdown(NotReady(f"command channel failed: {reason}"))
        if self._failed is not None and not self._failed.done():
            self._failed.set_result(reason)
        if self.on_failure is not None:
            try:
                self.on_failure(reason)
            except Exception:
                log.exception("command channel failure callback")

    def _shutdown(self, exc: Exception) -> None:
        sock, loop = self._sock, self._loop
        if sock is None:
            return
        self._sock = None
        if loop is not None:
            loop.remove_reader(sock.fileno())
        for handle in (self._flush_handle, self._timer, self._warn_handle):
            if handle is not None:
                handle.cancel()
        self._flush_handle = self._timer = self._warn_handle = None
        self._warn_dropped_now()
        self._errors.flush()
        pending = (list(self._inflight) + self._outgoing + [r for r, _ in self._resend]
                   + list(self._queue))
        self._inflight.clear()
        self._outgoing.clear()
        self._resend.clear()
        self._queue.clear()
        self._by_token.clear()
        self._dead = 0
        self._dump_seq = None
        self._overrun = False
        for req in pending:
            _settle_exception(req.future, exc)
        done, sender = self._send_done, self._sender
        self._release()
        self._send_done = self._sender = None
        if sender is not None:
            sender.shutdown()  # its thread ends after the current send
        if done is not None:
            # If the thread is inside sendmsg on this socket, it is closed
            # when that returns (by the thread), so its descriptor is never
            # reused under a running send.  Nothing here waits for it.
            done.when_done(sock.close)
        else:
            sock.close()

    def _warn_dropped_now(self) -> None:
        if self._unreported:
            log.warning("Command queue full (%d commands waiting): %d command(s) dropped "
                        "since the last warning.", self.max_queue, self._unreported)
            self._unreported = 0
