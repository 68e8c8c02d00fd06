"""A throwaway two-host MPTCP lab built from network namespaces.

The lab is what the test suite and the README demo run on: a *client* and a
*server* namespace joined by up to three veth links, each link in its own
documentation subnet (IPv4 and IPv6).  Everything the lab creates carries a
unique name prefix (``mptcpd-lab-<pid>-<n>``) so that several runs can overlap,
and :meth:`Lab.close` removes every namespace and ends every process the lab
started, by PID.  Namespaces left behind by a lab whose process died are
removed the next time a lab is created.

The lab never touches the host's own namespace: interfaces, routes, sysctls
and MPTCP endpoints are only ever changed inside the lab's namespaces.

Only the documentation ranges are used: 192.0.2.0/24, 198.51.100.0/24,
203.0.113.0/24 and 2001:db8::/32.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import itertools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

T = TypeVar("T")

#: One IPv4 and one IPv6 documentation subnet per link, in link order.
SUBNETS: tuple[tuple[str, str], ...] = (
    ("192.0.2.0/24", "2001:db8:1::/64"),
    ("198.51.100.0/24", "2001:db8:2::/64"),
    ("203.0.113.0/24", "2001:db8:3::/64"),
)

PREFIX = "mptcpd-lab"
_counter = itertools.count(1)
_NAME_RE = re.compile(rf"^{PREFIX}-(\d+)-\d+-")

#: The repository holding this package (what lab processes need on their path).
REPO_ROOT = Path(__file__).resolve().parents[2]
#: How long lab set-up steps wait for the kernel before giving up.
SETUP_TIMEOUT = 10.0


class LabError(RuntimeError):
    """A lab set-up step or a wait on kernel state failed."""


class LabTimeout(LabError):
    """A wait on kernel state or on a process ran out of time."""


def wait_for(
    condition: Callable[[], T | None],
    timeout: float = 5.0,
    interval: float = 0.02,
    what: str = "condition",
) -> T:
    """Poll ``condition`` until it returns a true value, at most ``timeout`` s.

    Returns that value; raises :class:`LabError` naming ``what`` on timeout.
    The number of polls is bounded by the deadline and the interval.
    """
    deadline = time.monotonic() + timeout
    delay = interval
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise LabTimeout(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)


def run(args: Sequence[str], check: bool = True, timeout: float = 30.0,
        input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing text output; raise :class:`LabError` on failure."""
    try:
        proc = subprocess.run(
            list(args), capture_output=True, text=True, timeout=timeout, input=input
        )
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"{shlex.join(args)}: timed out after {timeout} s") from exc
    if check and proc.returncode != 0:
        raise LabError(
            f"{shlex.join(args)}: exit {proc.returncode}: {proc.stderr.strip()}"
        )
    return proc


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def list_namespaces() -> list[str]:
    out = run(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def remove_stale_namespaces() -> list[str]:
    """Delete lab namespaces whose creating process no longer exists."""
    removed = []
    for name in list_namespaces():
        m = _NAME_RE.match(name)
        if m and not _pid_alive(int(m.group(1))):
            run(["ip", "netns", "del", name], check=False)
            removed.append(name)
    return removed


def lab_requirements() -> str | None:
    """Return why a lab cannot be built here, or None when it can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces and veth links)"
    if not Path("/proc/sys/net/mptcp/enabled").exists():
        return "the kernel has no MPTCP support (/proc/sys/net/mptcp is missing)"
    try:
        run(["ip", "-V"])
    except (LabError, FileNotFoundError):
        return "iproute2 (the ip command) is not installed"
    return None


def path_manager_sysctl() -> tuple[str, dict[str, str]]:
    """The sysctl that selects the path manager on this kernel, and its values.

    Kernels from 6.15 have the string ``net.mptcp.path_manager``; older ones
    the integer ``net.mptcp.pm_type`` (0 in-kernel, 1 userspace).
    """
    if Path("/proc/sys/net/mptcp/path_manager").exists():
        return "net.mptcp.path_manager", {"kernel": "kernel", "userspace": "userspace"}
    return "net.mptcp.pm_type", {"kernel": "0", "userspace": "1"}


@dataclasses.dataclass(frozen=True)
class Link:
    """One veth link between the client and the server."""

    index: int  #: 1-based link number
    client_if: str
    server_if: str
    subnet4: ipaddress.IPv4Network
    subnet6: ipaddress.IPv6Network

    @property
    def client4(self) -> ipaddress.IPv4Address:
        return self.subnet4.network_address + 1

    @property
    def server4(self) -> ipaddress.IPv4Address:
        return self.subnet4.network_address + 2

    @property
    def client6(self) -> ipaddress.IPv6Address:
        return self.subnet6.network_address + 1

    @property
    def server6(self) -> ipaddress.IPv6Address:
        return self.subnet6.network_address + 2

    @property
    def table(self) -> int:
        """The routing table that carries traffic sourced from this link."""
        return 100 + self.index


@dataclasses.dataclass
class Endpoint:
    """An in-kernel PM endpoint as ``ip mptcp endpoint show`` reports it."""

    address: str
    id: int
    flags: frozenset[str]
    dev: str | None = None
    port: int | None = None


class Process:
    """A process the lab started; ended by PID when the lab closes."""

    def __init__(self, popen: subprocess.Popen[str], log_path: Path, name: str):
        self.popen = popen
        self.log_path = log_path
        self.name = name

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        """Everything the process wrote to stdout and stderr so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_output(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """Wait until the output matches the regular expression ``pattern``."""
        rx = re.compile(pattern, re.MULTILINE)

        def found() -> re.Match[str] | None:
            m = rx.search(self.output())
            if m is None and self.popen.poll() is not None:
                m = rx.search(self.output())
                if m is None:
                    raise LabError(
                        f"{self.name} exited ({self.popen.returncode}) before "
                        f"printing {pattern!r}; output:\n{self.output()}"
                    )
            return m

        try:
            return wait_for(found, timeout, what=f"{self.name} to print {pattern!r}")
        except LabTimeout as exc:
            raise LabTimeout(f"{exc}; its output so far:\n{self.output()}") from None

    def send_signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Send ``sig`` and wait for the exit status; SIGKILL after ``timeout``."""
        self.send_signal(sig)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait(5)

    def wait(self, timeout: float = 10.0) -> int:
        return self.popen.wait(timeout)


class Lab:
    """A client and a server namespace joined by ``links`` veth links.

    Use it as a context manager (or call :meth:`close`); the namespaces and
    every process started through :meth:`spawn` are removed at exit, also
    when the body raised.
    """

    def __init__(
        self,
        links: int = 2,
        path_manager: str = "kernel",
        ipv6: bool = True,
        source_routing: bool = True,
        name: str | None = None,
    ) -> None:
        if not 1 <= links <= len(SUBNETS):
            raise ValueError(f"a lab has 1 to {len(SUBNETS)} links, not {links}")
        self.tag = name or f"{PREFIX}-{os.getpid()}-{next(_counter)}"
        self.client = f"{self.tag}-cli"
        self.server = f"{self.tag}-srv"
        self.links = [
            Link(
                index=i + 1,
                client_if=f"c{i + 1}",
                server_if=f"s{i + 1}",
                subnet4=ipaddress.IPv4Network(SUBNETS[i][0]),
                subnet6=ipaddress.IPv6Network(SUBNETS[i][1]),
            )
            for i in range(links)
        ]
        self.ipv6 = ipv6
        self.source_routing = source_routing
        self.initial_path_manager = path_manager
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.tag}-"))
        self._procs: list[Process] = []

    # -- lifecycle ---------------------------------------------------------

    def __enter__(self) -> Lab:
        try:
            self.build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def build(self) -> None:
        remove_stale_namespaces()
        for ns in (self.client, self.server):
            run(["ip", "netns", "add", ns])
            self.ip(ns, "link", "set", "lo", "up")
            self.sysctl(ns, "net.mptcp.enabled", "1")
            self.sysctl(ns, "net.ipv4.conf.all.rp_filter", "0")
            self.sysctl(ns, "net.ipv4.conf.default.rp_filter", "0")
            self.sysctl(ns, "net.ipv4.ip_local_port_range", "10000 65000")
            self.sysctl(ns, "net.ipv4.tcp_tw_reuse", "1")
            self.set_path_manager(ns, self.initial_path_manager)
        for link in self.links:
            run(["ip", "link", "add", link.client_if, "netns", self.client,
                 "type", "veth", "peer", "name", link.server_if, "netns", self.server])
            for ns, ifname, a4, a6 in (
                (self.client, link.client_if, link.client4, link.client6),
                (self.server, link.server_if, link.server4, link.server6),
            ):
                self.sysctl(ns, f"net.ipv4.conf.{ifname}.rp_filter", "0")
                self.ip(ns, "addr", "add", f"{a4}/{link.subnet4.prefixlen}", "dev", ifname)
                if self.ipv6:
                    self.ip(ns, "-6", "addr", "add", f"{a6}/{link.subnet6.prefixlen}",
                            "dev", ifname, "nodad")
                self.ip(ns, "link", "set", ifname, "up")
                # Only the client: the server answers a join on the link it
                # came in by through its connected routes, and the client's
                # subflow socket, bound to its link, takes nothing else.
                if self.source_routing and ns == self.client:
                    self._source_route(ns, ifname, link, a4, a6)
        for link in self.links:
            self.wait_link_running(self.client, link.client_if)
            self.wait_link_running(self.server, link.server_if)

    def _source_route(self, ns: str, ifname: str, link: Link,
                      a4: ipaddress.IPv4Address, a6: ipaddress.IPv6Address) -> None:
        """Traffic sourced from a link's address leaves on that link, whatever
        its destination (so a subflow from link 2 to the server's link-1
        address really crosses link 2)."""
        table = str(link.table)
        self.ip(ns, "route", "add", str(link.subnet4), "dev", ifname, "table", table)
        self.ip(ns, "route", "add", "default", "dev", ifname, "table", table)
        self.ip(ns, "rule", "add", "from", str(a4), "table", table)
        if self.ipv6:
            self.ip(ns, "-6", "route", "add", str(link.subnet6), "dev", ifname,
                    "table", table)
            self.ip(ns, "-6", "rule", "add", "from", str(a6), "table", table)

    def close(self) -> None:
        """End every process the lab started, delete its namespaces and its
        working directory (kept when ``MPTCPD_LAB_KEEP`` is set, for a look
        at the processes' logs)."""
        for proc in reversed(self._procs):
            if proc.popen.poll() is None:
                proc.stop(signal.SIGTERM, timeout=5)
        self._procs.clear()
        for ns in (self.client, self.server):
            if ns in list_namespaces():
                run(["ip", "netns", "del", ns], check=False)
        if not os.environ.get("MPTCPD_LAB_KEEP"):
            shutil.rmtree(self.workdir, ignore_errors=True)

    def logs(self, tail: int = 60) -> str:
        """The last ``tail`` lines of every process's output, one block each."""
        blocks = []
        for proc in self._procs:
            lines = proc.output().splitlines()[-tail:]
            blocks.append(f"--- {proc.name} (pid {proc.pid}, {proc.log_path.name})\n"
                          + "\n".join(lines))
        return "\n".join(blocks)

    # -- running things inside the lab ------------------------------------

    def ip(self, ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(["ip", "-n", ns, *args], check=check)

    def exec(self, ns: str, *args: str, check: bool = True, timeout: float = 30.0,
             input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command inside namespace ``ns`` and wait for it."""
        return run(["ip", "netns", "exec", ns, *args], check=check, timeout=timeout,
                   input=input)

    def spawn(self, ns: str, *args: str, name: str | None = None,
              env: dict[str, str] | None = None) -> Process:
        """Start a command inside ``ns`` in the background; output goes to a file."""
        name = name or Path(args[0]).name
        log_path = self.workdir / f"{name}-{len(self._procs)}.log"
        log: IO[str] = open(log_path, "w")
        try:
            popen = subprocess.Popen(
                ["ip", "netns", "exec", ns, *args],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                text=True, env=env,
            )
        finally:
            log.close()
        proc = Process(popen, log_path, name)
        self._procs.append(proc)
        return proc

    def python(self, ns: str, *args: str, name: str | None = None,
               env: dict[str, str] | None = None) -> Process:
        """Start this interpreter inside ``ns`` with ``args``; the repository
        is on its path, so ``-m tests.lab.traffic`` is found from anywhere."""
        env = dict(os.environ if env is None else env)
        paths = [str(REPO_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join(paths)
        return self.spawn(ns, sys.executable, *args, name=name, env=env)

    def flood(self, seconds: float, flooders: int = 2, port: int = 5300) -> list[Process]:
        """Start ``flooders`` processes in the client that open and reset
        MPTCP connections to the server's first address and ``port`` back to
        back for ``seconds`` (``tests.lab.traffic flood``; a ``sink`` must
        listen there): enough to overrun a daemon's event socket."""
        server = str(self.links[0].server4)
        return [self.python(self.client, "-m", "tests.lab.traffic", "flood", server, str(port),
                            "--seconds", str(seconds), name="flooder")
                for _ in range(flooders)]

    def start_mptcpd(self, *args: str, ns: str | None = None,
                     config: str | None = None,
                     env: dict[str, str] | None = None) -> Process:
        """Start ``mptcpd`` with ``args`` inside ``ns`` (the client by default).

        ``config`` is the text of the configuration file the daemon reads
        (through ``MPTCPD_CONFIG``); without it the daemon is pointed at a
        path that does not exist, so the host's /etc/mptcpd is never read.
        """
        ns = ns or self.client
        path = self.workdir / f"mptcpd-{len(self._procs)}.conf"
        if config is not None:
            path.write_text(config)
            path.chmod(0o644)
        if env is None:
            full_env = dict(os.environ)
            # Never let a lab daemon notify the service manager of whatever
            # runs the lab.
            full_env.pop("NOTIFY_SOCKET", None)
        else:
            full_env = dict(env)
        full_env["MPTCPD_CONFIG"] = str(path)
        # Plugins keep their state files in the lab, not in the host's /run.
        full_env.setdefault("MPTCPD_STATE_DIR", str(self.workdir / "state"))
        return self.python(ns, "-m", "mptcpd", *args, name="mptcpd", env=full_env)

    # -- kernel state ------------------------------------------------------

    def sysctl(self, ns: str, key: str, value: str) -> None:
        self.exec(ns, "sysctl", "-q", "-w", f"{key}={value}")

    def read_sysctl(self, ns: str, key: str) -> str:
        return self.exec(ns, "sysctl", "-n", key).stdout.strip()

    def set_path_manager(self, ns: str, pm: str) -> None:
        """Select the ``kernel`` or ``userspace`` path manager in ``ns``."""
        key, values = path_manager_sysctl()
        if pm not in values:
            raise ValueError(f"unknown path manager {pm!r}")
        self.sysctl(ns, key, values[pm])

    def link_state(self, ns: str, ifname: str) -> dict[str, Any]:
        out = self.ip(ns, "-j", "link", "show", "dev", ifname).stdout
        data: list[dict[str, Any]] = json.loads(out)
        return data[0]

    def wait_link_running(self, ns: str, ifname: str, timeout: float = SETUP_TIMEOUT) -> None:
        """Wait until ``ifname`` is operationally up (IFF_RUNNING, LOWER_UP)."""
        wait_for(
            lambda: "LOWER_UP" in self.link_state(ns, ifname).get("flags", ()),
            timeout, what=f"{ifname} in {ns} to be running",
        )

    def endpoints(self, ns: str) -> list[Endpoint]:
        """The in-kernel PM endpoints of ``ns`` (``ip mptcp endpoint show``)."""
        out = self.ip(ns, "-j", "mptcp", "endpoint", "show").stdout.strip()
        result = []
        for entry in json.loads(out or "[]"):
            flags = frozenset(
                k for k, v in entry.items()
                if v is True and k not in ("address", "id", "dev", "port")
            )
            result.append(Endpoint(entry["address"], int(entry["id"]), flags,
                                   entry.get("dev"), entry.get("port")))
        return result

    def limits(self, ns: str) -> dict[str, int]:
        """``ip mptcp limits show`` as a dict (``add_addr_accepted``, ``subflows``)."""
        words = self.ip(ns, "mptcp", "limits", "show").stdout.split()
        return {words[i]: int(words[i + 1]) for i in range(0, len(words) - 1, 2)}

    def set_carrier(self, link: Link, up: bool) -> None:
        """Take the carrier of ``link`` away (or give it back) on the client side.

        The server end of the veth goes down, so the client's interface stays
        administratively up with its addresses but loses carrier (NO-CARRIER),
        as when a cable is unplugged.
        """
        self.ip(self.server, "link", "set", link.server_if, "up" if up else "down")
        if up:
            self.wait_link_running(self.client, link.client_if)
        else:
            wait_for(
                lambda: "NO-CARRIER" in self.link_state(self.client, link.client_if)
                .get("flags", ()),
                SETUP_TIMEOUT, what=f"{link.client_if} to lose carrier",
            )

    def limit_rate(self, link: Link, mbit: int) -> None:
        """Limit the client's sending rate on ``link`` (a tbf qdisc), so that a
        transfer needs every subflow and the scheduler spreads it."""
        self.exec(self.client, "tc", "qdisc", "replace", "dev", link.client_if, "root",
                  "tbf", "rate", f"{mbit}mbit", "burst", "64kb", "latency", "100ms")

    def tx_bytes(self, ns: str, ifname: str) -> int:
        """Bytes sent so far by ``ifname`` in ``ns`` (the kernel's link counter)."""
        out = self.ip(ns, "-s", "-j", "link", "show", "dev", ifname).stdout
        return int(json.loads(out)[0]["stats64"]["tx"]["bytes"])
