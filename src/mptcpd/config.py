"""mptcpd configuration: defaults, the ``[core]`` file section, and the merge.

Precedence is command line > configuration file > compile-time defaults, as
in the C daemon.  A value that is ``None`` (strings, lists) or ``0`` (flag
sets) counts as unset and is taken from the next source down.

The configuration file uses the ELL "settings" dialect (an INI variant).  It
is parsed here by :func:`parse_settings`, which follows ELL's rules, except
that CRLF line ends and a UTF-8 byte order mark are accepted.  A file that
cannot be read or parsed is ignored, as in C, but with a warning; unknown
keys and repeated groups or keys are warned about too.

Besides ``[core]`` the port reads the interface policy (not in C):
``skip-address-classes`` in ``[core]``, the group ``[interfaces]``
(``allow``, ``deny``, ``deny-kinds``) and ``[interface GLOB]`` groups
(``addr-flags`` for the interfaces the glob matches; the first matching
group in file order wins).  Bad values there are errors
(:class:`ConfigError`, exit status 1).  Groups are read through one table,
:data:`GROUP_KEYS`: a group is either named exactly (``core``,
``interfaces``) or ``KIND ARGUMENT`` for a kind of :data:`PREFIXED_GROUPS`.
"""

from __future__ import annotations

import enum
import logging
import os
import re
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields, replace
from typing import Any

from mptcpd.log import DESTINATIONS
from mptcpd.types import AddrFlags, NotifyFlags

logger = logging.getLogger(__name__)

#: The system configuration file.
DEFAULT_CONFIG_PATH = "/etc/mptcpd/mptcpd.conf"
#: Environment variable naming another configuration file to read instead.
CONFIG_ENV = "MPTCPD_CONFIG"


def _bundled_plugin_dir() -> str:
    """Where the bundled path managers (``plugins/`` of the source tree) are
    installed: the package ``mptcpd_bundled_plugins``.  This plays the role of
    the C build's ``<libdir>/mptcpd``; ``/usr/lib/mptcpd`` when not installed."""
    import importlib.util

    spec = importlib.util.find_spec("mptcpd_bundled_plugins")
    if spec is not None and spec.submodule_search_locations:
        return str(list(spec.submodule_search_locations)[0])
    return "/usr/lib/mptcpd"


#: Default plugin directory: the installed bundled path managers.
DEFAULT_PLUGIN_DIR = _bundled_plugin_dir()
#: Compile-time default log destination (also used for early logging).
DEFAULT_LOG = "stderr"
#: The accepted log destinations (those :mod:`mptcpd.log` sets up).
LOG_DESTINATIONS = DESTINATIONS
#: The group of the C daemon's keys.
CORE_GROUP = "core"
#: Groups ``[plugin NAME]`` hold the settings of plugin NAME; they are kept
#: raw (see :class:`PluginGroup`) and read by the plugin through
#: :mod:`mptcpd.pm.settings`.
PLUGIN_GROUP_PREFIX = "plugin "
#: Longest default path-manager name kept (the generic netlink name size).
MAX_PATH_MANAGER_NAME = 16

#: ``addr-flags`` tokens, in the order they are tried and printed.
ADDR_FLAG_TOKENS: tuple[tuple[str, AddrFlags], ...] = (
    ("subflow", AddrFlags.SUBFLOW),
    ("signal", AddrFlags.SIGNAL),
    ("backup", AddrFlags.BACKUP),
    ("fullmesh", AddrFlags.FULLMESH),
    ("laminar", AddrFlags.LAMINAR),  # kernel 6.18, mptcpd 0.14
)
#: ``notify-flags`` tokens, in the order they are tried and printed.
NOTIFY_FLAG_TOKENS: tuple[tuple[str, NotifyFlags], ...] = (
    ("existing", NotifyFlags.EXISTING),
    ("skip_link_local", NotifyFlags.SKIP_LINK_LOCAL),
    ("skip_loopback", NotifyFlags.SKIP_LOOPBACK),
    ("check_route", NotifyFlags.CHECK_ROUTE),
)


#: How long (seconds) a ``check_route`` address waits for a default route
#: before it is given up on; 0 gives up after the C daemon's five lookups.
DEFAULT_CHECK_ROUTE_TIMEOUT = 60.0
#: Commands a plugin may have waiting for the kernel before new ones are
#: refused (``command-queue-size``).  A burst of 1000 connections with the
#: userspace PM queues about one command per connection; the bound only
#: stops a queue that the kernel no longer drains from growing without limit.
DEFAULT_COMMAND_QUEUE_SIZE = 4096

#: The control socket's file name in the runtime directory when
#: ``control-socket`` is not set.
CONTROL_SOCKET_NAME = "control"

NO_ADDR_FLAGS = AddrFlags(0)
NO_NOTIFY_FLAGS = NotifyFlags(0)


