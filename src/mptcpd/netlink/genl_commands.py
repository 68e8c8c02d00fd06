"""The ``mptcp_pm`` command channel: requests in, futures out.

:class:`CommandChannel` owns one :class:`AsyncGenericNetlinkSocket` bound to
the ``mptcp_pm`` family with the command message class
(:class:`~mptcpd.netlink.command_messages.mptcp_pm_cmd_msg`).  It is never
joined to a multicast group; events have their own socket (DESIGN decision 1).

Every command method builds its message at once (bad arguments raise
:class:`ValueError` before anything is queued) and returns an
:class:`asyncio.Future` that is resolved when the kernel answered:

* with ``None`` for an ACK,
* with an :class:`~mptcpd.netlink.command_messages.AddrInfo` for a GET_ADDR
  request, a list of them for a GET_ADDR dump,
* with :class:`~mptcpd.netlink.command_messages.Limits` for GET_LIMITS,
* or failed with :class:`~mptcpd.errors.KernelError` (the kernel's errno and
  extended-ACK text).  The same error is logged at ERROR as
  ``<op>: <extack message>: <strerror>`` (``<op>: <strerror>`` when the
  kernel sent no extack), where ``op`` is the operation name of spec §3.4.

Callers may ignore the future, as C plugins ignore the reply: a failure is
logged once and never reported as "exception never retrieved".

Ordering (spec §3.6): requests are written by one writer task in submission
order.  With ``max_in_flight=1`` (the default, and mptcpd's behaviour) the
next request is written only after the previous one's reply, ACK or end of
dump has been processed.  A larger ``max_in_flight`` pipelines requests:
the kernel handles a netlink socket's requests synchronously in the order
they are written, so results still arrive and futures still resolve in
submission order; dumps are always run alone, because the kernel allows one
running dump per socket.

Measured on kernel 6.18 in a lab namespace (2 vCPU, pyroute2 0.9.7, 2000
to 3000 back-to-back requests per run, 1, 4, 8 and 16 in flight): GET_LIMITS
5,300-6,600/s and SET_LIMITS 7,300-9,100/s whatever the depth; the spread
between runs is larger than any effect of pipelining.  pyroute2's Python
encode/decode per message, not the kernel round trip, is the cost, so the
default stays at 1 (mptcpd's behaviour).

GET_ADDR (do) and GET_LIMITS carry ``NLM_F_ACK`` like mptcpd's requests; the
kernel then sends the reply and a separate ACK.  The future resolves on the
reply; the late ACK arrives after pyroute2 released the sequence number and
is read and dropped by a small reader of the socket's untagged queue.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import os
from collections.abc import Sequence
from typing import Any, Literal

from pyroute2.netlink import (  # type: ignore[import-untyped]
    NLM_F_ACK,
    NLM_F_DUMP,
    NLM_F_REQUEST,
    NLMSG_ERROR,
)
from pyroute2.netlink.exceptions import NetlinkError  # type: ignore[import-untyped]
from pyroute2.netlink.generic import AsyncGenericNetlinkSocket  # type: ignore[import-untyped]

from mptcpd.errors import KernelError, NotReady
from mptcpd.netlink import command_messages as m
from mptcpd.netlink.command_messages import AddrInfo, Limits
from mptcpd.netlink.constants import MPTCP_PM_NAME
from mptcpd.types import SockAddr

log = logging.getLogger(__name__)

Kind = Literal["ack", "addr", "dump", "limits"]

#: How long one request may wait for its answer before it fails (seconds).
DEFAULT_REQUEST_TIMEOUT = 10.0


@dataclasses.dataclass(eq=False)
class _Request:
    op: str
    msg: Any
    kind: Kind
    future: asyncio.Future[Any]

    @property
    def flags(self) -> int:
        flags = int(NLM_F_REQUEST | NLM_F_ACK)
        if self.kind == "dump":
            flags |= int(NLM_F_DUMP)
        return flags


def _silence(future: asyncio.Future[Any]) -> None:
    """Mark a failed future's exception as retrieved (it was logged)."""
    if not future.cancelled():
        future.exception()


