"""Shared pytest configuration.

Unit tests (tests/unit) need no privileges.  Integration tests
(tests/integration) build throwaway network-namespace labs and need root and
a kernel with MPTCP; they skip with the reason otherwise, except under CI
(``CI`` set to a true value), where a missing lab is a failure: CI machines
have everything, so a skip there would hide a broken suite.

Hypothesis runs under the profile ``mptcpd``: the current one (hypothesis
loads its ``ci`` profile under CI), with one fresh random seed per run,
printed in the header so that a failure can be replayed with
``--hypothesis-seed=N``.  Under CI it is derandomised instead: the gate that
decides whether a change lands runs the same examples every time, so it
fails for the change and not for an input that chance found in code the
change did not touch (that happened: a fresh seed found a message pyroute2,
the oracle, reads differently).  Exploring stays the job of every local run
and of ``bench/fuzz_long.py``.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


hypothesis_settings.register_profile(
    "mptcpd", parent=hypothesis_settings.default, derandomize=in_ci(), database=None,
    print_blob=True,
)
hypothesis_settings.load_profile("mptcpd")

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).is_relative_to(TESTS / "integration"):
            item.add_marker(pytest.mark.integration)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    # Before hypothesis's own pytest_configure, which applies the option.
    if config.getoption("hypothesis_seed", None) is None and not in_ci():
        config.option.hypothesis_seed = random.SystemRandom().randrange(2**32)


def _seed_line(config: pytest.Config) -> str:
    seed = config.getoption("hypothesis_seed", None)
    if seed is None:
        return (f"hypothesis: derandomised (CI; profile "
                f"{hypothesis_settings.get_current_profile_name()})")
    return (f"hypothesis seed: {seed} (profile {hypothesis_settings.get_current_profile_name()}"
            f", derandomize={hypothesis_settings.default.derandomize}); replay with "
            f"--hypothesis-seed={seed}")


def pytest_report_header(config: pytest.Config) -> str:
    return _seed_line(config)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter,
                            config: pytest.Config) -> None:
    terminalreporter.write_line(_seed_line(config))  # also shown with -q


@pytest.fixture
def python() -> str:
    """The interpreter running the tests (the one mptcpd is installed in)."""
    return sys.executable