class AddressClass(enum.IntFlag):
    """Classes of local addresses that ``skip-address-classes`` can keep away
    from plugins."""

    LOOPBACK = 0x01  #: 127.0.0.0/8, ::1
    LINK_LOCAL = 0x02  #: 169.254.0.0/16, fe80::/10
    ULA = 0x04  #: fc00::/7
    TEMPORARY = 0x08  #: IPv6 privacy addresses (``IFA_F_TEMPORARY``)
    DEPRECATED = 0x10  #: preferred lifetime over (``IFA_F_DEPRECATED``)


NO_ADDRESS_CLASSES = AddressClass(0)
#: ``skip-address-classes`` words, in the order they are printed.
ADDRESS_CLASS_TOKENS: tuple[tuple[str, AddressClass], ...] = (
    ("loopback", AddressClass.LOOPBACK),
    ("link-local", AddressClass.LINK_LOCAL),
    ("ula", AddressClass.ULA),
    ("temporary", AddressClass.TEMPORARY),
    ("deprecated", AddressClass.DEPRECATED),
)

#: The interface group of the configuration file.
INTERFACES_GROUP = "interfaces"
#: The kind of the ``[interface GLOB]`` groups.
INTERFACE_GROUP_KIND = "interface"

#: An ``[interface GLOB]`` group as read: the glob and its ``addr-flags``
#: (None when the group does not set them: the global flags apply).
InterfaceGroup = tuple[str, "AddrFlags | None"]


class ConfigError(Exception):
    """The configuration cannot be used; the daemon must not start.

    ``exit_status`` is the process exit status to use (1 unless told).
    The message is meant to be logged at error level as it is.
    """

    def __init__(self, message: str, exit_status: int = 1) -> None:
        super().__init__(message)
        self.exit_status = exit_status


@dataclass(frozen=True)
class PluginGroup:
    """The raw settings of one ``[plugin NAME]`` group, for plugin NAME.

    :ivar name: the plugin's name (the group name without ``plugin ``).
    :ivar path: the configuration file (for messages).
    :ivar line: the group's line number.
    :ivar items: ``(key, value, line)`` in file order, values unescaped
        (None when the value has an invalid escape), repeated keys kept.
    """

    name: str
    path: str
    line: int
    items: tuple[tuple[str, str | None, int], ...] = ()


@dataclass(frozen=True)
class ConfigValues:
    """Settings from one source (command line or file); unset values are None/0."""

    log: str | None = None
    debug: bool = False
    plugin_dir: str | None = None
    path_manager: str | None = None
    addr_flags: AddrFlags = NO_ADDR_FLAGS
    notify_flags: NotifyFlags = NO_NOTIFY_FLAGS
    load_plugins: tuple[str, ...] | None = None
    check_route_timeout: float | None = None
    command_queue_size: int | None = None
    skip_address_classes: AddressClass | None = None
    allow: tuple[str, ...] | None = None
    deny: tuple[str, ...] | None = None
    deny_kinds: tuple[str, ...] | None = None
    interface_groups: tuple[InterfaceGroup, ...] | None = None
    control_socket: str | None = None
    plugin_groups: tuple[PluginGroup, ...] = ()


@dataclass(frozen=True)
class Config:
    """The merged, validated daemon configuration."""

    log: str = DEFAULT_LOG  # one of LOG_DESTINATIONS
    debug: bool = False
    plugin_dir: str = DEFAULT_PLUGIN_DIR
    path_manager: str | None = None
    addr_flags: AddrFlags = NO_ADDR_FLAGS
    notify_flags: NotifyFlags = NO_NOTIFY_FLAGS
    load_plugins: tuple[str, ...] | None = None
    #: ``check-route-timeout`` (file only; not in the C mptcpd).
    check_route_timeout: float = DEFAULT_CHECK_ROUTE_TIMEOUT
    #: ``command-queue-size`` (file only; not in the C mptcpd).
    command_queue_size: int = DEFAULT_COMMAND_QUEUE_SIZE
    #: ``skip-address-classes`` (file only; not in the C mptcpd).
    skip_address_classes: AddressClass = NO_ADDRESS_CLASSES
    #: ``[interfaces] allow``: globs; empty means every interface.
    allow: tuple[str, ...] = ()
    #: ``[interfaces] deny``: globs (deny wins over allow).
    deny: tuple[str, ...] = ()
    #: ``[interfaces] deny-kinds``: rtnetlink link kinds (``IFLA_INFO_KIND``).
    deny_kinds: tuple[str, ...] = ()
    #: ``[interface GLOB]`` groups in file order.
    interface_groups: tuple[InterfaceGroup, ...] = ()
    #: ``control-socket`` (file only; not in the C mptcpd): the path of the
    #: varlink control socket; None for the default (:data:`CONTROL_SOCKET_NAME`
    #: in the runtime directory), "" for none.
    control_socket: str | None = None
    #: the ``[plugin NAME]`` groups, first of each name, in file order.
    plugin_groups: tuple[PluginGroup, ...] = ()
    config_file: str = (
        DEFAULT_CONFIG_PATH  # the path that was read (or would have been)
    )
    #: The command line's values, which a reload merges with the file again.
    cli_values: ConfigValues = field(default_factory=ConfigValues, compare=False,
                                     repr=False)


