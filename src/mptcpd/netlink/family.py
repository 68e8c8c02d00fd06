"""Lifecycle of the ``mptcp_pm`` generic netlink family (spec §2.1, §2.3).

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

The callbacks are plain functions called on the loop:
``on_appeared(family_id)`` and ``on_vanished()``.  An exception in one is
logged and does not stop the watcher.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Callable
from typing import Any

from pyroute2.netlink import (  # type: ignore[import-untyped]
    CTRL_CMD_DELFAMILY,
    CTRL_CMD_GETFAMILY,
    CTRL_CMD_NEWFAMILY,
    GENL_ID_CTRL,
    NLM_F_ACK,
    NLM_F_REQUEST,
    ctrlmsg,
)
from pyroute2.netlink.exceptions import NetlinkError  # type: ignore[import-untyped]
from pyroute2.netlink.generic import AsyncGenericNetlinkSocket  # type: ignore[import-untyped]

from mptcpd.netlink.constants import MPTCP_PM_NAME

log = logging.getLogger(__name__)

#: Seconds after start (or a vanish) before the "has not appeared" warning.
FAMILY_TIMEOUT_SECONDS = 10.0

#: nlctrl's multicast group for family changes.
NLCTRL_NOTIFY_GROUP = "notify"


class FamilyWatcher:
    """Watch for the ``mptcp_pm`` family appearing and vanishing.

    :param on_appeared: called with the family id when the family becomes
        known (once per appearance).
    :param on_vanished: called when a known family is unregistered.
    :param netns: network namespace to watch (pyroute2 ``netns=``); None for
        the caller's.
    :param timeout: seconds before the "has not appeared" warnings.
    :param family: family name (tests only; the log texts keep "MPTCP").
    """

    def __init__(
        self,
        on_appeared: Callable[[int], object] | None = None,
        on_vanished: Callable[[], object] | None = None,
        *,
        netns: str | None = None,
        timeout: float = FAMILY_TIMEOUT_SECONDS,
        family: str = MPTCP_PM_NAME,
    ) -> None:
        self.on_appeared = on_appeared
        self.on_vanished = on_vanished
        self.netns = netns
        self.timeout = timeout
        self.family = family
        self._family_id: int | None = None
        self._sock: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._request: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
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

        Raises :class:`OSError` (or pyroute2's ``NetlinkError``) when the
        socket cannot be opened or the watch cannot be set up; the daemon
        maps that to spec §2.1's exit messages.
        """
        if self._sock is not None:
            return
        sock = AsyncGenericNetlinkSocket(netns=self.netns)
        try:
            await sock.bind("nlctrl", ctrlmsg)
            sock.add_membership(NLCTRL_NOTIFY_GROUP)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
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
        msg = ctrlmsg()
        msg["cmd"] = CTRL_CMD_GETFAMILY
        msg["version"] = 1
        msg["attrs"] = [["CTRL_ATTR_FAMILY_NAME", self.family]]
        found: int | None = None
        try:
            replies = await self._sock.nlm_request(
                msg, msg_type=GENL_ID_CTRL, msg_flags=NLM_F_REQUEST | NLM_F_ACK
            )
            try:
                async for reply in replies:
                    if reply["header"]["type"] == GENL_ID_CTRL and found is None:
                        found = reply.get_attr("CTRL_ATTR_FAMILY_ID")
            finally:
                await replies.aclose()
        except (NetlinkError, OSError):
            log.debug("Request for MPTCP generic netlink family failed. Waiting.")
            return
        if found is None:
            log.debug("Request for MPTCP generic netlink family failed. Waiting.")
            return
        self._family_appeared(int(found))

    # -- notifications -------------------------------------------------------

    async def _read_loop(self) -> None:
        while True:
            count = 0
            try:
                async for msg in self._sock.get():
                    count += 1
                    self.handle_ctrl_message(msg)
            except NetlinkError as exc:
                if exc.code == errno.ECONNRESET:
                    return
                log.debug("nlctrl socket: %s", exc)
                count += 1
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    log.warning("nlctrl notification socket failed: %s", exc)
                    return
                # Notifications were lost: ask again rather than guess.
                log.warning("nlctrl notifications overrun; asking for the "
                            "family again")
                count += 1
                if self._request is None or self._request.done():
                    self._request = asyncio.create_task(self.request())
            if count == 0:  # pyroute2's terminator on close()
                return

    def handle_ctrl_message(self, msg: Any) -> None:
        """Act on one nlctrl message (a NEWFAMILY/DELFAMILY notification).

        Messages for other families, other commands and late ACKs are
        ignored.  Public so tests can feed synthetic notifications.
        """
        if msg["header"].get("type") != GENL_ID_CTRL:
            return
        if msg.get_attr("CTRL_ATTR_FAMILY_NAME") != self.family:
            return
        cmd = msg.get("cmd")
        if cmd == CTRL_CMD_NEWFAMILY:
            family_id = msg.get_attr("CTRL_ATTR_FAMILY_ID")
            if family_id is not None:
                self._family_appeared(int(family_id))
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
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.timeout, self._timed_out)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        if self._family_id is None:
            log.warning("MPTCP generic netlink family has not appeared.")
            log.warning("Verify MPTCP netlink path manager kernel support.")
