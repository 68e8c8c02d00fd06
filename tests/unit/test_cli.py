"""The mptcpd command line.

Ports C mptcpd's tests/test-bad-* scripts, which meant to check exit status
64 but could never fail, and test-configuration.c.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

import mptcpd.daemon
from mptcpd import __version__, cli
from mptcpd.config import Config
from mptcpd.log import reset_logging
from mptcpd.types import AddrFlags, NotifyFlags

ARGV0 = "/usr/sbin/mptcpd"
TRY = "Try `mptcpd --help' or `mptcpd --usage' for more information.\n"

HELP = """\
Usage: mptcpd [OPTION...]
Start the Multipath TCP daemon.

      --addr-flags=FLAGS     Set flags for announced address, e.g.
                             --addr-flags=subflow
  -d, --debug                Enable debug log messages
      --load-plugins=PLUGINS Specify which plugins to load, e.g.
                             --load-plugins=addr_adv,sspi
  -l, --log=DEST             Log to DEST (stderr, syslog or journal), e.g.
                             --log=journal
      --notify-flags=FLAGS   Address notification flags, e.g.
                             --notify-flags=existing,skip_link_local,skip_loopback
      --path-manager=PLUGIN  Set default path manager to PLUGIN, e.g.
                             --path-manager=sspi, overriding plugin priorities
      --plugin-dir=DIR       Set plugin directory to DIR

  -?, --help                 Give this help list
      --usage                Give a short usage message
  -V, --version              Print program version

Mandatory or optional arguments to long options are also mandatory or optional
for any corresponding short options.

Supported Linux kernel: upstream

Report bugs to <mptcp@lists.linux.dev>.
"""

USAGE = """\
Usage: mptcpd [-d?V] [-l DEST] [--addr-flags=FLAGS] [--debug]
            [--load-plugins=PLUGINS] [--log=DEST] [--notify-flags=FLAGS]
            [--path-manager=PLUGIN] [--plugin-dir=DIR] [--help] [--usage]
            [--version]
