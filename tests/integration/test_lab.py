"""The lab itself: what every other integration test stands on."""

from __future__ import annotations

import json

import pytest

from tests.lab import Lab, list_namespaces, path_manager_sysctl, wait_for


def test_lab_builds_two_hosts_and_tears_down(lab_available: None) -> None:
    with Lab(links=2) as lab:
        names = list_namespaces()
        assert lab.client in names and lab.server in names
        for link in lab.links:
            state = lab.link_state(lab.client, link.client_if)
            assert "LOWER_UP" in state["flags"]
            addrs = lab.ip(lab.client, "-j", "addr", "show", "dev", link.client_if).stdout
            local = {a["local"] for a in json.loads(addrs)[0]["addr_info"]}
            assert {str(link.client4), str(link.client6)} <= local
        assert lab.read_sysctl(lab.client, "net.mptcp.enabled") == "1"
    names = list_namespaces()
    assert lab.client not in names and lab.server not in names


def test_lab_is_removed_when_the_body_raises(lab_available: None) -> None:
    holder: list[Lab] = []
    with pytest.raises(RuntimeError):
        with Lab(links=1) as lab:
            holder.append(lab)
            raise RuntimeError("boom")
    assert holder[0].client not in list_namespaces()


@pytest.mark.lab(path_manager="userspace")
def test_path_manager_is_chosen_per_test(lab: Lab) -> None:
    key, values = path_manager_sysctl()
    assert lab.read_sysctl(lab.client, key) == values["userspace"]


def test_mptcp_traffic_uses_both_links(lab: Lab) -> None:
    lab.ip(lab.client, "mptcp", "limits", "set", "subflows", "2")
    second = lab.links[1]
    lab.ip(lab.client, "mptcp", "endpoint", "add", str(second.client4),
           "dev", second.client_if, "subflow")
    server = lab.python(lab.server, "-m", "tests.lab.traffic", "server",
                        "--duration", "30")
    server.wait_output("listening")
    client = lab.python(lab.client, "-m", "tests.lab.traffic", "client",
                        str(lab.links[0].server4), "5201", "--bytes", "200000",
                        "--hold", "3")

    def joined() -> bool:
        # The join really completed over link 2 (not just a SYN sent).
        ss = lab.exec(lab.client, "ss", "-tnH", "state", "established").stdout
        return f"{second.client4}%{second.client_if}:" in ss

    wait_for(joined, 10, what="an established subflow on link 2")
    assert client.wait(15) == 0
    info = json.loads(client.output())["info"]
    assert info["subflows"] == 1  # one subflow beside the initial one
    assert info["bytes_acked"] >= 200000


def test_carrier_loss_keeps_the_address(lab: Lab) -> None:
    link = lab.links[1]
    lab.set_carrier(link, up=False)
    state = lab.link_state(lab.client, link.client_if)
    assert "NO-CARRIER" in state["flags"] and "UP" in state["flags"]
    lab.set_carrier(link, up=True)
    assert "LOWER_UP" in lab.link_state(lab.client, link.client_if)["flags"]
