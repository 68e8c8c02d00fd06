"""mptcpd: the Multipath TCP path-management daemon, for Python plugins."""

__version__ = "0.1.0"
