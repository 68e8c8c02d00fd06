"""bench/fuzz_long.py, the long fuzz run, kept working: every parser that
reads outside input is one of its targets, and a short run of each passes
with the seed printed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "fuzz_long.py"
PARSERS = {"events", "command-replies", "command-channel", "rtnetlink", "sock_diag",
           "sock_diag-subflows", "sock_diag-lookups",
           "nlctrl", "nla", "config-settings", "config", "state-file"}


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True,
                          text=True, timeout=300, check=False, cwd=ROOT)


def test_every_parser_is_a_target() -> None:
    proc = run("--list")
    assert proc.returncode == 0, proc.stderr
    assert set(proc.stdout.split()) == PARSERS


def test_a_short_run_of_every_target_passes_and_prints_its_seed() -> None:
    proc = run("--cases", "25")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"^seed (\d+) \(replay with --seed=\1\), 25 cases per parser$",
                     proc.stdout, re.MULTILINE), proc.stdout
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines()[2:]}
    assert set(rows) == PARSERS
    for name, (_, cases, results, errors, failures, _seconds, outcome) in rows.items():
        assert outcome == "ok" and failures == "0", name
        assert int(cases) == 25 == int(results) + int(errors), name
