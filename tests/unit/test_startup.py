"""What the daemon loads before READY, and the control socket right after it.

A fresh interpreter runs the real :class:`~mptcpd.daemon.app.Daemon` (its
kernel side the doubles of ``test_daemon_lifecycle``) up to ``READY=1``,
lists which of the modules that only some clients need are loaded by then,
and makes a varlink call on the control socket at once: the call must be
answered (the socket listens before READY; the interface is imported at the
first client), and only then is the interface's module loaded.  A fresh
interpreter, because the test process has loaded everything already.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: Modules the daemon must not load to start: the control interface (and
#: asyncvarlink under it) wait for a client, the others are not the
#: daemon's at all (pyroute2 is the tests' oracle, prometheus_client is
#: mptcpctl's, configparser is read only for a kernel path manager,
#: logging.handlers for syslog, click for the click command).
LATER = ("asyncvarlink", "mptcpd.daemon.control_api", "pyroute2", "prometheus_client",
         "configparser", "logging.handlers", "click")

SCRIPT = """
import asyncio, json, sys
from pathlib import Path

from tests.unit import test_daemon_lifecycle as lifecycle

LATER = %r


async def main(tmp: Path) -> dict:
    # The command line's part, as far as it goes without a kernel.
    from mptcpd import cli
    options = cli.option_values(cli.scan(["-d", "--log=stderr", "--load-plugins=rec"]))
    assert options == {"debug": True, "log": "stderr", "load_plugins": "rec"}, options
    daemon = lifecycle.make_daemon(tmp)
    serving = asyncio.create_task(daemon.serve())
    await lifecycle.until(lambda: "watcher start" in lifecycle.ORDER)
    lifecycle.FakeWatcher.instances[0].on_appeared(23)
    await lifecycle.until(lifecycle.ready)
    loaded_at_ready = [m for m in LATER if m in sys.modules]
    # A client at once, as a service started after mptcpd would be.
    reader, writer = await asyncio.open_unix_connection(str(tmp / "control"))
    writer.write(json.dumps({"method": "io.mptcpd.GetStatus"}).encode() + b"\\0")
    reply = json.loads((await asyncio.wait_for(reader.readuntil(b"\\0"), 20))[:-1])
    writer.close()
    loaded_after_call = [m for m in LATER if m in sys.modules]
    daemon.stop()
    status = await asyncio.wait_for(serving, 20)
    return {"at_ready": loaded_at_ready, "reply": reply, "after_call": loaded_after_call,
            "exit": status}


print(json.dumps(asyncio.run(main(Path(sys.argv[1])))))
"""


def test_the_daemon_is_ready_without_what_only_clients_need_and_serves_at_once(
        tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", SCRIPT % (LATER,), str(tmp_path)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["at_ready"] == [], result
    status = result["reply"]["parameters"]["status"]
    assert status["ready"] is True and [p["name"] for p in status["plugins"]] == ["rec"]
    assert result["after_call"] == ["asyncvarlink", "mptcpd.daemon.control_api"], result
    assert result["exit"] == 0
