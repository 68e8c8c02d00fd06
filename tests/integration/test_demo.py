"""The README's first command: the lab demo runs and shows both managers at work."""

from __future__ import annotations

import re
import subprocess
import sys


def test_the_demo_shows_both_path_managers_at_work(lab_available: None) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.lab.demo", "--bytes", "15000000",
         "--connections", "2"],
        capture_output=True, text=True, timeout=240,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    # Part 1: endpoints, a transfer over both links, the pulled cable.
    assert re.search(r"192\.0\.2\.1 id \d+ subflow dev c1", out)
    assert re.search(r"198\.51\.100\.1 id \d+ subflow dev c2", out)
    assert "c2 lost its carrier: withdrawing endpoint" in out
    assert "c2 has its carrier back: restoring endpoint" in out
    m = re.search(r"link 1 carried +([\d.]+) MB, link 2 +([\d.]+) MB", out)
    assert m and float(m.group(1)) > 0 and float(m.group(2)) > 0
    # Part 2: sspi opened one subflow per link for each connection.
    assert "subflows from each client link while they ran (ss): link 1: 2, link 2: 2" in out
    assert out.count("mptcpd stopped with SIGTERM: exit status 0") == 2
