"""addr_adv with the in-kernel PM, on real MPTCP traffic in the lab."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

from tests.lab import Endpoint, Lab, Process, wait_for
from tests.integration.test_daemon import READY, daemon_env

ROOT = Path(__file__).resolve().parents[2]
PLUGINS = str(ROOT / "plugins")


def start(lab: Lab, *args: str, state: Path | None = None,
          config: str = "[core]\n") -> Process:
    env = daemon_env()
    if state is not None:
        env["MPTCPD_STATE_DIR"] = str(state)
    daemon = lab.start_mptcpd(
        "--log=stderr", f"--plugin-dir={PLUGINS}", "--load-plugins=addr_adv",
        "--path-manager=addr_adv", "--notify-flags=existing,skip_link_local",
        "--addr-flags=subflow", *args, config=config, env=env)
    daemon.wait_output(READY, timeout=20)
    return daemon


def endpoints_by_address(lab: Lab) -> dict[str, Endpoint]:
    return {e.address: e for e in lab.endpoints(lab.client)}


def wait_endpoints(lab: Lab, addresses: set[str], timeout: float = 10) -> dict[str, Endpoint]:
    return wait_for(lambda: (eps := endpoints_by_address(lab)).keys() == addresses and eps,
                    timeout, what=f"endpoints {sorted(addresses)}")


def lab_addresses(lab: Lab) -> set[str]:
    return {str(a) for link in lab.links for a in (link.client4, link.client6)}


def test_one_endpoint_per_address_with_flags_ids_and_limits(lab: Lab) -> None:
    daemon = start(lab)
    eps = wait_endpoints(lab, lab_addresses(lab))
    assert sorted(e.id for e in eps.values()) == [1, 2, 3, 4]
    for link in lab.links:
        for addr in (link.client4, link.client6):
            assert eps[str(addr)].flags == {"subflow"}
            assert eps[str(addr)].dev == link.client_if
    # 2 at start, +1 per address; add_addr_accepted follows with "subflow".
    assert lab.limits(lab.client) == {"add_addr_accepted": 6, "subflows": 6}
    assert daemon.stop() == 0
    assert "MPTCP address advertiser path manager exited." in daemon.output()


def transfer(lab: Lab, nbytes: int, hold: float = 0) -> Process:
    return lab.python(lab.client, "-m", "tests.lab.traffic", "client",
                      str(lab.links[0].server4), "5201", "--bytes", str(nbytes),
                      "--hold", str(hold), "--timeout", "30")


def test_data_travels_over_both_links(lab: Lab) -> None:
    start(lab)
    wait_endpoints(lab, lab_addresses(lab))
    for link in lab.links:
        lab.limit_rate(link, 40)
    lab.python(lab.server, "-m", "tests.lab.traffic", "server").wait_output("listening")
    before = [lab.tx_bytes(lab.client, link.client_if) for link in lab.links]
    client = transfer(lab, 8_000_000)
    assert client.wait(40) == 0
    sent = [lab.tx_bytes(lab.client, link.client_if) - b
            for link, b in zip(lab.links, before)]
    info = json.loads(client.output())["info"]
    assert info["subflows"] == 1 and info["bytes_acked"] >= 8_000_000
    assert min(sent) > 1_000_000, sent  # both links carried a real share


def test_carrier_loss_withdraws_the_endpoint_and_the_transfer_continues(lab: Lab) -> None:
    daemon = start(lab)
    wait_endpoints(lab, lab_addresses(lab))
    ids = {a: e.id for a, e in endpoints_by_address(lab).items()}
    for link in lab.links:
        lab.limit_rate(link, 40)
    lab.python(lab.server, "-m", "tests.lab.traffic", "server").wait_output("listening")
    client = transfer(lab, 20_000_000)
    second = lab.links[1]
    wait_for(lambda: lab.tx_bytes(lab.client, second.client_if) > 500_000, 20,
             what="the second link to carry data")
    lab.set_carrier(second, up=False)
    kept = lab_addresses(lab) - {str(second.client4), str(second.client6)}
    wait_endpoints(lab, kept)
    daemon.wait_output(rf"{second.client_if} lost its carrier: withdrawing endpoint")
    assert client.wait(60) == 0, client.output()
    assert json.loads(client.output())["info"]["bytes_acked"] >= 20_000_000
    lab.set_carrier(second, up=True)
    eps = wait_endpoints(lab, lab_addresses(lab))
    assert {a: e.id for a, e in eps.items()} == ids  # restored with the same IDs
    assert lab.limits(lab.client)["subflows"] == 6


def test_address_add_and_remove_are_followed(lab: Lab) -> None:
    start(lab)
    wait_endpoints(lab, lab_addresses(lab))
    lab.ip(lab.client, "addr", "add", "203.0.113.1/24", "dev", lab.links[0].client_if)
    eps = wait_endpoints(lab, lab_addresses(lab) | {"203.0.113.1"})
    assert eps["203.0.113.1"].id == 5 and eps["203.0.113.1"].dev == lab.links[0].client_if
    wait_for(lambda: lab.limits(lab.client)["subflows"] == 7, 5, what="limits 7")
    lab.ip(lab.client, "addr", "del", "203.0.113.1/24", "dev", lab.links[0].client_if)
    wait_endpoints(lab, lab_addresses(lab))
    wait_for(lambda: lab.limits(lab.client)["subflows"] == 6, 5, what="limits 6")


def test_a_preexisting_endpoint_survives_and_is_not_duplicated(lab: Lab) -> None:
    second = lab.links[1]
    lab.ip(lab.client, "mptcp", "endpoint", "add", str(second.client4), "id", "42",
           "signal")
    daemon = start(lab)
    eps = wait_endpoints(lab, lab_addresses(lab))
    assert eps[str(second.client4)].id == 42 and eps[str(second.client4)].flags == {"signal"}
    assert len(lab.endpoints(lab.client)) == 4
    lab.set_carrier(second, up=False)
    wait_endpoints(lab, {str(lab.links[0].client4), str(lab.links[0].client6),
                         str(second.client4)})
    lab.set_carrier(second, up=True)
    wait_endpoints(lab, lab_addresses(lab))
    assert daemon.stop() == 0
    assert endpoints_by_address(lab)[str(second.client4)].id == 42


def test_a_restart_leaves_no_duplicates_and_keeps_managing(lab: Lab, tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = start(lab, state=state)
    wait_endpoints(lab, lab_addresses(lab))
    before = endpoints_by_address(lab)
    assert first.stop(signal.SIGTERM) == 0
    second_run = start(lab, state=state)
    eps = wait_endpoints(lab, lab_addresses(lab))
    assert {a: e.id for a, e in eps.items()} == {a: e.id for a, e in before.items()}
    # The endpoints of the first run are still managed: carrier loss withdraws them.
    lab.set_carrier(lab.links[1], up=False)
    wait_endpoints(lab, {str(lab.links[0].client4), str(lab.links[0].client6)})
    assert os.listdir(state)
    assert second_run.stop(signal.SIGTERM) == 0


def test_the_ninth_endpoint_is_reported_as_the_kernel_limit(lab: Lab) -> None:
    daemon = start(lab)
    wait_endpoints(lab, lab_addresses(lab))
    extra = [f"203.0.113.{i}" for i in range(1, 6)]  # 4 + 5 = 9 addresses
    for ip in extra:
        lab.ip(lab.client, "addr", "add", f"{ip}/24", "dev", lab.links[0].client_if)
    daemon.wait_output(r"Unable to advertise 203\.0\.113\.5: the kernel's limit of 8 "
                       r"endpoints per network namespace is reached\.")
    assert len(lab.endpoints(lab.client)) == 8
    # The kernel's own words are logged too, by the command channel.
    assert re.search(r"add_addr: .*: Numerical result out of range", daemon.output())


def test_a_full_command_queue_keeps_the_endpoint_commands_in_order(lab: Lab) -> None:
    """Addresses churned faster than the kernel removes endpoints (each
    removal waits for an RCU grace period) overflow a small command queue.
    The commands it refused are sent again in the order they were made: a
    new address never gets the ID of an endpoint still in the kernel
    (``EBUSY``), no removal meets an endpoint already gone, and every
    address ends with its endpoint and the limits counting it.  An address
    that comes and goes while its addition waits makes no command at all."""
    daemon = start(lab, "-d", config="[core]\ncommand-queue-size = 4\n")
    base = lab_addresses(lab)
    wait_endpoints(lab, base)
    dev = lab.links[0].client_if
    churn = "".join(f"addr add 203.0.113.{200 + i % 4}/32 dev {dev}\n"
                    f"addr del 203.0.113.{200 + i % 4}/32 dev {dev}\n" for i in range(300))
    kept = [f"203.0.113.{i}" for i in (10, 11)]
    churn += "".join(f"addr add {ip}/32 dev {dev}\n" for ip in kept)
    lab.exec(lab.client, "ip", "-batch", "-", input=churn)
    eps = wait_endpoints(lab, base | set(kept), timeout=60)
    assert len({e.id for e in eps.values()}) == len(eps)
    wait_for(lambda: lab.limits(lab.client) == {"add_addr_accepted": 8, "subflows": 8},
             20, what="limits 8")
    output = daemon.output()
    assert "Command queue full" in output  # the churn did overflow it
    assert "its addition had not left; dropped." in output
    for wrong in ("Unable to advertise", "resource busy", "address not found"):
        assert wrong not in output, output
    assert daemon.stop() == 0
