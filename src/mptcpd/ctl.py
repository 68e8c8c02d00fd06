"""mptcpctl: the command line of mptcpd's control socket.

``mptcpctl [--socket PATH] [--json] COMMAND`` calls the daemon's varlink
interface ``io.mptcpd`` (see :mod:`mptcpd.daemon.control`) and prints the
answer as aligned tables, or with ``--json`` as the reply's JSON: the
reply's parameters, or for the listing commands the list itself.

The socket is ``--socket``, else ``control-socket`` of the configuration
file (``$MPTCPD_CONFIG`` or ``/etc/mptcpd/mptcpd.conf``), else in the
runtime directory (``$MPTCPD_STATE_DIR``, ``$RUNTIME_DIRECTORY`` or
``/run/mptcpd``) ``control-netns-<inode>`` of this network namespace if it
exists (see :func:`mptcpd.daemon.control.start_server`), else ``control``.

Exit status: 0 success; 1 the daemon answered with an error (the kernel
refused, the family is not ready, ...); 2 usage error; 3 the daemon is not
running (no socket, or nobody listening); 4 access denied (to the socket,
or to a write method).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import click

from mptcpd import config as cfg
from mptcpd.daemon.control import INTERFACE, default_socket_path, namespace_socket_path

#: Exit statuses.
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3
EXIT_DENIED = 4
#: Seconds a call may wait for the daemon's answer.
TIMEOUT = 30.0


class CtlError(Exception):
    """A failure to report: the message and the exit status."""

    def __init__(self, message: str, status: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.status = status


def socket_path(given: str | None = None) -> Path:
    """The control socket to use (see the module docstring)."""
    if given:
        return Path(given)
    conf = cfg.config_path()
    try:
        data = Path(conf).read_bytes()
        value = cfg.parse_settings(data).get_string(cfg.CORE_GROUP, "control-socket")
    except (OSError, ValueError):
        value = None
    if value and value.startswith("/"):
        return Path(value)
    try:  # this namespace's daemon, when another namespace's has the default
        own = namespace_socket_path()
        if own.is_socket():
            return own
    except OSError:
        pass
    return default_socket_path()


class Client:
    """A varlink connection to the daemon (blocking, one call at a time)."""

    def __init__(self, path: Path, timeout: float | None = TIMEOUT) -> None:
        self.path = path
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except OSError as exc:
            sock.close()
            if exc.errno in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTDIR):
                raise CtlError(f"mptcpd is not running (no control socket at {path}: "
                               f"{exc.strerror})", EXIT_NOT_RUNNING) from None
            if exc.errno in (errno.EACCES, errno.EPERM):
                raise CtlError(f"access to the control socket {path} denied "
                               "(root or the socket's group is needed)",
                               EXIT_DENIED) from None
            raise CtlError(f"cannot connect to the control socket {path}: "
                           f"{exc.strerror or exc}") from None
        self.sock = sock
        self._buffer = b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, method: str, parameters: dict[str, Any] | None, more: bool) -> None:
        message: dict[str, Any] = {"method": f"{INTERFACE}.{method}"}
        if parameters:
            message["parameters"] = parameters
        if more:
            message["more"] = True
        self.sock.sendall(json.dumps(message).encode() + b"\0")

    def _reply(self) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                raise CtlError("mptcpd did not answer in time") from None
            except OSError as exc:
                raise CtlError(f"connection to mptcpd lost: {exc.strerror or exc}") from None
            if not chunk:
                raise CtlError("mptcpd closed the connection")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        reply: dict[str, Any] = json.loads(message)
        error = reply.get("error")
        if error:
            raise _error(error, reply.get("parameters") or {})
        return reply

    def call(self, method: str, parameters: dict[str, Any] | None = None) -> dict[str, Any]:
        """The parameters of the reply to ``method``."""
        self._send(method, parameters, more=False)
        result: dict[str, Any] = self._reply().get("parameters") or {}
        return result

    def buffered(self) -> bool:
        """Whether another reply has been received already."""
        return b"\0" in self._buffer

    def stream(self, method: str, parameters: dict[str, Any] | None = None
               ) -> Iterator[dict[str, Any]]:
        """The parameters of each reply to ``method`` called with ``more``."""
        self._send(method, parameters, more=True)
        while True:
            reply = self._reply()
            yield reply.get("parameters") or {}
            if not reply.get("continues"):
                return


def _error(name: str, parameters: dict[str, Any]) -> CtlError:
    short = name.rsplit(".", 1)[-1]
    if short == "PermissionDenied":
        return CtlError(f"permission denied: {parameters.get('method', 'this method')} "
                        "needs root or CAP_NET_ADMIN", EXIT_DENIED)
    if short == "KernelError":
        return CtlError(f"the kernel refused: {parameters.get('message')} "
                        f"({parameters.get('name')})")
    if short == "InvalidArgument":
        return CtlError(f"invalid argument: {parameters.get('reason')}")
    if short == "NotReady":
        return CtlError(f"not ready: {parameters.get('message')}")
    detail = ", ".join(f"{k}={v}" for k, v in parameters.items())
    return CtlError(f"{name}" + (f": {detail}" if detail else ""))


# -- output -------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Aligned columns (the last one not padded), as ``ss`` and ``ip`` print."""
    cells = [[str(h) for h in headers]] + [
        ["-" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        padded = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])] + [row[-1]]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def _addr(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _duration(seconds: float) -> str:
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{days}d"] if days else []
    if days or hours:
        parts.append(f"{hours}h")
    if days or hours or minutes:
        parts.append(f"{minutes}m")
    parts.append(f"{secs}s")
    return "".join(parts)


def show_status(status: dict[str, Any]) -> str:
    lines = [
        f"mptcpd {status['version']}, up {_duration(status['uptime'])}",
        f"kernel path manager: {status['kernel_path_manager'] or 'unknown'}"
        f" ({'ready' if status['ready'] else 'mptcp_pm family not available'})",
        f"plugins: {', '.join(p['name'] for p in status['plugins']) or 'none'}"
        f"; default: {status['default_plugin'] or 'none'}",
        f"connections: {status['connections']}",
        "events: " + ", ".join(f"{k} {v}" for k, v in status["events"].items()),
        f"events lost: {status['events_lost']} (overruns); resyncs: {status['resyncs']}",
        f"command queue: {status['queue_depth']} waiting, {status['in_flight']} in flight",
        f"monitors: {status['monitors']} ({status['monitors_dropped']} dropped)",
    ]
    if status["commands"]:
        lines += ["commands:", _indent(table(
            ("OPERATION", "RESULT", "COUNT"),
            [(c["operation"], c["result"], c["count"]) for c in status["commands"]]))]
    return "\n".join(lines)


def _indent(text: str, prefix: str = "  ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


def show_connections(connections: list[dict[str, Any]]) -> str:
    if not connections:
        return "no MPTCP connections"
    headers = ("TOKEN", "SIDE", "PLUGIN", "LOCAL", "REMOTE", "STATE", "SUBFLOWS",
               "SENT", "RECEIVED")
    rows = []
    for c in connections:
        info = c["info"]
        rows.append((
            f"{c['token']:08x}", "server" if c["server_side"] else "client", c["plugin"],
            _addr(c["local_address"], c["local_port"]),
            _addr(c["remote_address"], c["remote_port"]),
            c["state"] + (" (fallback)" if c["fallback"] else ""), len(c["subflows"]),
            info.get("bytes_sent"), info.get("bytes_received")))
    out = [table(headers, rows)]
    sub_rows = []
    for c in connections:
        for sf in c["subflows"]:
            sub_rows.append((
                f"{c['token']:08x}", _addr(sf["local_address"], sf["local_port"]),
                _addr(sf["remote_address"], sf["remote_port"]), sf["interface"],
                sf["state"], "initial" if sf["initial"] else "join",
                "backup" if sf["backup"] else "-",
                f"{sf['local_id']}/{sf['remote_id']}"))
    if sub_rows:
        out += ["", table(("TOKEN", "SUBFLOW LOCAL", "REMOTE", "DEV", "STATE", "KIND",
                           "PRIO", "IDS"), sub_rows)]
    return "\n".join(out)


def show_endpoints(endpoints: list[dict[str, Any]]) -> str:
    if not endpoints:
        return "no endpoints"
    return table(("ID", "ADDRESS", "PORT", "FLAGS", "DEV", "OWNER"), [
        (e["id"], e["address"], e["port"] or None, ",".join(e["flags"]) or None,
         e["interface"], e["owner"]) for e in endpoints])


def show_limits(limits: dict[str, Any]) -> str:
    return table(("LIMIT", "VALUE"), [("subflows", limits["subflows"]),
                                      ("add_addr_accepted", limits["add_addr_accepted"])])


def show_interfaces(interfaces: list[dict[str, Any]]) -> str:
    if not interfaces:
        return "no interfaces tracked"
    rows = []
    for i in interfaces:
        carrier = {True: "yes", False: "no", None: None}[i["carrier"]]
        policy = (f"denied ({i['denied']})" if i.get("denied")
                  else ",".join(i["addr_flags"]) or "no flags" if i.get("addr_flags") is not None
                  else "allowed")
        addresses = " ".join(
            f"{a['address']}(filtered: {a['filtered']})" if a.get("filtered")
            else f"{a['address']}({a['state']})" if a["state"] not in ("announced", None)
            else a["address"] for a in i["addresses"])
        rows.append((i["index"], i["name"], i["operstate"], carrier, policy, addresses or None))
    return table(("INDEX", "NAME", "STATE", "CARRIER", "POLICY", "ADDRESSES"), rows)


def show_plugins(status: dict[str, Any]) -> str:
    if not status["plugins"]:
        return "no plugins loaded"
    return table(("NAME", "PRIORITY", "DEFAULT", "CONNECTIONS", "DESCRIPTION"), [
        (p["name"], p["priority"], "yes" if p["name"] == status["default_plugin"] else "no",
         p["connections"], p["description"]) for p in status["plugins"]])


# -- the command line ---------------------------------------------------------------


class _Context:
    def __init__(self, socket: str | None, as_json: bool) -> None:
        self.path = socket_path(socket)
        self.as_json = as_json

    def client(self) -> Client:
        return Client(self.path)


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2))


