"""MPTCP sysctls the daemon reads at startup.

Both functions read ``/proc/sys/net/mptcp/*`` of the network namespace the
*process* runs in (``/proc/sys/net`` is resolved against the reader's
namespace), which is the namespace the daemon serves when it is started with
``ip netns exec``.  mptcpd never writes sysctls.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

#: Where the MPTCP sysctls live.
MPTCP_SYSCTL_DIR = Path("/proc/sys/net/mptcp")


def check_kernel(sysctl_dir: Path = MPTCP_SYSCTL_DIR) -> bool:
    """True when MPTCP is enabled (``net.mptcp.enabled`` is a non-zero integer).

    * file missing or unreadable: False, silently (the caller logs the
      generic ``Required kernel MPTCP support not available.``);
    * 0: log E ``MPTCP is not enabled in the kernel.`` and
      ``Try 'sysctl -w net.mptcp.enabled=1'.``, False;
    * not an integer: log E ``Unable to determine if MPTCP is enabled.``, False.
    """
    try:
        text = (sysctl_dir / "enabled").read_text()
    except OSError:
        return False
    try:
        enabled = int(text.strip())
    except ValueError:
        log.error("Unable to determine if MPTCP is enabled.")
        return False
    if enabled == 0:
        log.error("MPTCP is not enabled in the kernel.")
        log.error("Try 'sysctl -w net.mptcp.enabled=1'.")
        return False
    return True


def kernel_path_manager(sysctl_dir: Path = MPTCP_SYSCTL_DIR) -> str | None:
    """The kernel's current path manager: ``"kernel"``, ``"userspace"`` (or
    another registered name), or None when it cannot be read.

    Kernels from 6.15 have the string ``net.mptcp.path_manager``; older ones
    the integer ``net.mptcp.pm_type`` (0 in-kernel, 1 userspace).  For an
    informational log line only: the daemon never refuses to start over it.
    """
    try:
        name = (sysctl_dir / "path_manager").read_text().strip()
    except OSError:
        name = ""
    if name:
        return name
    try:
        pm_type = int((sysctl_dir / "pm_type").read_text().strip())
    except (OSError, ValueError):
        return None
    return {0: "kernel", 1: "userspace"}.get(pm_type)