"""


class FakeRun:
    """Stands in for mptcpd.daemon.run; records the configuration."""

    def __init__(self) -> None:
        self.configs: list[Config] = []
        self.status = 0

    def __call__(self, config: Config) -> int:
        self.configs.append(config)
        return self.status

    @property
    def config(self) -> Config:
        assert len(self.configs) == 1
        return self.configs[0]


@pytest.fixture(autouse=True)
def fake_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeRun]:
    fake = FakeRun()
    monkeypatch.setattr(mptcpd.daemon, "run", fake, raising=False)
    # Never read the host's /etc/mptcpd/mptcpd.conf.
    monkeypatch.setenv("MPTCPD_CONFIG", str(tmp_path / "absent.conf"))
    reset_logging()
    yield fake
    reset_logging()


def run_main(
    capsys: pytest.CaptureFixture[str], *args: str, prog: str = ARGV0
) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        cli.main(list(args), prog=prog)
    out, err = capsys.readouterr()
    code = exc.value.code
    assert isinstance(code, int)
    return code, out, err


def conf(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, mode: int = 0o644
) -> str:
    path = tmp_path / "mptcpd.conf"
    path.write_text(text)
    path.chmod(mode)
    monkeypatch.setenv("MPTCPD_CONFIG", str(path))
    return str(path)


# ---------------------------------------------------------------------------
# Usage errors: exit 64, exact first line, then the "Try" line
# ---------------------------------------------------------------------------

USAGE_ERRORS = [
    (["--log=foo"], 'mptcpd: Unknown logging option: "foo"'),
    (["-l", "foo"], 'mptcpd: Unknown logging option: "foo"'),
    (["-lfoo"], 'mptcpd: Unknown logging option: "foo"'),
    (["--log="], 'mptcpd: Unknown logging option: ""'),
    (["--log", ""], 'mptcpd: Unknown logging option: ""'),
    (["--plugin-dir="], "mptcpd: Empty plugin directory command line option."),
    (
        ["--path-manager="],
        "mptcpd: Empty default path manager plugin command line option.",
    ),
    (["--load-plugins="], "mptcpd: Empty load plugins commandline option."),
    (["--foo"], f"{ARGV0}: unrecognized option '--foo'"),
    (["--foo=bar"], f"{ARGV0}: unrecognized option '--foo=bar'"),
    (["-x"], f"{ARGV0}: invalid option -- 'x'"),
    (["-dx"], f"{ARGV0}: invalid option -- 'x'"),
    (["-l"], f"{ARGV0}: option requires an argument -- 'l'"),
    (["-d", "-l"], f"{ARGV0}: option requires an argument -- 'l'"),
    (["--plugin-dir"], f"{ARGV0}: option '--plugin-dir' requires an argument"),
    (["--plugin-d"], f"{ARGV0}: option '--plugin-dir' requires an argument"),
    (["--debug=1"], f"{ARGV0}: option '--debug' doesn't allow an argument"),
    (["--deb=1"], f"{ARGV0}: option '--debug' doesn't allow an argument"),
    (["--help=x"], f"{ARGV0}: option '--help' doesn't allow an argument"),
    (
        ["--p=x"],
        (
            f"{ARGV0}: option '--p=x' is ambiguous; possibilities: "
            "'--plugin-dir' '--path-manager' '--program-name'"
        ),
    ),
    (
        ["--p"],
        (
            f"{ARGV0}: option '--p' is ambiguous; possibilities: "
            "'--plugin-dir' '--path-manager' '--program-name'"
        ),
    ),
    (
        ["--lo"],
        f"{ARGV0}: option '--lo' is ambiguous; possibilities: '--log' '--load-plugins'",
    ),
    (["extra"], "mptcpd: Too many arguments"),
    (["-d", "one", "two"], "mptcpd: Too many arguments"),
    (["--", "--debug"], "mptcpd: Too many arguments"),
    (["-"], "mptcpd: Too many arguments"),
]


@pytest.mark.parametrize(("args", "first_line"), USAGE_ERRORS)
def test_usage_errors(
    capsys: pytest.CaptureFixture[str],
    fake_run: FakeRun,
    args: list[str],
    first_line: str,
) -> None:
    code, out, err = run_main(capsys, *args)
    assert code == 64
    assert out == ""
    assert err == first_line + "\n" + TRY
    assert fake_run.configs == []


def test_usage_errors_via_click_runner(fake_run: FakeRun) -> None:
    """The click command itself (uvicorn's test style) exits 64 too."""
    runner = CliRunner()
    for args in (["--foo"], ["--log="], ["--path-manager="], ["--plugin-dir="]):
        result = runner.invoke(cli.command, args, prog_name="mptcpd")
        assert result.exit_code == 64, args
        assert result.stderr.endswith(TRY)
    assert fake_run.configs == []


def test_argv0_is_quoted_as_typed(capsys: pytest.CaptureFixture[str]) -> None:
    _, _, err = run_main(capsys, "--foo", prog="./build/mptcpd")
    assert err.startswith("./build/mptcpd: unrecognized option '--foo'\n")


def test_errors_are_reported_left_to_right(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_main(capsys, "--log=foo", "--bar")[2].startswith(
        "mptcpd: Unknown logging"
    )
    assert run_main(capsys, "--bar", "--log=foo")[2].startswith(
        f"{ARGV0}: unrecognized"
    )
    # Operands are only complained about once every option has been handled.
    assert run_main(capsys, "extra", "--log=foo")[2].startswith(
        "mptcpd: Unknown logging"
    )
    assert run_main(capsys, "--foo", "--help")[0] == 64
    assert run_main(capsys, "--help", "--foo")[0] == 0
    assert run_main(capsys, "extra", "-V")[0] == 0


def test_program_name_option_renames_argp_messages(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = run_main(capsys, "--program-name=/x/other", "--log=bad")
    assert code == 64
    assert err == (
        'other: Unknown logging option: "bad"\n'
        "Try `other --help' or `other --usage' for more information.\n"
    )
    code, _, err = run_main(capsys, "--prog", "other", "--bogus")
    assert err.startswith(f"{ARGV0}: unrecognized option '--bogus'\n")


def test_hang_option_sleeps(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    assert cli.scan(["--HANG=3", "-d"], sleep=slept.append) == ["--debug"]
    assert slept == [1, 1, 1]
    assert cli.scan(["--H=2x"], sleep=slept.append) == []
    assert len(slept) == 5


# ---------------------------------------------------------------------------
# --help, --usage, --version
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args", [["--help"], ["-?"], ["--he"], ["-d?"], ["--debug", "--help"]]
)
def test_help(
    capsys: pytest.CaptureFixture[str], fake_run: FakeRun, args: list[str]
) -> None:
    assert run_main(capsys, *args) == (0, HELP, "")
    assert fake_run.configs == []


@pytest.mark.parametrize("args", [["--usage"], ["--us"], ["--u"]])
def test_usage(capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    assert run_main(capsys, *args) == (0, USAGE, "")


def test_help_and_usage_fit_79_columns() -> None:
    for line in (HELP + USAGE).splitlines():
        # The one overlong line is argp's: a single word too long to wrap.
        assert len(line) <= 79 or line.strip() == (
            "--notify-flags=existing,skip_link_local,skip_loopback"
        )


@pytest.mark.parametrize("args", [["-V"], ["--version"], ["--ver"], ["--v"], ["-dV"]])
def test_version(capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    assert run_main(capsys, *args) == (0, f"mptcpd {__version__}\n", "")
    assert __version__ == "0.1.0"


def test_click_runner_help() -> None:
    result = CliRunner().invoke(cli.command, ["--help"], prog_name="mptcpd")
    assert (result.exit_code, result.stdout) == (0, HELP)


# ---------------------------------------------------------------------------
# Option forms and the resulting configuration
# ---------------------------------------------------------------------------


def config_of(
    capsys: pytest.CaptureFixture[str], fake_run: FakeRun, *args: str
) -> Config:
    code, out, err = run_main(capsys, *args)
    assert (code, out) == (0, ""), err
    return fake_run.config


@pytest.mark.parametrize(
    "args",
    [
        ["--log=syslog"],
        ["--log", "syslog"],
        ["-lsyslog"],
        ["-l", "syslog"],
        ["--log=null", "--log=syslog"],
        ["-l", "journal", "--log", "syslog"],
    ],
)
def test_log_forms(
    capsys: pytest.CaptureFixture[str],
    fake_run: FakeRun,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
) -> None:
    monkeypatch.setattr(
        cli, "setup_logging", lambda *a, **k: None
    )  # keep off the real syslog
    assert config_of(capsys, fake_run, *args).log == "syslog"


@pytest.mark.parametrize("dest", ["stderr", "syslog", "journal", "null"])
def test_every_log_destination_accepted(dest: str) -> None:
    assert cli.scan([f"--log={dest}"]) == [f"--log={dest}"]
    assert cli.scan(["-l", dest]) == [f"--log={dest}"]


def test_bundled_short_options(
    capsys: pytest.CaptureFixture[str], fake_run: FakeRun
) -> None:
    config = config_of(capsys, fake_run, "-dl", "null")
    assert (config.debug, config.log) == (True, "null")


def test_bundled_short_option_with_attached_value() -> None:
    assert cli.scan(["-dlnull"]) == ["--debug", "--log=null"]
    assert cli.scan(["-ddd"]) == ["--debug"] * 3


def test_long_option_prefixes(
    capsys: pytest.CaptureFixture[str], fake_run: FakeRun
) -> None:
    config = config_of(
        capsys,
        fake_run,
        "--deb",
        "--log=null",
        "--plugin-d=/p",
        "--pa=sspi",
        "--ad=subflow",
        "--n",
        "existing",
        "--load=a,b",
    )
    assert config == Config(
        log="null",
        debug=True,
        plugin_dir="/p",
        path_manager="sspi",
        addr_flags=AddrFlags.SUBFLOW,
        notify_flags=NotifyFlags.EXISTING,
        load_plugins=("a", "b"),
        config_file=config.config_file,
    )


def test_space_separated_values(
    capsys: pytest.CaptureFixture[str], fake_run: FakeRun
) -> None:
    config = config_of(
        capsys,
        fake_run,
        "--plugin-dir",
        "/dir",
        "--path-manager",
        "foo",
        "--load-plugins",
        "foo,bar",
        "--log",
        "null",
    )
    assert (config.plugin_dir, config.path_manager, config.load_plugins) == (
        "/dir",
        "foo",
        ("foo", "bar"),
    )


def test_last_occurrence_wins(
    capsys: pytest.CaptureFixture[str], fake_run: FakeRun
) -> None:
    config = config_of(
        capsys,
        fake_run,
        "--plugin-dir=/a",
        "--plugin-dir=/b",
        "--path-manager=one",
        "--path-manager",
        "two",
        "--load-plugins=x",
        "--load-plugins=y,z",
        "--addr-flags=subflow",
        "--addr-flags=backup",
        "--log=stderr",
        "-lnull",
    )
    assert (config.plugin_dir, config.path_manager, config.load_plugins) == (
        "/b",
        "two",
        ("y", "z"),
    )
    assert (config.addr_flags, config.log) == (AddrFlags.BACKUP, "null")


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["-d"],
        ["-dlnull", "--plugin-dir=/a", "--plugin-dir", "/b=c"],
        ["--path-man=one", "--load-plugins=x,y", "--addr-flags=subflow,backup",
         "--notify-flags=existing", "--log", "stderr", "--log=null"],
        ["--debug", "--debug", "--load-plugins=x", "--load-plugins=y"],
    ],
)
def test_main_and_the_click_command_give_the_same_configuration(
    capsys: pytest.CaptureFixture[str], fake_run: FakeRun, args: list[str]
) -> None:
    """main() goes from the scan to the daemon without click; the click
    command must end in the same configuration and status."""
    fake_run.status = 5
    assert run_main(capsys, *args)[0] == 5
    result = CliRunner().invoke(cli.command, args, prog_name="mptcpd")
    assert result.exit_code == 5, result.output
    first, second = fake_run.configs
    assert first == second


def test_main_does_not_load_click(tmp_path: Path) -> None:
    """click is about 10 ms of a start; main() does without it."""
    code = ("import sys, mptcpd.cli\n"
            "try:\n    mptcpd.cli.main(['--version'])\nexcept SystemExit:\n    pass\n"
            "print('click' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True, cwd=tmp_path)
    assert out.stdout.splitlines()[-1] == "False", out.stderr


def test_required_value_takes_next_argument_even_if_dashed() -> None:
    assert cli.scan(["--plugin-dir", "--debug"]) == ["--plugin-dir=--debug"]
    assert cli.scan(["--path-manager=-x"]) == ["--path-manager=-x"]
    with pytest.raises(cli.ArgpExit) as exc:
        cli.scan(["-l", "--debug"])
    assert exc.value.stderr.startswith('mptcpd: Unknown logging option: "--debug"\n')


def test_values_may_hold_equal_signs() -> None:
    assert cli.scan(["--plugin-dir=/a=b"]) == ["--plugin-dir=/a=b"]


def test_no_options(capsys: pytest.CaptureFixture[str], fake_run: FakeRun) -> None:
    config = config_of(capsys, fake_run)
    assert config == Config(config_file=config.config_file)


def test_daemon_exit_status_is_passed_on(
    capsys: pytest.CaptureFixture[str], fake_run: FakeRun
) -> None:
    fake_run.status = 3
    assert run_main(capsys, "--log=null")[0] == 3


# ---------------------------------------------------------------------------
# Command line and file together
# ---------------------------------------------------------------------------


def test_cli_over_file_over_defaults(
    capsys: pytest.CaptureFixture[str],
    fake_run: FakeRun,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = conf(
        tmp_path,
        monkeypatch,
        "[core]\nlog=null\npath-manager=sspi\naddr-flags=backup\nnotify-flags=existing\n",
    )
    config = config_of(capsys, fake_run, "--path-manager=mine", "--addr-flags=")
    assert config == Config(
        log="null",
        path_manager="mine",
        addr_flags=AddrFlags.BACKUP,  # --addr-flags= counts as unset
        notify_flags=NotifyFlags.EXISTING,
        config_file=path,
    )


def test_file_warnings_print_even_when_cli_sets_every_key(
    capsys: pytest.CaptureFixture[str],
    fake_run: FakeRun,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    conf(
        tmp_path, monkeypatch, "[core]\naddr-flags=bogus\nnotify-flags=existing,nope\n"
    )
    code, _, err = run_main(
        capsys,
        "--log=null",
        "--plugin-dir=/p",
        "--path-manager=x",
        "--addr-flags=subflow",
        "--notify-flags=existing",
        "--load-plugins=a",
    )
    assert code == 0
    # Early logging goes to stderr even though the chosen destination is null.
    assert err == "unknown flag nope\nunknown flag bogus\n"
    assert fake_run.config.addr_flags == AddrFlags.SUBFLOW


def test_cli_flag_warnings_at_parse_time(
    capsys: pytest.CaptureFixture[str], fake_run: FakeRun
) -> None:
    code, _, err = run_main(
        capsys, "--addr-flags=bogus", "--notify-flags=skip_loopback,x", "--log=null"
    )
    assert code == 0
    assert err == "unknown flag bogus\nunknown flag x\n"
    assert fake_run.config.addr_flags == 0
    assert fake_run.config.notify_flags == NotifyFlags.SKIP_LOOPBACK
    # Warned when parsed, even if a usage error follows.
    code, _, err = run_main(capsys, "--addr-flags=bogus", "--log=foo")
    assert (code, err.splitlines()[:2]) == (
        64,
        ["unknown flag bogus", 'mptcpd: Unknown logging option: "foo"'],
    )


def test_world_writable_file_stops_startup(
    capsys: pytest.CaptureFixture[str],
    fake_run: FakeRun,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = conf(tmp_path, monkeypatch, "[core]\n", mode=0o646)
    assert run_main(capsys, "--log=null") == (
        1,
        "",
        f'"{path}" should be a file that is not world writable.\n',
    )
    assert fake_run.configs == []


def test_directory_at_config_path_stops_startup(
    capsys: pytest.CaptureFixture[str],
    fake_run: FakeRun,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "d").mkdir()
    monkeypatch.setenv("MPTCPD_CONFIG", str(tmp_path / "d"))
    code, _, err = run_main(capsys)
    assert (code, err) == (
        1,
        f'"{tmp_path / "d"}" should be a file that is not world writable.\n',
    )
    assert fake_run.configs == []


def test_stat_error_is_logged_as_error(
    capsys: pytest.CaptureFixture[str],
    fake_run: FakeRun,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "f").write_text("")
    path = tmp_path / "f" / "mptcpd.conf"
    monkeypatch.setenv("MPTCPD_CONFIG", str(path))
    code, _, err = run_main(capsys)
    assert code == 1
    assert (
        err
        == f'Unexpected error during file permissions check of "{path}": Not a directory\n'
    )
    assert fake_run.configs == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--load-plugins=,"],
            "The load-plugins list given with --load-plugins names no plugin.",
        ),
        (
            ["--load-plugins=sspi,../x"],
            (
                'Invalid plugin name "../x" in the load-plugins list given with --load-plugins: '
                'a name may not contain "/" or "..".'
            ),
        ),
    ],
)
def test_bad_plugin_lists_are_configuration_errors(
    capsys: pytest.CaptureFixture[str], fake_run: FakeRun, args: list[str], message: str
) -> None:
    assert run_main(capsys, *args) == (1, "", message + "\n")
    assert fake_run.configs == []


def test_empty_load_plugins_in_file_is_a_configuration_error(
    capsys: pytest.CaptureFixture[str],
    fake_run: FakeRun,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = conf(tmp_path, monkeypatch, "[core]\nload-plugins=\n")
    assert run_main(capsys) == (
        1,
        "",
        f'The load-plugins list in "{path}" names no plugin.\n',
    )


def test_a_bad_interface_policy_is_a_configuration_error(
    capsys: pytest.CaptureFixture[str],
    fake_run: FakeRun,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = conf(tmp_path, monkeypatch, "[interfaces]\ndeny-kinds=bridge,wire guard\n")
    assert run_main(capsys) == (
        1,
        "",
        f'Invalid deny-kinds "bridge,wire guard" in [interfaces] of "{path}": '
        '"wire guard" is not a link kind.\n',
    )
    assert fake_run.configs == []


def test_debug_echo(
    capsys: pytest.CaptureFixture[str],
    fake_run: FakeRun,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = conf(
        tmp_path, monkeypatch, "[core]\npath-manager=addr_adv\nnotify-flags=existing\n"
    )
    code, _, err = run_main(
        capsys,
        "-d",
        "--addr-flags=backup,subflow",
        "--load-plugins=a,b",
        "--plugin-dir=/p",
    )
    assert code == 0
    assert path
    assert err.splitlines() == [
        "config.py:log_config() path manager plugin directory: /p",
        "config.py:log_config() default path manager plugin: addr_adv",
        "config.py:log_config() address flags: subflow,backup",
        "config.py:log_config() notify flags: existing",
        "config.py:log_config() plugins to load: a,b",
    ]


def test_debug_messages_during_parse_go_to_stderr(
    capsys: pytest.CaptureFixture[str], fake_run: FakeRun, tmp_path: Path
) -> None:
    code, _, err = run_main(capsys, "-d", "--log=null")
    path = tmp_path / "absent.conf"
    assert (code, err) == (
        0,
        f'config.py:check_file_permissions() File "{path}" does not exist.\n',
    )


def test_no_debug_output_without_d(
    capsys: pytest.CaptureFixture[str], fake_run: FakeRun
) -> None:
    assert run_main(capsys) == (0, "", "")


def test_fix_unparsable_file_reported_as_a_warning(
    capsys: pytest.CaptureFixture[str],
    fake_run: FakeRun,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = conf(tmp_path, monkeypatch, "log=null\n[core]\n")
    code, _, err = run_main(capsys, "--addr-flags=subflow")
    assert code == 0
    assert err == (
        f"Unable to load mptcpd settings from file '{path}': line 1: key-value pair "
        "before any group; the file is ignored.\n"
    )
    assert fake_run.config.addr_flags == AddrFlags.SUBFLOW


def test_fix_unknown_key_warned_on_stderr(
    capsys: pytest.CaptureFixture[str],
    fake_run: FakeRun,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = conf(tmp_path, monkeypatch, "[core]\nload_plugins=sspi\n")
    code, _, err = run_main(capsys)
    assert code == 0
    assert err == (f'Unknown key "load_plugins" at line 2 of "{path}" ignored '
                   '(did you mean "load-plugins"?).\n')
    assert fake_run.config.load_plugins is None


# ---------------------------------------------------------------------------
# The real entry point, as a separate process
# ---------------------------------------------------------------------------


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "MPTCPD_CONFIG": str(tmp_path / "absent.conf")}


def test_python_m_mptcpd_usage_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mptcpd", "--foo"],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        timeout=60,
        check=False,
    )
    assert proc.returncode == 64
    first, second = proc.stderr.splitlines()
    # argv[0] is what Python puts in sys.argv[0] for -m: the module's path.
    assert first.endswith("__main__.py: unrecognized option '--foo'")
    assert second + "\n" == TRY
    assert proc.stdout == ""


def test_python_m_mptcpd_version(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mptcpd", "-V"],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        timeout=60,
        check=False,
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "mptcpd 0.1.0\n", "")


def test_console_script(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "mptcpd"
    if not script.exists():
        pytest.skip("mptcpd console script not installed next to the interpreter")
    proc = subprocess.run(
        [str(script), "--log=bad"],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        timeout=60,
        check=False,
    )
    assert proc.returncode == 64
    assert proc.stderr == 'mptcpd: Unknown logging option: "bad"\n' + TRY


# ---------------------------------------------------------------------------
# argp's line layout rules (cross-checked against the argp output of man-db,
# another argp program, on the development host)
# ---------------------------------------------------------------------------


def test_wrap_allows_79_columns_before_a_blank() -> None:
    line = "x" * 70 + " " + "y" * 8 + " z"
    assert cli._wrap(line, 4) == ["x" * 70 + " " + "y" * 8, "    z"]


def test_wrap_keeps_last_line_under_79_columns() -> None:
    assert cli._wrap("a" * 70 + " " + "b" * 8, 4) == ["a" * 70, "    " + "b" * 8]
    assert cli._wrap("a" * 70 + " " + "b" * 7, 4) == ["a" * 70 + " " + "b" * 7]


def test_wrap_leaves_an_overlong_word_whole() -> None:
    word = "w" * 60
    assert cli._wrap(" " * 29 + "doc " + word + " end", 29, start=29) == [
        " " * 29 + "doc",
        " " * 29 + word,
        " " * 29 + "end",
    ]


def test_wrap_never_breaks_before_start() -> None:
    # A first word too long for the line stays on it rather than breaking the margin.
    head = "  -x, --option=VALUE".ljust(29)
    assert cli._wrap(head + "w" * 60, 29, start=len(head)) == [head + "w" * 60]


def test_usage_short_option_with_argument_needs_room_for_a_blank() -> None:
    head = "Usage: prog " + "[--a]" * 1
    filler = "x" * (67 - len(head))
    items = [(filler, False), ("[-P PAGER]", True), ("[-Q]", False)]
    # 68 + " [-P PAGER]" would end in column 79: argp moves it to the next line.
    assert cli._usage_lines(head, items) == [
        head + " " + filler,
        " " * 12 + "[-P PAGER] [-Q]",
    ]
    items = [(filler, False), ("[--pag=PG]", False), ("[-Q]", False)]
    # A long option of the same width stays: only blanks matter for it.
    assert cli._usage_lines(head, items) == [
        head + " " + filler + " [--pag=PG]",
        " " * 12 + "[-Q]",
    ]
