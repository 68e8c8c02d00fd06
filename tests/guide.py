"""The plugin author's guide (plugins/README.md), read by the tests."""

from __future__ import annotations

import re
from pathlib import Path

GUIDE = Path(__file__).resolve().parents[1] / "plugins" / "README.md"


def text() -> str:
    return GUIDE.read_text()


def minimal_plugin() -> str:
    """The first Python code block of the guide: the complete minimal plugin."""
    match = re.search(r"```python\n(.*?)```", text(), re.S)
    assert match, "the guide has no python code block"
    return match.group(1)


def python_blocks() -> list[str]:
    """Every Python code block of the guide, in order."""
    return re.findall(r"```python\n(.*?)```", text(), re.S)


def plugin_test() -> str:
    """The guide's test of its minimal plugin (the block that imports mptcpd.testing)."""
    [block] = [b for b in python_blocks() if "mptcpd.testing" in b]
    return block
