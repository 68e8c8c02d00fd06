"""The manual page and the systemd unit stay in step with the code."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from mptcpd import cli, config

ROOT = Path(__file__).resolve().parents[2]
MAN = ROOT / "man" / "mptcpd.8"

CONFIG_KEYS = tuple(key for keys in config.GROUP_KEYS.values() for key in keys)
SECTIONS = (
    "NAME",
    "SYNOPSIS",
    "DESCRIPTION",
    "OPTIONS",
    "CONFIGURATION FILE",
    "PLUGIN HOOKS",
    "SIGNALS",
    "ENVIRONMENT",
    "EXIT STATUS",
    "FILES",
    "REPORTING BUGS",
    "SEE ALSO",
)


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "LANG": "C",
        "LC_ALL": "C",
        "MANWIDTH": "80",
        "MAN_KEEP_FORMATTING": "",
    }


@pytest.fixture(scope="module")
def rendered() -> str:
    if shutil.which("man") is None:
        pytest.skip("man is not installed")
    proc = subprocess.run(
        ["man", "-l", str(MAN)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    return re.sub(r".\x08", "", proc.stdout)  # drop any overstriking


def test_groff_has_no_warnings() -> None:
    if shutil.which("groff") is None:
        pytest.skip("groff is not installed")
    proc = subprocess.run(
        ["groff", "-man", "-ww", "-z", str(MAN)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
        check=False,
    )
    assert (proc.returncode, proc.stderr) == (0, "")


def test_sections(rendered: str) -> None:
    headings = [
        line for line in rendered.splitlines() if re.fullmatch(r"[A-Z][A-Z ]+", line)
    ]
    assert headings == list(SECTIONS)


def test_every_option_documented(rendered: str) -> None:
    for opt in cli.OPTIONS:
        if opt.doc is None:  # argp's hidden options
            continue
        assert f"--{opt.name}" in rendered, opt.name
        if opt.short:
            assert f"-{opt.short}, --{opt.name}" in rendered, opt.short


def test_every_config_key_documented(rendered: str) -> None:
    for key in CONFIG_KEYS:
        assert re.search(rf"^\s+{re.escape(key)}=", rendered, re.MULTILINE), key
    for word in config.LOG_DESTINATIONS:
        assert word in rendered
    names = [name for name, _ in config.ADDR_FLAG_TOKENS]
    names += [name for name, _ in config.NOTIFY_FLAG_TOKENS]
    names += [name for name, _ in config.ADDRESS_CLASS_TOKENS]
    names += [f"[{group}]" for group in config.GROUP_KEYS
              if group not in config.PREFIXED_GROUPS]
    names += [f"[{group} GLOB]" for group in config.PREFIXED_GROUPS]
    for name in names:
        assert name in rendered


def test_environment_exit_status_and_files(rendered: str) -> None:
    assert config.CONFIG_ENV in rendered
    exit_status = rendered.split("EXIT STATUS", 1)[1].split("FILES", 1)[0]
    assert re.findall(r"^\s{7}(\d+)\s", exit_status, re.MULTILINE) == ["0", "1", "64"]
    assert config.DEFAULT_CONFIG_PATH in rendered
    assert "mptcpd_bundled_plugins" in rendered
    assert "mptcp@lists.linux.dev" in rendered
    assert "ip-mptcp(8)" in rendered


def test_plugin_hooks_section_is_marked() -> None:
    text = MAN.read_text()
    assert ".SH PLUGIN HOOKS" in text


def test_every_hook_is_in_the_man_page_with_its_signature(rendered: str) -> None:
    import inspect

    from mptcpd import hookspecs
    from mptcpd.plugins.registry import HOOKS

    flat = " ".join(rendered.split())
    for name in HOOKS:
        params = ", ".join(inspect.signature(getattr(hookspecs, name)).parameters)
        assert f"{name}({params})" in flat, name
