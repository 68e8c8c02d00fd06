"""A plugin written only from the guide works unchanged in the daemon."""

from __future__ import annotations

import json
from pathlib import Path

from tests.lab import Lab
from tests import guide
from tests.integration.test_daemon import READY, daemon_env


def test_the_guides_plugin_handles_real_connections(lab: Lab, tmp_path: Path) -> None:
    directory = tmp_path / "plugins"
    directory.mkdir()
    directory.chmod(0o755)
    (directory / "hello.py").write_text(guide.minimal_plugin())
    (directory / "hello.py").chmod(0o644)
    second = lab.links[1]
    lab.ip(lab.client, "mptcp", "limits", "set", "subflows", "2")
    lab.ip(lab.client, "mptcp", "endpoint", "add", str(second.client4), "dev",
           second.client_if, "subflow")
    daemon = lab.start_mptcpd("--log=stderr", f"--plugin-dir={directory}",
                              "--path-manager=hello", "--notify-flags=existing",
                              config="[core]\n", env=daemon_env())
    daemon.wait_output(READY, timeout=20)
    assert "hello plugin initialized" in daemon.output()
    daemon.wait_output(rf"hello: {second.client_if} has a new address {second.client4}")
    server = lab.python(lab.server, "-m", "tests.lab.traffic", "server", "--duration", "60")
    server.wait_output("listening")
    client = lab.python(lab.client, "-m", "tests.lab.traffic", "client",
                        str(lab.links[0].server4), "5201", "--bytes", "100000",
                        "--hold", "1")
    assert client.wait(20) == 0
    token = json.loads(client.output())["info"]["token"]
    daemon.wait_output(rf"hello: new connection {token:08x} {lab.links[0].client4}:\d+ -> "
                       rf"{lab.links[0].server4}:5201 \(client side\)")
    daemon.wait_output(rf"hello: subflow {second.client4}:\d+ -> .* on {token:08x} "
                       r"\(backup False\)")
    daemon.wait_output(rf"hello: connection {token:08x} closed after 2 subflow\(s\)")
    assert daemon.stop() == 0
