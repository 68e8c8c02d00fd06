"""The daemon: lifecycle, signals, systemd notification and event dispatch.

:func:`run` is the one entry point; the command line builds a
:class:`mptcpd.config.Config` and hands it over.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mptcpd.config import Config


def run(config: Config) -> int:
    """Run the daemon with ``config`` until SIGINT or SIGTERM; return the exit code."""
    from mptcpd.daemon.app import main

    return main(config)