def _show(ctx: _Context, value: Any, human: Callable[[Any], str]) -> None:
    if ctx.as_json:
        _print_json(value)
    else:
        click.echo(human(value))


def _fail(exc: CtlError) -> NoReturn:
    click.echo(f"mptcpctl: {exc}", err=True)
    sys.exit(exc.status)


pass_ctx = click.make_pass_decorator(_Context)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--socket", "socket_", metavar="PATH",
              help="The daemon's control socket (default: control-socket of "
                   "mptcpd.conf, else /run/mptcpd/control).")
@click.option("--json", "as_json", is_flag=True,
              help="Print the daemon's replies as JSON.")
@click.version_option(package_name="mptcpd", prog_name="mptcpctl")
@click.pass_context
def cli(ctx: click.Context, socket_: str | None, as_json: bool) -> None:
    """Show and control what mptcpd, the MPTCP path-management daemon, does."""
    ctx.obj = _Context(socket_, as_json)


def _query(ctx: _Context, method: str, key: str) -> Any:
    try:
        with ctx.client() as client:
            return client.call(method)[key]
    except CtlError as exc:
        _fail(exc)


@cli.command()
@pass_ctx
def status(ctx: _Context) -> None:
    """The daemon's version, plugins, kernel path manager and counters."""
    value = _query(ctx, "GetStatus", "status")
    _show(ctx, value, show_status)


