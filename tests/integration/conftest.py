"""Fixtures that build a two-host lab against the running kernel.

``lab`` gives a fresh :class:`tests.lab.Lab` per test: a client and a server
namespace joined by veth links in documentation subnets, torn down even when
the test fails.  Choose its shape with a marker::

    @pytest.mark.lab(links=3, path_manager="userspace")
    def test_something(lab): ...
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.lab import Lab, lab_requirements
from tests.conftest import in_ci


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "lab(links=2, path_manager='kernel', ipv6=True): shape of the lab"
    )


@pytest.fixture(scope="session")
def lab_available() -> None:
    reason = lab_requirements()
    if reason is None:
        return
    if in_ci():
        pytest.fail(f"the lab cannot be built on this CI machine: {reason}")
    pytest.skip(f"lab unavailable: {reason}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Iterator[None]:
    """A failed lab test's report carries the tail of every lab process's
    output (the daemons' logs above all), so that a failure on CI explains
    itself."""
    outcome = yield
    report = outcome.get_result()
    lab = getattr(item, "funcargs", {}).get("lab")
    if report.when == "call" and report.failed and isinstance(lab, Lab):
        report.sections.append(("lab processes' output", lab.logs()))


@pytest.fixture
def lab(request: pytest.FixtureRequest, lab_available: None) -> Iterator[Lab]:
    marker = request.node.get_closest_marker("lab")
    kwargs = dict(marker.kwargs) if marker else {}
    with Lab(**kwargs) as built:
        yield built
