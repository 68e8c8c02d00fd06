"""mptcpize: MPTCP for unmodified programs and systemd services.

``mptcpize run [-d] PROG [ARGS]`` runs a program with the package's shim
(``mptcpwrap.c``, built at installation) in ``LD_PRELOAD``: its TCP sockets
are MPTCP sockets, or stay TCP where the kernel has no MPTCP.  An
``LD_PRELOAD`` already set is kept (the shim is appended), and
``GODEBUG=multipathtcp=1`` asks Go programs, which make their sockets
without libc's ``socket()``, for MPTCP too.

``mptcpize enable UNIT`` / ``disable UNIT`` write and remove a drop-in
(``<unit dir>/UNIT.d/mptcpize.conf``) rather than editing the unit, so none
of the unit's own settings is lost; the unit directory is
``/etc/systemd/system``, or ``$MPTCPIZE_UNIT_DIR``.  A ``.service`` gets the
environment of ``run``; a ``.socket`` gets ``SocketProtocol=mptcp`` (systemd
257 and later).  Then ``systemctl daemon-reload``.

The command line, messages and exit statuses are those of the C mptcpize:
argp's for options (64 for a usage error), 255 for a missing or unknown
command, 1 for a failure; ``-h`` is accepted for ``--help`` as well.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from mptcpd import __version__

PROGRAM = "mptcpize"
EX_USAGE = 64
EX_COMMAND = 255
UNIT_DIR = "/etc/systemd/system"
DROP_IN = "mptcpize.conf"
#: The first systemd that knows SocketProtocol=mptcp.
SOCKET_PROTOCOL_SYSTEMD = 257

_COMMANDS = """\
mptcpize - a tool to enable MPTCP usage on unmodified legacy services
{options}
Available CMDs:
\trun [-d] prog [<args>]    Run target program with specified
\t                          arguments, forcing MPTCP socket usage
\t                          instead of TCP.  If the '-d' argument
\t                          is provided, dump messages on stderr
\t                          when a TCP socket is forced to MPTCP.

\tenable <unit>             Update the systemd <unit>, forcing
\t                          the given service to run under the
\t                          above launcher.

\tdisable <unit>            Update the systemd <unit>, removing
\t                          the above launcher.

Report bugs to <mptcp@lists.linux.dev>.
"""
_OPTIONS = """
  -?, --help                 Give this help list
      --usage                Give a short usage message
  -V, --version              Print program version
"""
HELP = "Usage: mptcpize [OPTION...] CMD\n" + _COMMANDS.format(options=_OPTIONS)
SHORT_HELP = "Usage: mptcpize CMD\n" + _COMMANDS.format(options="")
USAGE = "Usage: mptcpize [-?V] [--help] [--usage] [--version] CMD\n"
TRY = "Try `mptcpize --help' or `mptcpize --usage' for more information.\n"


class Exit(Exception):
    """End the program with ``status`` after writing ``stdout``/``stderr``."""

    def __init__(self, status: int, stdout: str = "", stderr: str = "") -> None:
        super().__init__(status)
        self.status, self.stdout, self.stderr = status, stdout, stderr


def fail(message: str) -> Exit:
    """glibc ``error()``'s format, exit status 1."""
    return Exit(1, stderr=f"{PROGRAM}: {message}\n")


# -- options (argp: they stop at the first word that is not one) ---------------


def _long_option(arg: str) -> str:
    name, eq, _ = arg[2:].partition("=")
    matches = [o for o in ("help", "usage", "version") if o.startswith(name)] if name else []
    if not matches:  # the three names share no prefix: never ambiguous
        raise Exit(EX_USAGE, stderr=f"{PROGRAM}: unrecognized option '{arg}'\n{TRY}")
    if eq:
        raise Exit(EX_USAGE, stderr=f"{PROGRAM}: option '--{matches[0]}' doesn't allow "
                                   f"an argument\n{TRY}")
    return matches[0]


def parse_options(args: Sequence[str]) -> list[str]:
    """Act on the leading options; the command and its arguments."""
    rest = list(args)
    while rest and rest[0].startswith("-") and rest[0] != "-":
        arg = rest.pop(0)
        if arg == "--":
            break
        names = [_long_option(arg)] if arg.startswith("--") else [
            {"?": "help", "h": "help", "V": "version"}.get(c, f"-{c}") for c in arg[1:]]
        for name in names:
            if name == "help":
                raise Exit(0, stdout=HELP)
            if name == "usage":
                raise Exit(0, stdout=USAGE)
            if name == "version":
                raise Exit(0, stdout=f"{PROGRAM} {__version__}\n")
            raise Exit(EX_USAGE, stderr=f"{PROGRAM}: invalid option -- '{name[1:]}'\n{TRY}")
    return rest


# -- run ---------------------------------------------------------------------------


def shim() -> str:
    """Where the built shim is (``mptcpd.mptcpize._mptcpwrap``)."""
    spec = importlib.util.find_spec("mptcpd.mptcpize._mptcpwrap")
    if spec is None or spec.origin is None:
        raise fail("the MPTCP shim is not installed (reinstall mptcpd with a C compiler)")
    return spec.origin


def _joined(old: str | None, new: str, sep: str) -> str:
    parts = [p for p in (old or "").split(sep) if p and p != new]
    return sep.join([*parts, new])