@cli.command()
@pass_ctx
def connections(ctx: _Context) -> None:
    """The MPTCP connections, their subflows and MPTCP_INFO counters."""
    value = _query(ctx, "ListConnections", "connections")
    _show(ctx, value, show_connections)


@cli.command()
@pass_ctx
def endpoints(ctx: _Context) -> None:
    """The in-kernel path manager's endpoints and who created them."""
    value = _query(ctx, "ListEndpoints", "endpoints")
    _show(ctx, value, show_endpoints)


@cli.group(invoke_without_command=True)
@click.pass_context
def limits(click_ctx: click.Context) -> None:
    """The in-kernel path manager's limits (limits set: change them)."""
    if click_ctx.invoked_subcommand is None:
        ctx = click_ctx.find_object(_Context)
        assert ctx is not None
        value = _query(ctx, "GetLimits", "limits")
        _show(ctx, value, show_limits)


@limits.command("set")
@click.option("--subflows", type=int, help="Subflows per connection.")
@click.option("--add-addr-accepted", type=int,
              help="Addresses accepted from the peer's ADD_ADDR.")
@pass_ctx
def limits_set(ctx: _Context, subflows: int | None, add_addr_accepted: int | None) -> None:
    """Set the limits (one left out is kept)."""
    _write(ctx, "SetLimits", {"subflows": subflows, "add_addr_accepted": add_addr_accepted})


