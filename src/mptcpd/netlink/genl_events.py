"""The reader of the kernel's ``mptcp_pm`` events.

:class:`EventReader` owns a plain generic-netlink socket (stdlib
:mod:`socket`, read through the loop's reader callback): at open it looks
up the ``mptcp_pm`` family and its ``mptcp_pm_events`` group with one
nlctrl request and joins the group; then each wake-up drains the datagrams
the socket holds into a backlog of the bytes received, which are decoded
with :mod:`mptcpd.netlink.event_codec` when handed out: to the follower
from the reader callback itself (:meth:`follow`, the daemon's way), or
through :meth:`take` and :meth:`batches`.  The receive buffer is sized for
bursts (a kernel event is 28-124 bytes but costs several hundred bytes of
socket memory).  Once a burst is worked through, the memory it took goes
back to the system.

The resync after an overrun asks what waits in the backlog:
:meth:`fill` reads everything the socket holds, :meth:`queued_tokens`
names the connections the waiting events are about, and
:meth:`close_after` hands out the ``ConnectionClosed`` of one whose
``CLOSED`` was lost, after its waiting events.

A receive overrun (``ENOBUFS``) is logged, counted and reported through
``on_overrun``; the subscription is kept (the kernel goes on delivering
after reporting the overrun), so events flow again at once and the owner
resynchronises its state.  The kernel reports one ``ENOBUFS`` per
congestion: what it drops until the receive queue is empty again comes
without one.  So when the queue is drained after an overrun, the socket's
drop counter (``SO_MEMINFO``) is read again, and datagrams dropped
meanwhile are reported as one more overrun (they may postdate a resync
begun at the first).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import mmap
import os
import socket
import struct
from array import array
from collections import deque
from collections.abc import AsyncIterator, Callable, Collection, Iterator
from typing import Self

from mptcpd.events import ConnectionClosed, Event, SubflowEstablished
from mptcpd.netlink import constants as C
from mptcpd.netlink.event_codec import (
    OVERRUN,
    closed_tokens,
    decode_datagram,
    decode_message,
    event_tokens,
)
from mptcpd.netlink.nlsock import (
    NETLINK_ADD_MEMBERSHIP,
    NETLINK_GENERIC,
    SOL_NETLINK,
    lookup_family,
    netlink_socket,
    set_rcvbuf,
)
from mptcpd.types import Token

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_RCVBUF", "EventReader"]

#: Receive buffer asked for the event socket (bytes; the kernel doubles
#: it, and an event takes several hundred bytes of it).  It only bridges
#: the moments the daemon is not scheduled: each wake-up moves what the
#: socket holds into the backlog.  With 4 MiB the reader of 2026-12-01
#: (which decoded on receipt) overran a few times under a connection flood
#: of ~45 000 events/s on a 2-core machine; the reader of 2026-12-07 kept up with
#: 55 000–75 000 events/s without an overrun with 8 MiB, as with 16 MiB
#: (the default until 2026-12-07).  What the socket holds is also what a
#: resync brings into the process at once (:meth:`EventReader.fill`), and
#: it is kernel memory while it waits: 16 MiB gave the churn benchmark a
#: ~1.6 MiB higher peak RSS (medians of three), and lost as many events
#: within the noise.
DEFAULT_RCVBUF = 8 << 20
#: Datagrams the backlog holds before reading pauses (about 80 bytes each).
#: A resync reads the socket dry on top of them (:meth:`EventReader.fill`,
#: several hundred bytes of socket memory per event), so a flood may bring
#: ~70 000 datagrams into the process at once: about 6 MiB.  (With 65 536
#: the peak RSS of the churn benchmark was 3–8 MiB higher, and as many
#: events were lost, within the runs' noise: under a flood the daemon
#: cannot keep up with, a longer backlog only delays.)
MAX_PENDING = 32768
#: A backlog that reached this many datagrams is a burst: once it is worked
#: through, the reader gives the memory it freed back to the system
#: (:func:`release_memory`).
TRIM_AFTER = 8192
#: ``getsockopt(SOL_SOCKET, SO_MEMINFO)``: the socket's memory counters, of
#: which ``SK_MEMINFO_DROPS`` counts the datagrams dropped for want of room.
SO_MEMINFO = 55
SK_MEMINFO_DROPS = 8
#: Events handed out in a row before the loop is given a turn (see
#: :meth:`EventReader.follow` and :meth:`EventReader.batches`).
YIELD_EVERY = 32
#: Size of one chunk of the backlog of received datagrams (an anonymous
#: mapping, returned to the system once read), and the room a datagram is
#: received into (a multicast event is a few hundred bytes at most).
CHUNK_SIZE = 1 << 20
DATAGRAM_ROOM = 65536
#: Set in a backlog entry (a datagram's end offset) when the datagram holds a
#: ``CLOSED`` event.
_HAS_CLOSED = 1 << 31
_u32 = struct.Struct("=I").unpack_from
_len_type = struct.Struct("=IH").unpack_from


_malloc_trim: Callable[[int], int] | None = None
_resolved = False


def release_memory() -> None:
    """Give the free memory of the C heap back to the system: glibc's
    ``malloc_trim(0)`` (which also releases free pages inside the heap;
    about 0.5 ms after a flood of 10^5 events).  Nothing where the C
    library has no such function."""
    global _malloc_trim, _resolved
    if not _resolved:
        _resolved = True
        try:
            import ctypes

            trim = ctypes.CDLL(None).malloc_trim
            trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
            _malloc_trim = trim
        except (OSError, AttributeError):
            _malloc_trim = None
    if _malloc_trim is not None:
        _malloc_trim(0)


class _Chunk:
    """Received datagrams, back to back, as the kernel wrote them: ``ends[i]``
    is where datagram ``i`` ends (it starts where ``i - 1`` ends), with
    :data:`_HAS_CLOSED` set when it holds a ``CLOSED``; ``read`` datagrams
    are decoded already."""

    __slots__ = ("mem", "view", "ends", "read", "start", "wpos")

    def __init__(self) -> None:
        self.mem = mmap.mmap(-1, CHUNK_SIZE)
        self.view = memoryview(self.mem)
        self.ends = array("I")
        self.read = 0
        self.start = 0  #: where the next datagram to decode starts
        self.wpos = 0  #: where the next datagram received goes

    def reset(self) -> None:
        """Empty (every datagram decoded): written from the start again.  The
        pages a burst filled beyond the first :data:`DATAGRAM_ROOM` bytes go
        back to the system (they read as zeros if ever touched again)."""
        if self.wpos > DATAGRAM_ROOM:
            self.mem.madvise(mmap.MADV_DONTNEED, DATAGRAM_ROOM, CHUNK_SIZE - DATAGRAM_ROOM)
        del self.ends[:]
        self.read = self.start = self.wpos = 0

    def release(self) -> None:
        self.view.release()
        self.mem.close()


class EventReader:
    """Read ``mptcp_pm`` events from the kernel, in kernel order.

    Usage::

        async with EventReader(netns="ns1", on_overrun=resync) as reader:
            async for event in reader:
                ...

    :param netns: network namespace to open the socket in (a name under
        ``/run/netns`` or a path); ``None`` for the current one.  The
        calling process does not change namespace.
    :param rcvbuf: receive buffer to ask for (``SO_RCVBUFFORCE`` when
        permitted, else ``SO_RCVBUF``, which the kernel caps at
        ``net.core.rmem_max``).
    :param on_overrun: called with the overrun count after a receive
        overrun (``ENOBUFS``): events were lost and the owner should
        resynchronise.  Exceptions it raises are logged.
    :param max_pending: received datagrams (one event each, as the kernel
        sends them) held before reading pauses; a consumer that stops
        iterating then lets the kernel buffer fill, which ends in a reported
        overrun rather than unbounded memory.  They are held as the bytes
        received (about 80 per event, in 1 MiB anonymous mappings given
        back once read) and decoded when handed out.
    :param on_datagram: called with a copy of every datagram received,
        before decoding (capture and debugging).
    """

    def __init__(
        self,
        netns: str | None = None,
        rcvbuf: int = DEFAULT_RCVBUF,
        on_overrun: Callable[[int], None] | None = None,
        max_pending: int = MAX_PENDING,
        on_datagram: Callable[[bytes], None] | None = None,
    ) -> None:
        self.netns = netns
        self.rcvbuf = rcvbuf
        self.on_overrun = on_overrun
        self.max_pending = max_pending
        #: Reading resumes once the backlog is this much shorter than
        #: ``max_pending``: soon, so that the kernel's buffer is emptied while
        #: the backlog is worked through (its room is lost time otherwise).
        self._resume_at = max_pending - max(1, max_pending // 16)
        self.on_datagram = on_datagram
        #: How many receive overruns were seen.
        self.overruns = 0
        #: Set when an overrun happened; the owner clears it after resyncing.
        self.overrun_pending = False
        self.family_id: int | None = None
        #: Received datagrams not decoded yet, oldest chunk first; decoding
        #: waits until their events are asked for, so a backlog costs the
        #: datagrams' bytes (about 80 each), not their events' objects.
        self._chunks: deque[_Chunk] = deque()
        #: How many datagrams the backlog holds, and how many were ever
        #: received (datagram ``i`` is the ``i``-th received, from 0).
        self.backlog = 0
        self.received = 0
        #: Connections whose CLOSED was lost: index of a datagram -> the
        #: tokens to hand out a ConnectionClosed for right after it.
        self._close_after: dict[int, list[int]] = {}
        self._waiter: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._raw: socket.socket | None = None
        self.groups: dict[str, int] = {}
        #: Tokens whose CLOSED has been received but not yet handed out: the
        #: kernel has closed those connections already.
        self.closing: set[int] = set()
        self._fd = -1
        self._reading = False
        self._closed = False
        #: The longest the backlog was since it was last worked through
        #: after a burst.
        self._peak = 0
        #: Called once a burst is worked through (:data:`TRIM_AFTER`).
        self.release_memory: Callable[[], None] = release_memory
        #: The socket's drop count when it last reported an overrun, until
        #: its receive queue is empty again (None: not congested).
        self._drops: int | None = None
        #: :meth:`follow`'s ``(on_batch, on_end)`` while it is followed.
        self._follower: tuple[Callable[[list[Event]], None],
                              Callable[[BaseException | None], None]] | None = None
        #: The next list's delivery, when one is scheduled.
        self._delivery: asyncio.Handle | None = None
        self._receiving = False  #: the reader callback receives (delivers after)
        self._delivering = False  #: a list is being handed to ``on_batch``

    # -- lifecycle ------------------------------------------------------

    async def open(self) -> None:
        """Create the socket, look up ``mptcp_pm`` and join its event group.

        Raises :class:`~mptcpd.errors.NotReady` when the family is missing,
        :class:`OSError` when the socket cannot be set up.
        """
        self._loop = asyncio.get_running_loop()
        self._closed = False
        sock = netlink_socket(NETLINK_GENERIC, self.netns)
        try:
            set_rcvbuf(sock, self.rcvbuf)
            sock.bind((0, 0))
            family_id, groups = await lookup_family(sock)
            group = groups.get(C.MPTCP_PM_EV_GRP_NAME)
            if group is None:
                raise OSError(errno.ENOENT,
                              f"no {C.MPTCP_PM_EV_GRP_NAME} group in {C.MPTCP_PM_NAME}")
            sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
        except BaseException:
            sock.close()
            raise
        self.family_id, self.groups = family_id, groups
        self._raw = sock
        self._fd = sock.fileno()
        self._start_reading()

    @property
    def rcvbuf_effective(self) -> int:
        """The receive buffer the kernel granted (``SO_RCVBUF``, doubled)."""
        if self._raw is None:
            return 0
        return int(self._raw.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))

    def close(self) -> None:
        """Stop reading and close the socket; a pending iteration ends, and
        so does following (``on_end(None)``)."""
        self._closed = True
        self._stop_reading()
        if self._raw is not None:
            self._raw.close()
            self._raw = None
            self._fd = -1
        self._wake()
        self._end_following(None)

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    # -- receive path ---------------------------------------------------

    def _start_reading(self) -> None:
        if not self._reading and self._loop is not None and self._fd >= 0:
            self._loop.add_reader(self._fd, self._on_readable
                                  if self._follower is None else self._on_readable_followed)
            self._reading = True

    def _stop_reading(self) -> None:
        if self._reading and self._loop is not None:
            self._loop.remove_reader(self._fd)
            self._reading = False

    def _wake(self) -> None:
        if self._follower is not None:
            if not self._receiving:  # the reader callback delivers itself
                self._schedule_delivery()
            return
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _on_readable(self) -> None:
        """Drain the socket: every queued datagram, received straight into the
        backlog (decoded when handed out, see :meth:`take`)."""
        raw = self._raw
        if raw is None:
            return
        chunks, closing = self._chunks, self.closing
        family_id = self.family_id
        chunk = chunks[-1] if chunks else None
        received = 0
        for _ in range(1024):
            if chunk is None or chunk.wpos > CHUNK_SIZE - DATAGRAM_ROOM:
                chunk = self._new_chunk()
            wpos = chunk.wpos
            try:
                n = raw.recv_into(chunk.view[wpos:wpos + DATAGRAM_ROOM])
            except (BlockingIOError, InterruptedError):
                if self._drops is not None:
                    self._drained()
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self._drops = self._drop_count()
                    self._overrun()
                    continue
                log.error("MPTCP event socket receive failed: %s", exc)
                break
            end = wpos + n
            mem = chunk.mem
            if self.on_datagram is not None:
                try:
                    self.on_datagram(mem[wpos:end])
                except Exception:
                    log.exception("on_datagram callback failed")
            if n > 16 and (mem[wpos + 16] == C.MPTCP_EVENT_CLOSED
                           or _u32(mem, wpos)[0] + 3 & ~3 < n):
                tokens = closed_tokens(mem, wpos, end, family_id)
                if tokens:
                    closing.update(tokens)
                    end |= _HAS_CLOSED
            chunk.ends.append(end)
            chunk.wpos = wpos + n
            received += 1
        self.backlog += received
        self.received += received
        if self.backlog > self._peak:
            self._peak = self.backlog
        if self.backlog >= self.max_pending:
            self._stop_reading()
        if self.backlog:
            self._wake()

    def _new_chunk(self) -> _Chunk:
        chunk = _Chunk()
        self._chunks.append(chunk)
        return chunk

    def take(self, limit: int) -> list[Event]:
        """Up to ``limit`` events (more when the last datagram decoded held
        several), decoded from the backlog in kernel order; ``[]`` when it
        is empty.  Never waits."""
        out: list[Event] = []
        chunks, closing, family_id = self._chunks, self.closing, self.family_id
        close_after = self._close_after
        taken = 0
        while len(out) < limit and chunks:
            chunk = chunks[0]
            ends = chunk.ends
            if chunk.read == len(ends):
                if len(chunks) == 1:
                    chunk.reset()  # the one being written: start it again
                    break
                chunks.popleft().release()  # its memory goes back to the system
                continue
            end = ends[chunk.read]
            start = chunk.start
            chunk.read += 1
            taken += 1
            mem = chunk.mem
            has_closed = end & _HAS_CLOSED
            end &= ~_HAS_CLOSED
            chunk.start = end
            if end - start >= 20 and _len_type(mem, start) == (end - start, family_id):
                # One event message, as the kernel sends them: what
                # decode_datagram would do, without its walk.
                event = decode_message(mem, start, end)
                if has_closed:
                    if type(event) is ConnectionClosed:
                        closing.discard(event.token)  # the token the scan found
                    else:
                        closing.difference_update(closed_tokens(mem, start, end, family_id))
                if event is not None:
                    out.append(event)
            else:
                if has_closed:
                    closing.difference_update(closed_tokens(mem, start, end, family_id))
                for item in decode_datagram(mem, end, family_id, start):
                    if item is OVERRUN:
                        self._drops = self._drop_count()
                        self._overrun()
                    else:
                        out.append(item)
            if close_after:
                tokens = close_after.pop(self.received - self.backlog + taken - 1, None)
                if tokens:
                    out += [ConnectionClosed(Token(t)) for t in tokens]
                    closing.difference_update(tokens)
        if taken:
            self.backlog -= taken
            if not self._reading and not self._closed:
                if self.backlog < self._resume_at:
                    self._start_reading()
                elif self._drops is None:
                    self._overrun_while_paused()
        return out

    def _overrun_while_paused(self) -> None:
        """Reading is paused (the backlog is full) and the socket may have
        overrun meanwhile: its ``ENOBUFS`` is taken now (``SO_ERROR``), not
        once the backlog is worked through (up to :data:`MAX_PENDING`
        events, a second or more under a flood), so that the owner's resync
        can start at once.  One system call per list handed out while
        paused."""
        raw = self._raw
        if raw is None:
            return
        try:
            error = raw.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        except OSError:
            return
        if error == errno.ENOBUFS:
            self._drops = self._drop_count()
            self._overrun()
        elif error:
            log.error("MPTCP event socket receive failed: %s", os.strerror(error))

    def fill(self) -> int:
        """Read everything the socket holds into the backlog, however long it
        is already (what the kernel queued is bounded by the receive
        buffer); the number of datagrams received so far.  Events the
        kernel sent before this call are then either in the backlog, handed
        out already, or lost."""
        for _ in range(4096):
            before = self.received
            if self._raw is None:
                break
            self._on_readable()
            if self.received == before:
                break
        return self.received

    def _waiting(self, before: int) -> Iterator[tuple[mmap.mmap, int, int, bool, int]]:
        """The datagrams still in the backlog and received before datagram
        ``before``, oldest first: their memory, start and end offsets,
        whether they hold a CLOSED, and their index."""
        index = self.received - self.backlog
        for chunk in self._chunks:
            start = chunk.start
            for end in chunk.ends[chunk.read:]:
                if index >= before:
                    return
                has_closed = bool(end & _HAS_CLOSED)
                end &= ~_HAS_CLOSED
                yield chunk.mem, start, end, has_closed, index
                start = end
                index += 1

    def queued_tokens(self, before: int, skip: Collection[int] = ()) -> dict[int, int]:
        """The connections that the datagrams still in the backlog and
        received before datagram ``before`` are about, leaving out those
        whose CLOSED waits too (:attr:`closing`) and those in ``skip``:
        token -> index of the last such datagram."""
        out: dict[int, int] = {}
        closing = self.closing
        family_id = self.family_id
        for mem, start, end, has_closed, index in self._waiting(before):
            if has_closed and (_u32(mem, start)[0] + 3) & ~3 >= end - start:
                continue  # one message, a CLOSED: its connection is closing
            for token in event_tokens(mem, start, end, family_id):
                if token not in closing and token not in skip:
                    out[token] = index
        return out

    def queued_subflows_established(self, before: int) -> list[SubflowEstablished]:
        """The ``SUB_ESTABLISHED`` events of the datagrams still in the
        backlog and received before datagram ``before``, decoded; they stay
        in the backlog, to be handed out in their turn.  A listing taken
        after datagram ``before`` was received is newer than they are."""
        out: list[SubflowEstablished] = []
        family_id, cmd = self.family_id, C.MPTCP_EVENT_SUB_ESTABLISHED
        for mem, start, end, _closed, _index in self._waiting(before):
            if end - start >= 20 and (mem[start + 16] == cmd
                                      or (_u32(mem, start)[0] + 3) & ~3 < end - start):
                out += [event for event in decode_datagram(mem, end, family_id, start)
                        if type(event) is SubflowEstablished]
        return out

    def close_after(self, token: int, index: int) -> None:
        """Hand out a ``ConnectionClosed`` of ``token`` right after the events
        of datagram ``index`` (still in the backlog): the kernel closed the
        connection, and its CLOSED was lost.  Meanwhile the token counts as
        closed (:attr:`closing`)."""
        if not self.received - self.backlog <= index < self.received:
            raise ValueError(f"datagram {index} is not in the backlog")
        self._close_after.setdefault(index, []).append(token)
        self.closing.add(token)

    def closed_tokens(self) -> set[int]:
        """The connections the kernel has reported closed in events not yet
        handed out (:attr:`closing`), after reading what the socket holds:
        the command channel asks before it sends, and drops their commands."""
        if self._reading:
            self._on_readable()
        return self.closing

    def _drop_count(self) -> int:
        """The socket's count of dropped datagrams (``SK_MEMINFO_DROPS``),
        -1 when the kernel does not say."""
        raw = self._raw
        if raw is None:
            return -1
        try:
            info = raw.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 4 * (SK_MEMINFO_DROPS + 1))
            return int(struct.unpack_from("=I", info, 4 * SK_MEMINFO_DROPS)[0])
        except (OSError, struct.error):
            return -1

    def _drained(self) -> None:
        """The receive queue is empty after an overrun.  Until it was, the
        kernel dropped further datagrams without a new ``ENOBUFS`` (it
        reports one per congestion); if it did, that is another overrun:
        events were lost after the resync may have taken its listings."""
        before, self._drops = self._drops, None
        after = self._drop_count()
        if before is not None and before >= 0 and after > before:
            self._overrun(f"{after - before} more event(s) lost while it was full")

    def _overrun(self, what: str = "ENOBUFS") -> None:
        self.overruns += 1
        self.overrun_pending = True
        log.warning(
            "MPTCP event socket receive buffer overrun (%s), events were "
            "lost; overrun #%d, resynchronising", what, self.overruns)
        if self.on_overrun is not None:
            try:
                self.on_overrun(self.overruns)
            except Exception:
                log.exception("on_overrun callback failed")

    async def _wait(self) -> bool:
        """Until the backlog holds a datagram (True) or the reader is closed."""
        while not self.backlog:
            if self._closed:
                return False
            if self._peak >= TRIM_AFTER:
                self._after_burst()
            assert self._loop is not None
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return True

    def _after_burst(self) -> None:
        """The backlog of a burst is worked through: the memory it took (the
        set of closing tokens keeps the size it grew to; the heap keeps the
        pages its objects were freed from) goes back to the system."""
        self._peak = 0
        if not self.closing:
            self.closing = set()
        try:
            self.release_memory()
        except Exception:
            log.exception("Releasing memory after a burst of events failed")

    # -- following ---------------------------------------------------------

    def follow(self, on_batch: Callable[[list[Event]], None],
               on_end: Callable[[BaseException | None], None]) -> None:
        """Hand the events to ``on_batch`` in kernel order, in lists of
        about :data:`YIELD_EVERY`, from the loop's reader callback as they
        are received: no task, future or loop turn between the socket and
        the consumer (the way :meth:`RtnlMonitor.follow
        <mptcpd.netlink.rtnl_monitor.RtnlMonitor.follow>` feeds the network
        monitor).  Between two lists the loop gets a turn, so the commands
        issued for a burst leave and are answered while it is worked
        through.  ``on_end`` is called once: with None when the reader is
        closed, with the exception when handing out failed (following then
        stops).  Use either this or :meth:`batches`, not both."""
        if self._raw is None or self._loop is None:
            raise RuntimeError("the event reader is not open")
        if self._follower is not None:
            raise RuntimeError("the event reader is already followed")
        self._follower = (on_batch, on_end)
        if self._reading:  # the reader callback becomes the delivering one
            self._stop_reading()
            self._start_reading()
        if self.backlog:
            self._schedule_delivery()

    def _on_readable_followed(self) -> None:
        """The loop's reader callback while followed: receive, then hand
        out the next list at once, unless one is scheduled already (a
        burst is being worked through: one list a loop turn)."""
        self._receiving = True
        try:
            self._on_readable()
        finally:
            self._receiving = False
        if self._delivery is None:
            self._deliver()

    def _schedule_delivery(self) -> None:
        if self._delivery is None and self._loop is not None:
            self._delivery = self._loop.call_soon(self._deliver)

    def _deliver(self) -> None:
        """Hand the next list to the follower; the one after it gets the
        next loop turn."""
        self._delivery = None
        follower = self._follower
        if follower is None:
            return
        if self._delivering:  # called while a list is handled: the next turn
            self._schedule_delivery()
            return
        self._delivering = True
        try:
            batch = self.take(YIELD_EVERY)
            if batch:
                follower[0](batch)
        except Exception as exc:
            self._end_following(exc)
            return
        finally:
            self._delivering = False
        if self.backlog:
            self._schedule_delivery()
        elif self._peak >= TRIM_AFTER:
            self._after_burst()

    def _end_following(self, exc: BaseException | None) -> None:
        follower, self._follower = self._follower, None
        if self._delivery is not None:
            self._delivery.cancel()
            self._delivery = None
        if follower is None:
            return
        if self._reading and not self._closed:  # back to the plain callback
            self._stop_reading()
            self._start_reading()
        try:
            follower[1](exc)
        except Exception:
            log.exception("the event reader's on_end callback failed")

    # -- iteration --------------------------------------------------------

    async def batches(self) -> AsyncIterator[list[Event]]:
        """Yield the decoded events in kernel order, in lists of about
        :data:`YIELD_EVERY`, until :meth:`close`.  Between two lists the
        loop gets a turn: the commands the consumer issued meanwhile are sent
        and their answers read while a burst is still being worked through.
        """
        take = self.take
        while await self._wait():
            batch = take(YIELD_EVERY)
            if batch:
                yield batch
            if self.backlog:
                await asyncio.sleep(0)

    async def events(self) -> AsyncIterator[Event]:
        """Yield decoded events in kernel order until :meth:`close` (one at a
        time, from :meth:`batches`)."""
        async for batch in self.batches():
            for event in batch:
                yield event

    def __aiter__(self) -> AsyncIterator[Event]:
        return self.events()

    def drain(self) -> list[Event]:
        """Events already received, decoded, without waiting."""
        out = self.take(1 << 30)  # every datagram: more than it can hold
        self.closing.clear()
        return out
