"""Lifecycle of the ``mptcp_pm`` generic netlink family.

:class:`FamilyWatcher` tells the daemon when ``mptcp_pm`` is usable:

1. it opens a generic netlink socket to ``nlctrl`` and joins nlctrl's
   ``notify`` multicast group (NEWFAMILY/DELFAMILY), *then*
2. sends one ``CTRL_CMD_GETFAMILY`` request for ``mptcp_pm``, and
3. arms a one-shot timer (10 s by default).

The family *appears* when the request is answered or a NEWFAMILY
notification names it, whichever comes first; the second one is ignored (no
double firing).  It *vanishes* on DELFAMILY; the timer is then re-armed.
Log lines (exact spec strings):

* D ``"mptcp_pm" generic netlink family appeared``
* D ``mptcp_pm generic netlink family vanished``
* D ``Request for MPTCP generic netlink family failed. Waiting.``
* W ``MPTCP generic netlink family has not appeared.`` and
  W ``Verify MPTCP netlink path manager kernel support.`` when the timer fires
  while the family is unknown.

The socket is a plain ``NETLINK_GENERIC`` socket read through the loop's
reader callback (:class:`~mptcpd.netlink.rtnl_monitor.NetlinkSocket`); one
reader handles the notifications and the request's answer alike.

The callbacks are plain functions called on the loop:
``on_appeared(family_id)`` and ``on_vanished()``.  An exception in one is
logged and does not stop the watcher.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import struct
from collections.abc import Callable
from typing import Protocol

from mptcpd.netlink.constants import (
    CTRL_ATTR_FAMILY_ID,
    CTRL_ATTR_FAMILY_NAME,
    CTRL_CMD_DELFAMILY,
    CTRL_CMD_GETFAMILY,
    CTRL_CMD_NEWFAMILY,
    GENL_ID_CTRL,
    MPTCP_PM_NAME,
)
from mptcpd.netlink.nlsock import NETLINK_ADD_MEMBERSHIP, NETLINK_GENERIC, SOL_NETLINK
from mptcpd.netlink.rtnl_monitor import (
    NLMSG_DONE,
    NLMSG_ERROR,
    NetlinkSocket,
    attributes,
    error_code,
    messages,
    open_socket,
    rtattr,
)

log = logging.getLogger(__name__)

#: Seconds after start (or a vanish) before the "has not appeared" warning.
FAMILY_TIMEOUT_SECONDS = 10.0

NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
#: nlctrl's multicast group for family changes ("notify"); the kernel gives
#: it the id GENL_ID_CTRL.
NLCTRL_NOTIFY_GROUP = "notify"
NLCTRL_NOTIFY_GROUP_ID = GENL_ID_CTRL
#: Receive buffer of the nlctrl socket (family changes are rare).
NLCTRL_RCVBUF = 1 << 16

_GENLMSGHDR = struct.Struct("=BBH")
_U16 = struct.Struct("=H")


class Timer(Protocol):
    """What :class:`FamilyWatcher` keeps of an armed timer (an
    :class:`asyncio.TimerHandle` by default)."""

    def cancel(self) -> None: ...


#: ``call_later(delay, callback) -> Timer``: how the watcher arms its timer.
CallLater = Callable[[float, Callable[[], None]], Timer]


class FamilyWatcher:
    """Watch for the ``mptcp_pm`` family appearing and vanishing.

    :param on_appeared: called with the family id when the family becomes
        known (once per appearance).
    :param on_vanished: called when a known family is unregistered.
    :param netns: network namespace to watch (a name under /run/netns); None
        for the caller's.
    :param timeout: seconds before the "has not appeared" warnings.
    :param family: family name (tests only; the log texts keep "MPTCP").
    :param call_later: arms the warning timer, as ``loop.call_later(delay,
        callback)`` does (the default: the running loop's); tests pass a
        fake clock.
    """

    def __init__(
        self,
        on_appeared: Callable[[int], object] | None = None,
        on_vanished: Callable[[], object] | None = None,
        *,
        netns: str | None = None,
        timeout: float = FAMILY_TIMEOUT_SECONDS,
        family: str = MPTCP_PM_NAME,
        call_later: CallLater | None = None,
    ) -> None:
        self.on_appeared = on_appeared
        self.on_vanished = on_vanished
        #: called with the reason if the watch ever ends before :meth:`stop`.
        self.on_failure: Callable[[str], object] | None = None
        self.netns = netns
        self.timeout = timeout
        self.family = family
        self._call_later = call_later
        self._family_id: int | None = None
        self._sock: NetlinkSocket | None = None
        self._pending: dict[int, asyncio.Future[int | None]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._request: asyncio.Task[None] | None = None
        self._timer: Timer | None = None
        self._appeared = asyncio.Event()

    # -- state -------------------------------------------------------------

    @property
    def family_id(self) -> int | None:
        """The family's generic netlink id, None while it is unknown."""
        return self._family_id

    @property
    def known(self) -> bool:
        """True while the family is known (the C ``pm_ready``)."""
        return self._family_id is not None

    async def wait_appeared(self, timeout: float | None = None) -> int:
        """Wait (bounded by ``timeout``) until the family is known; its id."""
        async with asyncio.timeout(timeout):
            while self._family_id is None:
                self._appeared.clear()
                await self._appeared.wait()
        return self._family_id

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        """Join nlctrl's notifications, request the family, arm the timer.

        Raises :class:`OSError` when the socket cannot be opened or the
        watch cannot be set up; the daemon maps that to mptcpd's exit
        messages.
        """
        if self._sock is not None:
            return
        raw = open_socket(self.netns, NLCTRL_RCVBUF, NETLINK_GENERIC)
        try:
            raw.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NLCTRL_NOTIFY_GROUP_ID)
        except BaseException:
            raw.close()
            raise
        self._sock = NetlinkSocket(raw)
        self._reader = asyncio.create_task(self._read_loop(), name="nlctrl-notify")
        self._arm_timer()
        self._request = asyncio.create_task(self.request(), name="nlctrl-getfamily")

    async def stop(self) -> None:
        """Cancel the timer and the tasks and close the socket."""
        self._cancel_timer()
        tasks = [t for t in (self._reader, self._request) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._reader = self._request = None
        for future in self._pending.values():
            future.cancel()
        self._pending.clear()
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def __aenter__(self) -> FamilyWatcher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- the GETFAMILY request ----------------------------------------------

    async def request(self) -> None:
        """Send one ``CTRL_CMD_GETFAMILY`` for the family and handle the answer."""
        sock = self._sock
        found: int | None = None
        try:
            if sock is None:
                raise OSError(errno.EBADF, "the nlctrl socket is closed")
            body = _GENLMSGHDR.pack(CTRL_CMD_GETFAMILY, 1, 0) + rtattr(
                CTRL_ATTR_FAMILY_NAME, self.family.encode() + b"\0")
            seq = sock.send(GENL_ID_CTRL, NLM_F_REQUEST | NLM_F_ACK, body)
            future: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
            self._pending[seq] = future
            try:
                found = await future
            finally:
                self._pending.pop(seq, None)
        except OSError:
            log.debug("Request for MPTCP generic netlink family failed. Waiting.")
            return
        if found is None:
            log.debug("Request for MPTCP generic netlink family failed. Waiting.")
            return
        self._family_appeared(int(found))

    # -- notifications -------------------------------------------------------

    async def _read_loop(self) -> None:
        """Read notifications until :meth:`stop`; if reading ends otherwise,
        tell ``on_failure`` why (the daemon then exits rather than miss the
        family's coming and going)."""
        reason = await self._read()
        if reason is not None:
            log.error("%s", reason)
            if self.on_failure is not None:
                self.on_failure(reason)

    async def _read(self) -> str | None:
        """Why reading stopped (None: the socket was closed by :meth:`stop`)."""
        sock = self._sock
        while sock is not None and not sock.closed:
            try:
                data = sock.backlog.popleft() if sock.backlog else await sock.recv()
            except OSError as exc:
                if sock.closed:
                    return None
                if exc.errno != errno.ENOBUFS:
                    return f"nlctrl notification socket failed: {exc}"
                # Notifications were lost: ask again rather than guess.
                log.warning("nlctrl notifications overrun; asking for the "
                            "family again")
                if self._request is None or self._request.done():
                    self._request = asyncio.create_task(self.request())
                continue
            try:
                self.handle_ctrl_message(data)
            except Exception:  # one bad message must not end the watch
                log.exception("Unable to handle an nlctrl message")
        return None if sock is None or sock.closed else "nlctrl notification socket lost"

    def handle_ctrl_message(self, data: bytes) -> None:
        """Act on one nlctrl datagram: NEWFAMILY/DELFAMILY notifications and
        the answer (reply, error, ACK) to our request.

        Messages for other families, other commands and late ACKs are
        ignored.  Public so tests can feed synthetic notifications.
        """
        for mtype, _, seq, pid, payload in messages(data):
            future = self._pending.get(seq) if self._sock is not None \
                and pid == self._sock.port else None
            if mtype in (NLMSG_ERROR, NLMSG_DONE):
                if future is not None and not future.done():
                    code = error_code(payload) if mtype == NLMSG_ERROR or len(payload) >= 4 else 0
                    if code:
                        future.set_exception(OSError(code, "GETFAMILY failed"))
                    else:
                        future.set_result(None)  # ACK without a reply
                continue
            if mtype != GENL_ID_CTRL or len(payload) < 4:
                continue
            cmd = payload[0]
            attrs = attributes(payload, 4)
            name = attrs.get(CTRL_ATTR_FAMILY_NAME, b"").split(b"\0", 1)[0]
            if name != self.family.encode():
                continue
            raw_id = attrs.get(CTRL_ATTR_FAMILY_ID)
            family_id = int(_U16.unpack_from(raw_id)[0]) if raw_id and len(raw_id) >= 2 \
                else None
            if future is not None:
                if not future.done():
                    future.set_result(family_id)
                continue
            if cmd == CTRL_CMD_NEWFAMILY:
                if family_id is not None:
                    self._family_appeared(family_id)
            elif cmd == CTRL_CMD_DELFAMILY:
                self._family_vanished()

    # -- transitions ---------------------------------------------------------

    def _family_appeared(self, family_id: int) -> None:
        if self._family_id is not None:
            return  # the reply and the notification can both arrive
        self._family_id = family_id
        self._cancel_timer()
        log.debug('"%s" generic netlink family appeared', self.family)
        self._appeared.set()
        if self.on_appeared is not None:
            try:
                self.on_appeared(family_id)
            except Exception:
                log.exception("on_appeared callback failed")

    def _family_vanished(self) -> None:
        if self._family_id is None:
            return
        self._family_id = None
        log.debug("%s generic netlink family vanished", self.family)
        self._arm_timer()
        if self.on_vanished is not None:
            try:
                self.on_vanished()
            except Exception:
                log.exception("on_vanished callback failed")

    def _arm_timer(self) -> None:
        self._cancel_timer()
        if self._call_later is not None:
            self._timer = self._call_later(self.timeout, self._timed_out)
        else:
            self._timer = asyncio.get_running_loop().call_later(self.timeout, self._timed_out)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        if self._family_id is None:
            log.warning("MPTCP generic netlink family has not appeared.")
            log.warning("Verify MPTCP netlink path manager kernel support.")