@cli.command()
@pass_ctx
def interfaces(ctx: _Context) -> None:
    """The interfaces the daemon tracks and their addresses."""
    value = _query(ctx, "ListInterfaces", "interfaces")
    _show(ctx, value, show_interfaces)


@cli.command()
@pass_ctx
def plugins(ctx: _Context) -> None:
    """The loaded plugins and the default path manager."""
    value = _query(ctx, "GetStatus", "status")
    if ctx.as_json:
        _print_json(value["plugins"])
    else:
        click.echo(show_plugins(value))


def show_record(record: dict[str, Any]) -> str | None:
    """One monitor record as a line (None for the bookkeeping ones)."""
    kind = record.get("kind")
    if kind == "event":
        words = [f"[{record['name'].upper():>16}]"]
        if "token" in record:
            words.append(f"token={record['token']:08x}")
        for key in ("local", "remote"):
            if f"{key}_address" in record:
                words.append(f"{key}={_addr(record[f'{key}_address'], record[f'{key}_port'])}")
        if "address" in record:
            words.append(f"address={_addr(record['address'], record['port'])}")
        for key in ("address_id", "local_id", "remote_id", "server_side", "deny_join_id0",
                    "backup", "error", "ifindex", "reset_reason", "timeout"):
            if key in record:
                value = record[key]
                words.append(f"{key}={int(value) if isinstance(value, bool) else value}")
        return " ".join(words)
    if kind == "command":
        text = f"[{'COMMAND':>16}] {record['name']}({', '.join(record['arguments'])})" \
               f" -> {record['result']}"
        if "message" in record:
            text += f": {record['message']}"
        return text
    return None


@cli.command()
@pass_ctx
def monitor(ctx: _Context) -> None:
    """Every kernel event and every command the daemon sends, as they come
    (until interrupted)."""
    try:
        client = Client(ctx.path, timeout=None)
        with client:
            for record in client.stream("Monitor"):
                record = record.get("record", {})
                if ctx.as_json:
                    click.echo(json.dumps(record))
                else:
                    line = show_record(record)
                    if line is not None:
                        click.echo(line)
                    elif record.get("kind") == "started":
                        click.echo("Monitoring mptcpd's events and commands.", err=True)
                if not client.buffered():  # about to wait: show what came
                    sys.stdout.flush()
                if record.get("kind") == "end":
                    _fail(CtlError("mptcpd ended the monitor (the client fell behind)"))
    except CtlError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        return


# -- metrics ----------------------------------------------------------------------------