def mptcp_environment(env: dict[str, str], debug: bool = False) -> dict[str, str]:
    """``env`` with the shim appended to ``LD_PRELOAD`` and Go's MPTCP on."""
    out = dict(env)
    out["LD_PRELOAD"] = _joined(env.get("LD_PRELOAD"), shim(), ":")
    out["GODEBUG"] = _joined(env.get("GODEBUG"), "multipathtcp=1", ",")
    if debug:
        out["MPTCPWRAP_DEBUG"] = "1"
    return out


def run(args: Sequence[str]) -> NoReturn:
    args = list(args)
    debug = bool(args) and args[0] == "-d"
    if debug:
        args.pop(0)
    if not args:
        raise Exit(EX_COMMAND, stderr="missing command argument\n" + SHORT_HELP)
    env = mptcp_environment(dict(os.environ), debug)
    try:
        os.execvpe(args[0], args, env)
    except OSError:
        pass
    raise Exit(EX_COMMAND)  # as C: no message when the program cannot run


# -- enable / disable ----------------------------------------------------------------


def unit_dir() -> Path:
    return Path(os.environ.get("MPTCPIZE_UNIT_DIR") or UNIT_DIR)


def find_unit(name: str) -> Path:
    """The unit's file: the argument itself, the unit directory's, or
    systemd's ``FragmentPath``."""
    given = Path(name)
    if given.is_file() and os.access(given, os.R_OK):
        return given
    local = unit_dir() / name
    if local.is_file():
        return local
    try:
        shown = subprocess.run(["systemctl", "show", "-p", "FragmentPath", name],
                               capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        shown = ""
    for line in shown.splitlines():
        if line.startswith("FragmentPath="):
            path = line.removeprefix("FragmentPath=")
            if not path:
                raise fail(f"can't find unit file for service {name}")
            return Path(path)
    raise fail(f"can't find FragmentPath attribute for unit {name}")


def unit_environment(text: str) -> dict[str, str]:
    """The ``Environment=`` assignments of the unit's ``[Service]`` section."""
    env: dict[str, str] = {}
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and line.startswith("Environment="):
            for word in shlex.split(line.removeprefix("Environment=")):
                key, eq, value = word.partition("=")
                if eq:
                    env[key] = value
    return env


def systemd_version() -> int | None:
    try:
        out = subprocess.run(["systemctl", "--version"], capture_output=True, text=True,
                             timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.match(r"systemd (\d+)", out)
    return int(match.group(1)) if match else None


def drop_in(unit: Path, name: str) -> str:
    """The drop-in that makes ``unit`` (named ``name``) use MPTCP."""
    if name.endswith(".socket"):
        version = systemd_version()
        if version is None or version < SOCKET_PROTOCOL_SYSTEMD:
            raise fail(f"SocketProtocol=mptcp needs systemd {SOCKET_PROTOCOL_SYSTEMD} or "
                       f"later; this is systemd {version if version is not None else '?'}")
        return "# Written by mptcpize: sockets of this unit use MPTCP.\n" \
               "[Socket]\nSocketProtocol=mptcp\n"
    try:
        text = unit.read_text()
    except OSError as exc:
        raise fail(f"can't open file {unit}: {exc.strerror}") from None
    env = mptcp_environment(unit_environment(text))
    assignments = " ".join(shlex.quote(f"{k}={env[k]}") for k in ("LD_PRELOAD", "GODEBUG"))
    return ("# Written by mptcpize: the service's TCP sockets are MPTCP sockets.\n"
            f"[Service]\nEnvironment={assignments}\n")


def daemon_reload() -> None:
    try:
        status = subprocess.run(["systemctl", "daemon-reload"], capture_output=True,
                                timeout=120).returncode
    except (OSError, subprocess.TimeoutExpired):
        status = 1
    if status:
        raise fail("can't reload unit, manual 'systemctl daemon-reload' is required")


def enable(args: Sequence[str], on: bool) -> NoReturn:
    if not args:
        raise Exit(EX_COMMAND, stderr="missing unit argument\n" + SHORT_HELP)
    unit = find_unit(args[0])
    name = unit.name
    directory = unit_dir() / f"{name}.d"
    path = directory / DROP_IN
    if on:
        text = drop_in(unit, name)
        try:
            directory.mkdir(parents=True, exist_ok=True)
            tmp = directory / f".{DROP_IN}.tmp"
            tmp.write_text(text)
            tmp.chmod(0o644)
            os.replace(tmp, path)
        except OSError as exc:
            raise fail(f"can't open {path} for writing: {exc.strerror}") from None
    else:
        try:
            path.unlink(missing_ok=True)
            directory.rmdir()  # only when nothing else is in it
        except OSError:
            pass
    daemon_reload()
    raise Exit(0, stdout=f"mptcp successfully {'enabled' if on else 'disabled'} on unit "
                         f"{unit}\n")


# -- the command -------------------------------------------------------------------


def dispatch(argv: Sequence[str]) -> NoReturn:
    words = parse_options(argv)
    if not words or words[0] == "help":
        raise Exit(0, stderr=SHORT_HELP)
    command, rest = words[0], words[1:]
    if command == "run":
        run(rest)
    if command in ("enable", "disable"):
        enable(rest, command == "enable")
    raise Exit(EX_COMMAND, stderr=f"unknown arg {command}\n")


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The ``mptcpize`` command."""
    try:
        dispatch(sys.argv[1:] if argv is None else argv)
    except Exit as done:
        sys.stdout.write(done.stdout)
        sys.stderr.write(done.stderr)
        sys.stdout.flush()
        raise SystemExit(done.status) from None
