"""addr_adv: the address advertiser, for the in-kernel path manager.

For every local address the network monitor reports, addr_adv adds an
in-kernel PM endpoint (``ip mptcp endpoint``) with the flags of
``--addr-flags`` (or those of the interface's ``[interface GLOB]`` group)
and the address's interface, and raises the ``subflows``
limit (and ``add_addr_accepted`` with the ``subflow`` flag) to match; when
the address goes away, it removes the endpoint and lowers the limits.  This is
the C plugin's behaviour, limits arithmetic, order and messages included.
It needs ``net.mptcp.path_manager=kernel``.

What it does better than the C plugin (each is in the changelog):

* **Carrier.**  When a link loses its carrier but keeps its addresses (a cable
  unplugged: mptcpd #334, #282, #263) the endpoints of that link are
  withdrawn, so the kernel stops using a dead path and stops announcing it;
  when the carrier comes back they are restored with the same IDs.
* **Ownership.**  Only endpoints this plugin created are ever changed.  An
  endpoint that already exists for an address (made by an administrator, by
  NetworkManager, or by a previous mptcpd) is neither duplicated nor removed.
  The endpoints it created are remembered in a small state file (one per
  network namespace, under ``$MPTCPD_STATE_DIR``, ``$RUNTIME_DIRECTORY`` or
  ``/run/mptcpd``), so a restarted daemon takes them over again instead of
  piling up duplicates or leaving them unmanaged.  The file is a journal:
  each change is one short line appended at once (one ``write``); it is
  rewritten whole, atomically, at start-up, at exit and when it has grown
  well beyond what it describes (see :class:`Journal`).
* **Per-interface flags.**  An interface that the configuration gives its own
  ``addr-flags`` gets endpoints with those; when they change (a reload),
  the endpoints follow: ``backup`` and ``fullmesh`` in place, other flags
  by removing and re-adding the endpoint with its ID.
* **The endpoint limit.**  The kernel keeps at most 8 endpoints per network
  namespace; the 9th is refused with ``ERANGE``.  That is reported as the
  kernel's limit of 8 endpoints, not as a bare errno.  While endpoints of
  its own are on their way out, an ``ERANGE`` is retried instead.
* **Storms and crashes** (the lab's fault tests: 1 000 carrier flaps, 1 000
  address cycles, SIGKILL during churn).  Each endpoint tracks what it
  should be (in the kernel or not) and what the kernel's answers say it is;
  commands go out in the order of the changes, and one the daemon could
  not send (its command queue full) is sent again, with every later one
  waiting behind it, so a storm never leaves an address without its
  endpoint or a withdrawn one in the kernel, nor makes the kernel see an
  endpoint's removal after the addition of the address that reused its ID.  An
  endpoint is written to the state file *before* the kernel is asked for
  it, so a daemon killed at any moment takes it over after a restart; at
  start-up, endpoints taken over whose address went while no daemon ran
  are removed, and those on a link without carrier withdrawn.  An address
  that appears on a link without carrier gets its endpoint when the
  carrier comes.

Kept from C on purpose: the limits are raised even
when the kernel then refuses the endpoint, and without ``subflow`` in the
address flags ``add_addr_accepted`` is set to 0.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import errno
import functools
import json
import logging
import os
from pathlib import Path
from typing import Any

from mptcpd.plugin import (
    AddrFlags,
    Interface,
    KernelError,
    Limits,
    NotReady,
    NotSupported,
    PathManager,
    PluginInfo,
    Priority,
    QueueFull,
    SockAddr,
    hookimpl,
    refused_by_queue,
)

PLUGIN = PluginInfo(
    name="addr_adv",
    description="Address advertiser path manager: one in-kernel PM endpoint per "
                "local address",
    priority=Priority.DEFAULT,
)

log = logging.getLogger("mptcpd.plugins.addr_adv")

#: The kernel's bounds for the subflows limit as addr_adv manages it.
MIN_LIMIT, MAX_LIMIT = 2, 8
#: ``MPTCP_PM_ADDR_MAX``: endpoints per network namespace.
KERNEL_MAX_ENDPOINTS = 8
#: The endpoint flags the kernel changes in place (``MPTCP_PM_CMD_SET_FLAGS``).
IN_PLACE_FLAGS = int(AddrFlags.BACKUP | AddrFlags.FULLMESH)
#: The state file's first line: the journal format, version 1.
JOURNAL_HEADER = b"mptcpd addr_adv endpoints journal 1\n"
#: The journal is rewritten whole (compacted) once it holds more lines than
#: this and :data:`JOURNAL_SLACK` times as many lines as entries.
JOURNAL_MAX_LINES = 1024
JOURNAL_SLACK = 4
#: A compaction the journal's growth calls for waits this long (a burst of
#: changes ends first, and the change that crossed the line is not delayed).
COMPACT_DELAY = 1.0
#: A command the daemon could not send (its queue was full) is retried after
#: this, with the commands made after it (:attr:`AddressAdvertiser.backlog`).
RETRY_DELAY = 0.1


@dataclasses.dataclass(eq=False)
class Endpoint:
    """An endpoint this plugin created (equal only to itself)."""

    addr: SockAddr
    id: int
    ifindex: int
    flags: int
    active: bool = True  #: wanted in the kernel (False: no carrier, or address gone)
    in_kernel: bool = False  #: in the kernel as far as the answers say
    inflight: int = 0  #: commands about it waiting for their answers
    target: bool = False  #: in the kernel once they are all applied
    gone: bool = False  #: its address went; dropped once out of the kernel
    #: its addition waits in the backlog (never sent): a removal cancels it.
    add_waiting: bool = False
    #: the address as the state file writes it (made once, not per write).
    text: str = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.text = str(self.addr.ip)


def state_file() -> Path:
    """Where the endpoints this plugin created are remembered (per netns):
    the journal, ``addr_adv-netns-INODE.journal``."""
    base = os.environ.get("MPTCPD_STATE_DIR") or os.environ.get("RUNTIME_DIRECTORY") \
        or "/run/mptcpd"
    try:
        netns = os.stat("/proc/self/ns/net").st_ino
    except OSError:
        netns = 0
    return Path(base.split(":")[0]) / f"addr_adv-netns-{netns}.journal"


def legacy_state_file() -> Path:
    """The state file of the earlier format (one JSON document, rewritten on
    every change), read once and replaced by the journal."""
    return state_file().with_suffix(".json")


def parse_state(data: bytes) -> dict[SockAddr, int]:
    """The earlier state file's contents, ``{"endpoints": {"<address>": <ID>}}``
    in UTF-8 JSON, as address -> ID (1..255).

    :raises ValueError: for anything else (and never another exception).
    """
    try:
        entries = json.loads(data.decode("utf-8"))["endpoints"].items()
        remembered = {SockAddr(ip): i for ip, i in entries
                      if type(i) is int and 0 < i <= 255}
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
        raise ValueError(str(exc) or type(exc).__name__) from None
    if len(remembered) != len(entries):
        raise ValueError("an entry is not an address and an ID 1..255")
    return remembered


def _journal_address(text: str) -> SockAddr:
    addr = SockAddr(text)
    if str(addr.ip) != text:
        raise ValueError("not an address as the journal writes it")
    return addr


def parse_journal(data: bytes) -> tuple[dict[SockAddr, int], bytes]:
    """The journal's contents as address -> ID (1..255), and its unfinished
    last line (``b""`` when it ends with a newline), which is not applied.

    The journal is :data:`JOURNAL_HEADER`, then one line per change, in
    ASCII: ``+ ADDRESS ID`` (the endpoint of ADDRESS, with that ID, is ours
    and may be in the kernel) or ``- ADDRESS`` (it is out of the kernel and
    forgotten).  Applied in order, the lines give what the plugin owns.

    :raises ValueError: for anything else (and never another exception).
    """
    end = data.rfind(b"\n") + 1
    torn = data[end:]
    if not data.startswith(JOURNAL_HEADER):
        if not end and JOURNAL_HEADER.startswith(data):
            return {}, torn  # the first write was cut short
        raise ValueError("no journal header")
    entries: dict[SockAddr, int] = {}
    lines = data[len(JOURNAL_HEADER):end].split(b"\n")
    lines.pop()  # what follows the last newline
    for number, line in enumerate(lines, 2):
        try:
            op, _, rest = line.decode("ascii").partition(" ")
            if op == "+":
                text, _, digits = rest.partition(" ")
                if not (0 < len(digits) <= 3 and digits.isdigit()) \
                        or not 0 < int(digits) <= 255 or str(int(digits)) != digits:
                    raise ValueError("not an ID 1..255")
                entries[_journal_address(text)] = int(digits)
            elif op == "-":
                entries.pop(_journal_address(rest), None)
            else:
                raise ValueError("neither + nor -")
        except ValueError as exc:  # UnicodeDecodeError included
            raise ValueError(f"line {number}: {exc}") from None
    return entries, torn


class Journal:
    """The state file: the endpoints this plugin created, as address text -> ID.

    A change costs one ``write`` of one line (:meth:`record`, whatever the
    number of entries) to the file opened with
    ``O_APPEND`` (:func:`parse_journal` has the format).  The file is
    rewritten whole (a temporary file renamed over it, so a reader finds the
    old file or the new one, whole) on the first change of a run, at
    :meth:`close` (exit), and once it holds many more lines than entries
    (:data:`JOURNAL_MAX_LINES`, :data:`JOURNAL_SLACK`; deferred by
    :data:`COMPACT_DELAY` while the loop runs).

    Nothing is fsynced, on purpose: the file must live as long as the
    kernel's endpoints, and those are gone after the only events an fsync
    protects from (a power loss or a crash of the machine, which may also
    leave a cut last line: it is ignored); a process killed at any moment
    leaves every line it wrote in the page cache, whole.  (``/run`` is
    usually a tmpfs, where fsync does nothing either.)

    A write that fails is warned about (once until one succeeds again);
    then the file is rewritten whole (at once, and at each change until
    that works) rather than appended to after a line it may have cut.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        #: What the file says.
        self.entries: dict[str, int] = {}
        #: What it should say (differs while writing fails).
        self._wanted: dict[str, int] | None = None
        self._fd: int | None = None
        self._lines = 0  #: entry lines in the file
        self._timer: asyncio.TimerHandle | None = None
        self._failing = False
        #: A state file of the earlier format, removed once the journal is written.
        self.legacy: Path | None = None

    def load(self) -> dict[SockAddr, int]:
        """What an earlier run recorded: address -> ID.  A missing file means
        none; an unreadable or corrupt one is warned about and taken as none
        (whatever cannot be proven ours is left alone).  A state file of the
        earlier format is read instead when there is one (it is removed once
        the journal is written, so it is the newer of the two)."""
        legacy = self.path.with_suffix(".json")
        try:
            data = legacy.read_bytes()
        except FileNotFoundError:
            pass
        except OSError as exc:
            self.legacy = legacy
            log.warning("Unable to read %s: %s; taking no endpoint as ours.", legacy,
                        exc.strerror)
            return {}
        else:
            self.legacy = legacy
            try:
                return parse_state(data)
            except ValueError as exc:
                log.warning("Ignoring the corrupt %s (%s); taking no endpoint as ours.",
                            legacy, exc)
                return {}
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            log.warning("Unable to read %s: %s; taking no endpoint as ours.", self.path,
                        exc.strerror)
            return {}
        try:
            remembered, torn = parse_journal(data)
        except ValueError as exc:
            log.warning("Ignoring the corrupt %s (%s); taking no endpoint as ours.",
                        self.path, exc)
            return {}
        if torn:
            log.warning("Ignoring the unfinished last line of %s (%r).", self.path,
                        torn[:60])
        return remembered

    def update(self, entries: dict[str, int]) -> None:
        """Record ``entries`` (copied) as what is ours: the lines that differ
        from what the file says.  O(entries): for start-up; one change is
        :meth:`record`."""
        if entries == self.entries and self._fd is not None:
            return
        self._wanted = entries = dict(entries)
        fd = self._fd
        if fd is None:
            self.compact()
            return
        old = self.entries
        lines = [f"- {text}\n" for text in old if text not in entries]
        lines += [f"+ {text} {id}\n" for text, id in entries.items() if old.get(text) != id]
        if self._append(fd, "".join(lines)):
            self.entries = entries
            self._wanted = None
            self._appended(len(lines))
        else:
            self.compact()

    def record(self, text: str, id: int | None) -> None:
        """Record one change: the endpoint of ``text`` is ours with ``id``,
        or (``None``) no longer.  One line appended whatever the number of
        entries, none when the file says so already."""
        fd = self._fd
        if fd is not None and self._wanted is None:
            entries = self.entries
            if entries.get(text) == id:
                return
            if id is None:
                if self._append(fd, f"- {text}\n"):
                    del entries[text]
                    self._appended(1)
                    return
            elif self._append(fd, f"+ {text} {id}\n"):
                entries[text] = id
                self._appended(1)
                return
        # The first change of this run, or writing failed: the file is
        # rewritten whole (at each change until that works).
        wanted = self._wanted
        if wanted is None:
            self._wanted = wanted = dict(self.entries)
        if id is None:
            wanted.pop(text, None)
        else:
            wanted[text] = id
        self.compact()

    def wanted(self, text: str) -> int | None:
        """The ID the file should give ``text`` (what it says, unless writing
        failed), None for none."""
        return (self.entries if self._wanted is None else self._wanted).get(text)

    def _append(self, fd: int, lines: str) -> bool:
        """Append ``lines``; False (the file closed, to be rewritten whole:
        it may end in a cut line) if that failed."""
        try:
            _write_all(fd, lines.encode())
        except OSError as exc:
            self._fd = None
            os.close(fd)
            self._failed(exc)
            return False
        return True

    def _appended(self, count: int) -> None:
        """``count`` lines were appended: compact the file once it has grown
        well beyond what it describes."""
        self._lines += count
        if self._lines > JOURNAL_MAX_LINES and self._lines > JOURNAL_SLACK * len(self.entries) \
                and self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.compact()
                return
            self._timer = loop.call_later(COMPACT_DELAY, self.compact)

    def compact(self) -> bool:
        """Rewrite the file whole with what is ours; False if that failed."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        entries = self.entries if self._wanted is None else self._wanted
        data = JOURNAL_HEADER + "".join(
            f"+ {text} {id}\n" for text, id in entries.items()).encode()
        path = self.path
        tmp = path.parent / f".addr_adv-{os.getpid()}.tmp"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND
                         | os.O_CLOEXEC, 0o644)
            try:
                _write_all(fd, data)
                os.replace(tmp, path)  # fd now writes to the journal
            except BaseException:
                os.close(fd)
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise
        except OSError as exc:
            self._failed(exc)
            return False
        if self._fd is not None:
            os.close(self._fd)
        self._fd = fd
        self.entries = entries
        self._wanted = None
        self._lines = len(entries)
        self._failing = False
        if self.legacy is not None:
            try:
                self.legacy.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("Unable to remove %s: %s", self.legacy, exc.strerror)
            self.legacy = None
        return True

    def _failed(self, exc: OSError) -> None:
        if not self._failing:
            self._failing = True
            log.warning("Unable to remember the endpoints in %s: %s", self.path, exc)

    def close(self) -> None:
        """Compact the file if it needs it, and close it."""
        if self._wanted is not None or self._timer is not None \
                or (self._fd is not None and self._lines > len(self.entries)):
            self.compact()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if not written:
            raise OSError(errno.EIO, "nothing written")
        view = view[written:]


class AddressAdvertiser:
    """The plugin's state; the module-level hooks delegate to one instance."""

    def __init__(self) -> None:
        self.subflows_limit = 0
        self.rcv_limit = 0
        self.owned: dict[SockAddr, Endpoint] = {}
        #: Endpoints whose address went, until the kernel has dropped them,
        #: by address, in the order they went (an address that comes back
        #: and goes again while its first endpoint is still on its way out
        #: has two).
        self.retiring: dict[SockAddr, list[Endpoint]] = {}
        self.foreign: set[SockAddr] = set()  #: addresses with endpoints not ours
        #: Addresses that count in the limits now (reported, carrier up).
        self.counted: set[SockAddr] = set()
        self.synced = False
        self.pending: list[tuple[str, Any, SockAddr]] = []
        self.remembered: dict[SockAddr, int] = {}
        self._journal: Journal | None = None
        #: Commands the daemon's queue refused, and every one made after the
        #: first of them, in the order they were made: (endpoint, wanted in
        #: the kernel), or (None, False) for the limits (one entry at most:
        #: the latest limits are sent when it comes up).  While it is not
        #: empty nothing goes straight to the queue, so the kernel still sees
        #: the changes in their order: an endpoint's removal before the
        #: addition of a new address that reuses its ID.  An addition still
        #: waiting here when its endpoint is to be removed is taken out, and
        #: the removal never made: addresses that come and go while the queue
        #: is full leave nothing behind, and the backlog holds at most one
        #: addition per endpoint however long the churn lasts.
        self.backlog: collections.deque[tuple[Endpoint | None, bool]] = collections.deque()
        self.limits: Limits | None = None  #: the latest limits asked for
        self._limits_waiting = False  #: the backlog holds the limits' entry
        self._retry: asyncio.TimerHandle | None = None

    @property
    def journal(self) -> Journal:
        """The state file (found when first needed: the environment decides)."""
        if self._journal is None:
            self._journal = Journal(state_file())
        return self._journal

    # -- limits (C: update_limits) ------------------------------------------

    def update_limits(self, pm: PathManager, delta: int) -> None:
        self.subflows_limit += delta
        if not MIN_LIMIT <= self.subflows_limit <= MAX_LIMIT:
            return
        if AddrFlags.SUBFLOW in pm.config.addr_flags:  # cheaper than &
            self.rcv_limit = self.subflows_limit
        self.limits = Limits(subflows=self.subflows_limit, rcv_add_addrs=self.rcv_limit)
        if self.backlog:
            self._limits_later(pm)
        else:
            self._send_limits(pm)

    def _send_limits(self, pm: PathManager) -> bool:
        """Ask the kernel for the latest limits; False when the queue refused
        them (they wait at the head of the backlog)."""
        limits = self.limits
        if limits is None:
            return True
        try:
            future = pm.kpm_set_limits(limits)
        except NotSupported:
            return True
        except OSError as exc:
            log.warning("can't update limit to %d: %d", limits.subflows, exc.errno or 0)
            return True
        if refused_by_queue(future):
            self._limits_waiting = True
            self.backlog.appendleft((None, False))
            self._retry_later(pm)
            return False
        future.add_done_callback(functools.partial(self._limits_answered, pm))
        return True

    def _limits_later(self, pm: PathManager) -> None:
        """The latest limits leave from the backlog, in their turn."""
        if not self._limits_waiting:
            self._limits_waiting = True
            self.backlog.append((None, False))
        self._retry_later(pm)

    def _limits_answered(self, pm: PathManager, future: asyncio.Future[Any]) -> None:
        if not future.cancelled() and isinstance(future.exception(), (QueueFull, NotReady)):
            self._limits_later(pm)  # not sent, or not known to be: the latest, again

    # -- start-up: which endpoints exist already -----------------------------

    def init(self, pm: PathManager) -> None:
        self.update_limits(pm, +2)
        self.remembered = self.journal.load()
        try:
            dump = pm.kpm_dump_addrs()
        except OSError as exc:
            log.warning("Unable to list the existing endpoints: %s", exc)
            self.synced = True
            return
        dump.add_done_callback(lambda f: self._synced(pm, f))
        log.info("MPTCP address advertiser path manager initialized.")

    def _synced(self, pm: PathManager, future: asyncio.Future[Any]) -> None:
        if not future.cancelled() and future.exception() is None:
            for info in future.result():
                if info.address is None:
                    continue
                addr = SockAddr(info.address.ip)
                if self.remembered.get(addr) == info.id:
                    # Created by an earlier run of this plugin: ours again.
                    self.owned[addr] = Endpoint(addr, info.id, info.ifindex, info.flags,
                                                in_kernel=True, target=True)
                else:
                    self.foreign.add(addr)
            self._check_adopted(pm)
        else:
            log.warning("Unable to list the existing endpoints; "
                        "assuming there are none.")
        self.synced = True
        self._save_state()  # whole, once: each later change records itself
        pending, self.pending = self.pending, []
        for op, interface, addr in pending:
            getattr(self, op)(pm, interface, addr)

    def _check_adopted(self, pm: PathManager) -> None:
        """Endpoints taken over whose address went while no daemon ran are
        removed; those on a link without carrier are withdrawn."""
        monitor = getattr(pm, "network_monitor", None)
        if monitor is None:
            return
        for endpoint in list(self.owned.values()):
            interface = monitor.find_interface(endpoint.addr)
            if interface is None:
                log.info("Removing endpoint %d: %s went while mptcpd was not running.",
                         endpoint.id, endpoint.addr)
                pm.id_manager.remove_id(endpoint.addr)
                self._retire(pm, endpoint)
            elif not interface.is_running:
                endpoint.active = False
                self._pump(pm, endpoint)

    # -- addresses -----------------------------------------------------------

    def new_local_address(self, pm: PathManager, interface: Interface, addr: SockAddr) -> None:
        if not self.synced:
            self.pending.append(("new_local_address", interface, addr))
            return
        key = SockAddr(addr.ip)
        if key in self.counted:
            return  # reported twice
        addr_id = pm.id_manager.get_id(key)
        if addr_id == 0:
            log.error("Unable to map addr to ID.")
            return
        running = interface.is_running
        if running or key in self.foreign:
            self.update_limits(pm, +1)
            self.counted.add(key)
        if key in self.foreign:
            log.info("Endpoint for %s exists already and is not ours; "
                     "leaving it alone.", key)
            return
        endpoint = self.owned.get(key)
        if endpoint is None:
            endpoint = Endpoint(key, addr_id, interface.index,
                                int(interface.endpoint_flags(pm.config.addr_flags)),
                                active=False)
            self.owned[key] = endpoint
            self._record(endpoint)
        # The monitor says where it lives now (an endpoint taken over at
        # start-up, or an address that moved).
        endpoint.ifindex = interface.index
        endpoint.active = running  # without carrier: restored by link_up
        self._pump(pm, endpoint)

    def _pump(self, pm: PathManager, endpoint: Endpoint) -> None:
        """Bring the kernel in line with what ``endpoint`` wants.  Commands
        go out in the order of the changes (the channel keeps it); one the
        daemon could not send (its queue was full) is retried once the
        others about that endpoint are answered."""
        if endpoint.active == endpoint.target:
            if endpoint.gone and not endpoint.inflight and not endpoint.in_kernel:
                self._forget(pm, endpoint)
            return
        wanted = endpoint.active
        # Remembered before the kernel has it: a daemon killed now still
        # takes it for its own after a restart.
        if wanted and self.journal.wanted(endpoint.text) != endpoint.id:
            self._record(endpoint)
        if endpoint.add_waiting and not wanted:
            # Its addition never left: neither it nor the removal is made.
            log.debug("Endpoint %d (%s): its addition had not left; dropped.",
                      endpoint.id, endpoint.addr)
            self.backlog.remove((endpoint, True))
            endpoint.add_waiting = False
            endpoint.inflight -= 1
            endpoint.target = False
            self._settle(endpoint)
            if endpoint.gone and not endpoint.inflight and not endpoint.in_kernel:
                self._forget(pm, endpoint)
            return
        # Counted as asked for from now, whether it leaves now or from the backlog.
        endpoint.inflight += 1
        endpoint.target = wanted
        if self.backlog:
            self._wait(endpoint, wanted)
        else:
            self._send(pm, endpoint, wanted)

    def _wait(self, endpoint: Endpoint, wanted: bool, first: bool = False,
              unsent: bool = True) -> None:
        """Put the command that makes ``endpoint`` ``wanted`` in the backlog:
        at its end, or ``first``.  An addition the kernel certainly never
        had (``unsent``) is cancelled by a removal while it waits."""
        if first:
            self.backlog.appendleft((endpoint, wanted))
        else:
            self.backlog.append((endpoint, wanted))
        if wanted and unsent:
            endpoint.add_waiting = True

    def _send(self, pm: PathManager, endpoint: Endpoint, wanted: bool) -> bool:
        """Hand the command that makes ``endpoint`` ``wanted`` in the kernel to
        the daemon; False when its queue refused it (it waits at the head of
        the backlog, and so does everything made after it)."""
        try:
            if wanted:
                future = pm.kpm_add_addr(endpoint.addr, endpoint.id, endpoint.flags,
                                         endpoint.ifindex)
            else:
                future = pm.kpm_remove_addr(endpoint.id)
        except (OSError, ValueError):
            endpoint.inflight -= 1
            self._settle(endpoint)
            if wanted:
                log.error("Unable to advertise IP address.")
                self._drop(pm, endpoint)
            else:
                log.error("Unable to stop advertising IP address.")
            return True
        if refused_by_queue(future):
            self._wait(endpoint, wanted, first=True)
            self._retry_later(pm)
            return False
        future.add_done_callback(functools.partial(self._answered, pm, endpoint, wanted))
        return True

    def _retry_later(self, pm: PathManager) -> None:
        if self._retry is None:
            self._retry = asyncio.get_running_loop().call_later(
                RETRY_DELAY, self._send_backlog, pm)

    def _send_backlog(self, pm: PathManager) -> None:
        """Hand the backlog to the daemon in order, up to the first command
        its queue refuses again."""
        self._retry = None
        backlog = self.backlog
        while backlog:
            endpoint, wanted = backlog.popleft()
            if endpoint is None:
                self._limits_waiting = False
                if not self._send_limits(pm):
                    return
            else:
                if wanted:
                    endpoint.add_waiting = False
                if not self._send(pm, endpoint, wanted):
                    return

    def _answered(self, pm: PathManager, endpoint: Endpoint, wanted: bool,
                  future: asyncio.Future[Any]) -> None:
        if future.cancelled():
            endpoint.inflight -= 1
            return  # the daemon is stopping
        error = future.exception()
        if isinstance(error, (QueueFull, NotReady)):
            # Not sent (or not known to be): again, in its turn.
            self._wait(endpoint, wanted, unsent=isinstance(error, QueueFull))
            self._retry_later(pm)
            return
        endpoint.inflight -= 1
        full = isinstance(error, KernelError) and error.errno == errno.ERANGE
        if wanted and full and self._removals_pending(endpoint):
            # No room yet while endpoints are on their way out: try again a
            # little later.
            self._settle(endpoint)
            asyncio.get_running_loop().call_later(RETRY_DELAY, self._pump, pm, endpoint)
            return
        if error is None:
            endpoint.in_kernel = wanted
        elif wanted:
            endpoint.in_kernel = False
            if full:
                log.error("Unable to advertise %s: the kernel's limit of %d endpoints "
                          "per network namespace is reached.", endpoint.addr,
                          KERNEL_MAX_ENDPOINTS)
            else:
                log.error("Unable to advertise IP address %s.", endpoint.addr)
            self._settle(endpoint)
            self._drop(pm, endpoint)
            return
        else:
            endpoint.in_kernel = False  # the kernel has no such endpoint
        self._settle(endpoint)
        self._pump(pm, endpoint)

    @staticmethod
    def _settle(endpoint: Endpoint) -> None:
        """Once every command about it is answered, what the kernel has is known."""
        if not endpoint.inflight:
            endpoint.target = endpoint.in_kernel

    def _removals_pending(self, other: Endpoint) -> bool:
        """Whether an endpoint other than ``other`` is on its way out of the
        kernel (it stops at the first: the oldest retiring one, usually)."""
        for endpoints in self.retiring.values():
            for e in endpoints:
                if e.in_kernel and e is not other:
                    return True  # retiring ones are never active
        return any(e.in_kernel and not e.active
                   for e in self.owned.values() if e is not other)

    def _drop(self, pm: PathManager, endpoint: Endpoint) -> None:
        """The kernel refused the endpoint: not ours, no retry; its ID is
        freed when its address goes."""
        if self.owned.get(endpoint.addr) is endpoint:
            del self.owned[endpoint.addr]
        self._forget(pm, endpoint)  # records it

    def _retire(self, pm: PathManager, endpoint: Endpoint) -> None:
        """Its address went: remove the endpoint, then forget it."""
        if self.owned.get(endpoint.addr) is endpoint:
            del self.owned[endpoint.addr]
        endpoint.gone = True
        endpoint.active = False
        # The state file's entry stays: the last to go of an address wins
        # among the retiring ones, as it did among the owned.
        self.retiring.setdefault(endpoint.addr, []).append(endpoint)
        self._pump(pm, endpoint)

    def _forget(self, pm: PathManager, endpoint: Endpoint) -> None:
        """Out of the kernel (or never in it) and its address gone."""
        endpoints = self.retiring.get(endpoint.addr)
        if endpoints is not None and endpoint in endpoints:
            endpoints.remove(endpoint)
            if not endpoints:
                del self.retiring[endpoint.addr]
        self._record(endpoint)

    def delete_local_address(self, pm: PathManager, interface: Interface, addr: SockAddr) -> None:
        if not self.synced:
            self.pending.append(("delete_local_address", interface, addr))
            return
        key = SockAddr(addr.ip)
        endpoint = self.owned.pop(key, None)
        counted = key in self.counted
        self.counted.discard(key)
        if endpoint is None:
            if counted:
                self.update_limits(pm, -1)
            if key in self.foreign:
                return  # a foreign endpoint stays, and so does its ID
            if pm.id_manager.lookup(key) == 0:
                if not counted:
                    log.info("No address ID associated with addr.")
                return
            # No endpoint (the kernel refused it): the ID is free again.
            pm.id_manager.remove_id(key)
            return
        # Free at once (as in C): a later endpoint with this ID is added
        # after this one's removal, the channel keeps the order.
        pm.id_manager.remove_id(key)
        if counted:
            self.update_limits(pm, -1)
        self.owned[key] = endpoint
        self._retire(pm, endpoint)

    # -- carrier -------------------------------------------------------------

    def link_down(self, pm: PathManager, interface: Interface) -> None:
        for endpoint in self.owned.values():
            if endpoint.ifindex == interface.index and endpoint.active:
                log.info("%s lost its carrier: withdrawing endpoint %d (%s).",
                         interface.name, endpoint.id, endpoint.addr)
                endpoint.active = False
                if endpoint.addr in self.counted:
                    self.counted.discard(endpoint.addr)
                    self.update_limits(pm, -1)
                self._pump(pm, endpoint)

    def link_up(self, pm: PathManager, interface: Interface) -> None:
        present = {SockAddr(a.ip) for a in interface.addrs}
        for endpoint in list(self.owned.values()):
            if endpoint.ifindex == interface.index and not endpoint.active \
                    and endpoint.addr in present:
                log.info("%s has its carrier back: restoring endpoint %d (%s).",
                         interface.name, endpoint.id, endpoint.addr)
                endpoint.active = True
                if endpoint.addr not in self.counted:
                    self.counted.add(endpoint.addr)
                    self.update_limits(pm, +1)
                self._pump(pm, endpoint)

    # -- per-interface flags -------------------------------------------------

    def apply_flags(self, pm: PathManager, interface: Interface) -> None:
        """Give this plugin's endpoints on ``interface`` the flags the
        configuration now gives the interface: in place (``SET_FLAGS``) when
        only ``backup``/``fullmesh`` change, which the kernel can change on a
        live endpoint, else (and while the daemon's full queue refuses
        commands) by removing the endpoint and adding it again with the same
        ID."""
        wanted = int(interface.endpoint_flags(pm.config.addr_flags))
        for endpoint in list(self.owned.values()):
            if endpoint.ifindex != interface.index or endpoint.flags == wanted:
                continue
            old, endpoint.flags = endpoint.flags, wanted
            if not endpoint.active:
                continue  # restored with the new flags when the carrier is back
            log.info("Endpoint %d (%s) on %s: flags %#x -> %#x.", endpoint.id,
                     endpoint.addr, interface.name, old, wanted)
            if not (old ^ wanted) & ~IN_PLACE_FLAGS and not self.backlog:
                try:
                    if not refused_by_queue(pm.kpm_set_flags(endpoint.addr, wanted)):
                        continue
                except (OSError, ValueError) as exc:
                    log.warning("Unable to change the flags of endpoint %d: %s",
                                endpoint.id, exc)
            # Out and in again, in this order (the channel keeps it; so does
            # the backlog, where it goes while the daemon's queue is full).
            endpoint.active = False
            self._pump(pm, endpoint)
            endpoint.active = True
            self._pump(pm, endpoint)

    # -- persistence ---------------------------------------------------------

    def _load_state(self) -> dict[SockAddr, int]:
        """The endpoints an earlier run created: address -> ID (see
        :meth:`Journal.load`)."""
        return self.journal.load()

    def _state(self) -> dict[str, int]:
        """What may be in the kernel, as the state file says it: the owned
        endpoints, and those whose address went but which are not known to
        be out of it yet; for an address with both, the owned one, else the
        last to go."""
        state = {e.text: e.id for endpoints in self.retiring.values() for e in endpoints}
        state.update((e.text, e.id) for e in self.owned.values())
        return state

    def _save_state(self) -> None:
        """Record the whole of :meth:`_state` (at start-up; O(endpoints))."""
        self.journal.update(self._state())

    def _record(self, endpoint: Endpoint) -> None:
        """Record what :meth:`_state` now says for ``endpoint``'s address
        (after a change of the owned or the retiring endpoints for it):
        O(1), whatever the number of endpoints."""
        entry = self.owned.get(endpoint.addr)
        if entry is None:
            endpoints = self.retiring.get(endpoint.addr)
            entry = endpoints[-1] if endpoints else None
        self.journal.record(endpoint.text, None if entry is None else entry.id)

    def flush_state(self) -> None:
        """Leave the state file compact and closed, and send nothing more (at exit)."""
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._journal is not None:
            self._journal.close()


