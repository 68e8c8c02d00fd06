"""Builds the one native part of the package: the mptcpize shim, a shared
object that ``mptcpize run`` puts in ``LD_PRELOAD`` (everything else is in
pyproject.toml).  It is built like an extension module so that pip builds
it with the distribution's compiler, but it is never imported."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "mptcpd.mptcpize._mptcpwrap",
            sources=["src/mptcpd/mptcpize/mptcpwrap.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra"],
        )
    ]
)