# ---------------------------------------------------------------------------
# Flag lists
# ---------------------------------------------------------------------------


def _parse_flags(text: str, tokens: Iterable[tuple[str, int]], warn: bool) -> int:
    bits = 0
    pos = 0
    table = tuple(tokens)
    while pos < len(text):
        for name, bit in table:
            end = pos + len(name)
            if text.startswith(name, pos) and (end == len(text) or text[end] == ","):
                bits |= bit
                pos = end + 1 if end < len(text) else end
                break
        else:
            if warn:
                logger.warning("unknown flag %s", text[pos:])
            return bits
    return bits


def parse_addr_flags(text: str, *, warn: bool = True) -> AddrFlags:
    """Parse an ``addr-flags`` list such as ``subflow,backup``.

    Tokens must match exactly and be followed by ``,`` or the end.  At the
    first unknown token the warning ``unknown flag <rest>`` is logged (unless
    *warn* is false) and the bits collected so far are returned.
    """
    return AddrFlags(_parse_flags(text, ADDR_FLAG_TOKENS, warn))


def parse_notify_flags(text: str, *, warn: bool = True) -> NotifyFlags:
    """Parse a ``notify-flags`` list; same rules as :func:`parse_addr_flags`."""
    return NotifyFlags(_parse_flags(text, NOTIFY_FLAG_TOKENS, warn))


def addr_flags_to_str(flags: int) -> str:
    """Known address flags as text, in the fixed order
    subflow,signal,backup,fullmesh,laminar."""
    return ",".join(name for name, bit in ADDR_FLAG_TOKENS if flags & bit)


def notify_flags_to_str(flags: int) -> str:
    """Notify flags as text: existing,skip_link_local,skip_loopback,check_route order."""
    return ",".join(name for name, bit in NOTIFY_FLAG_TOKENS if flags & bit)


def parse_plugin_list(text: str) -> tuple[str, ...]:
    """Split a ``load-plugins`` list on commas, dropping empty fields (like strtok)."""
    return tuple(name for name in text.split(",") if name)


# ---------------------------------------------------------------------------
# ELL settings (INI) dialect
# ---------------------------------------------------------------------------

