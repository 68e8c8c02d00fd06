"""The interface and address policy (issue 13) on the real kernel, with
addr_adv making the endpoints: allowed, denied and denied-by-kind
interfaces, address classes, per-interface flags."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.test_daemon import READY, daemon_env
from tests.lab import Endpoint, Lab, Process, wait_for

ROOT = Path(__file__).resolve().parents[2]
PLUGINS = str(ROOT / "plugins")

POLICY = """[core]
addr-flags=subflow
notify-flags=existing
skip-address-classes=link-local,deprecated
[interfaces]
deny=c2
deny-kinds=ifb
[interface c3]
addr-flags=subflow,backup
"""


def start(lab: Lab, config: str, *args: str) -> Process:
    daemon = lab.start_mptcpd(
        "--log=stderr", "--debug", f"--plugin-dir={PLUGINS}", "--load-plugins=addr_adv",
        "--path-manager=addr_adv", *args, config=config, env=daemon_env())
    daemon.wait_output(READY, timeout=20)
    return daemon


def endpoints(lab: Lab) -> dict[str, Endpoint]:
    return {e.address: e for e in lab.endpoints(lab.client)}


def wait_endpoints(lab: Lab, addresses: set[str], timeout: float = 10) -> dict[str, Endpoint]:
    return wait_for(lambda: (eps := endpoints(lab)).keys() == addresses and eps,
                    timeout, what=f"endpoints {sorted(addresses)}")


def link_addresses(lab: Lab, *indexes: int) -> set[str]:
    return {str(a) for link in lab.links if link.index in indexes
            for a in (link.client4, link.client6)}


@pytest.mark.lab(links=3)
def test_allowed_denied_and_denied_by_kind_interfaces_and_classes(lab: Lab) -> None:
    # An ifb interface (kind "ifb", up and running), and a deprecated address on c1.
    lab.ip(lab.client, "link", "add", "dum0", "type", "ifb")
    lab.ip(lab.client, "-6", "addr", "add", "2001:db8:ff::1/64", "dev", "dum0", "nodad")
    lab.ip(lab.client, "link", "set", "dum0", "up")
    lab.ip(lab.client, "-6", "addr", "add", "2001:db8:1::99/64", "dev", "c1", "nodad",
           "preferred_lft", "0")
    daemon = start(lab, POLICY)
    # c1 and c3 only; no link-local (every veth has one), no deprecated one.
    eps = wait_endpoints(lab, link_addresses(lab, 1, 3))
    c1, c3 = lab.links[0], lab.links[2]
    for a in (c1.client4, c1.client6):
        assert eps[str(a)].flags == {"subflow"} and eps[str(a)].dev == "c1"
    for a in (c3.client4, c3.client6):
        assert eps[str(a)].flags == {"subflow", "backup"} and eps[str(a)].dev == "c3"
    # At run time: an address on the denied link, on the dummy and a
    # deprecated one get nothing; one on c1 gets its endpoint.
    lab.ip(lab.client, "addr", "add", "198.51.100.77/24", "dev", "c2")
    lab.ip(lab.client, "-6", "addr", "add", "2001:db8:ff::2/64", "dev", "dum0", "nodad")
    lab.ip(lab.client, "-6", "addr", "add", "2001:db8:1::98/64", "dev", "c1", "nodad",
           "preferred_lft", "0")
    lab.ip(lab.client, "addr", "add", "192.0.2.77/24", "dev", "c1")
    wait_endpoints(lab, link_addresses(lab, 1, 3) | {"192.0.2.77"})
    out = daemon.output()
    assert 'Network interface c2(' in out and 'is denied by "c2"' in out
    assert 'Network interface dum0(' in out and 'is its kind "ifb" is denied' in out
    assert daemon.stop() == 0
    assert endpoints(lab).keys() == link_addresses(lab, 1, 3) | {"192.0.2.77"}


def addr_flags(lab: Lab, ifname: str, address: str) -> set[str] | None:
    """The flags ``ip -j addr`` shows for ``address`` on ``ifname`` (None: absent)."""
    out = lab.ip(lab.client, "-j", "addr", "show", "dev", ifname).stdout
    for info in json.loads(out)[0].get("addr_info", []):
        if info.get("local") == address:
            return {k for k, v in info.items() if v is True} | (
                {"deprecated"} if info.get("preferred_life_time") == 0 else set())
    return None


@pytest.mark.lab(links=1)
def test_dad_holds_an_address_back_until_it_completes_and_forever_if_it_fails(
        lab: Lab) -> None:
    c1 = lab.links[0]
    # A DAD of about three seconds on c1 (three probes a second apart).
    lab.sysctl(lab.client, f"net.ipv6.conf.{c1.client_if}.dad_transmits", "3")
    lab.sysctl(lab.client, f"net.ipv6.conf.{c1.client_if}.accept_dad", "1")
    daemon = start(lab, "[core]\naddr-flags=subflow\nnotify-flags=existing,"
                        "skip_link_local\nskip-address-classes=deprecated\n")
    base = {str(c1.client4), str(c1.client6)}
    wait_endpoints(lab, base)
    fresh = "2001:db8:1::50"
    lab.ip(lab.client, "-6", "addr", "add", f"{fresh}/64", "dev", c1.client_if)
    # While the kernel says the address is tentative, it has no endpoint.
    checked = 0
    for _ in range(200):
        before = addr_flags(lab, c1.client_if, fresh)
        present = fresh in endpoints(lab)
        after = addr_flags(lab, c1.client_if, fresh)
        if not (before and "tentative" in before and after and "tentative" in after):
            break
        assert not present, "an endpoint for a tentative address"
        checked += 1
    assert checked > 0, "DAD ended before it could be watched"
    wait_endpoints(lab, base | {fresh})
    # A duplicate of the server's address: DAD fails, no endpoint ever.
    duplicate = str(c1.server6)
    lab.ip(lab.client, "-6", "addr", "add", f"{duplicate}/64", "dev", c1.client_if)
    wait_for(lambda: "dadfailed" in (addr_flags(lab, c1.client_if, duplicate) or ()),
             15, what="DAD to fail")
    daemon.wait_output(rf"Address {duplicate} on {c1.client_if} is held back: duplicate "
                       "address detection failed", timeout=10)
    assert duplicate not in endpoints(lab)
    # An address that becomes deprecated loses its endpoint, and gets it
    # back when its preferred lifetime is renewed.
    lab.ip(lab.client, "-6", "addr", "change", f"{fresh}/64", "dev", c1.client_if,
           "preferred_lft", "0")
    wait_endpoints(lab, base)
    lab.ip(lab.client, "-6", "addr", "change", f"{fresh}/64", "dev", c1.client_if,
           "preferred_lft", "forever")
    wait_endpoints(lab, base | {fresh})
    assert daemon.stop() == 0


@pytest.mark.lab(links=2)
def test_admin_down_and_up_bring_the_endpoints_back(lab: Lab) -> None:
    daemon = start(lab, "[core]\naddr-flags=subflow\nnotify-flags=existing,"
                        "skip_link_local\n")
    everything = link_addresses(lab, 1, 2)
    before = wait_endpoints(lab, everything)
    c2 = lab.links[1]
    lab.ip(lab.client, "link", "set", c2.client_if, "down")
    wait_endpoints(lab, link_addresses(lab, 1))
    lab.ip(lab.client, "link", "set", c2.client_if, "up")
    lab.wait_link_running(lab.client, c2.client_if)
    # The IPv4 address stayed on the interface: its endpoint comes back
    # (C never recreates it).  The kernel dropped the IPv6 one; configured
    # again, it gets its endpoint again too.
    wait_for(lambda: str(c2.client4) in endpoints(lab), 10,
             what="the IPv4 endpoint of c2 after down/up")
    if addr_flags(lab, c2.client_if, str(c2.client6)) is None:
        lab.ip(lab.client, "-6", "addr", "add", f"{c2.client6}/64", "dev", c2.client_if,
               "nodad")
    after = wait_endpoints(lab, everything)
    assert {a: e.dev for a, e in after.items()} == {a: e.dev for a, e in before.items()}
    assert all(e.flags == {"subflow"} for e in after.values())
    assert daemon.stop() == 0


def endpoint_flags_raw(lab: Lab) -> dict[str, str]:
    """Each endpoint's line of ``ip mptcp endpoint show`` (iproute2 before
    6.18 does not know ``laminar`` by name)."""
    out = lab.ip(lab.client, "mptcp", "endpoint", "show").stdout
    return {line.split()[0]: line for line in out.splitlines() if line.strip()}


@pytest.mark.lab(links=2)
def test_laminar_endpoints(lab: Lab) -> None:
    daemon = start(lab, "[core]\nnotify-flags=existing,skip_link_local\n"
                        "[interface c2]\naddr-flags=subflow,laminar\n",
                   "--addr-flags=laminar")
    wait_endpoints(lab, link_addresses(lab, 1, 2))
    lines = endpoint_flags_raw(lab)
    c1, c2 = lab.links
    for a in (c1.client4, c1.client6):  # --addr-flags=laminar
        words = lines[str(a)].split()
        assert "subflow" not in words and ("laminar" in words or "rawflags" in words
                                           and words[words.index("rawflags") + 1] == "20")
    for a in (c2.client4, c2.client6):  # the group's subflow,laminar
        words = lines[str(a)].split()
        assert "subflow" in words and ("laminar" in words or "rawflags" in words
                                       and words[words.index("rawflags") + 1] == "20")
    assert daemon.stop() == 0
