"""The ``mptcpd`` command line: GNU argp behaviour, with a click command.

C mptcpd parses its options with glibc's argp/getopt_long, and users (and
scripts) see that: unique prefixes of long options, bundled short options,
``-lVALUE``, options processed left to right with the last one winning,
exact diagnostics, and exit status 64 (``EX_USAGE``) for usage errors.
Click does none of that the same way, so :func:`scan` reproduces getopt's
scan, validates each value when it is met (as mptcpd's argp parser does), and
returns a normalised argument list (``--debug`` and ``--name=value`` only).
:func:`main` hands those values to :func:`run_daemon`, which builds the
configuration and starts the daemon; :data:`command`, the click command
(made on first use: the daemon's start does not load click), does the same
through click's option parsing, for shell completion and for callers that
embed or test it as a click command.  The CLI holds no behaviour of its own.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from mptcpd import __version__
from mptcpd.config import (
    LOG_DESTINATIONS,
    ConfigError,
    ConfigValues,
    load_config,
    log_config,
    parse_addr_flags,
    parse_notify_flags,
    parse_plugin_list,
)
from mptcpd.log import setup_logging

logger = logging.getLogger(__name__)

#: Short program name used in argp's own messages.
PROGRAM = "mptcpd"
#: ``EX_USAGE`` from sysexits.h.
EX_USAGE = 64
BUG_ADDRESS = "<mptcp@lists.linux.dev>"
KERNEL = "upstream"
DOC = "Start the Multipath TCP daemon."
POST_DOC = f"Supported Linux kernel: {KERNEL}"
DUP_ARGS_NOTE = (
    "Mandatory or optional arguments to long options are also mandatory or "
    "optional for any corresponding short options."
)

_RMARGIN = 79  # argp's right margin
_OPT_DOC_COL = 29  # column of option help texts
_USAGE_INDENT = 12  # indent of continued usage lines


@dataclass(frozen=True)
class ArgpOption:
    """One option as argp knows it.  ``doc=None`` marks a hidden option."""

    name: str
    short: str | None = None
    arg: str | None = None
    doc: str | None = None
    optional_arg: bool = False
    group: int = 0


#: Every option, in getopt's table order: mptcpd's own options, then argp's
#: default options (help, usage, hidden program-name and HANG), then version.
#: The order decides the list printed for an ambiguous prefix.
OPTIONS: tuple[ArgpOption, ...] = (
    ArgpOption("debug", "d", doc="Enable debug log messages"),
    ArgpOption(
        "log",
        "l",
        "DEST",
        "Log to DEST (stderr, syslog or journal), e.g. --log=journal",
    ),
    ArgpOption(
        "notify-flags",
        arg="FLAGS",
        doc="Address notification flags, "
        "e.g. --notify-flags=existing,skip_link_local,skip_loopback",
    ),
    ArgpOption("plugin-dir", arg="DIR", doc="Set plugin directory to DIR"),
    ArgpOption(
        "path-manager",
        arg="PLUGIN",
        doc="Set default path manager to PLUGIN, e.g. --path-manager=sspi, "
        "overriding plugin priorities",
    ),
    ArgpOption(
        "addr-flags",
        arg="FLAGS",
        doc="Set flags for announced address, e.g. --addr-flags=subflow",
    ),
    ArgpOption(
        "load-plugins",
        arg="PLUGINS",
        doc="Specify which plugins to load, e.g. --load-plugins=addr_adv,sspi",
    ),
    ArgpOption("help", "?", doc="Give this help list", group=-1),
    ArgpOption("usage", doc="Give a short usage message", group=-1),
    ArgpOption("program-name", arg="NAME", group=-1),
    ArgpOption("HANG", arg="SECS", optional_arg=True, group=-1),
    ArgpOption("version", "V", doc="Print program version", group=-1),
)
_BY_NAME = {opt.name: opt for opt in OPTIONS}
_BY_SHORT = {opt.short: opt for opt in OPTIONS if opt.short}
#: Options whose values go on to click: mptcpd's own (group 0); argp's act
#: during the scan.
_VALUE_OPTIONS = tuple(opt.name for opt in OPTIONS if opt.group == 0)


class ArgpExit(Exception):
    """The scan ends the program: print *stdout*/*stderr* and exit with *status*."""

    def __init__(self, status: int, stdout: str = "", stderr: str = "") -> None:
        super().__init__(status)
        self.status = status
        self.stdout = stdout
        self.stderr = stderr


# ---------------------------------------------------------------------------
# Help and usage text, laid out as argp's fmtstream does
# ---------------------------------------------------------------------------

_NBSP = "\0"  # keeps "[-l DEST]" together while wrapping


def _wrap(line: str, wmargin: int, start: int = 0) -> list[str]:
    """Wrap one logical line like argp: break at the last blank at or before
    column 79, continue at *wmargin*; a word too long to fit stays whole on
    an overlong line.  Text before *start* is never broken."""
    out: list[str] = []
    while len(line) >= _RMARGIN:
        pos = min(_RMARGIN, len(line))
        while pos >= start and (pos == len(line) or line[pos] != " "):
            pos -= 1
        if pos >= start:
            head, rest = line[:pos].rstrip(" "), line[pos + 1 :]
        else:
            pos = _RMARGIN
            while pos < len(line) and line[pos] != " ":
                pos += 1
            if pos == len(line):
                break
            head, rest = line[:pos], line[pos:].lstrip(" ")
        out.append(head)
        line = " " * wmargin + rest
        start = wmargin
    out.append(line)
    return [part.replace(_NBSP, " ") for part in out]


def _help_sort_key(opt: ArgpOption) -> tuple[int, str, bool, str]:
    # Non-negative groups first; then by first option character ignoring
    # case; entries without a short option before those with one.
    first = opt.short or opt.name[0]
    return (
        0 if opt.group >= 0 else 1,
        first.lower(),
        opt.short is not None,
        opt.name.lower(),
    )


def _visible(options: Sequence[ArgpOption]) -> list[ArgpOption]:
    return sorted((opt for opt in options if opt.doc is not None), key=_help_sort_key)


def help_text(name: str = PROGRAM) -> str:
    """The ``--help`` text, as argp prints it."""
    lines = [f"Usage: {name} [OPTION...]", DOC, ""]
    previous_group: int | None = None
    for opt in _visible(OPTIONS):
        if previous_group is not None and opt.group != previous_group:
            lines.append("")
        previous_group = opt.group
        head = f"  -{opt.short}, " if opt.short else "      "
        head += f"--{opt.name}" + (f"={opt.arg}" if opt.arg else "")
        if len(head) > _OPT_DOC_COL + 3:
            lines.append(head)
            head = " " * _OPT_DOC_COL
        elif len(head) >= _OPT_DOC_COL:
            head += "   "
        else:
            head = head.ljust(_OPT_DOC_COL)
        lines.extend(_wrap(head + str(opt.doc), _OPT_DOC_COL, start=len(head)))
    lines += [
        "",
        *_wrap(DUP_ARGS_NOTE, 0),
        "",
        POST_DOC,
        "",
        f"Report bugs to {BUG_ADDRESS}.",
    ]
    return "\n".join(lines) + "\n"


def _usage_lines(head: str, items: Sequence[tuple[str, bool]]) -> list[str]:
    """Lay out usage items after *head* as argp does.

    An item flagged True is a short option with an argument: argp moves it
    to a new line unless the current line stays within 78 columns with it,
    and never breaks it at its inner space.  Other items are broken only at
    the blanks between them (see :func:`_wrap`).
    """
    lines: list[str] = []
    line = head
    for item, keep_whole in items:
        if keep_whole:
            *done, line = _wrap(line, _USAGE_INDENT)
            lines += done
            if len(line) + 1 + len(item) >= _RMARGIN:
                lines.append(line)
                line = " " * _USAGE_INDENT + item.replace(" ", _NBSP)
                continue
        line += " " + item.replace(" ", _NBSP)
    return lines + _wrap(line, _USAGE_INDENT)


def usage_text(name: str = PROGRAM) -> str:
    """The ``--usage`` text, as argp prints it (wrapped at 79 columns)."""
    shown = _visible(OPTIONS)
    flags = "".join(opt.short for opt in shown if opt.short and not opt.arg)
    items = [(f"[-{flags}]", False)]
    items += [
        (f"[-{opt.short} {opt.arg}]", True) for opt in shown if opt.short and opt.arg
    ]
    items += [
        (f"[--{opt.name}={opt.arg}]" if opt.arg else f"[--{opt.name}]", False)
        for opt in shown
    ]
    return "\n".join(_usage_lines(f"Usage: {name}", items)) + "\n"


def version_text() -> str:
    """The ``--version`` text."""
    return f"{PROGRAM} {__version__}\n"


# ---------------------------------------------------------------------------
# The getopt/argp scan
# ---------------------------------------------------------------------------


def _atoi(text: str) -> int:
    digits = text.lstrip(" \t\n\v\f\r")
    sign = -1 if digits[:1] == "-" else 1
    digits = digits[1:] if digits[:1] in "+-" and digits else digits
    number = ""
    for char in digits:
        if not char.isascii() or not char.isdigit():
            break
        number += char
    return sign * int(number) if number else 0


class _Scanner:
    """State of one left-to-right scan of the arguments."""

    def __init__(self, argv0: str, sleep: Callable[[float], None]) -> None:
        self.argv0 = argv0
        self.name = PROGRAM
        self.sleep = sleep
        self.normalised: list[str] = []

    def see_also(self) -> str:
        return (
            f"Try `{self.name} --help' or `{self.name} --usage' for more information.\n"
        )

    def getopt_error(self, message: str) -> ArgpExit:
        return ArgpExit(EX_USAGE, stderr=f"{self.argv0}: {message}\n" + self.see_also())

    def argp_error(self, message: str) -> ArgpExit:
        return ArgpExit(EX_USAGE, stderr=f"{self.name}: {message}\n" + self.see_also())

    def find_long(self, arg: str, name: str) -> ArgpOption:
        if name in _BY_NAME:
            return _BY_NAME[name]
        matches = [opt for opt in OPTIONS if opt.name.startswith(name)]
        if not matches:
            raise self.getopt_error(f"unrecognized option '{arg}'")
        if len(matches) > 1:
            possible = " ".join(f"'--{opt.name}'" for opt in matches)
            raise self.getopt_error(
                f"option '{arg}' is ambiguous; possibilities: {possible}"
            )
        return matches[0]

    def handle(self, opt: ArgpOption, value: str | None) -> None:
        """Act on one option, as mptcpd's and argp's parsers do."""
        if opt.name == "help":
            raise ArgpExit(0, stdout=help_text(self.name))
        if opt.name == "usage":
            raise ArgpExit(0, stdout=usage_text(self.name))
        if opt.name == "version":
            raise ArgpExit(0, stdout=version_text())
        if opt.name == "program-name":
            self.name = (value or "").rsplit("/", 1)[-1]
            return
        if opt.name == "HANG":
            for _ in range(_atoi(value if value is not None else "3600")):
                self.sleep(1)
            return
        assert value is not None or opt.arg is None
        if opt.name == "log" and value not in LOG_DESTINATIONS:
            raise self.argp_error(f'Unknown logging option: "{value}"')
        if opt.name == "plugin-dir" and value == "":
            raise self.argp_error("Empty plugin directory command line option.")
        if opt.name == "path-manager" and value == "":
            raise self.argp_error(
                "Empty default path manager plugin command line option."
            )
        if opt.name == "load-plugins" and value == "":
            raise self.argp_error("Empty load plugins commandline option.")
        if opt.name == "addr-flags":
            parse_addr_flags(str(value))  # warns now, as C does at parse time
        if opt.name == "notify-flags":
            parse_notify_flags(str(value))
        self.normalised.append(
            f"--{opt.name}" if value is None else f"--{opt.name}={value}"
        )

    def long_option(self, arg: str, rest: list[str]) -> None:
        name, equal, value = arg[2:].partition("=")
        opt = self.find_long(arg, name)
        if opt.arg is None:
            if equal:
                raise self.getopt_error(
                    f"option '--{opt.name}' doesn't allow an argument"
                )
            self.handle(opt, None)
        elif equal:
            self.handle(opt, value)
        elif opt.optional_arg:
            self.handle(opt, None)
        elif rest:
            self.handle(opt, rest.pop(0))
        else:
            raise self.getopt_error(f"option '--{opt.name}' requires an argument")

    def short_options(self, arg: str, rest: list[str]) -> None:
        index = 1
        while index < len(arg):
            char = arg[index]
            index += 1
            opt = _BY_SHORT.get(char)
            if opt is None:
                raise self.getopt_error(f"invalid option -- '{char}'")
            if opt.arg is None:
                self.handle(opt, None)
            elif index < len(arg):
                self.handle(opt, arg[index:])
                return
            elif rest:
                self.handle(opt, rest.pop(0))
            else:
                raise self.getopt_error(f"option requires an argument -- '{char}'")

    def run(self, args: Sequence[str]) -> list[str]:
        rest = list(args)
        operands: list[str] = []
        while rest:
            arg = rest.pop(0)
            if arg == "--":
                operands += rest
                break
            if arg.startswith("--"):
                self.long_option(arg, rest)
            elif arg.startswith("-") and arg != "-":
                self.short_options(arg, rest)
            else:
                operands.append(arg)
        if operands:
            raise self.argp_error("Too many arguments")
        return self.normalised


def scan(
    args: Sequence[str],
    argv0: str = PROGRAM,
    sleep: Callable[[float], None] = time.sleep,
) -> list[str]:
    """Scan *args* as mptcpd's ``argp_parse`` would; return them normalised.

    Options are handled left to right: unique prefixes of long options are
    expanded, bundled short options split, values validated when met.  The
    result holds only ``--debug`` and ``--<name>=<value>`` items.  Raises
    :class:`ArgpExit` for ``--help``, ``--usage``, ``--version`` (status 0)
    and for usage errors (status 64, with argp's exact diagnostics; *argv0*
    starts getopt's own messages).
    """
    return _Scanner(argv0, sleep).run(args)


# ---------------------------------------------------------------------------
# Running the daemon, and the click command
# ---------------------------------------------------------------------------


def run_daemon(
    debug: bool = False,
    log: str | None = None,
    plugin_dir: str | None = None,
    path_manager: str | None = None,
    addr_flags: str | None = None,
    notify_flags: str | None = None,
    load_plugins: str | None = None,
) -> int:
    """Build the configuration from the option values, set up logging, run
    the daemon; the exit status (1 for a configuration error)."""
    values = ConfigValues(
        log=log,
        debug=debug,
        plugin_dir=plugin_dir,
        path_manager=path_manager,
        addr_flags=parse_addr_flags(addr_flags or "", warn=False),
        notify_flags=parse_notify_flags(notify_flags or "", warn=False),
        load_plugins=parse_plugin_list(load_plugins)
        if load_plugins is not None
        else None,
    )
    setup_logging(debug=debug)  # early logging: stderr until the configuration is known
    try:
        config = load_config(values)
    except ConfigError as err:
        logger.error("%s", err)
        return err.exit_status
    setup_logging(config.log, config.debug)
    log_config(config)

    from mptcpd.daemon import run  # imported late: the CLI must not load the daemon

    status: Any = run(config)
    return int(status or 0)


def option_values(normalised: Sequence[str]) -> dict[str, Any]:
    """:func:`run_daemon`'s arguments from :func:`scan`'s result (the last
    value of an option wins)."""
    values: dict[str, Any] = {}
    for item in normalised:
        name, equal, value = item[2:].partition("=")
        values[name.replace("-", "_")] = value if equal else True
    return values


def _make_command() -> Any:
    """The click command: :func:`scan`, then click collects the values and
    calls :func:`run_daemon`.  Made (and click imported) on first use of
    :data:`command`: :func:`main` does not need it."""
    import click

    class _UsageError(click.UsageError):
        exit_code = EX_USAGE

    class ArgpCommand(click.Command):
        """A click command whose arguments go through :func:`scan` first."""

        def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
            argv0 = ctx.info_name or PROGRAM
            try:
                normalised = scan(args, argv0)
            except ArgpExit as done:
                if done.stdout:
                    click.echo(done.stdout, nl=False)
                if done.stderr:
                    click.echo(done.stderr, nl=False, err=True)
                ctx.exit(done.status)
            try:
                return super().parse_args(ctx, normalised)
            except click.UsageError as err:  # not expected after the scan
                raise _UsageError(err.message, ctx) from err

        def get_help(self, ctx: click.Context) -> str:
            return help_text().rstrip("\n")

        def get_usage(self, ctx: click.Context) -> str:
            return usage_text().rstrip("\n")

    def start(**values: Any) -> None:
        click.get_current_context().exit(run_daemon(**values))

    def option(name: str, **kwargs: Any) -> click.Option:
        opt = _BY_NAME[name]
        decls = [f"--{name}"] + ([f"-{opt.short}"] if opt.short else [])
        return click.Option(decls, metavar=opt.arg, help=opt.doc, **kwargs)

    return ArgpCommand(
        name=PROGRAM,
        callback=start,
        params=[
            option("debug", is_flag=True, default=False),
            *(option(name) for name in _VALUE_OPTIONS[1:]),
        ],
        add_help_option=False,
        help=DOC,
    )


_command: Any = None


def __getattr__(name: str) -> Any:
    """``command``, the click command, made on first use."""
    global _command
    if name == "command":
        if _command is None:
            _command = _make_command()
        return _command
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _write(stream: Any, text: str) -> None:
    if text:
        stream.write(text)
        stream.flush()


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> NoReturn:
    """Entry point of the ``mptcpd`` command and of ``python -m mptcpd``.

    *argv* defaults to ``sys.argv[1:]`` and *prog* (the ``argv[0]`` quoted
    in getopt's messages) to ``sys.argv[0]``.  Always exits: 0 after
    ``--help``/``--usage``/``--version``, 64 for a usage error, 1 for a
    configuration error, otherwise the daemon's exit status.

    The arguments go through :func:`scan` and straight to
    :func:`run_daemon`, as the click command would send them, without
    loading click (about 10 ms of every start); shell completion
    (``_MPTCPD_COMPLETE``) is click's, through :data:`command`.
    """
    setup_logging()  # early logging from process start
    args = list(sys.argv[1:] if argv is None else argv)
    prog_name = prog if prog is not None else sys.argv[0]
    if "_MPTCPD_COMPLETE" in os.environ:
        __getattr__("command").main(args=args, prog_name=prog_name,
                                    complete_var="_MPTCPD_COMPLETE")
    try:
        try:
            normalised = scan(args, prog_name or PROGRAM)
        except ArgpExit as done:
            _write(sys.stdout, done.stdout)
            _write(sys.stderr, done.stderr)
            raise SystemExit(done.status) from None
        raise SystemExit(run_daemon(**option_values(normalised)))
    except BrokenPipeError:  # as click: "mptcpd --help | head -1" ends quietly
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):  # not a file: nothing to flush at exit
            pass
        raise SystemExit(1) from None
    except (KeyboardInterrupt, EOFError):  # as click
        _write(sys.stderr, "\nAborted!\n")
        raise SystemExit(1) from None
