"""Shared pytest configuration.

Unit tests (tests/unit) need no privileges.  Integration tests
(tests/integration) build throwaway network-namespace labs and need root and
a kernel with MPTCP; they skip with the reason otherwise, except under CI
(``CI`` set to a true value), where a missing lab is a failure: CI machines
have everything, so a skip there would hide a broken suite.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).is_relative_to(TESTS / "integration"):
            item.add_marker(pytest.mark.integration)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture
def python() -> str:
    """The interpreter running the tests (the one mptcpd is installed in)."""
    return sys.executable