_advertiser = AddressAdvertiser()


@hookimpl
def plugin_init(pm: PathManager) -> None:
    global _advertiser
    _advertiser.flush_state()  # a change the previous instance has not written yet
    _advertiser = AddressAdvertiser()
    _advertiser.init(pm)


@hookimpl
def plugin_exit(pm: PathManager) -> None:
    _advertiser.flush_state()
    log.info("MPTCP address advertiser path manager exited.")


@hookimpl
def new_local_address(interface: Interface, addr: SockAddr, pm: PathManager) -> None:
    _advertiser.new_local_address(pm, interface, addr)


@hookimpl
def delete_local_address(interface: Interface, addr: SockAddr, pm: PathManager) -> None:
    _advertiser.delete_local_address(pm, interface, addr)


@hookimpl
def link_down(interface: Interface, pm: PathManager) -> None:
    _advertiser.link_down(pm, interface)


@hookimpl
def link_up(interface: Interface, pm: PathManager) -> None:
    _advertiser.link_up(pm, interface)


@hookimpl
def update_interface(interface: Interface, pm: PathManager) -> None:
    _advertiser.apply_flags(pm, interface)


@hookimpl
def policy_changed(pm: PathManager) -> None:
    # The global addr-flags may have changed: every endpoint follows.
    for interface in pm.network_monitor.interfaces():
        _advertiser.apply_flags(pm, interface)
