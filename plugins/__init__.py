"""The path managers bundled with mptcpd (``addr_adv``, ``sspi``).

This directory is installed as the package ``mptcpd_bundled_plugins`` only so
that its files can be found: it is mptcpd's default plugin directory, and the
daemon loads each ``*.py`` file here exactly as it loads a third-party plugin
file (files whose names start with ``_``, like this one, are not plugins).
"""
