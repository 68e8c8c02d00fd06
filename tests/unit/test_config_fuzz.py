"""Fuzzing the configuration-file parser (hypothesis).

Raw bytes, any text, well-formed files (LF or CRLF, with or without a byte
order mark) and mutated ones go through :func:`parse_settings` and
:func:`parse_config`, and some through :func:`read_config_file` from a real
file.  Properties: the only exceptions are the documented ones
(:class:`SettingsSyntaxError` from the settings parser, :class:`ConfigError`
from the configuration), no case hangs, and a well-formed file reads back
the values written in it.  About 4 000 cases; bench/fuzz_long.py runs
100 000 and more.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mptcpd.config import (
    CORE_GROUP,
    ConfigError,
    ConfigValues,
    Settings,
    SettingsSyntaxError,
    parse_config,
    parse_settings,
    read_config_file,
)
from tests.unit.config_fuzz_support import any_contents, good_files
from tests.unit.fuzz_support import FUZZ, no_hang

@contextmanager
def quiet() -> Iterator[None]:
    """The parser's warnings are expected by the thousand; keep them out."""
    logger = logging.getLogger("mptcpd")
    saved = logger.disabled
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = saved


def settings_or_syntax_error(data: bytes) -> Settings | None:
    with no_hang():
        try:
            return parse_settings(data)
        except SettingsSyntaxError:
            return None


def config_or_config_error(data: bytes) -> ConfigValues | None:
    with no_hang(), quiet():
        try:
            return parse_config(data, "/fuzz/mptcpd.conf")
        except ConfigError:
            return None


@settings(FUZZ, max_examples=1000)
@given(any_contents)
def test_settings_parser_raises_only_its_syntax_error(data: bytes) -> None:
    result = settings_or_syntax_error(data)
    if result is not None:
        assert all(isinstance(k, str) and isinstance(v, str)
                   for _, pairs in result.groups for k, v in pairs)
        assert len(result.lines) == len(result.groups)


@settings(FUZZ, max_examples=1500)
@given(any_contents)
def test_config_parser_raises_only_config_error(data: bytes) -> None:
    result = config_or_config_error(data)
    assert result is None or isinstance(result, ConfigValues)


@settings(FUZZ, max_examples=1500)
@given(good_files())
def test_a_well_formed_file_reads_back_what_was_written(
    case: tuple[list[str], bytes],
) -> None:
    lines, data = case
    parsed = settings_or_syntax_error(data)
    assert parsed is not None, data
    expected: dict[str, str] = {}
    group: str | None = None
    cores = 0
    for line in lines:
        text = line.lstrip(" \t")
        if not text or text.startswith("#"):
            continue
        if text.startswith("["):
            group = text[1:-1]
            cores += group == CORE_GROUP
            continue
        key, _, value = text.partition("=")
        if group == CORE_GROUP and cores == 1:
            expected.setdefault(key.rstrip(" \t"), value.lstrip(" \t").split("\0")[0])
    for key, value in expected.items():
        assert parsed.get_value(CORE_GROUP, key) == value, (key, data)
    config_or_config_error(data)


@pytest.fixture(scope="module")
def conf_dir() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="mptcpd-fuzz-") as directory:
        os.chmod(directory, 0o755)
        yield directory


@settings(FUZZ, max_examples=300)
@given(data=any_contents, mode=st.sampled_from([0o644, 0o600, 0o664, 0o666, 0o000]))
def test_reading_a_file_raises_only_config_error(conf_dir: str, data: bytes, mode: int) -> None:
    path = os.path.join(conf_dir, "mptcpd.conf")
    with open(path, "wb") as file:
        file.write(data)
    os.chmod(path, mode)
    with no_hang(), quiet():
        try:
            result = read_config_file(path)
        except ConfigError:
            return
    assert isinstance(result, ConfigValues)
    assert not mode & 0o002  # a world-writable file is always refused


def test_a_local_run_is_randomised_and_ci_is_not() -> None:
    # Local runs explore with a fresh seed; CI, the gate, repeats its cases
    # (tests/conftest.py says why).
    assert settings.default.derandomize == (os.environ.get("CI", "").lower()
                                             in ("1", "true", "yes"))


def _header(ci: bool, *args: str) -> str:
    env = {**os.environ, "CI": "true" if ci else ""}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-p", "no:cacheprovider",
         __file__, *args],
        capture_output=True, text=True, env=env, timeout=120, check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _seed_of_a_local_run(*args: str) -> str:
    out = _header(False, *args)
    found = re.findall(r"^hypothesis seed: (\d+) \(profile mptcpd, derandomize=False\); "
                       r"replay with --hypothesis-seed=\1$", out, re.MULTILINE)
    assert found, out
    return found[0]


def test_local_runs_get_a_fresh_seed_that_is_printed() -> None:
    assert _seed_of_a_local_run() != _seed_of_a_local_run()
    assert _seed_of_a_local_run("--hypothesis-seed=12345") == "12345"


def test_ci_runs_are_derandomised_and_say_so() -> None:
    assert re.search(r"^hypothesis: derandomised \(CI; profile mptcpd\)$", _header(True),
                     re.MULTILINE)