_BLANKS = b" \t"
_BOM = b"\xef\xbb\xbf"
_KEY_EXTRA = frozenset(b"_-.")
_ESCAPES = {"s": " ", "n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


class SettingsSyntaxError(ValueError):
    """The settings text cannot be parsed; ELL rejects the whole file."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"line {line}: {reason}")
        self.line = line
        self.reason = reason


class Settings:
    """Parsed settings: groups in file order, each with its keys in file order.

    Duplicates are kept but never found: lookups return the first group of a
    name and, in it, the first occurrence of a key (ELL behaviour).
    ``lines`` holds, for each parsed group, its line number and those of its
    keys (for messages).
    """

    def __init__(self) -> None:
        self.groups: list[tuple[str, list[tuple[str, str]]]] = []
        self.lines: list[tuple[int, list[int]]] = []

    def get_value(self, group: str, key: str) -> str | None:
        """The raw (still escaped) value of *key* in the first *group*, or None."""
        for name, pairs in self.groups:
            if name == group:
                for pair_key, value in pairs:
                    if pair_key == key:
                        return value
                return None
        return None

    def get_string(self, group: str, key: str) -> str | None:
        """The unescaped value, or None if absent or the escapes are invalid."""
        raw = self.get_value(group, key)
        return None if raw is None else unescape_value(raw)


def unescape_value(raw: str) -> str | None:
    r"""Undo ELL value escapes (``\s \n \t \r \\``); None for any other escape."""
    out: list[str] = []
    chars = iter(raw)
    for char in chars:
        if char != "\\":
            out.append(char)
            continue
        escaped = _ESCAPES.get(next(chars, ""))
        if escaped is None:
            return None
        out.append(escaped)
    return "".join(out)


def _is_key_byte(byte: int) -> bool:
    return (
        0x30 <= byte <= 0x39
        or 0x41 <= byte <= 0x5A
        or 0x61 <= byte <= 0x7A
        or byte in _KEY_EXTRA
    )


def _parse_group(line: bytes, lineno: int, settings: Settings) -> None:
    end = 1
    while end < len(line) and line[end] != ord("]"):
        if not 0x20 <= line[end] <= 0x7E or line[end] == ord("["):
            raise SettingsSyntaxError(lineno, "invalid group name")
        end += 1
    if end >= len(line):
        raise SettingsSyntaxError(lineno, "unterminated group name")
    if line[end + 1 :].strip(_BLANKS):
        raise SettingsSyntaxError(lineno, "junk characters after the group name")
    settings.groups.append((line[1:end].decode("ascii"), []))
    settings.lines.append((lineno, []))


def _parse_key_value(line: bytes, lineno: int, settings: Settings) -> None:
    equal = line.find(b"=")
    if equal < 0:
        raise SettingsSyntaxError(lineno, "delimiter '=' not found")
    if equal == 0:
        raise SettingsSyntaxError(lineno, "empty key name")
    key = line[:equal].rstrip(_BLANKS)
    if not all(_is_key_byte(byte) for byte in key):
        raise SettingsSyntaxError(lineno, "invalid character in key")
    if not settings.groups:
        raise SettingsSyntaxError(lineno, "key-value pair before any group")
    try:
        value = line[equal + 1 :].lstrip(_BLANKS).decode("utf-8")
    except UnicodeDecodeError:
        raise SettingsSyntaxError(lineno, "value is not valid UTF-8") from None
    # ELL copies the value as a C string: it ends at the first NUL.
    value = value.split("\0", 1)[0]
    settings.groups[-1][1].append((key.decode("ascii"), value))
    settings.lines[-1][1].append(lineno)


def parse_settings(data: bytes) -> Settings:
    """Parse settings text with ELL's rules, CRLF and a BOM being accepted.

    * a leading UTF-8 byte order mark is skipped;
    * lines are split on ``\\n``, and a ``\\r`` ending a line is dropped
      (ELL keeps it, so that a CRLF file is unreadable);
    * leading blanks (space, tab) are skipped;
    * blank lines and lines whose first non-blank is ``#`` are ignored
      (there are no inline comments);
    * ``[name]``: printable ASCII without ``[``; only blanks may follow ``]``;
    * ``key = value``: key of ``[A-Za-z0-9_.-]``, blanks allowed before ``=``,
      blanks after ``=`` skipped, trailing whitespace kept, value valid UTF-8.

    Any other line, or a key before the first group, raises
    :class:`SettingsSyntaxError`: the whole text is rejected.
    """
    settings = Settings()
    data = data.removeprefix(_BOM)
    for lineno, raw_line in enumerate(data.split(b"\n"), start=1):
        line = raw_line.removesuffix(b"\r").lstrip(_BLANKS)
        if not line or line.startswith(b"#"):
            continue
        if line.startswith(b"["):
            _parse_group(line, lineno, settings)
        else:
            _parse_key_value(line, lineno, settings)
    return settings


# ---------------------------------------------------------------------------
# Configuration file
# ---------------------------------------------------------------------------


def config_path(path: str | None = None) -> str:
    """The file to read: *path*, else ``$MPTCPD_CONFIG`` if set and non-empty, else the default."""
    if path is not None:
        return path
    return os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH


def check_file_permissions(path: str) -> bool:
    """Security check of the configuration file; True if it exists and is safe.

    A missing file is fine (returns False).  A file that is not a regular
    file or is world-writable, or any other ``stat`` failure, raises
    :class:`ConfigError` (exit status 1).
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        logger.debug('File "%s" does not exist.', path)
        return False
    except OSError as err:
        # C mptcpd only logs this at debug level; we make it an error.
        raise ConfigError(
            f'Unexpected error during file permissions check of "{path}": {err.strerror}'
        ) from err
    if not stat.S_ISREG(info.st_mode) or info.st_mode & stat.S_IWOTH:
        raise ConfigError(f'"{path}" should be a file that is not world writable.')
    return True


def _check_plugin_names(names: tuple[str, ...], where: str) -> None:
    if not names:
        raise ConfigError(f"The load-plugins list {where} names no plugin.")
    for name in names:
        if "/" in name or ".." in name:
            raise ConfigError(
                f'Invalid plugin name "{name}" in the load-plugins list {where}: '
                'a name may not contain "/" or "..".'
            )


def read_config_file(path: str, *, strict: bool = False) -> ConfigValues:
    """Read the configuration file at *path*.

    Runs :func:`check_file_permissions` first, then checks the opened file
    again (so the file read is the file checked).  A file that cannot be
    read or parsed is ignored with a warning giving the path and the reason
    (the daemon starts without it, as C does); with *strict* (a reload)
    that is a :class:`ConfigError`, and so is a missing file.  Otherwise as
    :func:`parse_config`.  Raises :class:`ConfigError` for unsafe
    permissions, for a bad ``load-plugins`` list and for a bad value of the
    interface policy.
    """
    if not check_file_permissions(path):
        if strict:
            raise ConfigError(f'"{path}" does not exist.')
        return ConfigValues()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as err:
        if strict:
            raise ConfigError(f"Unable to load mptcpd settings from file '{path}': "
                              f"{err.strerror or err}.") from None
        _ignored(path, err.strerror or str(err))
        return ConfigValues()
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_mode & stat.S_IWOTH:
            raise ConfigError(f'"{path}" should be a file that is not world writable.')
        try:
            data = file.read()
        except OSError as err:
            if strict:
                raise ConfigError(f"Unable to load mptcpd settings from file '{path}': "
                                  f"{err.strerror or err}.") from None
            _ignored(path, err.strerror or str(err))
            return ConfigValues()
    return parse_config(data, path, strict=strict)


def _ignored(path: str, reason: str) -> None:
    logger.warning("Unable to load mptcpd settings from file '%s': %s; the file is "
                   "ignored.", path, reason)


def group_kind(name: str) -> tuple[str, str] | None:
    """What the group named *name* is: ``(kind, argument)``, or None for a
    group mptcpd does not read.

    ``[core]`` and ``[interfaces]`` give ``("core", "")`` and
    ``("interfaces", "")``; ``[interface eth*]`` gives ``("interface",
    "eth*")`` (blanks around the argument dropped; the argument may be
    empty, which the group's reader refuses).
    """
    if name in GROUP_KEYS and name not in PREFIXED_GROUPS:
        return name, ""
    kind, blank, argument = name.partition(" ")
    if kind in PREFIXED_GROUPS and (blank or not argument):
        return kind, argument.strip(" \t")
    return None


def _check_layout(settings: Settings, path: str) -> None:
    """Warn about what ELL silently ignores: repeated groups, and unknown or
    repeated keys in the groups mptcpd reads."""
    first_group: dict[str, int] = {}
    for (name, pairs), (group_line, key_lines) in zip(settings.groups, settings.lines):
        if name in first_group:
            logger.warning('Duplicate group [%s] at line %d of "%s" ignored: the first, '
                           "at line %d, applies.", name, group_line, path,
                           first_group[name])
            continue
        first_group[name] = group_line
        kind = group_kind(name)
        if kind is None:
            continue
        known = GROUP_KEYS[kind[0]]
        first_key: dict[str, int] = {}
        for (key, _value), line in zip(pairs, key_lines):
            if key not in known:
                near = key.lower().replace("_", "-")
                hint = f' (did you mean "{near}"?)' if near in known else ""
                logger.warning('Unknown key "%s" at line %d of "%s" ignored%s.', key, line,
                               path, hint)
            elif key in first_key:
                logger.warning('Duplicate key "%s" at line %d of "%s" ignored: the first, '
                               "at line %d, applies.", key, line, path, first_key[key])
            else:
                first_key[key] = line


def parse_config(data: bytes, path: str, *, strict: bool = False) -> ConfigValues:
    """The settings of configuration-file contents *data*.

    *path* is for messages only.  Unparsable contents are warned about and
    give empty values (with *strict*, as when the daemon reloads its
    configuration, they raise :class:`ConfigError` instead); unknown keys
    and repeated groups and keys are warned about; an unknown ``log`` word
    is ignored silently; ``[core]`` flag lists are parsed with warnings.
    Raises :class:`ConfigError` for a bad ``load-plugins`` list and for a
    bad value of the interface policy.
    """
    try:
        settings = parse_settings(data)
    except SettingsSyntaxError as err:
        if strict:
            raise ConfigError(f"Unable to load mptcpd settings from file '{path}': "
                              f"{err}.") from None
        _ignored(path, str(err))
        return ConfigValues()
    _check_layout(settings, path)
    values: dict[str, Any] = {}
    for group, pairs in _first_groups(settings):
        kind = group_kind(group)
        if kind is not None:
            _GROUP_READERS[kind[0]](group, kind[1], pairs, path, values)
    groups = _plugin_groups(settings, path)
    if groups:
        values["plugin_groups"] = groups
    return ConfigValues(**values)


def _plugin_groups(settings: Settings, path: str) -> tuple[PluginGroup, ...]:
    """The ``[plugin NAME]`` groups of *settings*, the first of each name
    (repeats are warned about by :func:`_check_layout`); a group naming no
    plugin is warned about and skipped."""
    groups: dict[str, PluginGroup] = {}
    seen: set[str] = set()
    for (group, pairs), (line, key_lines) in zip(settings.groups, settings.lines):
        is_plugin = group.startswith(PLUGIN_GROUP_PREFIX) or group == PLUGIN_GROUP_PREFIX.strip()
        if not is_plugin or group in seen:
            continue  # a repeated group: warned about already
        seen.add(group)
        name = group[len(PLUGIN_GROUP_PREFIX):].strip()
        if not name:
            logger.warning('Group [%s] at line %d of "%s" names no plugin; ignored.',
                           group, line, path)
            continue
        if name in groups:
            logger.warning('Group [%s] at line %d of "%s" ignored: the settings of plugin '
                           '"%s" are at line %d.', group, line, path, name, groups[name].line)
            continue
        items = tuple((key, unescape_value(value), key_line)
                      for (key, value), key_line in zip(pairs, key_lines))
        groups[name] = PluginGroup(name, path, line, items)
    return tuple(groups.values())


def _first_groups(settings: Settings) -> list[tuple[str, list[tuple[str, str]]]]:
    """The groups in file order, a repeated group (by name) left out."""
    seen: set[str] = set()
    groups = []
    for name, pairs in settings.groups:
        if name not in seen:
            seen.add(name)
            groups.append((name, pairs))
    return groups


def _first_value(pairs: list[tuple[str, str]], key: str) -> str | None:
    """The unescaped value of the first *key* (None if absent or the escapes
    are invalid, as ELL)."""
    for pair_key, raw in pairs:
        if pair_key == key:
            return unescape_value(raw)
    return None


def _read_keys(group: str, pairs: list[tuple[str, str]], path: str,
               parsers: dict[str, Callable[[str, str], Any]],
               values: dict[str, Any]) -> None:
    for key, parse in parsers.items():
        text = _first_value(pairs, key)
        if text is None:
            continue
        try:
            values[key.replace("-", "_")] = parse(text, path)
        except _BadValue as err:
            raise ConfigError(f'Invalid {key} "{text}" in [{group}] of "{path}": '
                              f"{err}.") from None


def _read_core(group: str, _argument: str, pairs: list[tuple[str, str]], path: str,
               values: dict[str, Any]) -> None:
    _read_keys(group, pairs, path, _FILE_KEY_PARSERS, values)


def _read_interfaces(group: str, _argument: str, pairs: list[tuple[str, str]],
                     path: str, values: dict[str, Any]) -> None:
    _read_keys(group, pairs, path, _INTERFACES_KEY_PARSERS, values)


def _read_interface_group(group: str, argument: str, pairs: list[tuple[str, str]],
                          path: str, values: dict[str, Any]) -> None:
    try:
        glob = _check_glob(argument)
    except _BadValue as err:
        raise ConfigError(f'Invalid group [{group}] in "{path}": {err}.') from None
    found: dict[str, Any] = {}
    _read_keys(group, pairs, path, _INTERFACE_KEY_PARSERS, found)
    groups = values.setdefault("interface_groups", ())
    values["interface_groups"] = groups + ((glob, found.get("addr_flags")),)


class _BadValue(ValueError):
    """A value of the interface policy is wrong; the text says why."""


#: Characters a Linux interface name cannot hold (``dev_valid_name``).
_NOT_IN_NAMES = re.compile(r"[/:\s]")
#: A link kind (``IFLA_INFO_KIND``): the kernel's names are of these.
_KIND = re.compile(r"[A-Za-z0-9_.-]{1,32}")


def _split_list(text: str) -> list[str]:
    """A comma-separated list, blanks around items dropped, empty items too."""
    return [item for item in (part.strip(" \t") for part in text.split(",")) if item]


def _check_glob(glob: str) -> str:
    if not glob:
        raise _BadValue("no interface name pattern")
    if _NOT_IN_NAMES.search(glob) or glob in (".", ".."):
        raise _BadValue(f'"{glob}" cannot match an interface name (no "/", ":" or '
                        "blanks)")
    return glob


def parse_globs(text: str, _path: str = "") -> tuple[str, ...]:
    """``allow``, ``deny``: comma-separated shell globs of interface names."""
    return tuple(_check_glob(glob) for glob in _split_list(text))


def parse_kinds(text: str, _path: str = "") -> tuple[str, ...]:
    """``deny-kinds``: comma-separated link kinds (``bridge``, ``tun``, ...)."""
    kinds = _split_list(text)
    for kind in kinds:
        if not _KIND.fullmatch(kind):
            raise _BadValue(f'"{kind}" is not a link kind')
    return tuple(kinds)


def parse_address_classes(text: str, _path: str = "") -> AddressClass:
    """``skip-address-classes``: comma-separated class names; empty is none."""
    table = dict(ADDRESS_CLASS_TOKENS)
    classes = NO_ADDRESS_CLASSES
    for word in _split_list(text):
        if word not in table:
            raise _BadValue(f'unknown address class "{word}" (known: '
                            + ", ".join(table) + ")")
        classes |= table[word]
    return classes


def parse_addr_flags_strict(text: str, _path: str = "") -> AddrFlags:
    """``addr-flags`` of an ``[interface GLOB]`` group: like ``[core]``'s, but
    an unknown flag is an error; empty means no flags."""
    table = dict(ADDR_FLAG_TOKENS)
    flags = NO_ADDR_FLAGS
    for word in _split_list(text):
        if word not in table:
            raise _BadValue(f'unknown flag "{word}" (known: ' + ", ".join(table) + ")")
        flags |= table[word]
    return flags


def address_classes_to_str(classes: int) -> str:
    """Address classes as text, in the order of :data:`ADDRESS_CLASS_TOKENS`."""
    return ",".join(name for name, bit in ADDRESS_CLASS_TOKENS if classes & bit)


def _parse_queue_size(text: str, path: str) -> int | None:
    """``command-queue-size``: a whole number >= 1; anything else is warned
    about and ignored (the default applies)."""
    try:
        value = int(text, 10)
    except ValueError:
        value = 0
    if value < 1:
        logger.warning('Ignoring command-queue-size "%s" in "%s": not a whole number '
                       "of at least 1.", text, path)
        return None
    return value


def _parse_timeout(text: str, path: str) -> float | None:
    """``check-route-timeout``: seconds, a number >= 0; anything else is
    warned about and ignored (the default applies)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        logger.warning('Ignoring check-route-timeout "%s" in "%s": not a number of '
                       "seconds.", text, path)
        return None
    return value


def _parse_control_socket(text: str, path: str) -> str | None:
    """``control-socket``: an absolute path, or empty (no control socket);
    anything else is warned about and ignored (the default applies)."""
    if text and not text.startswith("/"):
        logger.warning('Ignoring control-socket "%s" in "%s": not an absolute path.',
                       text, path)
        return None
    return text


def _parse_load_plugins(text: str, path: str) -> tuple[str, ...]:
    """``load-plugins``: :class:`ConfigError` for a list naming no plugin or
    a bad name."""
    names = parse_plugin_list(text)
    _check_plugin_names(names, f'in "{path}"')
    return names


#: How the value of each key of the ``[core]`` group is read (its text and
#: the file's path, for messages), in the order the file is read: C
#: mptcpd's, so that warnings come out in the same order.  A key sets the
#: :class:`ConfigValues` field of its name, ``_`` for ``-``.
_FILE_KEY_PARSERS: dict[str, Callable[[str, str], Any]] = {
    "log": lambda text, _: text if text in LOG_DESTINATIONS else None,
    "plugin-dir": lambda text, _: text or None,  # empty means unset (C: "")
    "notify-flags": lambda text, _: parse_notify_flags(text),
    "addr-flags": lambda text, _: parse_addr_flags(text),
    "path-manager": lambda text, _: text,
    "check-route-timeout": _parse_timeout,
    "command-queue-size": _parse_queue_size,
    "control-socket": _parse_control_socket,
    "load-plugins": _parse_load_plugins,
    "skip-address-classes": parse_address_classes,
}
#: The keys of the ``[core]`` group, in the order the file is read.
FILE_KEYS = tuple(_FILE_KEY_PARSERS)

#: Keys of the ``[interfaces]`` group.
_INTERFACES_KEY_PARSERS: dict[str, Callable[[str, str], Any]] = {
    "allow": parse_globs,
    "deny": parse_globs,
    "deny-kinds": parse_kinds,
}
#: Keys of the ``[interface GLOB]`` groups.
_INTERFACE_KEY_PARSERS: dict[str, Callable[[str, str], Any]] = {
    "addr-flags": parse_addr_flags_strict,
}

#: What reads a group of each kind: ``(group name, argument, its key-value
#: pairs, path, values to fill)``.  A new kind of group is one entry here,
#: one in :data:`GROUP_KEYS` and, for ``[KIND ARGUMENT]`` groups, one in
#: :data:`PREFIXED_GROUPS`.
_GROUP_READERS: dict[str, Callable[[str, str, list[tuple[str, str]], str,
                                    dict[str, Any]], None]] = {
    CORE_GROUP: _read_core,
    INTERFACES_GROUP: _read_interfaces,
    INTERFACE_GROUP_KIND: _read_interface_group,
}
#: The keys read in each kind of group (the others are warned about).
GROUP_KEYS: dict[str, tuple[str, ...]] = {
    CORE_GROUP: FILE_KEYS,
    INTERFACES_GROUP: tuple(_INTERFACES_KEY_PARSERS),
    INTERFACE_GROUP_KIND: tuple(_INTERFACE_KEY_PARSERS),
}
#: Kinds of the groups named ``[KIND ARGUMENT]``.
PREFIXED_GROUPS: tuple[str, ...] = (INTERFACE_GROUP_KIND,)


def merge(first: ConfigValues, second: ConfigValues) -> ConfigValues:
    """Fill every unset value of *first* from *second*: a value is unset when
    it is its field's default (None, False, or 0 for flags)."""
    merged: dict[str, Any] = {}
    for f in fields(ConfigValues):
        value = getattr(first, f.name)
        merged[f.name] = getattr(second, f.name) if value == f.default else value
    return ConfigValues(**merged)


def load_config(cli: ConfigValues | None = None, path: str | None = None, *,
                strict: bool = False) -> Config:
    """Build the daemon configuration from command-line values and the file.

    *path* defaults to :func:`config_path` (``$MPTCPD_CONFIG`` or
    ``/etc/mptcpd/mptcpd.conf``).  The file is always read, even when the
    command line sets everything, so its warnings always show.  Raises
    :class:`ConfigError` when the daemon must not start; with *strict* (a
    reload) also when the file is missing or cannot be read or parsed.
    """
    cli = cli if cli is not None else ConfigValues()
    path = config_path(path)
    if cli.load_plugins is not None:
        _check_plugin_names(cli.load_plugins, "given with --load-plugins")
    values = merge(cli, read_config_file(path, strict=strict))
    path_manager = values.path_manager
    if path_manager is not None and len(path_manager) > MAX_PATH_MANAGER_NAME:
        logger.warning(
            "Default plugin name length truncated from %d to %d.",
            len(path_manager),
            MAX_PATH_MANAGER_NAME,
        )
        path_manager = path_manager[:MAX_PATH_MANAGER_NAME]
    given: dict[str, Any] = {
        f.name: getattr(values, f.name) for f in fields(ConfigValues)
    }
    given.update(path_manager=path_manager, config_file=path, cli_values=cli)
    # A value still None takes the default of Config's field.
    return Config(**{name: value for name, value in given.items() if value is not None})


#: What a reload cannot change: these take effect when the daemon restarts.
RESTART_FIELDS = ("log", "plugin_dir", "path_manager", "load_plugins",
                  "command_queue_size", "control_socket")


def reload_config(running: Config) -> Config:
    """The configuration after a reload (SIGHUP): the file read again (the
    same path) and merged with the same command line.

    Settings of :data:`RESTART_FIELDS` that changed are logged and keep
    their running values.  Raises :class:`ConfigError` when the new file
    cannot be used (missing, unreadable, unparsable, unsafe or with a bad
    value): the caller then keeps *running*.
    """
    new = load_config(running.cli_values, running.config_file, strict=True)
    kept: dict[str, Any] = {}
    for name in RESTART_FIELDS:
        if getattr(new, name) != getattr(running, name):
            logger.warning('The new %s in "%s" takes effect when mptcpd restarts.',
                           name.replace("_", "-"), running.config_file)
            kept[name] = getattr(running, name)
    # Plugins read their settings when they start: the running ones stay.
    def contents(config: Config) -> dict[str, tuple[tuple[str, str | None], ...]]:
        return {group.name: tuple((key, value) for key, value, _line in group.items)
                for group in config.plugin_groups}

    old, now = contents(running), contents(new)
    for name in sorted(set(old) | set(now)):
        if old.get(name) != now.get(name):
            logger.warning('The new [plugin %s] settings in "%s" take effect when mptcpd '
                           "restarts.", name, running.config_file)
    kept["plugin_groups"] = running.plugin_groups
    return replace(new, **kept)


def log_config(config: Config) -> None:
    """Log the configuration at debug level, in C mptcpd's order, set values only."""
    logger.debug("path manager plugin directory: %s", config.plugin_dir)
    if config.path_manager is not None:
        logger.debug("default path manager plugin: %s", config.path_manager)
    if config.addr_flags:
        logger.debug("address flags: %s", addr_flags_to_str(config.addr_flags))
    if config.notify_flags:
        logger.debug("notify flags: %s", notify_flags_to_str(config.notify_flags))
    if config.load_plugins is not None:
        logger.debug("plugins to load: %s", ",".join(config.load_plugins))
    if config.check_route_timeout != DEFAULT_CHECK_ROUTE_TIMEOUT:
        logger.debug("check_route timeout: %g s", config.check_route_timeout)
    if config.command_queue_size != DEFAULT_COMMAND_QUEUE_SIZE:
        logger.debug("command queue size: %d", config.command_queue_size)
    if config.skip_address_classes:
        logger.debug("skipped address classes: %s",
                     address_classes_to_str(config.skip_address_classes))
    if config.allow:
        logger.debug("interfaces allowed: %s", ",".join(config.allow))
    if config.deny:
        logger.debug("interfaces denied: %s", ",".join(config.deny))
    if config.deny_kinds:
        logger.debug("interface kinds denied: %s", ",".join(config.deny_kinds))
    for glob, flags in config.interface_groups:
        logger.debug("interfaces %s: address flags %s", glob,
                     "global" if flags is None else addr_flags_to_str(flags) or "none")
    if config.control_socket is not None:
        logger.debug("control socket: %s", config.control_socket or "none")
