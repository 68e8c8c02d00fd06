"""Plugin settings: ``[plugin NAME]`` groups of mptcpd.conf, handed to plugin
NAME through ``pm.config.plugin_settings(name)`` with typed getters."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from mptcpd import config as cfg
from mptcpd.config import (
    ConfigValues,
    PluginGroup,
    load_config,
    read_config_file,
    reload_config,
)
from mptcpd.log import reset_logging
from mptcpd.plugin import SettingsError
from mptcpd.pm.settings import PluginSettings
from mptcpd.testing import FakePathManager


@pytest.fixture(autouse=True)
def _clean_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(cfg.CONFIG_ENV, raising=False)
    reset_logging()
    yield
    reset_logging()


def write(path: Path, text: str) -> str:
    path.write_text(text)
    path.chmod(0o644)
    return str(path)


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


FILE = (
    "[core]\n"                       # 1
    "log=null\n"                     # 2
    "[plugin fullmesh]\n"            # 3
    "max-subflows = 4\n"             # 4
    "retry-base=250ms\n"             # 5
    "name=a\\sb\n"                   # 6
    "[plugin  sspi ]\n"              # 7
    "[plugin]\n"                     # 8
    "x=1\n"                          # 9
)


def test_plugin_groups_are_kept_raw_with_their_lines(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path / "m.conf", FILE)
    values = read_config_file(path)
    assert values == ConfigValues(log="null", plugin_groups=(
        PluginGroup("fullmesh", path, 3, (("max-subflows", "4", 4),
                                          ("retry-base", "250ms", 5),
                                          ("name", "a b", 6))),
        PluginGroup("sspi", path, 7, ()),
    ))
    # The file's own checks know the groups: no "unknown key" for them.
    assert warnings(caplog) == [f'Group [plugin] at line 8 of "{path}" names no plugin; '
                                "ignored."]
    config = load_config(path=path)
    assert config.plugin_groups == values.plugin_groups
    hash(config)  # still frozen and hashable


def test_a_second_group_for_a_plugin_is_warned_about(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path / "m.conf", "[plugin a]\nx=1\n[plugin  a]\nx=2\n[plugin a]\n")
    (group,) = read_config_file(path).plugin_groups
    assert group.items == (("x", "1", 2),)
    assert warnings(caplog) == [
        f'Duplicate group [plugin a] at line 5 of "{path}" ignored: the first, at line 1, '
        "applies.",
        f'Group [plugin  a] at line 3 of "{path}" ignored: the settings of plugin "a" are '
        "at line 1.",
    ]


def test_pm_config_hands_each_plugin_its_own_group(tmp_path: Path) -> None:
    path = write(tmp_path / "m.conf", FILE)
    pm = FakePathManager(config=load_config(path=path))
    mine = pm.config.plugin_settings("fullmesh")
    assert dict(mine) == {"max-subflows": "4", "retry-base": "250ms", "name": "a b"}
    assert mine.name == "fullmesh" and mine.path == path
    assert pm.config.plugin_settings("fullmesh") is mine
    assert mine.get_int("max-subflows", 8, min=1) == 4
    assert mine.get_duration("retry-base", 1.0) == 0.25
    assert mine.get_str("name") == "a b"
    assert mine.get_int("absent", 8) == 8
    empty = pm.config.plugin_settings("nobody")
    assert len(empty) == 0 and empty.get_bool("x", True) is True and empty.path == ""
    with pytest.raises(TypeError):
        mine["x"] = "y"  # type: ignore[index]


def test_the_test_kit_takes_settings() -> None:
    pm = FakePathManager(settings={"fullmesh": {"max-subflows": "2"}})
    assert pm.config.plugin_settings("fullmesh").get_int("max-subflows", 8) == 2


def settings(**values: str) -> PluginSettings:
    items = tuple((key.replace("_", "-"), value, line)
                  for line, (key, value) in enumerate(values.items(), start=10))
    return PluginSettings("demo", PluginGroup("demo", "/etc/m.conf", 9, items))


def test_typed_getters_read_their_forms() -> None:
    s = settings(a="12", b=" -3 ", c="Yes", d="off", e="eth*, wlan0 ,,", f="2m",
                 g="1.5", h="500ms", i="0.25")
    assert s.get_int("a", 0, min=1, max=12) == 12
    assert s.get_int("b", 0) == -3
    assert (s.get_bool("c", False), s.get_bool("d", True)) == (True, False)
    assert s.get_list("e") == ("eth*", "wlan0")
    assert s.get_list("absent", ["x"]) == ("x",)
    assert (s.get_duration("f", 0), s.get_duration("g", 0), s.get_duration("h", 0)) == (
        120.0, 1.5, 0.5)
    assert s.get_float("i", 0, min=0, max=1) == 0.25


@pytest.mark.parametrize(("value", "call", "expected"), [
    ("eight", lambda s: s.get_int("k", 8, min=1, max=64), "a whole number from 1 to 64"),
    ("0", lambda s: s.get_int("k", 8, min=1), "a whole number of at least 1"),
    ("1.5", lambda s: s.get_int("k", 8), "a whole number"),
    ("maybe", lambda s: s.get_bool("k", True), "true or false (yes/no, on/off, 1/0)"),
    ("5 parsecs", lambda s: s.get_duration("k", 1.0),
     'a duration (a number of seconds, or with a unit: "250ms", "1.5s", "2m", "1h")'),
    ("-1s", lambda s: s.get_duration("k", 1.0, min=0),
     'a duration of at least 0 s (a number of seconds, or with a unit: "250ms", "1.5s", '
     '"2m", "1h")'),
    ("nan", lambda s: s.get_float("k", 1.0), "a number"),
    ("inf", lambda s: s.get_float("k", 1.0, max=10), "a number of at most 10"),
])
def test_a_bad_value_names_file_line_group_and_key(value: str, call: object,
                                                   expected: str) -> None:
    s = settings(k=value)
    with pytest.raises(SettingsError) as err:
        call(s)  # type: ignore[operator]
    assert str(err.value) == (f'"/etc/m.conf", line 10: [plugin demo] k={value.strip()}: '
                              f"expected {expected}")
    assert (err.value.path, err.value.group, err.value.key, err.value.line) == (
        "/etc/m.conf", "plugin demo", "k", 10)
    assert isinstance(err.value, ValueError)


def test_an_invalid_escape_is_an_error_when_read() -> None:
    s = PluginSettings("demo", PluginGroup("demo", "/m", 1, (("k", None, 2),)))
    assert "k" in s
    with pytest.raises(SettingsError, match=r'"/m", line 2: \[plugin demo\] k=\(invalid '):
        s.get_str("k")


def test_unknown_and_repeated_keys_are_warned_about_by_the_owner(
        caplog: pytest.LogCaptureFixture) -> None:
    group = PluginGroup("demo", "/m", 1, (("max-subflows", "1", 2), ("max_subflows", "2", 3),
                                          ("max-subflows", "3", 4), ("colour", "red", 5)))
    s = PluginSettings("demo", group)
    assert s.get_int("max-subflows", 0) == 1  # the first one applies
    assert s.check_keys(["max-subflows"]) == ["max_subflows", "colour"]
    assert [(r.name, r.getMessage()) for r in caplog.records] == [
        ("mptcpd.plugins.demo", 'Unknown key "max_subflows" at line 3 of "/m" in '
         '[plugin demo] ignored (did you mean "max-subflows"?).'),
        ("mptcpd.plugins.demo", 'Duplicate key "max-subflows" at line 4 of "/m" in '
         "[plugin demo] ignored: the first, at line 2, applies."),
        ("mptcpd.plugins.demo", 'Unknown key "colour" at line 5 of "/m" in [plugin demo] '
         "ignored."),
    ]


def test_a_reload_keeps_the_running_plugin_settings_and_says_so(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path / "m.conf", "[core]\n[plugin a]\nx=1\n[plugin b]\ny=2\n")
    running = load_config(path=path)
    write(tmp_path / "m.conf", "[core]\n\n[plugin a]\nx=1\n[plugin b]\ny=3\n[plugin c]\n")
    caplog.clear()
    new = reload_config(running)
    assert new.plugin_groups == running.plugin_groups
    assert warnings(caplog) == [
        f'The new [plugin b] settings in "{path}" take effect when mptcpd restarts.',
        f'The new [plugin c] settings in "{path}" take effect when mptcpd restarts.',
    ]  # [plugin a] only moved a line down: not a change
    pm = FakePathManager(config=running)
    pm.set_config(new)
    assert pm.config.plugin_settings("b")["y"] == "2"
    assert pm.config.config_file == path and pm.config.control_socket == new.control_socket