def render_metrics(status: dict[str, Any], connections: list[dict[str, Any]],
                   endpoints: list[dict[str, Any]] | None) -> str:
    """The daemon's counters in the Prometheus text exposition format (for
    node_exporter's textfile collector), rendered by prometheus-client."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        InfoMetricFamily,
        Metric,
    )

    families: list[Metric] = []
    info = InfoMetricFamily("mptcpd", "The daemon's version and configuration.")
    info.add_metric([], {"version": status["version"],
                         "kernel_path_manager": status["kernel_path_manager"] or "",
                         "default_plugin": status["default_plugin"] or ""})
    families.append(info)

    def gauge(name: str, doc: str, value: float) -> None:
        families.append(GaugeMetricFamily(name, doc, value=value))

    def counter(name: str, doc: str, value: float) -> None:
        families.append(CounterMetricFamily(name, doc, value=value))

    gauge("mptcpd_uptime_seconds", "Seconds since the daemon started.", status["uptime"])
    gauge("mptcpd_ready", "1 when the kernel's mptcp_pm family is available.",
          1 if status["ready"] else 0)
    events = CounterMetricFamily("mptcpd_events", "Kernel path-manager events read, by type.",
                                 labels=["type"])
    for name, count in status["events"].items():
        events.add_metric([name], count)
    families.append(events)
    counter("mptcpd_event_overruns", "Receive overruns of the event socket (events lost).",
            status["events_lost"])
    counter("mptcpd_resyncs", "Resynchronisations after lost events.", status["resyncs"])
    commands = CounterMetricFamily("mptcpd_commands", "Commands sent, by operation and result.",
                                   labels=["operation", "result"])
    for entry in status["commands"]:
        commands.add_metric([entry["operation"], entry["result"]], entry["count"])
    families.append(commands)
    gauge("mptcpd_command_queue_depth", "Commands waiting to be sent.", status["queue_depth"])
    gauge("mptcpd_commands_in_flight", "Commands sent and not yet answered.",
          status["in_flight"])
    bound = GaugeMetricFamily("mptcpd_plugin_connections",
                              "Connections bound to each plugin.", labels=["plugin"])
    for plugin in status["plugins"]:
        bound.add_metric([plugin["name"]], plugin["connections"])
    families.append(bound)
    gauge("mptcpd_monitor_clients", "Monitor clients connected.", status["monitors"])
    counter("mptcpd_monitor_clients_dropped", "Monitor clients dropped for falling behind.",
            status["monitors_dropped"])
    gauge("mptcpd_mptcp_connections", "MPTCP connections in the namespace (sock_diag).",
          len(connections))
    gauge("mptcpd_mptcp_subflows", "Subflows of those connections (initial ones included).",
          sum(len(c["subflows"]) for c in connections))
    gauge("mptcpd_mptcp_fallback_connections", "Connections that fell back to TCP.",
          sum(1 for c in connections if c["fallback"]))
    if endpoints is not None:
        owned = GaugeMetricFamily("mptcpd_endpoints", "In-kernel PM endpoints, by owner "
                                  "(none: not created by mptcpd).", labels=["owner"])
        by_owner: dict[str, int] = {}
        for e in endpoints:
            key = e["owner"] or "none"
            by_owner[key] = by_owner.get(key, 0) + 1
        for owner, count in sorted(by_owner.items()):
            owned.add_metric([owner], count)
        families.append(owned)

    class Collector:
        def collect(self) -> list[Metric]:
            return families

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector())
    return generate_latest(registry).decode()


@cli.command()
@pass_ctx
def metrics(ctx: _Context) -> None:
    """The daemon's counters in the Prometheus text format."""
    try:
        with ctx.client() as client:
            status = client.call("GetStatus")["status"]
            connections = client.call("ListConnections")["connections"]
            try:
                endpoints = client.call("ListEndpoints")["endpoints"]
            except CtlError:  # no mptcp_pm family: no endpoint figures
                endpoints = None
    except CtlError as exc:
        _fail(exc)
    click.echo(render_metrics(status, connections, endpoints), nl=False)


# -- write commands ------------------------------------------------------------------


