"""Builds what pyproject.toml cannot declare:

* the mptcpize shim, a shared object that ``mptcpize run`` puts in
  ``LD_PRELOAD``, built like an extension module so that pip builds it with
  the distribution's compiler (it is never imported);
* the system files (``etc/``: the systemd unit and mptcpd.conf; ``man/``:
  the man pages), copied into the package as ``mptcpd/_system`` so that
  ``mptcpd-install`` finds them in an installed package.
"""

from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_py import build_py

SYSTEM_FILES = ["etc/mptcp.service", "etc/mptcpd.conf", "man/mptcpd.8", "man/mptcpize.8",
                "man/mptcp-get-debug.8", "man/mptcpctl.8"]


class BuildWithSystemFiles(build_py):
    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "mptcpd" / "_system"
        target.mkdir(parents=True, exist_ok=True)
        for name in SYSTEM_FILES:
            self.copy_file(name, str(target / Path(name).name))


setup(
    cmdclass={"build_py": BuildWithSystemFiles},
    ext_modules=[
        Extension(
            "mptcpd.mptcpize._mptcpwrap",
            sources=["src/mptcpd/mptcpize/mptcpwrap.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra"],
        )
    ],
)
