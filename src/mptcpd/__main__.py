"""``python -m mptcpd``: the same entry point as the ``mptcpd`` command."""

from mptcpd.cli import main

if __name__ == "__main__":
    main()
