"""A plugin whose import fails."""

import mptcpd_no_such_module  # noqa: F401
