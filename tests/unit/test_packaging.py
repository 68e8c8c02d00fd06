"""pyproject.toml installs every package of the source tree."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_under_src_is_listed() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(project["tool"]["setuptools"]["packages"])
    found = {
        ".".join(p.parent.relative_to(ROOT / "src").parts)
        for p in (ROOT / "src").rglob("__init__.py")
    }
    assert found | {"mptcpd_bundled_plugins"} == listed


def test_the_bundled_plugins_are_the_plugins_directory() -> None:
    import importlib.util

    spec = importlib.util.find_spec("mptcpd_bundled_plugins")
    assert spec is not None and spec.submodule_search_locations is not None
    assert Path(list(spec.submodule_search_locations)[0]).resolve() == ROOT / "plugins"