def _write(ctx: _Context, method: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """Call a write method (None values left out); its reply's parameters."""
    try:
        with ctx.client() as client:
            reply = client.call(method, {k: v for k, v in parameters.items()
                                         if v is not None})
    except CtlError as exc:
        _fail(exc)
    if ctx.as_json:
        _print_json(reply)
    return reply


def parse_token(text: str) -> int:
    """A connection token as mptcpctl and ip print it: hexadecimal, with or
    without 0x."""
    try:
        return int(text, 16)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a hexadecimal token") from None


def parse_endpoint(text: str) -> tuple[str, int]:
    """``ADDR``, ``ADDR:PORT`` or ``[ADDR6]:PORT`` -> (address, port)."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":") or "0"
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, "0"
    try:
        return host, int(port)
    except ValueError:
        raise click.BadParameter(f"bad port in {text!r}") from None


def _pair(local: str, remote: str) -> dict[str, Any]:
    laddr, lport = parse_endpoint(local)
    raddr, rport = parse_endpoint(remote)
    return {"local_address": laddr, "local_port": lport,
            "remote_address": raddr, "remote_port": rport}


@cli.group()
def endpoint() -> None:
    """Add or remove an in-kernel path manager endpoint."""


@endpoint.command("add")
@click.argument("address")
@click.option("--id", "id_", type=int, help="The endpoint's ID (default: the daemon picks).")
@click.option("--port", type=int, help="A port (signal endpoints).")
@click.option("--flags", default="", help="Comma-separated: signal, subflow, backup, "
                                          "fullmesh, laminar.")
@click.option("--dev", help="The endpoint's interface.")
@pass_ctx
def endpoint_add(ctx: _Context, address: str, id_: int | None, port: int | None,
                 flags: str, dev: str | None) -> None:
    """Add an endpoint for ADDRESS."""
    reply = _write(ctx, "AddEndpoint", {
        "address": address, "id": id_, "port": port, "interface": dev,
        "flags": [f for f in flags.split(",") if f]})
    if not ctx.as_json:
        click.echo(f"endpoint {reply['id']} added")


@endpoint.command("del")
@click.argument("id_", metavar="ID", type=int)
@pass_ctx
def endpoint_del(ctx: _Context, id_: int) -> None:
    """Remove the endpoint ID."""
    _write(ctx, "RemoveEndpoint", {"id": id_})


@cli.group()
def subflow() -> None:
    """Open or close a subflow (userspace path manager)."""


@subflow.command("add")
@click.argument("token")
@click.argument("local")
@click.argument("remote")
@click.option("--local-id", type=int, default=0)
@click.option("--remote-id", type=int, default=0)
@click.option("--backup", is_flag=True,
              help="The join asks the peer to take it as a backup from its first packet.")
@pass_ctx
def subflow_add(ctx: _Context, token: str, local: str, remote: str, local_id: int,
                remote_id: int, backup: bool) -> None:
    """Open a subflow of connection TOKEN from LOCAL (ADDR[:PORT]) to REMOTE."""
    _write(ctx, "AddSubflow", {"token": parse_token(token), **_pair(local, remote),
                               "local_id": local_id, "remote_id": remote_id,
                               "backup": backup})


@subflow.command("del")
@click.argument("token")
@click.argument("local")
@click.argument("remote")
@pass_ctx
def subflow_del(ctx: _Context, token: str, local: str, remote: str) -> None:
    """Close the subflow LOCAL -> REMOTE of connection TOKEN."""
    _write(ctx, "RemoveSubflow", {"token": parse_token(token), **_pair(local, remote)})


@cli.group()
def backup() -> None:
    """Set or clear a subflow's backup priority (userspace path manager)."""


@backup.command("set")
@click.argument("token")
@click.argument("local")
@click.argument("remote")
@pass_ctx
def backup_set(ctx: _Context, token: str, local: str, remote: str) -> None:
    """Make the subflow LOCAL -> REMOTE of TOKEN a backup path."""
    _write(ctx, "SetBackup", {"token": parse_token(token), **_pair(local, remote),
                              "backup": True})


@backup.command("clear")
@click.argument("token")
@click.argument("local")
@click.argument("remote")
@pass_ctx
def backup_clear(ctx: _Context, token: str, local: str, remote: str) -> None:
    """Make the subflow LOCAL -> REMOTE of TOKEN a regular path again."""
    _write(ctx, "SetBackup", {"token": parse_token(token), **_pair(local, remote),
                              "backup": False})


@cli.command()
@click.argument("token")
@click.argument("address_id", type=int)
@click.argument("address")
@pass_ctx
def announce(ctx: _Context, token: str, address_id: int, address: str) -> None:
    """Announce ADDRESS (ADDR[:PORT]) with ID ADDRESS_ID on connection TOKEN."""
    addr, port = parse_endpoint(address)
    reply = _write(ctx, "Announce", {"token": parse_token(token), "address_id": address_id,
                                     "address": addr, "port": port})
    if not ctx.as_json:
        click.echo(f"announced {_addr(addr, reply['port'])}")


@cli.command()
@click.argument("token")
@click.argument("address_id", type=int)
@click.argument("address", required=False)
@pass_ctx
def withdraw(ctx: _Context, token: str, address_id: int, address: str | None) -> None:
    """Withdraw the address ADDRESS_ID announced on connection TOKEN."""
    _write(ctx, "Withdraw", {"token": parse_token(token), "address_id": address_id,
                             "address": address})


def main(argv: list[str] | None = None) -> int:
    """The ``mptcpctl`` console script."""
    try:
        cli.main(args=argv, prog_name="mptcpctl", standalone_mode=False)
    except click.UsageError as exc:
        exc.show()
        return EXIT_USAGE
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.Abort:
        return EXIT_ERROR
    except BrokenPipeError:
        # The reader went away (mptcpctl monitor | head): not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0
