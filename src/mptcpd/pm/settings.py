"""A plugin's own settings: the ``[plugin NAME]`` group of ``mptcpd.conf``.

The configuration file keeps a plugin's group raw (:class:`mptcpd.config.PluginGroup`);
this module gives the plugin a read-only mapping of it with typed getters
(``pm.config.plugin_settings(name)``).  Every getter returns its *default*
when the key is absent and raises :class:`~mptcpd.errors.SettingsError`
naming the file, line, group and key when the value is not what it must be.
As in the rest of the file, the first occurrence of a key applies;
:meth:`PluginSettings.check_keys`, called by the plugin that owns the group
with the keys it knows, warns about the others and about repeated keys.

Accepted forms:

* integers: decimal digits with an optional sign (``8``, ``-1``);
* numbers: what Python's ``float`` reads, finite;
* booleans: ``true``/``false``, ``yes``/``no``, ``on``/``off``, ``1``/``0``
  (any case);
* lists: comma-separated, blanks around items dropped, empty items dropped;
* durations: a number with an optional unit ``ms``, ``s`` (the default),
  ``m`` or ``h`` (``500ms``, ``1.5``, ``2m``); returned in seconds.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Iterator, Mapping

from mptcpd.config import PluginGroup
from mptcpd.errors import SettingsError

_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})
_INT = re.compile(r"[+-]?[0-9]+")
_DURATION = re.compile(r"(?P<number>[^a-z]*?)\s*(?P<unit>ms|s|m|h)?")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def _range_text(low: float | None, high: float | None, unit: str = "") -> str:
    if low is not None and high is not None:
        return f" from {low:g}{unit} to {high:g}{unit}"
    if low is not None:
        return f" of at least {low:g}{unit}"
    if high is not None:
        return f" of at most {high:g}{unit}"
    return ""


class PluginSettings(Mapping[str, str]):
    """The settings of plugin ``name``, read only: key -> value (the first
    occurrence of each key; a key whose value had an invalid escape is
    present, and its getters raise)."""

    def __init__(self, name: str, group: PluginGroup | None = None) -> None:
        self._name = name
        self._group = group if group is not None else PluginGroup(name, "", 0)
        self._first: dict[str, tuple[str | None, int]] = {}
        for key, value, line in self._group.items:
            self._first.setdefault(key, (value, line))

    # -- the mapping -----------------------------------------------------------

    @property
    def name(self) -> str:
        """The plugin the settings are for."""
        return self._name

    @property
    def path(self) -> str:
        """The configuration file they come from ("" when there is no group)."""
        return self._group.path

    def __getitem__(self, key: str) -> str:
        value, line = self._first[key]
        if value is None:
            raise self._error(key, line, "(invalid escape)",
                              "a value whose only escapes are \\s \\n \\t \\r \\\\")
        return value

    def __contains__(self, key: object) -> bool:
        return key in self._first

    def __iter__(self) -> Iterator[str]:
        return iter(self._first)

    def __len__(self) -> int:
        return len(self._first)

    def __repr__(self) -> str:
        return f"PluginSettings({self._name!r}, {dict(self._first)!r})"

    # -- checks --------------------------------------------------------------

    def check_keys(self, known: Iterable[str]) -> list[str]:
        """Warn (on the plugin's logger ``mptcpd.plugins.<name>``) about every
        key not in ``known`` and every repeated key; returns the unknown keys."""
        known = set(known)
        log = logging.getLogger(f"mptcpd.plugins.{self._name}")
        unknown: list[str] = []
        first: dict[str, int] = {}
        for key, _value, line in self._group.items:
            if key not in known:
                near = key.lower().replace("_", "-")
                hint = f' (did you mean "{near}"?)' if near in known else ""
                log.warning('Unknown key "%s" at line %d of "%s" in [plugin %s] ignored%s.',
                            key, line, self.path, self._name, hint)
                unknown.append(key)
            elif key in first:
                log.warning('Duplicate key "%s" at line %d of "%s" in [plugin %s] ignored: '
                            "the first, at line %d, applies.", key, line, self.path,
                            self._name, first[key])
            else:
                first[key] = line
        return unknown

    def _error(self, key: str, line: int, value: str, expected: str) -> SettingsError:
        group = f"plugin {self._name}"
        return SettingsError(
            f'"{self.path}", line {line}: [{group}] {key}={value}: expected {expected}',
            path=self.path, group=group, key=key, line=line)

    def _raw(self, key: str) -> tuple[str, int] | None:
        if key not in self._first:
            return None
        return self[key].strip(), self._first[key][1]

    # -- typed getters -----------------------------------------------------------

    def get_str(self, key: str, default: str = "") -> str:
        """The value as it is (trailing blanks kept), or ``default``."""
        return self[key] if key in self._first else default

    def get_int(self, key: str, default: int, *, min: int | None = None,
                max: int | None = None) -> int:
        """A whole number within ``min``..``max`` (each optional)."""
        raw = self._raw(key)
        if raw is None:
            return default
        text, line = raw
        what = f"a whole number{_range_text(min, max)}"
        if not _INT.fullmatch(text):
            raise self._error(key, line, text, what)
        value = int(text, 10)
        if (min is not None and value < min) or (max is not None and value > max):
            raise self._error(key, line, text, what)
        return value

    def get_float(self, key: str, default: float, *, min: float | None = None,
                  max: float | None = None) -> float:
        """A finite number within ``min``..``max`` (each optional)."""
        raw = self._raw(key)
        if raw is None:
            return default
        text, line = raw
        return self._number(key, line, text, text, 1.0, min, max,
                            f"a number{_range_text(min, max)}")

    def get_duration(self, key: str, default: float, *, min: float | None = None,
                     max: float | None = None) -> float:
        """A duration in seconds within ``min``..``max`` seconds (each
        optional): ``250ms``, ``1.5`` or ``1.5s``, ``2m``, ``1h``."""
        raw = self._raw(key)
        if raw is None:
            return default
        text, line = raw
        what = (f"a duration{_range_text(min, max, ' s')} (a number of seconds, or "
                'with a unit: "250ms", "1.5s", "2m", "1h")')
        match = _DURATION.fullmatch(text.lower())
        if match is None:
            raise self._error(key, line, text, what)
        return self._number(key, line, text, match["number"], _UNITS[match["unit"]],
                            min, max, what)

    def _number(self, key: str, line: int, text: str, number: str, scale: float,
                low: float | None, high: float | None, what: str) -> float:
        try:
            value = float(number) * scale
        except ValueError:
            raise self._error(key, line, text, what) from None
        if (not math.isfinite(value) or (low is not None and value < low)
                or (high is not None and value > high)):
            raise self._error(key, line, text, what)
        return value

    def get_bool(self, key: str, default: bool) -> bool:
        """``true``/``false``, ``yes``/``no``, ``on``/``off``, ``1``/``0``."""
        raw = self._raw(key)
        if raw is None:
            return default
        text, line = raw
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise self._error(key, line, text, "true or false (yes/no, on/off, 1/0)")

    def get_list(self, key: str, default: Iterable[str] = ()) -> tuple[str, ...]:
        """Comma-separated items, blanks around them and empty ones dropped."""
        raw = self._raw(key)
        if raw is None:
            return tuple(default)
        return tuple(item.strip() for item in raw[0].split(",") if item.strip())
