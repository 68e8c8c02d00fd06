"""Configuration file, flag lists and merging."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mptcpd import config as cfg
from mptcpd.config import (
    Config,
    ConfigError,
    ConfigValues,
    Settings,
    SettingsSyntaxError,
    load_config,
    parse_settings,
    read_config_file,
)
from mptcpd.log import reset_logging
from mptcpd.types import AddrFlags, NotifyFlags


@pytest.fixture(autouse=True)
def _clean_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(cfg.CONFIG_ENV, raising=False)
    reset_logging()
    yield
    reset_logging()


@pytest.fixture
def debug_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="mptcpd")
    return caplog


def write(path: Path, text: str | bytes, mode: int = 0o644) -> str:
    if isinstance(text, str):
        text = text.encode()
    path.write_bytes(text)
    path.chmod(mode)
    return str(path)


def messages(caplog: pytest.LogCaptureFixture, level: int | None = None) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if level is None or r.levelno == level
    ]


# ---------------------------------------------------------------------------
# ELL settings dialect
# ---------------------------------------------------------------------------


def core(text: str | bytes) -> dict[str, str]:
    settings = parse_settings(text.encode() if isinstance(text, str) else text)
    for name, pairs in settings.groups:
        if name == "core":
            return dict(reversed(pairs))  # first occurrence wins
    return {}


def test_empty_text_is_valid_and_empty() -> None:
    assert parse_settings(b"").groups == []


def test_blank_and_comment_lines_are_skipped() -> None:
    text = (
        "\n   \n\t# comment\n# another = one\n[core]\n  # indented comment\nlog=null\n"
    )
    assert core(text) == {"log": "null"}


def test_no_inline_comments() -> None:
    assert core("[core]\nlog=stderr # x\n") == {"log": "stderr # x"}


def test_leading_blanks_before_group_and_key() -> None:
    assert core(" \t[core]\n\t  log=null") == {"log": "null"}


def test_blanks_around_equal_skipped_but_trailing_whitespace_kept() -> None:
    assert core("[core]\npath-manager \t=  \tsspi  \n") == {"path-manager": "sspi  "}


def test_fix_crlf_line_ends_are_accepted() -> None:
    # ELL keeps the \r, so that a whole CRLF file is unreadable.
    assert core("[core]\r\nlog=null\r\n\r\n# c\r\npath-manager = a\rb \r\n") == {
        "log": "null", "path-manager": "a\rb ",
    }
    assert core("[core]\r\nlog=null\r") == {"log": "null"}


def test_fix_a_utf8_byte_order_mark_is_accepted() -> None:
    assert core(b"\xef\xbb\xbf[core]\r\nlog=null\r\n") == {"log": "null"}
    with pytest.raises(SettingsSyntaxError):  # only at the start of the file
        parse_settings(b"[core]\n\xef\xbb\xbflog=null\n")


def test_empty_value_is_kept() -> None:
    assert core("[core]\nplugin-dir=\n") == {"plugin-dir": ""}


def test_key_characters() -> None:
    assert core("[core]\nA-z_0.9=v\n") == {"A-z_0.9": "v"}


def test_group_name_may_hold_printable_characters_and_trailing_blanks() -> None:
    settings = parse_settings(b"[my group!]  \t\nk=v\n")
    assert settings.get_value("my group!", "k") == "v"


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("log=null\n[core]\n", id="key-before-group"),
        pytest.param("[core]\nlog\n", id="no-equal"),
        pytest.param("[core]\n=null\n", id="empty-key"),
        pytest.param("[core]\n  =null\n", id="empty-key-after-blanks"),
        pytest.param("[core]\nl og=null\n", id="blank-inside-key"),
        pytest.param("[core]\nlog!=null\n", id="bad-key-char"),
        pytest.param("[core] x\nlog=null\n", id="junk-after-bracket"),
        pytest.param("[core\nlog=null\n", id="unterminated-group"),
        pytest.param("[co[re]\nlog=null\n", id="bracket-in-group"),
        pytest.param("[core]\rlog=null\n", id="cr-alone-is-no-line-end"),
        pytest.param("[core]\n\r\r\n", id="two-carriage-returns"),
        pytest.param(b"[core]\nlog=\xff\n", id="value-not-utf8"),
        pytest.param(b"[c\xc3\xa9]\nlog=null\n", id="group-not-ascii"),
    ],
)
def test_unparsable_text(text: str | bytes) -> None:
    with pytest.raises(SettingsSyntaxError):
        parse_settings(text.encode() if isinstance(text, str) else text)


def test_utf8_values_are_fine() -> None:
    assert core("[core]\npath-manager=caf\u00e9\n") == {"path-manager": "caf\u00e9"}


def test_first_duplicate_group_and_key_win() -> None:
    settings = parse_settings(
        b"[core]\nlog=null\nlog=syslog\n[other]\nx=1\n[core]\nlog=journal\nplugin-dir=/p\n"
    )
    assert settings.get_value("core", "log") == "null"
    # The second [core] is never looked at, even for keys the first lacks.
    assert settings.get_value("core", "plugin-dir") is None
    assert settings.get_value("other", "x") == "1"
    assert settings.get_value("missing", "x") is None


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        (r"a\sb", "a b"),
        (r"a\nb", "a\nb"),
        (r"a\tb", "a\tb"),
        (r"a\rb", "a\rb"),
        (r"a\\b", "a\\b"),
        (r"a\xb", None),
        ("a\\", None),
        ("plain", "plain"),
    ],
)
def test_value_unescaping(raw: str, value: str | None) -> None:
    settings = Settings()
    settings.groups.append(("core", [("k", raw)]))
    assert settings.get_string("core", "k") == value


# ---------------------------------------------------------------------------
# Flag lists (1.5) and plugin lists (1.6)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "flags", "warning"),
    [
        ("subflow", AddrFlags.SUBFLOW, None),
        ("subflow,", AddrFlags.SUBFLOW, None),
        (
            "signal,backup,fullmesh",
            AddrFlags.SIGNAL | AddrFlags.BACKUP | AddrFlags.FULLMESH,
            None,
        ),
        ("subflow,subflow", AddrFlags.SUBFLOW, None),
        ("laminar", AddrFlags.LAMINAR, None),
        ("subflow,laminar,", AddrFlags.SUBFLOW | AddrFlags.LAMINAR, None),
        ("implicit", AddrFlags(0), "unknown flag implicit"),
        (",subflow", AddrFlags(0), "unknown flag ,subflow"),
        ("subflowx,backup", AddrFlags(0), "unknown flag subflowx,backup"),
        ("backup,bogus,subflow", AddrFlags.BACKUP, "unknown flag bogus,subflow"),
        ("SUBFLOW", AddrFlags(0), "unknown flag SUBFLOW"),
        ("subflow, backup", AddrFlags.SUBFLOW, "unknown flag  backup"),
        ("", AddrFlags(0), None),
    ],
)
def test_addr_flags(
    debug_log: pytest.LogCaptureFixture,
    text: str,
    flags: AddrFlags,
    warning: str | None,
) -> None:
    assert cfg.parse_addr_flags(text) == flags
    assert messages(debug_log, logging.WARNING) == ([warning] if warning else [])


@pytest.mark.parametrize(
    ("text", "flags", "warning"),
    [
        ("existing", NotifyFlags.EXISTING, None),
        (
            "existing,skip_link_local,skip_loopback,check_route",
            NotifyFlags.EXISTING
            | NotifyFlags.SKIP_LINK_LOCAL
            | NotifyFlags.SKIP_LOOPBACK
            | NotifyFlags.CHECK_ROUTE,
            None,
        ),
        (
            "existing,bogus,skip_loopback",
            NotifyFlags.EXISTING,
            "unknown flag bogus,skip_loopback",
        ),
        ("skip_link_localx", NotifyFlags(0), "unknown flag skip_link_localx"),
    ],
)
def test_notify_flags(
    debug_log: pytest.LogCaptureFixture,
    text: str,
    flags: NotifyFlags,
    warning: str | None,
) -> None:
    assert cfg.parse_notify_flags(text) == flags
    assert messages(debug_log, logging.WARNING) == ([warning] if warning else [])


def test_flag_parsing_can_be_silent(debug_log: pytest.LogCaptureFixture) -> None:
    assert cfg.parse_addr_flags("bogus", warn=False) == 0
    assert debug_log.records == []


def test_flags_to_text_in_fixed_order() -> None:
    assert cfg.addr_flags_to_str(AddrFlags(0xF)) == "subflow,signal,backup,fullmesh"
    assert cfg.addr_flags_to_str(AddrFlags(0x3F)) == \
        "subflow,signal,backup,fullmesh,laminar"
    assert cfg.addr_flags_to_str(AddrFlags.BACKUP | AddrFlags.SIGNAL) == "signal,backup"
    assert cfg.addr_flags_to_str(AddrFlags(0)) == ""
    assert (
        cfg.notify_flags_to_str(NotifyFlags(0xF))
        == "existing,skip_link_local,skip_loopback,check_route"
    )
    assert cfg.notify_flags_to_str(NotifyFlags.CHECK_ROUTE | NotifyFlags.EXISTING) == (
        "existing,check_route"
    )


def test_plugin_list_drops_empty_fields() -> None:
    assert cfg.parse_plugin_list("sspi,,addr_adv,") == ("sspi", "addr_adv")
    assert cfg.parse_plugin_list(",,") == ()


# ---------------------------------------------------------------------------
# Reading the file: security check and per-key rules (1.3)
# ---------------------------------------------------------------------------


def test_missing_file_is_fine(
    debug_log: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    path = str(tmp_path / "none.conf")
    assert read_config_file(path) == ConfigValues()
    assert f'File "{path}" does not exist.' in messages(debug_log, logging.DEBUG)


def test_world_writable_file_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "m.conf", "[core]\n", mode=0o666)
    with pytest.raises(ConfigError) as err:
        read_config_file(path)
    assert str(err.value) == f'"{path}" should be a file that is not world writable.'
    assert err.value.exit_status == 1


def test_directory_refused(tmp_path: Path) -> None:
    (tmp_path / "dir.conf").mkdir(mode=0o755)
    path = str(tmp_path / "dir.conf")
    with pytest.raises(ConfigError) as err:
        read_config_file(path)
    assert str(err.value) == f'"{path}" should be a file that is not world writable.'
    assert err.value.exit_status == 1


def test_group_writable_file_accepted(tmp_path: Path) -> None:
    path = write(tmp_path / "m.conf", "[core]\nlog=null\n", mode=0o664)
    assert read_config_file(path).log == "null"


def test_symlink_to_safe_file_followed(tmp_path: Path) -> None:
    target = write(tmp_path / "real.conf", "[core]\nlog=journal\n")
    (tmp_path / "link.conf").symlink_to(target)
    assert read_config_file(str(tmp_path / "link.conf")).log == "journal"


def test_other_stat_error_is_an_error(tmp_path: Path) -> None:
    write(tmp_path / "file", "")
    path = str(tmp_path / "file" / "mptcpd.conf")  # ENOTDIR
    with pytest.raises(ConfigError) as err:
        read_config_file(path)
    assert str(err.value) == (
        f'Unexpected error during file permissions check of "{path}": Not a directory'
    )
    assert err.value.exit_status == 1


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("log=null\n[core]\n", "line 1: key-value pair before any group"),
        ("[core]\nlog\n", "line 2: delimiter '=' not found"),
        (b"[core]\nlog=\xfe\n", "line 2: value is not valid UTF-8"),
        ("[core]\nlog=null\nbad key=1\n", "line 3: invalid character in key"),
    ],
)
def test_fix_unparsable_file_is_ignored_with_a_warning(
    debug_log: pytest.LogCaptureFixture, tmp_path: Path, text: str | bytes, reason: str
) -> None:
    path = write(tmp_path / "m.conf", text)
    assert read_config_file(path) == ConfigValues()
    assert messages(debug_log, logging.WARNING) == [
        f"Unable to load mptcpd settings from file '{path}': {reason}; the file is ignored."
    ]


def test_empty_file(tmp_path: Path) -> None:
    assert read_config_file(write(tmp_path / "m.conf", "")) == ConfigValues()


def test_fix_unreadable_file_is_ignored_with_a_warning(
    debug_log: pytest.LogCaptureFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "m.conf", "[core]\nlog=null\n")

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "open", refuse)
    monkeypatch.setattr("builtins.open", refuse)
    assert read_config_file(path) == ConfigValues()
    monkeypatch.undo()
    assert messages(debug_log, logging.WARNING) == [
        f"Unable to load mptcpd settings from file '{path}': Permission denied; "
        "the file is ignored."
    ]


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory everyone may search (tmp_path's parents are private)."""
    directory = Path(tempfile.mkdtemp(prefix="mptcpd-conf-"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a process as nobody")
def test_fix_a_root_only_file_warns_a_dynamic_user_daemon(shared_dir: Path) -> None:
    """The case of a DynamicUser= daemon and a 0600 root-owned file: the
    real EACCES from open(), in a process running as nobody."""
    path = write(shared_dir / "mptcpd.conf", "[core]\nlog=null\n", mode=0o600)
    code = (
        "import logging, sys\n"
        "logging.basicConfig(stream=sys.stderr, format='%(levelname)s %(message)s')\n"
        "from mptcpd.config import read_config_file\n"
        f"print(read_config_file({path!r}))\n"
    )
    src = str(Path(cfg.__file__).resolve().parents[1])
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          user=65534, group=65534, extra_groups=[],
                          env={**os.environ, "PYTHONPATH": src}, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == repr(ConfigValues())
    assert proc.stderr == (
        f"WARNING Unable to load mptcpd settings from file '{path}': Permission denied; "
        "the file is ignored.\n"
    )


def test_fix_the_file_read_is_the_file_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A world-writable file swapped in right after the permission check is
    refused: the opened file is checked again."""
    path = write(tmp_path / "m.conf", "[core]\nlog=null\n")
    evil = write(tmp_path / "evil", "[core]\nlog=journal\nplugin-dir=/tmp/x\n", mode=0o666)
    real_stat = os.stat

    def stat_then_swap(name: object, *args: object, **kwargs: object) -> os.stat_result:
        result = real_stat(name, *args, **kwargs)  # type: ignore[arg-type]
        if str(name) == path and os.path.exists(evil):
            os.replace(evil, path)
        return result

    monkeypatch.setattr(os, "stat", stat_then_swap)
    with pytest.raises(ConfigError) as err:
        read_config_file(path)
    monkeypatch.undo()
    assert str(err.value) == f'"{path}" should be a file that is not world writable.'


def test_fix_unknown_keys_are_warned_about_with_their_line(
    debug_log: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    path = write(
        tmp_path / "m.conf",
        "# comment\n[core]\naddr_flags=subflow\nAddr-Flags=backup\nbogus=1\n"
        "log=null\n[other]\nbogus=2\n",
    )
    assert read_config_file(path) == ConfigValues(log="null")
    assert messages(debug_log, logging.WARNING) == [
        f'Unknown key "addr_flags" at line 3 of "{path}" ignored (did you mean "addr-flags"?).',
        f'Unknown key "Addr-Flags" at line 4 of "{path}" ignored (did you mean "addr-flags"?).',
        f'Unknown key "bogus" at line 5 of "{path}" ignored.',
    ]


def test_fix_duplicate_groups_and_keys_are_warned_about(
    debug_log: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    path = write(
        tmp_path / "m.conf",
        "[core]\nlog=null\n[other]\nx=1\n[core]\nplugin-dir=/p\nnope=1\n[other]\n"
        "[core]\n",
    )
    path2 = write(tmp_path / "k.conf", "[core]\nlog=null\nlog=journal\n")
    assert read_config_file(path) == ConfigValues(log="null")
    assert read_config_file(path2) == ConfigValues(log="null")
    assert messages(debug_log, logging.WARNING) == [
        f'Duplicate group [core] at line 5 of "{path}" ignored: the first, at line 1, applies.',
        f'Duplicate group [other] at line 8 of "{path}" ignored: the first, at line 3, '
        "applies.",
        f'Duplicate group [core] at line 9 of "{path}" ignored: the first, at line 1, applies.',
        f'Duplicate key "log" at line 3 of "{path2}" ignored: the first, at line 2, applies.',
    ]


def test_fix_a_crlf_file_with_a_bom_is_read(
    debug_log: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    path = write(tmp_path / "m.conf",
                 b"\xef\xbb\xbf[core]\r\nlog=null\r\naddr-flags=subflow,backup\r\n")
    assert read_config_file(path) == ConfigValues(
        log="null", addr_flags=AddrFlags.SUBFLOW | AddrFlags.BACKUP
    )
    assert messages(debug_log, logging.WARNING) == []


def test_every_key_is_read(tmp_path: Path) -> None:
    path = write(
        tmp_path / "m.conf",
        "[core]\nlog=syslog\nplugin-dir=/opt/p\npath-manager=sspi\n"
        "addr-flags=subflow,fullmesh\nnotify-flags=existing,check_route\n"
        "load-plugins=sspi,,addr_adv\nunknown-key=whatever\n[other]\nlog=null\n",
    )
    assert read_config_file(path) == ConfigValues(
        log="syslog",
        plugin_dir="/opt/p",
        path_manager="sspi",
        addr_flags=AddrFlags.SUBFLOW | AddrFlags.FULLMESH,
        notify_flags=NotifyFlags.EXISTING | NotifyFlags.CHECK_ROUTE,
        load_plugins=("sspi", "addr_adv"),
    )


def test_unknown_log_word_in_file_ignored_silently(
    debug_log: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    path = write(tmp_path / "m.conf", "[core]\nlog=stderr # x\n")
    assert read_config_file(path).log is None
    assert messages(debug_log, logging.WARNING) == []


def test_values_are_unescaped_and_bad_escape_means_absent(tmp_path: Path) -> None:
    path = write(tmp_path / "m.conf", "[core]\nplugin-dir=/a\\sb\npath-manager=x\\qy\n")
    values = read_config_file(path)
    assert values.plugin_dir == "/a b"
    assert values.path_manager is None


def test_trailing_blanks_kept_in_file_value(tmp_path: Path) -> None:
    path = write(tmp_path / "m.conf", "[core]\npath-manager = sspi  \n")
    assert read_config_file(path).path_manager == "sspi  "


def test_empty_path_manager_in_file_is_kept(tmp_path: Path) -> None:
    assert (
        read_config_file(
            write(tmp_path / "m.conf", "[core]\npath-manager=\n")
        ).path_manager
        == ""
    )


def test_fix_empty_plugin_dir_in_file_means_unset(tmp_path: Path) -> None:
    path = write(tmp_path / "m.conf", "[core]\nplugin-dir=\n")
    assert read_config_file(path).plugin_dir is None
    assert load_config(ConfigValues(), path).plugin_dir == cfg.DEFAULT_PLUGIN_DIR


def test_file_warnings_in_c_order(
    debug_log: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    path = write(tmp_path / "m.conf", "[core]\naddr-flags=a1\nnotify-flags=n1\n")
    read_config_file(path)
    assert messages(debug_log, logging.WARNING) == [
        "unknown flag n1",
        "unknown flag a1",
    ]


@pytest.mark.parametrize("value", ["", ",", ",,"])
def test_fix_empty_load_plugins_in_file_is_an_error(tmp_path: Path, value: str) -> None:
    path = write(tmp_path / "m.conf", f"[core]\nload-plugins={value}\n")
    with pytest.raises(ConfigError) as err:
        read_config_file(path)
    assert str(err.value) == f'The load-plugins list in "{path}" names no plugin.'
    assert err.value.exit_status == 1


@pytest.mark.parametrize("name", ["../evil", "a/b", "/abs", "x..y", ".."])
def test_fix_plugin_names_with_path_parts_rejected(tmp_path: Path, name: str) -> None:
    path = write(tmp_path / "m.conf", f"[core]\nload-plugins=sspi,{name}\n")
    with pytest.raises(ConfigError) as err:
        read_config_file(path)
    assert str(err.value) == (
        f'Invalid plugin name "{name}" in the load-plugins list in "{path}": '
        'a name may not contain "/" or "..".'
    )
    with pytest.raises(ConfigError) as err:
        load_config(ConfigValues(load_plugins=("sspi", name)), str(tmp_path / "none"))
    assert str(err.value) == (
        f'Invalid plugin name "{name}" in the load-plugins list given with --load-plugins: '
        'a name may not contain "/" or "..".'
    )
    assert err.value.exit_status == 1


def test_fix_empty_load_plugins_from_cli_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(ConfigValues(load_plugins=()), str(tmp_path / "none"))
    assert (
        str(err.value)
        == "The load-plugins list given with --load-plugins names no plugin."
    )
    assert err.value.exit_status == 1


# ---------------------------------------------------------------------------
# Merging (1.4)
# ---------------------------------------------------------------------------


def test_defaults_without_file(tmp_path: Path) -> None:
    path = str(tmp_path / "none.conf")
    assert load_config(ConfigValues(), path) == Config(
        log="stderr",
        debug=False,
        plugin_dir=cfg.DEFAULT_PLUGIN_DIR,
        path_manager=None,
        addr_flags=AddrFlags(0),
        notify_flags=NotifyFlags(0),
        load_plugins=None,
        config_file=path,
    )


FULL_FILE = (
    "[core]\nlog=syslog\nplugin-dir=/file/dir\npath-manager=file_pm\n"
    "addr-flags=backup\nnotify-flags=skip_loopback\nload-plugins=file_a\n"
)


def test_file_over_defaults(tmp_path: Path) -> None:
    path = write(tmp_path / "m.conf", FULL_FILE)
    assert load_config(ConfigValues(), path) == Config(
        log="syslog",
        plugin_dir="/file/dir",
        path_manager="file_pm",
        addr_flags=AddrFlags.BACKUP,
        notify_flags=NotifyFlags.SKIP_LOOPBACK,
        load_plugins=("file_a",),
        config_file=path,
    )


def test_cli_over_file(tmp_path: Path) -> None:
    path = write(tmp_path / "m.conf", FULL_FILE)
    cli = ConfigValues(
        log="null",
        debug=True,
        plugin_dir="/cli/dir",
        path_manager="cli_pm",
        addr_flags=AddrFlags.SIGNAL,
        notify_flags=NotifyFlags.EXISTING,
        load_plugins=("cli_a", "cli_b"),
    )
    assert load_config(cli, path) == Config(
        log="null",
        debug=True,
        plugin_dir="/cli/dir",
        path_manager="cli_pm",
        addr_flags=AddrFlags.SIGNAL,
        notify_flags=NotifyFlags.EXISTING,
        load_plugins=("cli_a", "cli_b"),
        config_file=path,
    )


def test_zero_flags_count_as_unset_both_ways(tmp_path: Path) -> None:
    path = write(
        tmp_path / "m.conf", "[core]\naddr-flags=bogus\nnotify-flags=existing\n"
    )
    config = load_config(ConfigValues(addr_flags=AddrFlags.SUBFLOW), path)
    assert config.addr_flags == AddrFlags.SUBFLOW
    assert config.notify_flags == NotifyFlags.EXISTING


def test_file_warnings_print_even_when_cli_sets_everything(
    debug_log: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    path = write(tmp_path / "m.conf", "[core]\naddr-flags=nope\n")
    load_config(ConfigValues(addr_flags=AddrFlags.SUBFLOW), path)
    assert "unknown flag nope" in messages(debug_log, logging.WARNING)


def test_config_path_from_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert cfg.config_path() == "/etc/mptcpd/mptcpd.conf"
    monkeypatch.setenv("MPTCPD_CONFIG", "")
    assert cfg.config_path() == "/etc/mptcpd/mptcpd.conf"
    path = write(tmp_path / "env.conf", "[core]\nlog=null\n")
    monkeypatch.setenv("MPTCPD_CONFIG", path)
    assert cfg.config_path() == path
    assert cfg.config_path("/explicit") == "/explicit"
    config = load_config()
    assert (config.log, config.config_file) == ("null", path)


@pytest.mark.parametrize(
    ("name", "kept", "warned"),
    [
        ("a" * 16, "a" * 16, False),
        ("b" * 17, "b" * 16, True),
        ("c" * 30, "c" * 16, True),
    ],
)
def test_fix_long_path_manager_name_truncated_with_warning(
    debug_log: pytest.LogCaptureFixture,
    tmp_path: Path,
    name: str,
    kept: str,
    warned: bool,
) -> None:
    config = load_config(ConfigValues(path_manager=name), str(tmp_path / "none"))
    assert config.path_manager == kept
    expected = (
        [f"Default plugin name length truncated from {len(name)} to 16."]
        if warned
        else []
    )
    assert messages(debug_log, logging.WARNING) == expected


def test_config_echo(debug_log: pytest.LogCaptureFixture) -> None:
    cfg.log_config(
        Config(
            plugin_dir="/p",
            path_manager="sspi",
            addr_flags=AddrFlags.BACKUP | AddrFlags.SUBFLOW,
            notify_flags=NotifyFlags.SKIP_LOOPBACK | NotifyFlags.EXISTING,
            load_plugins=("a", "b"),
        )
    )
    assert messages(debug_log, logging.DEBUG) == [
        "path manager plugin directory: /p",
        "default path manager plugin: sspi",
        "address flags: subflow,backup",
        "notify flags: existing,skip_loopback",
        "plugins to load: a,b",
    ]


def test_config_echo_only_set_values(debug_log: pytest.LogCaptureFixture) -> None:
    cfg.log_config(Config())
    assert messages(debug_log) == [f"path manager plugin directory: {cfg.DEFAULT_PLUGIN_DIR}"]


def test_config_is_frozen() -> None:
    with pytest.raises(AttributeError):
        Config().log = "null"  # type: ignore[misc]


def test_shipped_config_file_parses(debug_log: pytest.LogCaptureFixture) -> None:
    shipped = Path(__file__).resolve().parents[2] / "etc" / "mptcpd.conf"
    if not shipped.exists():
        pytest.skip("etc/mptcpd.conf not present")
    assert not os.stat(shipped).st_mode & 0o002
    config = load_config(ConfigValues(), str(shipped))
    assert (config.log, config.plugin_dir, config.path_manager) == (
        "stderr",
        cfg.DEFAULT_PLUGIN_DIR,
        "addr_adv",
    )
    assert (
        config.addr_flags == 0
        and config.notify_flags == 0
        and config.load_plugins is None
    )
    # NetworkManager's defaults (issue 13), and no interface policy.
    assert config.skip_address_classes == (
        cfg.AddressClass.LOOPBACK | cfg.AddressClass.LINK_LOCAL | cfg.AddressClass.ULA
        | cfg.AddressClass.TEMPORARY)
    assert (config.allow, config.deny, config.deny_kinds, config.interface_groups) == (
        (), (), (), ())
    assert messages(debug_log, logging.WARNING) == []
    # Every commented example is valid once uncommented.
    text = shipped.read_text()
    examples = [
        line.lstrip("# ").rstrip()
        for line in text.splitlines()
        if line.startswith("#")
        and "=" in line
        and line.lstrip("# ").split("=")[0] in cfg.FILE_KEYS
    ]
    keys = {line.split("=", 1)[0] for line in examples}
    set_keys = {line.split("=", 1)[0] for line in text.splitlines()
                if "=" in line and not line.startswith("#")}
    # Every key the daemon reads is shown in the shipped file.
    assert keys | set_keys == set(cfg.FILE_KEYS)
    settings = parse_settings(("[core]\n" + "\n".join(examples) + "\n").encode())
    assert settings.groups
    for key, value in settings.groups[0][1]:
        if key == "addr-flags":
            assert cfg.parse_addr_flags(value) != 0
        elif key == "notify-flags":
            assert cfg.parse_notify_flags(value) != 0
    assert messages(debug_log, logging.WARNING) == []
    # The commented interface groups, once uncommented, are read as shown.
    policy = "\n".join(line[2:] for line in text.splitlines()
                       if line.startswith("# [interface")
                       or line.startswith("# ") and "=" in line
                       and line[2:].split("=")[0] in ("allow", "deny", "deny-kinds"))
    policy += "\naddr-flags=subflow,backup\n"
    assert "# addr-flags=subflow,backup" in text
    values = cfg.parse_config(policy.encode(), "shipped")
    assert values.allow == ("eth*", "wlan*", "wwan*")
    assert values.deny == ("docker*", "br-*", "virbr*")
    assert values.deny_kinds == ("bridge", "tun", "wireguard")
    assert values.interface_groups == (("wwan*", AddrFlags.SUBFLOW | AddrFlags.BACKUP),)


def test_check_route_timeout_from_the_file(tmp_path: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "mptcpd.conf"
    path.write_text("[core]\ncheck-route-timeout=2.5\n")
    assert load_config(ConfigValues(), str(path)).check_route_timeout == 2.5
    path.write_text("[core]\ncheck-route-timeout=0\n")
    assert load_config(ConfigValues(), str(path)).check_route_timeout == 0
    for bad in ("soon", "-1", "inf", ""):
        path.write_text(f"[core]\ncheck-route-timeout={bad}\n")
        config = load_config(ConfigValues(), str(path))
        assert config.check_route_timeout == cfg.DEFAULT_CHECK_ROUTE_TIMEOUT
        assert f'Ignoring check-route-timeout "{bad}"' in caplog.text
    assert load_config(ConfigValues(), str(tmp_path / "none")).check_route_timeout == 60.0


def test_command_queue_size_from_the_file(tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "mptcpd.conf"
    path.write_text("[core]\ncommand-queue-size=16\n")
    assert load_config(ConfigValues(), str(path)).command_queue_size == 16
    for bad in ("many", "0", "-3", "1.5", ""):
        path.write_text(f"[core]\ncommand-queue-size={bad}\n")
        config = load_config(ConfigValues(), str(path))
        assert config.command_queue_size == cfg.DEFAULT_COMMAND_QUEUE_SIZE
        assert f'Ignoring command-queue-size "{bad}"' in caplog.text
    default = load_config(ConfigValues(), str(tmp_path / "none")).command_queue_size
    assert default == cfg.DEFAULT_COMMAND_QUEUE_SIZE == 4096


# ---------------------------------------------------------------------------
# Interface policy (issue 13): skip-address-classes, [interfaces],
# [interface GLOB]
# ---------------------------------------------------------------------------

AC = cfg.AddressClass


def test_policy_defaults_keep_cs_behaviour(tmp_path: Path) -> None:
    config = load_config(ConfigValues(), str(tmp_path / "none"))
    assert config.skip_address_classes == 0
    assert (config.allow, config.deny, config.deny_kinds, config.interface_groups) == (
        (), (), (), ())


def test_policy_keys_are_read(tmp_path: Path, debug_log: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path / "m.conf", (
        "[core]\nskip-address-classes=loopback,link-local,ula,temporary,deprecated\n"
        "[interfaces]\nallow=eth*, wlan*,wwan*\ndeny=docker*,br-*,virbr*,\n"
        "deny-kinds=bridge,tun,wireguard\n"
        "[interface wwan*]\naddr-flags=subflow,backup\n"
        "[interface  lab? ]\naddr-flags=\n"
        "[interface eth0]\n"
        "[interface wwan0]\naddr-flags=signal\n"
        "[interface wl*]\naddr-flags=subflow,laminar\n"))
    config = load_config(ConfigValues(), path)
    assert config.skip_address_classes == AC.LOOPBACK | AC.LINK_LOCAL | AC.ULA | (
        AC.TEMPORARY | AC.DEPRECATED)
    assert config.allow == ("eth*", "wlan*", "wwan*")
    assert config.deny == ("docker*", "br-*", "virbr*")
    assert config.deny_kinds == ("bridge", "tun", "wireguard")
    # In file order; an empty addr-flags is "no flags", an absent one "the
    # global flags" (None).
    assert config.interface_groups == (
        ("wwan*", AddrFlags.SUBFLOW | AddrFlags.BACKUP),
        ("lab?", AddrFlags(0)),
        ("eth0", None),
        ("wwan0", AddrFlags.SIGNAL),
        ("wl*", AddrFlags.SUBFLOW | AddrFlags.LAMINAR),
    )
    assert messages(debug_log, logging.WARNING) == []
    cfg.log_config(config)
    assert messages(debug_log, logging.DEBUG)[-9:] == [
        "skipped address classes: loopback,link-local,ula,temporary,deprecated",
        "interfaces allowed: eth*,wlan*,wwan*",
        "interfaces denied: docker*,br-*,virbr*",
        "interface kinds denied: bridge,tun,wireguard",
        "interfaces wwan*: address flags subflow,backup",
        "interfaces lab?: address flags none",
        "interfaces eth0: address flags global",
        "interfaces wwan0: address flags signal",
        "interfaces wl*: address flags subflow,laminar",
    ]


def test_empty_policy_values_mean_nothing_filtered(tmp_path: Path) -> None:
    path = write(tmp_path / "m.conf",
                 "[core]\nskip-address-classes=\n[interfaces]\nallow=\ndeny=,\n")
    config = load_config(ConfigValues(), path)
    assert (config.skip_address_classes, config.allow, config.deny) == (0, (), ())


@pytest.mark.parametrize(("text", "message"), [
    ("[core]\nskip-address-classes=loopback,multicast\n",
     'Invalid skip-address-classes "loopback,multicast" in [core] of "{path}": unknown '
     'address class "multicast" (known: loopback, link-local, ula, temporary, '
     "deprecated)."),
    ("[core]\nskip-address-classes=Loopback\n",
     'Invalid skip-address-classes "Loopback" in [core] of "{path}": unknown address '
     'class "Loopback" (known: loopback, link-local, ula, temporary, deprecated).'),
    ("[interfaces]\nallow=eth0,eth/1\n",
     'Invalid allow "eth0,eth/1" in [interfaces] of "{path}": "eth/1" cannot match an '
     'interface name (no "/", ":" or blanks).'),
    ("[interfaces]\ndeny=eth0:1\n",
     'Invalid deny "eth0:1" in [interfaces] of "{path}": "eth0:1" cannot match an '
     'interface name (no "/", ":" or blanks).'),
    ("[interfaces]\ndeny=..\n",
     'Invalid deny ".." in [interfaces] of "{path}": ".." cannot match an interface '
     'name (no "/", ":" or blanks).'),
    ("[interfaces]\ndeny-kinds=bridge,wire guard\n",
     'Invalid deny-kinds "bridge,wire guard" in [interfaces] of "{path}": "wire guard" '
     "is not a link kind."),
    ("[interface wwan*]\naddr-flags=subflow,bakup\n",
     'Invalid addr-flags "subflow,bakup" in [interface wwan*] of "{path}": unknown flag '
     '"bakup" (known: subflow, signal, backup, fullmesh, laminar).'),
    ("[interface ]\naddr-flags=backup\n",
     'Invalid group [interface ] in "{path}": no interface name pattern.'),
    ("[interface]\naddr-flags=backup\n",
     'Invalid group [interface] in "{path}": no interface name pattern.'),
    ("[interface a b]\n",
     'Invalid group [interface a b] in "{path}": "a b" cannot match an interface name '
     '(no "/", ":" or blanks).'),
])
def test_bad_policy_values_are_errors(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path / "m.conf", text)
    with pytest.raises(ConfigError) as err:
        load_config(ConfigValues(), path)
    assert str(err.value) == message.format(path=path)
    assert err.value.exit_status == 1


def test_policy_groups_warn_about_unknown_and_repeated_keys(
    tmp_path: Path, debug_log: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path / "m.conf", (
        "[interfaces]\nallow=eth*\nalow=x\ndeny_kinds=tun\nallow=wlan*\n"
        "[interface eth*]\naddr-flags=backup\nflags=x\n"
        "[interface eth*]\naddr-flags=signal\n"
        "[plugin foo]\nanything=1\n[interfacex]\nq=1\n"))
    values = read_config_file(path)
    assert values.allow == ("eth*",)
    assert values.deny_kinds is None
    assert values.interface_groups == (("eth*", AddrFlags.BACKUP),)
    assert messages(debug_log, logging.WARNING) == [
        f'Unknown key "alow" at line 3 of "{path}" ignored.',
        f'Unknown key "deny_kinds" at line 4 of "{path}" ignored (did you mean '
        '"deny-kinds"?).',
        f'Duplicate key "allow" at line 5 of "{path}" ignored: the first, at line 2, '
        "applies.",
        f'Unknown key "flags" at line 8 of "{path}" ignored.',
        f'Duplicate group [interface eth*] at line 9 of "{path}" ignored: the first, at '
        "line 6, applies.",
    ]


def test_group_kinds() -> None:
    assert cfg.group_kind("core") == ("core", "")
    assert cfg.group_kind("interfaces") == ("interfaces", "")
    assert cfg.group_kind("interface eth*") == ("interface", "eth*")
    assert cfg.group_kind("interface \t wwan0 ") == ("interface", "wwan0")
    assert cfg.group_kind("interface") == ("interface", "")
    assert cfg.group_kind("interfacex") is None
    assert cfg.group_kind("core x") is None
    assert cfg.group_kind("Core") is None


def test_strict_reading_refuses_what_startup_ignores(tmp_path: Path,
                                                     debug_log: pytest.LogCaptureFixture
                                                     ) -> None:
    path = write(tmp_path / "m.conf", "[core]\nlog=null\nno delimiter\n")
    assert read_config_file(path) == ConfigValues()  # startup: ignored, warned
    with pytest.raises(ConfigError) as err:
        read_config_file(path, strict=True)
    assert str(err.value) == (f"Unable to load mptcpd settings from file '{path}': "
                              "line 3: delimiter '=' not found.")
    with pytest.raises(ConfigError) as err:
        load_config(ConfigValues(), str(tmp_path / "gone"), strict=True)
    assert str(err.value) == f'"{tmp_path / "gone"}" does not exist.'


# -- reload (SIGHUP) ----------------------------------------------------------------


def test_reload_reads_the_file_again_with_the_same_command_line(
    tmp_path: Path, debug_log: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path / "m.conf", "[core]\naddr-flags=subflow\nlog=null\n")
    cli = ConfigValues(path_manager="sspi", notify_flags=NotifyFlags.EXISTING)
    running = load_config(cli, path)
    assert running.cli_values == cli
    write(tmp_path / "m.conf", "[core]\naddr-flags=backup\nnotify-flags=check_route\n"
          "check-route-timeout=5\nlog=journal\nplugin-dir=/elsewhere\npath-manager=x\n"
          "command-queue-size=7\nload-plugins=a\n"
          "[interfaces]\ndeny=eth1\n[interface wwan*]\naddr-flags=signal\n")
    new = cfg.reload_config(running)
    # Applied: the file's flags and policy; the command line still wins.
    assert new.addr_flags == AddrFlags.BACKUP
    assert new.notify_flags == NotifyFlags.EXISTING
    assert new.check_route_timeout == 5
    assert new.deny == ("eth1",)
    assert new.interface_groups == (("wwan*", AddrFlags.SIGNAL),)
    # Kept until a restart, and said so.
    assert (new.log, new.plugin_dir, new.path_manager, new.command_queue_size,
            new.load_plugins) == (running.log, running.plugin_dir, "sspi",
                                  running.command_queue_size, None)
    assert messages(debug_log, logging.WARNING) == [
        f'The new {key} in "{path}" takes effect when mptcpd restarts.'
        for key in ("log", "plugin-dir", "load-plugins", "command-queue-size")]


@pytest.mark.parametrize(("text", "reason"), [
    (None, '"{path}" does not exist.'),
    (b"[core]\nlog\n", "Unable to load mptcpd settings from file '{path}': line 2: "
                       "delimiter '=' not found."),
    (b"[core]\nskip-address-classes=nope\n", 'Invalid skip-address-classes "nope" in '
     '[core] of "{path}": unknown address class "nope" (known: loopback, link-local, '
     "ula, temporary, deprecated)."),
    (b"[core]\nload-plugins=\n", 'The load-plugins list in "{path}" names no plugin.'),
])
def test_reload_refuses_a_file_it_cannot_use(tmp_path: Path, text: bytes | None,
                                             reason: str) -> None:
    path = write(tmp_path / "m.conf", "[core]\naddr-flags=subflow\n")
    running = load_config(ConfigValues(), path)
    if text is None:
        os.unlink(path)
    else:
        write(tmp_path / "m.conf", text)
    with pytest.raises(ConfigError) as err:
        cfg.reload_config(running)
    assert str(err.value) == reason.format(path=path)


def test_reload_refuses_a_world_writable_file(tmp_path: Path) -> None:
    path = write(tmp_path / "m.conf", "[core]\n")
    running = load_config(ConfigValues(), path)
    os.chmod(path, 0o666)
    with pytest.raises(ConfigError, match="should be a file that is not world writable"):
        cfg.reload_config(running)