class CommandChannel:
    """Asynchronous ``mptcp_pm`` command socket with a FIFO writer.

    :param netns: name of the network namespace whose kernel receives the
        commands (pyroute2 ``netns=``); None for the caller's namespace.
    :param max_in_flight: requests written before the oldest is answered
        (1 = mptcpd's one-at-a-time behaviour).
    :param request_timeout: seconds a request may wait for its answer.
    :param family: generic netlink family name (tests only).

    Use ``async with CommandChannel(...) as ch:`` or :meth:`open` /
    :meth:`close`.  Methods must be called from the loop that opened it.
    """

    def __init__(
        self,
        netns: str | None = None,
        *,
        max_in_flight: int = 1,
        request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
        family: str = MPTCP_PM_NAME,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.netns = netns
        self.max_in_flight = max_in_flight
        self.request_timeout = request_timeout
        self.family = family
        self._sock: Any = None
        self._queue: asyncio.Queue[_Request] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._stray: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._slots: asyncio.Semaphore | None = None
        self._family_id: int | None = None

    # -- lifecycle ---------------------------------------------------------

    async def open(self) -> None:
        """Open the socket and resolve the family.

        Raises :class:`~mptcpd.errors.NotReady` when the family is not
        registered, :class:`OSError` when the socket cannot be opened.
        """
        if self._sock is not None:
            return
        sock = AsyncGenericNetlinkSocket(netns=self.netns, ext_ack=True)
        sock.module_err_level = "debug"  # pyroute2 would log "not found" on root
        try:
            await sock.bind(self.family, m.mptcp_pm_cmd_msg)
        except NetlinkError as exc:
            sock.close()
            if exc.code == errno.ENOENT:
                raise NotReady(
                    f'"{self.family}" generic netlink family not found'
                ) from exc
            raise OSError(exc.code, os.strerror(exc.code)) from exc
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._family_id = int(sock.prid)
        self._queue = asyncio.Queue()
        self._slots = asyncio.Semaphore(self.max_in_flight)
        self._writer = asyncio.create_task(self._write_loop(), name="mptcp_pm-writer")
        self._stray = asyncio.create_task(self._stray_loop(), name="mptcp_pm-stray")

    async def close(self) -> None:
        """Stop the writer, fail queued requests with NotReady, close the socket."""
        if self._sock is None:
            return
        tasks = [t for t in (self._writer, self._stray, *self._inflight) if t]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._inflight.clear()
        if self._queue is not None:
            while not self._queue.empty():
                self._fail(self._queue.get_nowait(), NotReady("command channel closed"))
        self._sock.close()
        self._sock = None
        self._writer = self._stray = None
        self._queue = None
        self._family_id = None

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
        return self._family_id

    # -- the queue ---------------------------------------------------------

    def submit(self, op: str, msg: Any, kind: Kind = "ack") -> asyncio.Future[Any]:
        """Queue a prepared command message; see the module docstring.

        Raises :class:`~mptcpd.errors.NotReady` if the channel is not open.
        """
        if self._queue is None:
            raise NotReady(f"{op}: MPTCP family is not yet available")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Request(op, msg, kind, future))
        return future

    async def _write_loop(self) -> None:
        assert self._queue is not None and self._slots is not None
        while True:
            req = await self._queue.get()
            if req.future.done():  # cancelled by its caller before it left
                continue
            try:
                await self._write_one(req)
            except asyncio.CancelledError:
                self._fail(req, NotReady("command channel closed"))
                raise

    async def _write_one(self, req: _Request) -> None:
        assert self._slots is not None
        if req.kind == "dump" or self.max_in_flight == 1:
            await self._wait_idle()
            await self._run(req, await self._send(req))
            return
        await self._slots.acquire()
        replies = await self._send(req)
        if replies is None:
            self._slots.release()
            return
        task = asyncio.create_task(self._run(req, replies))
        self._inflight.add(task)
        task.add_done_callback(self._request_done)

    def _request_done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        if self._slots is not None:
            self._slots.release()

    async def _wait_idle(self) -> None:
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)

    async def _send(self, req: _Request) -> Any:
        """Write one request; returns pyroute2's reply generator or None."""

        def factory(error: Exception, msg: Any) -> Exception:
            return self._kernel_error(req.op, error, msg)

        try:
            return await self._sock.nlm_request(
                req.msg,
                msg_type=self._sock.prid,
                msg_flags=req.flags,
                exception_factory=factory,
            )
        except NetlinkError as exc:
            self._fail(req, KernelError(req.op, exc.code))
        except OSError as exc:
            self._fail(req, KernelError(req.op, exc.errno or errno.EIO))
        return None

    async def _run(self, req: _Request, replies: Any) -> None:
        """Drain the reply generator of one request and settle its future."""
        if replies is None:
            return
        try:
            await self._collect(req, replies)
        except asyncio.CancelledError:
            self._fail(req, NotReady("command channel closed"))
            raise

    async def _collect(self, req: _Request, replies: Any) -> None:
        messages = []
        try:
            async with asyncio.timeout(self.request_timeout):
                async for msg in replies:
                    if msg["header"]["type"] == NLMSG_ERROR:
                        continue  # the ACK (error 0) of a do request
                    messages.append(msg)
        except KernelError as exc:
            self._fail(req, exc)
            return
        except TimeoutError:
            self._fail(req, KernelError(req.op, errno.ETIMEDOUT))
            return
        except NetlinkError as exc:
            self._fail(req, KernelError(req.op, exc.code))
            return
        except OSError as exc:
            self._fail(req, KernelError(req.op, exc.errno or errno.EIO))
            return
        finally:
            await replies.aclose()
        if req.future.done():
            return
        try:
            result = self._decode(req, messages)
        except Exception as exc:  # a decoding bug must not stop the writer
            log.exception("%s: cannot decode the kernel's reply", req.op)
            req.future.set_exception(exc)
            _silence(req.future)
            return
        req.future.set_result(result)

    @staticmethod
    def _decode(req: _Request, messages: list[Any]) -> Any:
        if req.kind == "ack":
            return None
        if req.kind == "dump":
            infos = [m.decode_addr(msg, req.op) for msg in messages]
            return [i for i in infos if i is not None]
        if req.kind == "addr":
            return m.decode_addr(messages[0], req.op) if messages else None
        return m.decode_limits(messages[0]) if messages else Limits()

    @staticmethod
    def _kernel_error(op: str, error: Exception, msg: Any) -> KernelError:
        code = getattr(error, "code", None) or getattr(error, "errno", None) or errno.EIO
        extack = None
        try:
            extack = msg.get_attr("NLMSGERR_ATTR_MSG")
        except Exception:
            pass
        return KernelError(op, abs(int(code)), extack)

    @staticmethod
    def _fail(req: _Request, exc: BaseException) -> None:
        if req.future.done():
            return
        if isinstance(exc, KernelError):
            log.error("%s", exc)
        req.future.set_exception(exc)
        _silence(req.future)

    async def _stray_loop(self) -> None:
        """Read and drop untagged messages (late ACKs of GET requests)."""
        while True:
            count = 0
            try:
                async for msg in self._sock.get():
                    count += 1
                    log.debug("dropped late/unsolicited message: type %s seq %s",
                              msg["header"].get("type"),
                              msg["header"].get("sequence_number"))
            except NetlinkError as exc:
                if exc.code == errno.ECONNRESET:
                    return
                log.debug("late error on the command socket: %s", exc)
                count += 1
            except OSError as exc:
                log.debug("command socket: %s", exc)
                return
            if count == 0:  # the terminator pyroute2 queues on close()
                return

    # -- typed commands ----------------------------------------------------

    def add_addr(self, addr: SockAddr, id: int = 0, flags: int = 0,
                 ifindex: int = 0, *, op: str = "add_addr") -> asyncio.Future[None]:
        """ADD_ADDR: create an in-kernel PM endpoint (SIGNAL added if port≠0)."""
        return self.submit(op, m.msg_add_addr(addr, id, flags, ifindex))

    def remove_addr(self, id: int, *, op: str = "remove_addr") -> asyncio.Future[None]:
        """DEL_ADDR: delete the in-kernel PM endpoint ``id``."""
        return self.submit(op, m.msg_del_addr(id))

    def get_addr(self, id: int, token: int | None = None, *,
                 op: str = "get_addr") -> asyncio.Future[AddrInfo | None]:
        """GET_ADDR (do): one endpoint by ID (per connection with ``token``)."""
        return self.submit(op, m.msg_get_addr(id, token), "addr")

    def dump_addrs(self, token: int | None = None, *,
                   op: str = "dump_addrs") -> asyncio.Future[list[AddrInfo]]:
        """GET_ADDR (dump): every endpoint, or a connection's local addresses
        with ``token`` (userspace PM)."""
        return self.submit(op, m.msg_dump_addrs(token), "dump")

    def flush_addrs(self, *, op: str = "flush_addrs") -> asyncio.Future[None]:
        """FLUSH_ADDRS: delete every in-kernel PM endpoint."""
        return self.submit(op, m.msg_flush_addrs())

    def set_limits(self, limits: Sequence[tuple[str, int]] | None = None, *,
                   op: str = "set_limits", **kwargs: int) -> asyncio.Future[None]:
        """SET_LIMITS, attributes in the order given.

        ``set_limits(subflows=2, rcv_add_addrs=1)`` or
        ``set_limits([("rcv_add_addrs", 1), ("subflows", 2)])``; names are
        ``subflows`` and ``rcv_add_addrs`` (alias ``add_addr_accepted``).
        """
        items = list(limits or ()) + list(kwargs.items())
        if not items:
            raise ValueError("set_limits needs at least one limit")
        return self.submit(op, m.msg_set_limits(items))

    def get_limits(self, *, op: str = "get_limits") -> asyncio.Future[Limits]:
        """GET_LIMITS."""
        return self.submit(op, m.msg_get_limits(), "limits")

    def set_flags(self, addr: SockAddr | None, flags: int, token: int | None = None,
                  remote: SockAddr | None = None, *, id: int = 0,
                  op: str | None = None) -> asyncio.Future[None]:
        """SET_FLAGS: endpoint flags (no token; op ``set_flags``) or a
        subflow's backup flag (with token and remote; op ``set_backup``)."""
        name = op or ("set_flags" if token is None else "set_backup")
        return self.submit(name, m.msg_set_flags(addr, flags, token, remote, id))

    def announce(self, addr: SockAddr, id: int, token: int, *,
                 op: str = "announce") -> asyncio.Future[None]:
        """ANNOUNCE (userspace PM): advertise ``addr`` as ``id`` on ``token``."""
        return self.submit(op, m.msg_announce(addr, id, token))

    def remove(self, token: int, loc_id: int, *,
               op: str = "remove_addr") -> asyncio.Future[None]:
        """REMOVE (userspace PM): withdraw local address ``loc_id``."""
        return self.submit(op, m.msg_remove(token, loc_id))

    def subflow_create(self, token: int, laddr: SockAddr, local_id: int,
                       raddr: SockAddr, remote_id: int, *,
                       op: str = "add_subflow") -> asyncio.Future[None]:
        """SUBFLOW_CREATE (userspace PM)."""
        return self.submit(op, m.msg_subflow_create(token, laddr, local_id,
                                                    raddr, remote_id))

    def subflow_destroy(self, token: int, laddr: SockAddr, raddr: SockAddr, *,
                        op: str = "remove_subflow") -> asyncio.Future[None]:
        """SUBFLOW_DESTROY (userspace PM)."""
        return self.submit(op, m.msg_subflow_destroy(token, laddr, raddr))
